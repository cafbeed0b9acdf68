"""The ``tfm`` command: parses arguments, calls the API, prints. No numerics here."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG_FORCES = """\
units: displacement in µm, moduli in Pa; the output force density is in pN/µm³
(= Pa/µm), integrated forces in pN. Arrays are (Z, Y, X, 3) with components
(u_z, u_y, u_x).

examples:
  tfm forces disp.npy --spacing-um 0.8 0.29 0.29 --youngs-modulus-pa 1000 \\
      --poisson-ratio 0.45 -o forces.h5 --vtk forces.vti
  tfm forces result_from_dvc.h5 --youngs-modulus-pa 500 -o forces.h5
"""


def _regularization(text: str):
    if text in ("auto", "gcv", "lcurve", "bayesian"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, gcv, lcurve, bayesian or a number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"regularization must be >= 0, got {value}")
    return value


EPILOG_DISPLACEMENT = """\
input: two 3D stacks of the same shape: REFERENCE (relaxed, e.g. after cytochalasin D
or trypsin) and DEFORMED (the cell pulling). The voxel size comes from the files' OME or
ImageJ metadata, or from --spacing-um (required when the files have none).
output: displacement in µm on the grid of correlation-window centres, components
(u_z, u_y, u_x); a bead at X in REFERENCE sits at X + u(X) in DEFORMED.

example (the FM-Track stacks, which store no voxel size):
  tfm displacement CytoD_Beads.tif Normal_Beads.tif --spacing-um 0.8 0.29286 0.29286 \\
      --cell Normal_Cell.tif --windows 16 32 32 --windows 12 24 24 -o disp.h5
