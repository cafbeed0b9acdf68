"""``tfm reconstruct``: displacement and forces from a bead volume pair, classical or learned."""

from __future__ import annotations

import argparse

from . import common


def add_parser(sub) -> None:
    r = sub.add_parser("reconstruct", help="displacement and forces from a bead volume pair",
                       description="Bead stacks -> displacement (DVC) -> body-force density (the regularised inverse, or 3D FTTC "
                       "with --force-method fttc) in one run, or "
                       "both in one pass of the physics-informed 3D network (--method dl).",
                       epilog=common.EPILOG_UNITS, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_volume_args(r)
    add_method_args(r)
    r.set_defaults(run=run)


def add_method_args(r) -> None:
    """The gel, the method and its options (tfm reconstruct, tfm series)."""
    r.add_argument("--youngs-modulus-pa", type=float, required=True, help="Young's modulus of the gel, Pa")
    r.add_argument("--poisson-ratio", type=float, default=0.45, help="Poisson ratio of the gel (default 0.45)")
    r.add_argument("--method", choices=("classical", "dl"), default="classical",
                   help="classical: DVC + force inverse; dl: the physics-informed 3D network in one pass (default classical)")
    common.add_material_args(r)
    r.add_argument("--model", help="dl: a saved model or tfm train run directory (default: the shipped weights)")
    r.add_argument("--tile", type=int, help="dl: the network's tile edge on its grid (LK voxels, a multiple of 8; default: the "
                   "whole volume where it holds at most 128³ of them, else 96)")
    r.add_argument("--tile-overlap", type=int, help="dl: LK voxels shared by neighbouring tiles (default min(24, tile/2))")
    r.add_argument("--levels", choices=("auto", "1", "2", "3", "4", "5"),
                   help="dl: levels of the motion front end's coarse-to-fine pyramid (factor 2 each, the deformed volume "
                   "warped by the coarser levels' field, so large motion reaches each level as about a voxel); 1: the "
                   "working grid only (default auto: as many as keep 12 voxels on the coarsest level's smallest axis)")
    r.add_argument("--output-grid", choices=("working", "input"), default="working",
                   help="dl: the fields on the network's grid, the resolution they have (default; 'working'), or "
                   "interpolated to every input voxel ('input': large for full stacks)")
    common.add_force_args(r, "--force-method")
    r.add_argument("--force-grid", choices=("auto", "dvc", "fine"), default="dvc",
                   help="classical: where the force is solved. fine: on a grid about --force-spacing-um apart, each DVC "
                   "window the mean displacement over its gel part, so a small cell's force sits at its surface (on the "
                   "DVC grid it is spread over nodes a window step apart and much of it is lost; docs/methods.md on its "
                   "limits); dvc (default): on the DVC grid; auto: fine with --cell, else dvc")
    r.add_argument("--force-spacing-um", type=float, default=1.5,
                   help="classical, fine force grid: about how far apart its nodes are, µm (default 1.5)")


def _check_method_options(args) -> None:
    if args.material == "fiber" and args.method == "dl":
        raise common.UsageError("--material fiber needs --method classical (the learned path takes linear and neo-Hookean "
                                "gels)")
    if args.material != "linear" and args.method == "classical" and (args.force_method == "fttc" or args.force_grid == "fine"):
        raise common.UsageError(f"--material {args.material} needs --force-method inverse and --force-grid dvc (FTTC and the "
                                "fine force grid assume a linear matrix)")
    if args.method == "dl":
        unused = [o for o, v in (("--windows", args.windows), ("--overlap", args.overlap != 0.5),
                                 ("--regularization", args.regularization != "auto"),
                                 ("--force-method", args.force_method != "inverse"), ("--noise-um", args.noise_um),
                                 ("--penalty", args.penalty),
                                 ("--target-beads", args.target_beads != 8.0), ("--output-spacing-um", args.output_spacing_um),
                                 ("--force-grid", args.force_grid != "dvc"), ("--force-spacing-um", args.force_spacing_um != 1.5))
                  if v]
        if unused:
            raise common.UsageError(f"{', '.join(unused)}: options of the classical pipeline, not used by --method dl")
    elif args.model or args.tile or args.tile_overlap or args.levels or args.output_grid != "working":
        raise common.UsageError("--model, --tile, --tile-overlap, --levels and --output-grid need --method dl")


def material(args):
    """The gel of ``--material``, ``--youngs-modulus-pa`` and ``--poisson-ratio``."""
    return common.material_from_args(args)


def method_kwargs(args, options: dict) -> dict:
    """The keyword arguments of tfm.reconstruct (but the volumes, grid, material and mask)
    from the method options, checked; ``options``: the DVC's (common.dvc_options)."""
    _check_method_options(args)
    force_options = common.force_options(args) if args.method == "classical" else None
    if args.method == "classical" and not (args.force_spacing_um > 0):
        raise common.UsageError(f"--force-spacing-um must be > 0 (µm), got {args.force_spacing_um}")
    if args.method == "classical" and args.force_grid == "fine" and args.force_method != "inverse":
        raise common.UsageError("--force-grid fine needs --force-method inverse")
    if args.support_um is not None and not (args.cell or getattr(args, "cells", None)):
        raise common.UsageError("--support-um needs --cell (forces are kept within that distance of the cell)")
    return dict(method=args.method, regularization=args.regularization, dvc_options=options, model=args.model,
                dl_options={"tile": args.tile, "overlap": args.tile_overlap, "drift": options["drift"],
                            "levels": "auto" if args.levels in (None, "auto") else int(args.levels),
                            "output_grid": args.output_grid,
                            **({"support_um": args.support_um} if args.support_um is not None else {})},
                force_method=args.force_method, force_options=force_options,
                **({"force_grid": args.force_grid, "force_spacing_um": args.force_spacing_um}
                   if args.method == "classical" else {}))


def run(args) -> int:
    from ..api import reconstruct

    kwargs = method_kwargs(args, common.dvc_options(args))
    gel = material(args)
    common.check_pair_outputs(args)
    ref, dfm, grid, mask, options = common.load_pair(args)
    result = reconstruct(ref, dfm, grid, gel, mask=mask, progress=common.progress(args), **{**kwargs, "dvc_options": options})
    prov = common.provenance(args, "tfm reconstruct", reference=args.reference, deformed=args.deformed, cell=args.cell)
    common.write_outputs(args, result, prov)
    return 0
