"""``tfm forces``: body-force density from a displacement field (the regularised inverse, or 3D FTTC)."""

from __future__ import annotations

import argparse

import numpy as np

from . import common

EPILOG = common.EPILOG_UNITS + """
examples:
  tfm forces disp.npy --spacing-um 0.8 0.29 0.29 --youngs-modulus-pa 1000 \\
      --poisson-ratio 0.45 -o forces.h5 --vtk forces.vti
  tfm forces result_from_dvc.h5 --youngs-modulus-pa 500 -o forces.h5
  tfm forces result_from_dvc.h5 --youngs-modulus-pa 500 --method fttc -o forces_fttc.h5

A tfm result from `tfm displacement` carries the DVC's valid map (used as the inverse's
weights) and, when it was run with --cell, the windows of the cell (left out of the noise
estimate; with --support-um, the only place forces may be).
"""


def add_parser(sub) -> None:
    f = sub.add_parser(
        "forces", help="body-force density from a displacement field (regularised inverse or 3D FTTC)",
        description="Reconstruct the body-force density a cell applies to a linear-elastic matrix from the matrix's "
        "3D displacement field. Default: the regularised inverse (an L1 penalty that keeps forces where the cell is, "
        "the noise estimated from the data, alpha by the discrepancy principle); --method fttc: Fourier traction "
        "cytometry, Tikhonov-regularised, alpha by generalised cross-validation.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("displacement", help="a tfm result .h5, an HDF5 file with a 'displacement' dataset, or a .npy array (Z, Y, X, 3) in µm")
    f.add_argument("-o", "--output", required=True, help="result file to write (.h5)")
    f.add_argument("--youngs-modulus-pa", type=float, required=True, help="Young's modulus of the matrix, Pa (e.g. 1000)")
    f.add_argument("--poisson-ratio", type=float, default=0.45, help="Poisson ratio of the matrix, in (-1, 0.5) (default 0.45)")
    f.add_argument("--spacing-um", type=float, nargs=3, metavar=("Z", "Y", "X"), help="grid spacing in µm (required for .npy input)")
    common.add_force_args(f)
    common.add_material_args(f)
    f.add_argument("--pad", choices=("taper", "zero", "none"), help="fttc: padding against periodic images (default taper)")
    f.add_argument("--vtk", help="also write a VTK image file (.vti) for ParaView")
    f.add_argument("--quiet", action="store_true", help="print nothing on success")
    f.set_defaults(run=run)


def _dvc_maps(path, grid):
    """The DVC's valid and cell maps of a tfm result file, where they are on ``grid``."""
    from .. import io

    try:
        info = io.read_result(path).info
    except (ValueError, OSError, KeyError):
        return None, None
    info = info.get("dvc", info)
    maps = [info.get(k) for k in ("valid", "masked")]
    maps = [None if m is None or np.shape(m) != grid.shape else np.asarray(m, bool) for m in maps]
    valid, masked = maps
    return (None if valid is None else valid.astype(np.float32)), (masked if masked is not None and masked.any() else None)


def run(args) -> int:
    from .. import io
    from ..api import reconstruct_forces
    material = common.material_from_args(args)
    if args.method == "fttc" and args.material != "linear":
        raise common.UsageError(f"--material {args.material} needs --method inverse (FTTC assumes a linear matrix)")
    if args.method == "inverse" and args.pad is not None:
        raise common.UsageError("--pad is an option of --method fttc (the inverse pads with unweighted margins)")
    options = common.force_options(args)
    common.check_output(args.output, (".h5", ".hdf5"), (args.displacement,))
    common.check_output(args.vtk, (".vti",), (args.displacement, args.output), "--vtk")
    u, grid = io.read_displacement(args.displacement, spacing_um=args.spacing_um)
    if args.method == "fttc":
        result = reconstruct_forces(u, grid, material, method="fttc", regularization=args.regularization,
                                    pad=args.pad or "taper")
    else:
        weights, mask = (None, None) if args.displacement.endswith(".npy") else _dvc_maps(args.displacement, grid)
        if options.get("support_um") is not None and mask is None:
            raise common.UsageError("--support-um needs the cell's windows: a tfm result from `tfm displacement --cell`")
        result = reconstruct_forces(u, grid, material, method="inverse", regularization=args.regularization,
                                    weights=weights, mask=mask, **options)
    common.write_outputs(args, result, common.provenance(args, "tfm forces", input=args.displacement))
    return 0
