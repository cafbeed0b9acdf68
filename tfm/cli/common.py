"""What several ``tfm`` commands share: argument types, the bead-pair options, reading the
inputs, checking the outputs before any computation, writing and summarising results."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..atomic import jsonable
from ..progress import Progress

EPILOG_UNITS = """\
units: displacement in µm, moduli in Pa; the output force density is in pN/µm³
(= Pa/µm), integrated forces in pN. Arrays are (Z, Y, X, 3) with components
(u_z, u_y, u_x).
"""


class UsageError(ValueError):
    """A command-line argument is wrong (exit 2)."""


def progress(args) -> Progress:
    """Bars and messages unless ``--quiet``."""
    return Progress(bars=not getattr(args, "quiet", False))


def regularization(text: str):
    """``--regularization``: a rule name or a fixed alpha >= 0."""
    if text in ("auto", "gcv", "lcurve", "bayesian"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, gcv, lcurve, bayesian or a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"regularization must be a finite number >= 0, got {text}")
    return value


def add_force_args(p: argparse.ArgumentParser, method_option: str = "--method") -> None:
    """Options of the force reconstruction (``tfm forces``; ``tfm reconstruct`` names the
    method ``--force-method``, its ``--method`` choosing classical or learned)."""
    p.add_argument(method_option, dest=method_option.lstrip("-").replace("-", "_"), choices=("inverse", "fttc"), default="inverse",
                   help="inverse: regularised inverse that keeps forces where the cell is; fttc: Fourier traction "
                   "cytometry (default inverse)")
    p.add_argument("--regularization", type=regularization, default="auto",
                   help="auto (inverse: discrepancy principle; fttc: GCV), gcv or lcurve (fttc), or a fixed alpha >= 0 "
                   "(default auto)")
    p.add_argument("--noise-um", type=float, help="inverse: displacement noise, µm per component (default: estimated from the data)")
    p.add_argument("--support-um", type=float, help="inverse and dl: forces only within this distance of the cell, µm "
                   "(needs the cell; dl default 4)")
    p.add_argument("--penalty", choices=("l1", "l2", "elastic-net"), help="inverse: penalty of the force (default l1)")


def add_material_args(p: argparse.ArgumentParser) -> None:
    """The matrix law (tfm reconstruct, tfm series, tfm forces): --material and the fibre law's parameters."""
    p.add_argument("--material", choices=("linear", "neo-hookean", "fiber"), default="linear",
                   help="matrix law (default linear). neo-hookean: large-strain hydrogels; fiber: collagen-like fibre "
                   "networks that buckle under compression and stiffen under tension (Steinwachs et al. 2016, saenopy's "
                   "law; k = 6 x --youngs-modulus-pa, Poisson ratio 1/4). The nonlinear laws run the classical force "
                   "step on the voxel FEM (slower than the linear inverse)")
    p.add_argument("--fiber-d0", type=float, default=0.0008,
                   help="fiber: buckling, the strain scale of the stiffness's decay under compression (saenopy's d_0; "
                   "default 0.0008, collagen)")
    p.add_argument("--fiber-lambda-s", type=float, default=0.0075,
                   help="fiber: the stretch strain where stiffening starts (saenopy's lambda_s; default 0.0075, collagen)")
    p.add_argument("--fiber-ds", type=float, default=0.033,
                   help="fiber: the strain scale of the stiffening (saenopy's d_s; default 0.033, collagen)")


