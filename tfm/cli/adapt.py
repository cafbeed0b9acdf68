"""``tfm adapt``: fine-tune the learned model on a lab's own unlabelled bead stack pairs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..atomic import jsonable
from . import common


def add_parser(sub) -> None:
    a = sub.add_parser("adapt", help="fine-tune the learned model on your own unlabelled stack pairs (self-supervised)",
                       description="Self-supervised adaptation of the 3D network to your microscope, beads and gel: the "
                       "deformed stack warped back by the predicted displacement must match the reference (local "
                       "normalised cross-correlation), the forces must be in equilibrium, consistent with the gel's law "
                       "and sit at the cell, and the weights stay near the base model's. No ground truth needed. "
                       "Checkpoints go to OUT/checkpoints, the adapted model to OUT/model (with MODEL_CARD.md). Run "
                       "the same command again to resume a killed run.",
                       epilog="example:\n  tfm adapt ref1.tif def1.tif ref2.tif def2.tif --spacing-um 0.8 0.29 0.29 "
                       "--steps 200 -o runs/my_lab\n"
                       "  tfm reconstruct ref1.tif def1.tif --method dl --model runs/my_lab --youngs-modulus-pa 1000 "
                       "-o r.h5", formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("stacks", nargs="+", metavar="STACK", help="bead stack pairs: REF DEF [REF DEF ...] (TIFF / OME-TIFF)")
    a.add_argument("-o", "--output", required=True, help="run directory to write (created; resumed if it holds this run)")
    a.add_argument("--spacing-um", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size in µm of every stack (overrides the files' metadata)")
    a.add_argument("--channel", type=int, help="channel of multi-channel bead stacks (default: the only one)")
    a.add_argument("--cell", action="append", metavar="CELL.tif",
                   help="cell-channel stack of a pair (repeat once per pair, in order): forces are kept at the cell")
    a.add_argument("--cell-threshold", type=float, help="intensity threshold of the cell channels (default: Otsu)")
    a.add_argument("--model", help="base model: a saved model or run directory (default: the shipped weights)")
    a.add_argument("--poisson-ratio", type=float, default=0.45, help="Poisson ratio of the gel (default 0.45)")
    a.add_argument("--steps", type=int, default=200, help="optimiser steps (default 200)")
    a.add_argument("--crop", type=int, default=16,
                   help="cubic crops of the network's grid (LK voxels: 2 working voxels each; a multiple of 8; default 16)")
    a.add_argument("--learning-rate", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    a.add_argument("--navier", type=float, default=0.0,
                   help="weight of the Navier prior (with --cell): the body force the adapted field implies outside the "
                        "cell, which the gel cannot carry (default 0: off; docs/learned.md on when it helps)")
    a.add_argument("--field-smoothing", type=float, default=1.0,
                   help="photometric term: smooth the field by this many apparent bead sizes before it warps, since each "
                        "bead's image moves as a whole (default 1; 0: the pointwise field; docs/learned.md)")
    a.add_argument("--ignore-affine", action="store_true",
                   help="photometric term: ignore the affine part (per crop) of the change to the field, so that drift "
                        "or axial scaling the drift model left in is not learnt as gel motion (docs/learned.md)")
    a.add_argument("--eval-every", type=int, default=25,
                   help="steps between scores on the score tiles, a tiling of each pair (default 25)")
    a.add_argument("--seed", type=int, default=0, help="crops and flips (default 0)")
    a.add_argument("--max-steps", type=int, help="stop after this many steps in total (a later run resumes)")
    a.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    a.set_defaults(run=run)


def _read_pairs(args):
    from .. import io, segment

    if len(args.stacks) % 2:
        raise common.UsageError(f"stacks come in pairs (REF DEF ...); got {len(args.stacks)} files")
    names = list(zip(args.stacks[::2], args.stacks[1::2]))
    if args.cell and len(args.cell) != len(names):
        raise common.UsageError(f"--cell given {len(args.cell)} times for {len(names)} pairs; give one per pair, in order")
    pairs, spacings, cells = [], [], []
    for k, (r, d) in enumerate(names):
        ref, grid = io.read_volume(r, spacing_um=args.spacing_um, channel=args.channel)
        dfm, grid_def = io.read_volume(d, spacing_um=args.spacing_um, channel=args.channel)
        if args.spacing_um is None:
            common.same_spacing(grid.spacing_um, grid_def.spacing_um, f"stacks of pair {k + 1} ({r}, {d})")
        if ref.shape != dfm.shape:
            raise common.UsageError(f"pair {k + 1}: the stacks differ in shape: {r} {ref.shape}, {d} {dfm.shape}")
        mask = None
        if args.cell:
            cell, _ = io.read_volume(args.cell[k], spacing_um=grid.spacing_um)
            if cell.shape != ref.shape:
                raise common.UsageError(f"--cell {args.cell[k]} has shape {cell.shape}, its bead stacks {ref.shape}")
            mask = segment.cell_mask(cell, grid, threshold=args.cell_threshold)
        pairs.append((ref, dfm))
        spacings.append(grid.spacing_um)
        cells.append(mask)
    return pairs, spacings, cells, names


def run(args) -> int:
    from ..learn.optim import OptimConfig
    from ..nn import adapt

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise common.UsageError(f"-o {out} exists and is not a directory")
    if out.absolute() in {Path(p).absolute() for p in args.stacks + (args.cell or [])}:
        raise common.UsageError(f"-o {out} is also an input; writing it would destroy that input")
    if args.max_steps is not None and args.max_steps < 1:
        raise common.UsageError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.navier and not args.cell:
        raise common.UsageError("--navier needs --cell: the prior acts outside the cell, whose place the cell stack gives")
    cfg = adapt.AdaptConfig(steps=args.steps, crop=args.crop, eval_every=args.eval_every, seed=args.seed,
                            loss=adapt.AdaptWeights(navier=args.navier), field_smoothing=args.field_smoothing,
                            ignore_affine=args.ignore_affine,
                            optim=OptimConfig(learning_rate=args.learning_rate, warmup_steps=min(10, args.steps),
                                              weight_decay=0.0))
    pairs, spacings, cells, names = _read_pairs(args)
    summary = adapt.adapt(pairs, spacings, out, model=args.model, poisson_ratio=args.poisson_ratio,
                          cells=cells if args.cell else None, config=cfg, progress=common.progress(args),
                          max_steps=args.max_steps)
    if not args.quiet:
        print(json.dumps(jsonable({**summary, "pairs": [list(n) for n in names]}), indent=2))
    return 0
