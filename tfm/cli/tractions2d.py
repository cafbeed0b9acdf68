"""``tfm tractions2d``: tractions of a cell on a gel from two 2D bead images (PIV + 2D FTTC)."""

from __future__ import annotations

import argparse

from . import common

EPILOG = """\
units: pixel size µm, modulus Pa; tractions in Pa, integrated forces in pN.

example:
  tfm tractions2d relaxed.tif loaded.tif --spacing-um 0.16 0.16 --youngs-modulus-pa 8000 \\
      --poisson-ratio 0.45 --thickness-um 50 --regularization bayesian -o tractions.h5
"""


def add_parser(sub) -> None:
    t = sub.add_parser("tractions2d", help="tractions of a cell on a gel from two 2D bead images (PIV + 2D FTTC)",
                       description="PIV between a relaxed and a loaded 2D bead image (the DVC correlator with flat "
                       "windows), then Fourier traction cytometry on an elastic half-space or a layer of given thickness.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("reference", help="relaxed bead image (TIFF)")
    t.add_argument("deformed", help="bead image with the cell pulling, same shape")
    t.add_argument("-o", "--output", required=True, help="result file to write (.h5)")
    t.add_argument("--spacing-um", type=float, nargs=2, metavar=("Y", "X"), help="pixel size in µm (overrides the files' metadata)")
    t.add_argument("--channel", type=int, help="channel of multi-channel (or colour) images")
    t.add_argument("--youngs-modulus-pa", type=float, required=True, help="Young's modulus of the gel, Pa")
    t.add_argument("--poisson-ratio", type=float, default=0.45, help="Poisson ratio of the gel (default 0.45)")
    t.add_argument("--thickness-um", type=float, help="gel thickness on the coverslip, µm (default: half-space)")
    t.add_argument("--windows", type=int, nargs="+", action="append", metavar="W",
                   help="PIV window of one pass, pixels: W or WY WX; repeat per pass (default 32, 24, 16)")
    t.add_argument("--overlap", type=float, default=0.5, help="window overlap fraction (default 0.5)")
    t.add_argument("--drift", choices=("rigid", "median", "none"), default="rigid", help="drift removed (default rigid)")
    t.add_argument("--regularization", type=common.regularization, default="auto",
                   help="auto (= bayesian: the evidence of Huang et al. 2019, the noise estimated from the field), gcv, "
                   "lcurve or a fixed alpha (default auto)")
    t.add_argument("--noise-variance-um2", type=float, help="displacement noise variance, µm², for the Bayesian choice "
                   "(default: estimated from the field)")
    t.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    t.set_defaults(run=run)


def run(args) -> int:
    from .. import io
    from ..api import measure_displacement, reconstruct_tractions
    from ..material import LinearElastic

    material = LinearElastic(args.youngs_modulus_pa, args.poisson_ratio)
    if args.thickness_um is not None and not args.thickness_um > 0:
        raise common.UsageError(f"--thickness-um must be > 0, got {args.thickness_um}")
    common.check_output(args.output, (".h5", ".hdf5"), (args.reference, args.deformed))
    ref, grid = io.read_image(args.reference, spacing_um=args.spacing_um, channel=args.channel)
    dfm, grid_def = io.read_image(args.deformed, spacing_um=args.spacing_um, channel=args.channel)
    if args.spacing_um is None:
        common.same_spacing(grid.spacing_um, grid_def.spacing_um, "images")
    options = {"drift": None if args.drift == "none" else args.drift, "overlap": args.overlap}
    if args.windows:
        options["windows"] = common.parse_windows(args.windows, 2)
    disp = measure_displacement(ref, dfm, grid, progress=common.progress(args), **options)
    result = reconstruct_tractions(disp.displacement, disp.grid, material, thickness_um=args.thickness_um,
                                   regularization=args.regularization, noise_variance=args.noise_variance_um2)
    result.info["piv"] = disp.info
    common.write_outputs(args, result, common.provenance(args, "tfm tractions2d", reference=args.reference,
                                                         deformed=args.deformed))
    return 0
