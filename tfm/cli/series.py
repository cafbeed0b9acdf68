"""``tfm series``: displacement and forces of every frame of a time series against one
relaxed reference (:func:`tfm.series.reconstruct_series`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import common, reconstruct


def add_parser(sub) -> None:
    s = sub.add_parser("series", help="displacement and forces of a time series of bead stacks",
                       description="A relaxed reference and the loaded frames (one file per frame, or one 4D T,Z,Y,X "
                       "stack) -> one HDF5 with a time axis, a per-frame table (CSV) and a figure of it against time. "
                       "A killed run started again with the same -o resumes at the first unfinished frame.",
                       epilog=common.EPILOG_UNITS, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("reference", help="relaxed bead stack (TIFF / OME-TIFF)")
    s.add_argument("frames", nargs="+", help="the loaded bead stacks in time order, one file each, or one file holding "
                   "a (T, Z, Y, X) series")
    s.add_argument("-o", "--output", required=True, help="series file to write (.h5); the table goes beside it as .csv "
                   "and the figure as .png")
    s.add_argument("--mode", choices=("reference", "incremental"), default="reference",
                   help="reference: every frame against the reference (errors do not accumulate; the default); "
                   "incremental: each frame against the one before, accumulated (classical; for frames that have moved "
                   "too far from the reference to correlate: the noise grows as the square root of the frames)")
    s.add_argument("--interval-s", type=float, help="time between frames, s (the table's time column; default: the "
                   "frame index)")
    s.add_argument("--cells", nargs="+", help="one cell-channel stack per frame (a cell that moves); --cell gives one for "
                   "all frames")
    s.add_argument("--no-reuse", action="store_true", help="classical: start every frame afresh instead of from the "
                   "previous frame's field (slower; for comparison)")
    s.add_argument("--scheduler", help="run the frames as Dask tasks: 'local' (a LocalCluster on this machine) or a "
                   "scheduler address (tcp://host:8786) of a running cluster (mode reference; no reuse between frames)")
    s.add_argument("--workers", type=int, default=2, help="--scheduler local: worker processes (default 2)")
    s.add_argument("--memory-limit", default="auto", help="--scheduler local: memory per worker, e.g. 8GB (default auto: "
                   "the machine's memory shared between the workers)")
    common.add_volume_args(s, pair=False)
    reconstruct.add_method_args(s)
    s.set_defaults(run=run)


def run(args) -> int:
    from .. import io
    from ..series import reconstruct_series

    kwargs = reconstruct.method_kwargs(args, common.dvc_options(args))
    gel = reconstruct.material(args)
    if args.cell and args.cells:
        raise common.UsageError("give --cell (one for all frames) or --cells (one per frame), not both")
    inputs = [args.reference, *args.frames, args.cell, *(args.cells or [])]
    common.check_output(args.output, (".h5", ".hdf5"), inputs)
    for path in inputs:
        if path is not None and not io.volume_exists(path):
            raise common.UsageError(f"input file not found: {path}")
    if args.level:
        raise common.UsageError("--level: tfm series reads OME-Zarr frames at their full resolution (level 0)")
    if args.interval_s is not None and not args.interval_s > 0:
        raise common.UsageError(f"--interval-s must be > 0, got {args.interval_s}")
    ref, grid = io.read_volume(args.reference, spacing_um=args.spacing_um, channel=args.channel)
    frames = args.frames
    if len(frames) == 1:  # one file: a (T, Z, Y, X) series, or a single frame
        frames, grid_frames = io.read_frames(frames[0], spacing_um=args.spacing_um, channel=args.channel)
        if args.spacing_um is None:
            common.same_spacing(grid.spacing_um, grid_frames.spacing_um, "reference and frames")
    if args.cells and len(args.cells) != len(frames):
        raise common.UsageError(f"--cells gives {len(args.cells)} stacks for {len(frames)} frames")
    mask = common.cell_mask(args, args.cell, grid) if args.cell else None
    if args.cells:
        mask = [common.cell_mask(args, c, grid, "--cells") for c in args.cells]
    times = None if args.interval_s is None else [t * args.interval_s for t in range(len(frames))]
    client, cluster = _client(args)
    try:
        series = reconstruct_series(ref, frames, grid, gel, mask=mask, mode=args.mode, out=args.output, times_s=times,
                                    reuse=not args.no_reuse, progress=common.progress(args), client=client,
                                    channel=args.channel, **kwargs)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    if not args.quiet:
        print(common.json_table(series.table))
        out = Path(args.output)
        print(f"wrote {out}, {out.with_suffix('.csv')} and {out.with_suffix('.png')}")
    return 0


def _client(args):
    """``(client, cluster)`` of ``--scheduler`` (None, None without it)."""
    if args.scheduler is None:
        return None, None
    if args.mode != "reference":
        raise common.UsageError("--scheduler runs frames independently: it needs --mode reference")
    return common.dask_client(args.scheduler, args.workers, args.memory_limit)

