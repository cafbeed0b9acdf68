"""``tfm batch``: every pair of a manifest as a Dask task (:mod:`tfm.batch`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import common


def add_parser(sub) -> None:
    b = sub.add_parser("batch", help="many bead-stack pairs from a manifest, on Dask workers",
                       description="Each row of the manifest (CSV: reference, deformed, optionally cell, name, spacing_um, "
                       "youngs_modulus_pa, poisson_ratio, material, method, force_grid, channel, cell_threshold, "
                       "cell_dilate_um; docs/series-batch.md) -> OUT/<name>.h5, and OUT/summary.csv. Every row is checked "
                       "first; bad rows are reported by number and skipped, and the exit status is 1 when any row is bad "
                       "or failed. A rerun skips the rows already done.",
                       epilog=common.EPILOG_UNITS, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("manifest", help="the manifest (.csv); relative paths in it are relative to its folder")
    b.add_argument("-o", "--output", required=True, help="folder for the results and summary.csv")
    b.add_argument("--scheduler", default="local", help="'local' (default: a LocalCluster of --workers processes on this "
                   "machine) or the address of a running Dask scheduler (tcp://host:8786; e.g. one dask-jobqueue started "
                   "on a SLURM cluster), so the same command runs on a cluster")
    b.add_argument("--workers", type=int, default=2, help="--scheduler local: worker processes, one row each at a time "
                   "(default 2)")
    b.add_argument("--memory-limit", default="auto", help="--scheduler local: memory per worker (e.g. 8GB); a worker "
                   "above it is restarted and its row reported failed (default auto: the memory shared by the workers)")
    b.add_argument("--youngs-modulus-pa", type=float, help="modulus for rows that leave youngs_modulus_pa empty, Pa")
    b.add_argument("--poisson-ratio", type=float, help="Poisson ratio for rows that leave it empty (default 0.45)")
    b.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    b.set_defaults(run=run)


def run(args) -> int:
    from ..batch import read_manifest, run_batch

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise common.UsageError(f"-o {out} is a file; give a folder")
    defaults = {"youngs_modulus_pa": args.youngs_modulus_pa, "poisson_ratio": args.poisson_ratio}
    rows, errors = read_manifest(args.manifest, defaults)  # checked before any worker starts
    for number, message in errors:
        print(f"tfm batch: row {number} (line {number + 1} of {args.manifest}): {message}", flush=True)
    client, cluster = (None, None)
    try:
        if rows:
            client, cluster = common.dask_client(args.scheduler, args.workers, args.memory_limit)
        report = run_batch(args.manifest, out, client=client, defaults=defaults, progress=common.progress(args))
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    for r in report.rows:
        if r["status"] == "failed":
            print(f"tfm batch: row {r['row']} ({r['name']}) failed: {r['error']}", flush=True)
    if not args.quiet:
        print(common.json_table([{k: r[k] for k in ("row", "name", "status", "contractility_pn", "compute_s")}
                                 for r in report.rows]))
    print(f"tfm batch: {report.count('done')} done, {report.count('skipped')} skipped (done before), "
          f"{report.count('failed')} failed, {report.count('invalid')} invalid; wrote {report.summary_path}")
    return 0 if report.ok else 1