"""


def _add_volume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", help="relaxed bead stack (TIFF / OME-TIFF)")
    p.add_argument("deformed", help="deformed bead stack, same shape")
    p.add_argument("-o", "--output", required=True, help="result file to write (.h5)")
    p.add_argument("--spacing-um", type=float, nargs=3, metavar=("Z", "Y", "X"), help="voxel size in µm (overrides the files' metadata)")
    p.add_argument("--cell", help="cell-channel stack: the thresholded cell is excluded from correlation")
    p.add_argument("--cell-threshold", type=float, help="intensity threshold of the cell channel (default: Otsu)")
    p.add_argument("--cell-dilate-um", type=float, default=0.0, help="grow the cell mask by this distance, µm")
    p.add_argument("--windows", type=int, nargs="+", action="append", metavar="W",
                   help="window size of one pass, voxels: W (cubic) or WZ WY WX; repeat per pass (default 32, 24, 16)")
    p.add_argument("--overlap", type=float, default=0.5, help="window overlap fraction (default 0.5)")
    p.add_argument("--drift", choices=("rigid", "median", "affine", "slicewise", "none"), default="rigid",
                   help="drift removed: rigid shift, far-field median, far-field affine (also uniform strain), "
                   "slicewise (a translation per z-plane: drift during the scan), none (default rigid)")
    p.add_argument("--vtk", help="also write a VTK image file (.vti) for ParaView")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="tfm", description="3D cellular force microscopy: displacements and forces from bead volumes.")
    p.add_argument("--version", action="version", version=f"tfm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    f = sub.add_parser(
        "forces",
        help="body-force density from a displacement field (3D FTTC)",
        description="Reconstruct the body-force density a cell applies to an infinite linear-elastic matrix "
        "from the matrix's 3D displacement field (Fourier traction cytometry, Tikhonov-regularised, "
        "parameter by generalised cross-validation unless given).",
        epilog=EPILOG_FORCES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("displacement", help="a tfm result .h5, an HDF5 file with a 'displacement' dataset, or a .npy array (Z, Y, X, 3) in µm")
    f.add_argument("-o", "--output", required=True, help="result file to write (.h5)")
    f.add_argument("--youngs-modulus-pa", type=float, required=True, help="Young's modulus of the matrix, Pa (e.g. 1000)")
    f.add_argument("--poisson-ratio", type=float, default=0.45, help="Poisson ratio of the matrix, in (-1, 0.5) (default 0.45)")
    f.add_argument("--spacing-um", type=float, nargs=3, metavar=("Z", "Y", "X"), help="grid spacing in µm (required for .npy input)")
    f.add_argument("--regularization", type=_regularization, default="auto", help="auto (GCV), gcv, lcurve, or a fixed alpha >= 0 (default auto)")
    f.add_argument("--pad", choices=("taper", "zero", "none"), default="taper", help="padding against periodic images (default taper)")
    f.add_argument("--vtk", help="also write a VTK image file (.vti) for ParaView")
    f.add_argument("--quiet", action="store_true", help="print nothing on success")
    f.set_defaults(run=_cmd_forces)

    d = sub.add_parser("displacement", help="3D displacement from a bead volume pair (digital volume correlation)",
                       description="Measure the 3D displacement field between two bead stacks by iterative, "
                       "window-deforming digital volume correlation.",
                       epilog=EPILOG_DISPLACEMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_volume_args(d)
    d.set_defaults(run=_cmd_displacement)

    r = sub.add_parser("reconstruct", help="displacement and forces from a bead volume pair",
                       description="Bead stacks -> displacement (DVC) -> body-force density (3D FTTC) in one run.",
                       epilog=EPILOG_FORCES.split("examples:")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_volume_args(r)
    r.add_argument("--youngs-modulus-pa", type=float, required=True, help="Young's modulus of the gel, Pa")
    r.add_argument("--poisson-ratio", type=float, default=0.45, help="Poisson ratio of the gel (default 0.45)")
    r.add_argument("--method", choices=("classical", "dl"), default="classical",
                   help="classical: DVC + FTTC; dl: the physics-informed 3D network in one pass (default classical)")
    r.add_argument("--material", choices=("linear", "neo-hookean"), default="linear", help="matrix law (dl only; default linear)")
    r.add_argument("--model", help="dl: a saved model or tfm train run directory (default: the shipped weights)")
    r.add_argument("--tile", type=int, help="dl: tile edge, voxels (default 128)")
    r.add_argument("--tile-overlap", type=int, help="dl: voxels shared by neighbouring tiles (default min(32, tile/2))")
    r.add_argument("--regularization", type=_regularization, default="auto", help="auto (GCV), gcv, lcurve or a fixed alpha")
    r.set_defaults(run=_cmd_reconstruct)

    t = sub.add_parser("tractions2d", help="tractions of a cell on a gel from two 2D bead images (PIV + 2D FTTC)",
                       description="PIV between a relaxed and a loaded 2D bead image (the DVC correlator with flat "
                       "windows), then Fourier traction cytometry on an elastic half-space or a layer of given thickness.",
                       epilog="units: pixel size µm, modulus Pa; tractions in Pa, integrated forces in pN.\n\n"
                       "example:\n  tfm tractions2d relaxed.tif loaded.tif --spacing-um 0.16 0.16 --youngs-modulus-pa 8000 \\\n"
                       "      --poisson-ratio 0.45 --thickness-um 50 --regularization bayesian -o tractions.h5",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("reference", help="relaxed bead image (TIFF)")
    t.add_argument("deformed", help="bead image with the cell pulling, same shape")
    t.add_argument("-o", "--output", required=True, help="result file to write (.h5)")
    t.add_argument("--spacing-um", type=float, nargs=2, metavar=("Y", "X"), help="pixel size in µm (overrides the files' metadata)")
    t.add_argument("--youngs-modulus-pa", type=float, required=True, help="Young's modulus of the gel, Pa")
    t.add_argument("--poisson-ratio", type=float, default=0.45, help="Poisson ratio of the gel (default 0.45)")
    t.add_argument("--thickness-um", type=float, help="gel thickness on the coverslip, µm (default: half-space)")
    t.add_argument("--windows", type=int, nargs="+", action="append", metavar="W",
                   help="PIV window of one pass, pixels: W or WY WX; repeat per pass (default 32, 24, 16)")
    t.add_argument("--overlap", type=float, default=0.5, help="window overlap fraction (default 0.5)")
    t.add_argument("--drift", choices=("rigid", "median", "none"), default="rigid", help="drift removed (default rigid)")
    t.add_argument("--regularization", type=_regularization, default="auto",
                   help="auto (GCV), gcv, lcurve, bayesian (Huang et al. 2019) or a fixed alpha")
    t.add_argument("--noise-variance-um2", type=float, help="displacement noise variance for --regularization bayesian")
    t.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    t.set_defaults(run=_cmd_tractions2d)

    y = sub.add_parser("synth", help="generate a synthetic dataset: random cells, FEM ground truth, bead volume pairs",
                       description="Random cells (shape, contractility pattern, matrix stiffness) -> voxel FEM "
                       "(displacement and force ground truth) -> bead volumes rendered by forward mapping with camera "
                       "noise, written to one HDF5 file. A killed run resumes from NAME.h5.partial when restarted "
                       "with the same arguments.",
                       epilog="example:\n  tfm synth --n 1000 --size 48 --seed 0 -o data/synthetic/train48.h5\n"
                       "read it with tfm.synth.dataset.SyntheticDataset(path).batches(8)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    y.add_argument("--n", type=int, required=True, help="number of samples")
    y.add_argument("--size", type=int, nargs="+", default=[48], metavar="N", help="grid size, voxels: N or NZ NY NX (default 48)")
    y.add_argument("--spacing-um", type=float, nargs="+", default=[1.0], metavar="H", help="voxel size, µm: H or HZ HY HX (default 1)")
    y.add_argument("--seed", type=int, default=0, help="base seed; sample i uses (seed, i) (default 0)")
    y.add_argument("--material", choices=("neo-hookean", "linear"), default="neo-hookean",
                   help="matrix law of the FEM (default neo-hookean)")
    y.add_argument("--boundary", choices=("fixed", "free"), default="fixed",
                   help="box faces of the FEM: fixed, or free (traction-free) (default fixed)")
    y.add_argument("-o", "--output", required=True, help="dataset file to write (.h5)")
    y.add_argument("--quiet", action="store_true", help="no progress bar")
    y.set_defaults(run=_cmd_synth)

    n = sub.add_parser("train", help="train the 3D network (bead pair -> displacement and force) on synthetic datasets",
                       description="Minibatch training of the physics-informed 3D U-Net on datasets written by "
                       "tfm synth: supervised displacement and force, constitutive consistency and equilibrium losses. "
                       "Checkpoints go to OUT/checkpoints, the best model (validation loss) to OUT/model, one JSON "
                       "line per epoch to OUT/metrics.jsonl. Run the same command again to resume a killed run.",
                       epilog="example:\n  tfm synth --n 800 --size 40 --seed 1 -o train.h5\n"
                       "  tfm train --data train.h5 --out runs/mine --epochs 20\n"
                       "  tfm reconstruct ref.tif def.tif --method dl --model runs/mine --youngs-modulus-pa 1000 -o r.h5",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    n.add_argument("--data", nargs="+", required=True, help="synthetic dataset files (.h5)")
    n.add_argument("--out", required=True, help="run directory (created; resumed if it holds this run)")
    n.add_argument("--epochs", type=int, default=20, help="passes over the training split (default 20)")
    n.add_argument("--batch-size", type=int, default=2, help="global minibatch, split over devices (default 2)")
    n.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="adamw, or sgd with Nesterov momentum (default adamw)")
    n.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    n.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up steps (default 100)")
    n.add_argument("--widths", type=int, nargs="+", default=[24, 48, 64], help="channels per U-Net level (default 24 48 64)")
    n.add_argument("--stem", type=int, choices=(1, 2), default=2,
                   help="1: U-Net at full resolution; 2: at half resolution with a pixel-shuffle output (default 2)")
    n.add_argument("--lk-sigmas", type=float, nargs="+", default=[2.0, 4.0],
                   help="Gaussian windows (voxels) of the Lucas-Kanade input channels (default 2 4)")
    n.add_argument("--crop", type=int, help="train on random cubic crops of this size (default: whole samples)")
    n.add_argument("--law", choices=("auto", "linear", "neo-hookean"), default="auto", help="constitutive layer (default: the data's law)")
    n.add_argument("--w-displacement", type=float, default=1.0, help="weight of the supervised displacement loss (default 1)")
    n.add_argument("--w-force", type=float, default=1.0, help="weight of the supervised force loss (default 1)")
    n.add_argument("--w-consistency", type=float, default=0.1, help="weight of the constitutive consistency loss (default 0.1)")
    n.add_argument("--w-equilibrium", type=float, default=0.01, help="weight of the net force/torque loss (default 0.01)")
    n.add_argument("--val-fraction", type=float, default=0.1, help="samples held out for validation (default 0.1)")
    n.add_argument("--seed", type=int, default=0, help="initialisation, split, batch order and augmentation (default 0)")
    n.add_argument("--checkpoint-every", type=int, default=200, help="checkpoint interval, steps (default 200)")
    n.add_argument("--max-steps", type=int, help="stop after this many steps in total (a later run resumes)")
    n.add_argument("--distributed", action="store_true", help="multi-host: call jax.distributed.initialize() first")
    n.add_argument("--quiet", action="store_true", help="no progress bar")
    n.set_defaults(run=_cmd_train)

    v = sub.add_parser("view", help="3D view of a result: force arrows, displacement glyphs, cell surface",
                       description="Render a result file in 3D with PyVista: the strongest force arrows coloured by "
                       "|f|, displacement glyphs, and optionally the cell's isosurface. Writes a PNG offscreen "
                       "(default RESULT.png) or opens a window with --interactive.",
                       epilog="example:\n  tfm view result.h5 --cell cell.tif --beads relaxed.tif --png view.png --slices slices.png",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("result", help="result file (.h5) written by tfm")
    v.add_argument("--png", help="image to write (default: RESULT with .png)")
    v.add_argument("--interactive", action="store_true", help="open an interactive window (needs a display)")
    v.add_argument("--cell", help="cell-channel stack (TIFF) drawn as an isosurface")
    v.add_argument("--cell-spacing-um", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size of the cell and bead stacks, µm (when their files record none)")
    v.add_argument("--cell-level", type=float, help="isosurface level of the cell stack (default: half its maximum)")
    v.add_argument("--beads", help="bead stack (TIFF, e.g. the reference) drawn as a translucent plane through the cell")
    v.add_argument("--arrows", type=int, default=400, help="number of force arrows, strongest first (default 400)")
    v.add_argument("--slices", help="also write |u| and |f| mid-plane slices to this PNG")
    v.set_defaults(run=_cmd_view)

    from .stiffness.cli import add_parser as add_stiffness

    add_stiffness(sub)
    return p


def _cmd_train(args) -> int:
    from .nn import physics, train
    from .nn.unet3d import ModelConfig

    cfg = train.TrainConfig(
        data=tuple(args.data), model=ModelConfig(widths=tuple(args.widths), stem=args.stem, lk_sigmas=tuple(args.lk_sigmas),
                                                 seed=args.seed),
        loss=physics.LossWeights(displacement=args.w_displacement, force=args.w_force, consistency=args.w_consistency,
                                 equilibrium=args.w_equilibrium),
        law=args.law, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, val_fraction=args.val_fraction, crop=args.crop,
        seed=args.seed, checkpoint_every=args.checkpoint_every)
    summary = train.train(cfg, args.out, progress=not args.quiet, max_steps=args.max_steps, distributed=args.distributed)
    if not args.quiet:
        print(json.dumps(summary, indent=2))
    return 0


def _cmd_view(args) -> int:
    from pathlib import Path

    from . import io, viz

    result = io.read_result(args.result)
    cell = None
    if args.cell:
        cell = io.read_volume(args.cell, spacing_um=args.cell_spacing_um)
    beads = io.read_volume(args.beads, spacing_um=args.cell_spacing_um) if args.beads else None
    kw = {"cell": cell, "beads": beads, "cell_level": args.cell_level, "arrows": args.arrows}
    if args.interactive:
        viz.show(result, **kw)
    else:
        out = Path(args.png) if args.png else Path(args.result).with_suffix(".png")
        viz.render_png(result, out, **kw)
        print(f"wrote {out}")
    if args.slices:
        viz.slices_figure(result, args.slices)
        print(f"wrote {args.slices}")
    return 0


def _one_or_three(values, name, cast):
    if len(values) not in (1, 3):
        raise ValueError(f"{name} takes 1 or 3 values, got {len(values)}")
    return cast(values[0]) if len(values) == 1 else tuple(cast(v) for v in values)


def _cmd_synth(args) -> int:
    from .synth import dataset

    config = dataset.SynthConfig(size=_one_or_three(args.size, "--size", int),
                                 spacing_um=_one_or_three(args.spacing_um, "--spacing-um", float), material=args.material,
                                 boundary=args.boundary)
    path = dataset.generate(args.output, args.n, seed=args.seed, config=config, progress=not args.quiet)
    if not args.quiet:
        print(f"wrote {path} ({args.n} samples)")
    return 0


def _cmd_tractions2d(args) -> int:
    from . import io
    from .api import measure_displacement, reconstruct_tractions
    from .material import LinearElastic

    material = LinearElastic(args.youngs_modulus_pa, args.poisson_ratio)
    ref, sp = io.read_image(args.reference, spacing_um=args.spacing_um)
    dfm, sp_def = io.read_image(args.deformed, spacing_um=args.spacing_um)
    if args.spacing_um is None:
        _same_spacing(sp, sp_def, "images")
    options = {"drift": None if args.drift == "none" else args.drift, "overlap": args.overlap}
    if args.windows:
        options["windows"] = _parse_windows(args.windows, 2)
    disp = measure_displacement(ref, dfm, sp, progress=not args.quiet, **options)
    result = reconstruct_tractions(disp.displacement, disp.grid, material, thickness_um=args.thickness_um,
                                   regularization=args.regularization, noise_variance=args.noise_variance_um2)
    result.info["piv"] = disp.info
    io.write_result(args.output, result, {"command": "tfm tractions2d", "argv": sys.argv[1:],
                                          "reference": str(args.reference), "deformed": str(args.deformed)})
    if not args.quiet:
        print(json.dumps(result.summary(), indent=2))
        print(f"wrote {args.output}")
    return 0


def _same_spacing(a, b, what: str) -> None:
    if any(abs(x - y) > 1e-6 * max(x, y) for x, y in zip(a, b)):
        raise ValueError(f"the two {what} record different sizes: {a} and {b}; pass --spacing-um")


def _parse_windows(windows, ndim: int):
    """--windows given per pass as W or one size per axis; None when not given."""
    if not windows:
        return None
    if any(len(w) not in (1, ndim) for w in windows):
        raise ValueError(f"--windows takes 1 or {ndim} sizes per pass, got {windows}")
    return tuple(w[0] if len(w) == 1 else tuple(w) for w in windows)


def _load_pair(args):
    from . import io, segment

    ref, sp_ref = io.read_volume(args.reference, spacing_um=args.spacing_um)
    dfm, sp_def = io.read_volume(args.deformed, spacing_um=args.spacing_um)
    if args.spacing_um is None:
        _same_spacing(sp_ref, sp_def, "stacks")
    mask = None
    if args.cell:
        cell, _ = io.read_volume(args.cell, spacing_um=sp_ref)
        mask = segment.cell_mask(cell, sp_ref, threshold=args.cell_threshold, dilate_um=args.cell_dilate_um)
    options = {"drift": None if args.drift == "none" else args.drift, "overlap": args.overlap}
    if args.windows:
        options["windows"] = _parse_windows(args.windows, 3)
    return ref, dfm, sp_ref, mask, options


def _finish(args, result, command):
    from . import io

    info = dict(result.info)
    provenance = {"command": command, "argv": sys.argv[1:], "reference": str(args.reference), "deformed": str(args.deformed),
                  "cell": args.cell}
    io.write_result(args.output, result, provenance)
    if args.vtk:
        io.write_vtk(args.vtk, result)
    if not args.quiet:
        summary = result.summary()
        dvc_info = info.get("dvc", info)
        summary["drift_removed_voxels"] = dvc_info.get("drift_removed_voxels")
        summary["valid_windows"] = float(dvc_info["valid"].mean()) if "valid" in dvc_info else None
        print(json.dumps(summary, indent=2))
        print(f"wrote {args.output}" + (f" and {args.vtk}" if args.vtk else ""))
    return 0


def _cmd_displacement(args) -> int:
    from .api import measure_displacement

    ref, dfm, sp, mask, options = _load_pair(args)
    result = measure_displacement(ref, dfm, sp, mask=mask, progress=not args.quiet, **options)
    return _finish(args, result, "tfm displacement")


def _cmd_reconstruct(args) -> int:
    from .api import reconstruct
    from .material import LinearElastic

    from .material import NeoHookean

    if args.material == "neo-hookean" and args.method != "dl":
        raise ValueError("--material neo-hookean needs --method dl (FTTC assumes a linear matrix)")
    law = NeoHookean if args.material == "neo-hookean" else LinearElastic
    material = law(args.youngs_modulus_pa, args.poisson_ratio)
    ref, dfm, sp, mask, options = _load_pair(args)
    result = reconstruct(ref, dfm, sp, material, method=args.method, mask=mask, regularization=args.regularization,
                         progress=not args.quiet, dvc_options=options, model=args.model,
                         dl_options={"tile": args.tile, "overlap": args.tile_overlap})
    return _finish(args, result, "tfm reconstruct")


def _cmd_forces(args) -> int:
    from . import io
    from .api import reconstruct_forces
    from .material import LinearElastic

    material = LinearElastic(args.youngs_modulus_pa, args.poisson_ratio)
    u, grid = io.read_displacement(args.displacement, spacing_um=args.spacing_um)
    result = reconstruct_forces(u, grid, material, regularization=args.regularization, pad=args.pad)
    provenance = {"command": "tfm forces", "argv": sys.argv[1:], "input": str(args.displacement)}
    io.write_result(args.output, result, provenance)
    if args.vtk:
        io.write_vtk(args.vtk, result)
    if not args.quiet:
        print(json.dumps(result.summary(), indent=2))
        print(f"wrote {args.output}" + (f" and {args.vtk}" if args.vtk else ""))
    return 0


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as exc:
        print(f"tfm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