def material_from_args(args):
    """The matrix of :func:`add_material_args` and the modulus options."""
    from ..material import make_law

    if args.material == "fiber":
        if args.poisson_ratio != 0.45:
            raise UsageError("--poisson-ratio does not apply to --material fiber (an affine fibre network's Poisson "
                             "ratio is 1/4)")
        fiber = {"d0": args.fiber_d0, "lambda_s": args.fiber_lambda_s, "d_s": args.fiber_ds}
        try:
            return make_law("fiber", args.youngs_modulus_pa, **fiber)
        except ValueError as exc:
            raise UsageError(f"--fiber-*: {exc}") from None
    try:
        return make_law(args.material, args.youngs_modulus_pa, args.poisson_ratio)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def force_options(args) -> dict:
    """The inverse's options from :func:`add_force_args`'s arguments; refuses them with FTTC."""
    method = getattr(args, "force_method", None) or args.method
    given = {k: v for k, v in (("noise_um", args.noise_um), ("support_um", args.support_um), ("penalty", args.penalty))
             if v is not None}
    if method == "fttc":
        if given:
            raise UsageError(f"{', '.join('--' + k.replace('_', '-') for k in given)}: options of the inverse, not FTTC")
        return {}
    if args.regularization in ("gcv", "lcurve", "bayesian"):
        raise UsageError(f"--regularization {args.regularization} is an FTTC rule: the inverse takes auto or a number")
    for name in ("noise_um", "support_um"):
        if name in given and not (math.isfinite(given[name]) and given[name] > 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a number > 0 (µm), got {given[name]}")
    return given


def one_or_three(values, name, cast):
    if len(values) not in (1, 3):
        raise UsageError(f"{name} takes 1 or 3 values, got {len(values)}")
    return cast(values[0]) if len(values) == 1 else tuple(cast(v) for v in values)


def parse_windows(windows, ndim: int):
    """``--windows`` given per pass as W or one size per axis; None when not given."""
    if not windows:
        return None
    if any(len(w) not in (1, ndim) for w in windows):
        raise UsageError(f"--windows takes 1 or {ndim} sizes per pass, got {windows}")
    return tuple(w[0] if len(w) == 1 else tuple(w) for w in windows)


def same_spacing(a, b, what: str) -> None:
    if any(abs(x - y) > 1e-6 * max(x, y) for x, y in zip(a, b)):
        raise UsageError(f"the two {what} record different sizes: {a} and {b}; pass --spacing-um")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
    return False


def check_output(path, suffixes, inputs=(), option: str = "-o") -> Path:
    """Refuse, before any computation, an output that cannot or must not be written: a
    wrong suffix, a directory, one of the inputs, or a place without write permission."""
    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {p}: the file is written as {suffixes[0]}; name it with that suffix "
                         f"({' or '.join(suffixes)})")
    from .. import io

    if p.is_dir() and not io.is_result_zarr(p):
        raise UsageError(f"{option} {p} is a directory" + (" that is not a tfm result; name another" if
                                                            p.suffix.lower() == ".zarr" else "; give a file name"))
    for i in inputs:
        if i is not None and (_same_file(p, Path(i)) or p.absolute() == Path(i).absolute()):
            raise UsageError(f"{option} {p} is also an input; writing it would destroy that input")
    parent = p.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {p}: {parent} is not a directory")
    try:  # the one honest test of writability (root ignores permission bits; read-only mounts)
        fd, probe = tempfile.mkstemp(prefix=".tfm-write-test.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{option} {p}: cannot write in {parent} ({exc.strerror or exc})") from None
    return p


