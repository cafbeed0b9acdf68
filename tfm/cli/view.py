"""``tfm view``: 3D view of a result (force arrows, displacement glyphs, cell surface, beads)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import common


def add_parser(sub) -> None:
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
    v.set_defaults(run=run)


def _check_fields(result, path) -> None:
    arrays = [(n, a) for n, a in (("displacement", result.displacement), ("force", result.force)) if a is not None]
    if not arrays:
        raise common.UsageError(f"{path} holds neither a displacement nor a force field: nothing to draw")
    for name, a in arrays:
        bad = int(np.sum(~np.isfinite(a)))
        if bad:
            raise common.UsageError(f"{path}: its {name} holds {bad} NaN or infinite values; the view would be empty")


def run(args) -> int:
    from .. import io, viz

    inputs = (args.result, args.cell, args.beads)
    out = None if args.interactive else Path(args.png) if args.png else Path(args.result).with_suffix(".png")
    common.check_output(out, (".png",), inputs, "--png")
    common.check_output(args.slices, (".png",), inputs + (out,), "--slices")
    if args.arrows < 0:
        raise common.UsageError(f"--arrows must be >= 0, got {args.arrows}")
    result = io.read_result(args.result)
    _check_fields(result, args.result)
    cell = io.read_volume(args.cell, spacing_um=args.cell_spacing_um) if args.cell else None
    if cell is not None:
        from ..segment import cell_mask

        cell_mask(*cell)  # refuses an empty or constant cell channel
    beads = io.read_volume(args.beads, spacing_um=args.cell_spacing_um) if args.beads else None
    kw = {"cell": cell, "beads": beads, "cell_level": args.cell_level, "arrows": args.arrows}
    if args.interactive:
        viz.show(result, **kw)
    else:
        viz.render_png(result, out, **kw)
        print(f"wrote {out}")
    if args.slices:
        viz.slices_figure(result, args.slices)
        print(f"wrote {args.slices}")
    return 0
