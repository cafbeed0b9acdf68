"""``tfm forces``: body-force density from a displacement field (3D FTTC)."""

from __future__ import annotations

import argparse

from . import common

EPILOG = common.EPILOG_UNITS + """
examples:
  tfm forces disp.npy --spacing-um 0.8 0.29 0.29 --youngs-modulus-pa 1000 \\
      --poisson-ratio 0.45 -o forces.h5 --vtk forces.vti
  tfm forces result_from_dvc.h5 --youngs-modulus-pa 500 -o forces.h5
"""


def add_parser(sub) -> None:
    f = sub.add_parser(
        "forces", help="body-force density from a displacement field (3D FTTC)",
        description="Reconstruct the body-force density a cell applies to an infinite linear-elastic matrix "
        "from the matrix's 3D displacement field (Fourier traction cytometry, Tikhonov-regularised, "
        "parameter by generalised cross-validation unless given).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("displacement", help="a tfm result .h5, an HDF5 file with a 'displacement' dataset, or a .npy array (Z, Y, X, 3) in µm")
    f.add_argument("-o", "--output", required=True, help="result file to write (.h5)")
    f.add_argument("--youngs-modulus-pa", type=float, required=True, help="Young's modulus of the matrix, Pa (e.g. 1000)")
    f.add_argument("--poisson-ratio", type=float, default=0.45, help="Poisson ratio of the matrix, in (-1, 0.5) (default 0.45)")
    f.add_argument("--spacing-um", type=float, nargs=3, metavar=("Z", "Y", "X"), help="grid spacing in µm (required for .npy input)")
    f.add_argument("--regularization", type=common.regularization, default="auto",
                   help="auto (GCV), gcv, lcurve, or a fixed alpha >= 0 (default auto)")
    f.add_argument("--pad", choices=("taper", "zero", "none"), default="taper", help="padding against periodic images (default taper)")
    f.add_argument("--vtk", help="also write a VTK image file (.vti) for ParaView")
    f.add_argument("--quiet", action="store_true", help="print nothing on success")
    f.set_defaults(run=run)


def run(args) -> int:
    from .. import io
    from ..api import reconstruct_forces
    from ..material import LinearElastic

    material = LinearElastic(args.youngs_modulus_pa, args.poisson_ratio)
    common.check_output(args.output, (".h5", ".hdf5"), (args.displacement,))
    common.check_output(args.vtk, (".vti",), (args.displacement, args.output), "--vtk")
    u, grid = io.read_displacement(args.displacement, spacing_um=args.spacing_um)
    result = reconstruct_forces(u, grid, material, regularization=args.regularization, pad=args.pad)
    common.write_outputs(args, result, common.provenance(args, "tfm forces", input=args.displacement))
    return 0