def add_volume_args(p: argparse.ArgumentParser, pair: bool = True) -> None:
    """Inputs and outputs of the bead-pair commands (displacement, reconstruct); with
    ``pair=False`` the command names its own inputs and output (tfm series)."""
    if pair:
        p.add_argument("reference", help="relaxed bead stack (TIFF / OME-TIFF)")
        p.add_argument("deformed", help="deformed bead stack, same shape")
        p.add_argument("-o", "--output", required=True, help="result to write: .h5 (HDF5), or .ome.zarr (an OME-Zarr "
                       "folder that napari and other OME-Zarr viewers open)")
    p.add_argument("--spacing-um", type=float, nargs=3, metavar=("Z", "Y", "X"), help="voxel size in µm (overrides the files' metadata)")
    p.add_argument("--channel", type=int, help="channel of multi-channel bead stacks (default: the only one)")
    p.add_argument("--level", type=int, default=0, help="OME-Zarr inputs (.zarr): the multiscale level to read (default 0, "
                   "full resolution; a coarser level for a quick look)")
    p.add_argument("--cell", help="cell-channel stack: the thresholded cell is excluded from correlation")
    p.add_argument("--cell-threshold", type=float, help="intensity threshold of the cell channel (default: Otsu)")
    p.add_argument("--cell-dilate-um", type=float, default=0.0, help="grow the cell mask by this distance, µm")
    p.add_argument("--windows", type=int, nargs="+", action="append", metavar="W",
                   help="window size of one pass, voxels: W (cubic) or WZ WY WX; repeat per pass (default: chosen from "
                   "the beads, --target-beads per last-pass window, near-cubic in µm)")
    p.add_argument("--target-beads", type=float, default=8.0, help="beads in a last-pass window when the windows are chosen (default 8)")
    p.add_argument("--overlap", type=float, default=0.5, help="overlap of the last pass's windows (default 0.5)")
    p.add_argument("--drift", choices=("auto", "rigid", "median", "affine", "slicewise", "none"), default="auto",
                   help="drift removed: auto (the model the far field supports), rigid shift, far-field median, far-field "
                   "affine (also uniform strain), slicewise (a translation per z-plane: drift during the scan), none "
                   "(default auto)")
    p.add_argument("--output-spacing-um", type=float, nargs="+", metavar="H",
                   help="also resample the displacement to this spacing, µm (H or HZ HY HX; cubic spline through the windows)")
    if not pair:
        p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
        return
    p.add_argument("--vtk", help="also write a VTK image file (.vti) for ParaView")
    p.add_argument("--preview-factor", type=int, nargs="+", metavar="K",
                   help="also store a copy of the fields at every K-th point (K or KZ KY KX) in the result file's "
                   "'preview' group (small to browse; full-resolution --method dl results are large)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def preview_factor(args):
    """``--preview-factor`` as an int or a 3-tuple (None when not given)."""
    factor = getattr(args, "preview_factor", None)
    if factor is None:
        return None
    factor = one_or_three(factor, "--preview-factor", int)
    if min(np.atleast_1d(factor)) < 1:
        raise UsageError(f"--preview-factor must be positive, got {' '.join(map(str, args.preview_factor))}")
    return factor


def check_pair_outputs(args) -> None:
    preview_factor(args)
    inputs = (args.reference, args.deformed, getattr(args, "cell", None))
    check_output(args.output, (".h5", ".hdf5", ".zarr"), inputs)
    check_output(args.vtk, (".vti",), inputs, "--vtk")
    if args.output.lower().endswith(".zarr") and preview_factor(args) is not None:
        raise UsageError("--preview-factor applies to .h5 results (an OME-Zarr result has its own multiscale levels)")
    if args.vtk and Path(args.vtk).absolute() == Path(args.output).absolute():
        raise UsageError("--vtk and -o name the same file")


def load_pair(args):
    """The two bead stacks, their Grid, the cell mask (or None) and the DVC options."""
    from .. import io

    ref, grid = io.read_volume(args.reference, spacing_um=args.spacing_um, channel=args.channel, **_level(args, args.reference))
    dfm, grid_def = io.read_volume(args.deformed, spacing_um=args.spacing_um, channel=args.channel,
                                   **_level(args, args.deformed))
    if args.spacing_um is None:
        same_spacing(grid.spacing_um, grid_def.spacing_um, "stacks")
    if ref.shape != dfm.shape:
        raise UsageError(f"the stacks differ in shape: {args.reference} {ref.shape}, {args.deformed} {dfm.shape}")
    mask = cell_mask(args, args.cell, grid) if args.cell else None
    return ref, dfm, grid, mask, dvc_options(args)


def _level(args, path) -> dict:
    """``level=`` for an OME-Zarr input; a level other than 0 on a TIFF is refused."""
    from .. import io

    level = getattr(args, "level", 0)
    if level and not io.is_zarr(path):
        raise UsageError(f"--level applies to OME-Zarr inputs (.zarr), not {path}")
    return {"level": level} if io.is_zarr(path) else {}


def cell_mask(args, path, grid, option: str = "--cell"):
    """The thresholded cell of the cell-channel stack ``path`` on the bead stacks' ``grid``."""
    from .. import io, segment

    cell, _ = io.read_volume(path, spacing_um=grid.spacing_um, **_level(args, path))
    if cell.shape != grid.shape:
        raise UsageError(f"{option} {path} has shape {cell.shape}, the bead stacks {grid.shape}")
    return segment.cell_mask(cell, grid, threshold=args.cell_threshold, dilate_um=args.cell_dilate_um)


def dvc_options(args) -> dict:
    """The DVC's options from :func:`add_volume_args`'s arguments."""
    options = {"drift": None if args.drift == "none" else args.drift, "overlap": args.overlap,
               "target_beads": args.target_beads}
    if args.windows:
        options["windows"] = parse_windows(args.windows, 3)
    if args.output_spacing_um:
        options["output_spacing_um"] = one_or_three(args.output_spacing_um, "--output-spacing-um", float)
    return options


def provenance(args, command: str, **inputs) -> dict:
    return {"command": command, "argv": sys.argv[1:], **{k: (str(v) if v is not None else None) for k, v in inputs.items()}}


def write_outputs(args, result, prov: dict) -> None:
    """The result file (and the VTK file), then the summary unless ``--quiet``."""
    from .. import io

    io.write_result(args.output, result, prov, preview_factor=preview_factor(args))
    if getattr(args, "vtk", None):
        io.write_vtk(args.vtk, result)
    if not args.quiet:
        summary = result.summary()
        dvc_info = result.info.get("dvc", result.info)
        if "valid" in dvc_info:
            summary["windows_voxels"] = dvc_info.get("windows_voxels")
            auto = dvc_info.get("windows_auto") or {}
            if auto:
                summary["bead_density_per_um3"] = auto.get("bead_density_per_um3")
                summary["beads_per_last_window"] = auto.get("beads_per_last_window")
            summary["drift_model"] = dvc_info.get("drift_model")
            summary["drift_removed_voxels"] = dvc_info.get("drift_removed_voxels")
            outside = ~np.asarray(dvc_info.get("masked", np.zeros_like(dvc_info["valid"])), bool)
            summary["valid_windows"] = float(np.asarray(dvc_info["valid"])[outside].mean()) if outside.any() else 0.0
        print(json.dumps(jsonable(summary), indent=2))
        print(f"wrote {args.output}" + (f" and {args.vtk}" if getattr(args, "vtk", None) else ""))


def json_table(rows) -> str:
    """Rows of a table as JSON lines (one per row), for the terminal."""
    return "\n".join(json.dumps(jsonable(row)) for row in rows)


def dask_client(scheduler: str, workers: int = 2, memory_limit="auto"):
    """``(client, cluster)``: ``scheduler="local"`` starts a LocalCluster of ``workers``
    single-threaded worker processes, each restarted by Dask when it exceeds
    ``memory_limit`` (its row or frame then fails, the others go on); an address connects
    to a running scheduler (cluster None: it is not ours to close)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--scheduler needs dask.distributed: pip install 'tfm[dask]'") from None
    if scheduler == "local":
        if workers < 1:
            raise UsageError(f"--workers must be >= 1, got {workers}")
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                               dashboard_address=None)
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout=30), None
    except OSError as exc:
        raise UsageError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({exc})") from None
