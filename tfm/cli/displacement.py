"""``tfm displacement``: 3D displacement from a bead volume pair (digital volume correlation)."""

from __future__ import annotations

import argparse

from . import common

EPILOG = """\
input: two 3D stacks of the same shape: REFERENCE (relaxed, e.g. after cytochalasin D
or trypsin) and DEFORMED (the cell pulling). The voxel size comes from the files' OME or
ImageJ metadata, or from --spacing-um (required when the files have none).
output: displacement in µm on the grid of correlation-window centres, components
(u_z, u_y, u_x); a bead at X in REFERENCE sits at X + u(X) in DEFORMED.

example (the FM-Track stacks, which store no voxel size):
  tfm displacement CytoD_Beads.tif Normal_Beads.tif --spacing-um 0.8 0.29286 0.29286 \\
      --cell Normal_Cell.tif --windows 16 32 32 --windows 12 24 24 -o disp.h5
"""


def add_parser(sub) -> None:
    d = sub.add_parser("displacement", help="3D displacement from a bead volume pair (digital volume correlation)",
                       description="Measure the 3D displacement field between two bead stacks by iterative, "
                       "window-deforming digital volume correlation.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_volume_args(d)
    d.set_defaults(run=run)


def run(args) -> int:
    from ..api import measure_displacement

    common.check_pair_outputs(args)
    ref, dfm, grid, mask, options = common.load_pair(args)
    result = measure_displacement(ref, dfm, grid, mask=mask, progress=common.progress(args), **options)
    prov = common.provenance(args, "tfm displacement", reference=args.reference, deformed=args.deformed, cell=args.cell)
    common.write_outputs(args, result, prov)
    return 0
