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
    if text in ("auto", "gcv", "lcurve"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, gcv, lcurve or a number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"regularization must be >= 0, got {value}")
    return value


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
    return p


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
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"tfm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
