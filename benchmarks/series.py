"""Time series and batches: a contractility ramp recovered frame by frame, what reuse
between frames saves, and batch throughput on 1 and 2 Dask workers.

    python -m benchmarks.series [--out benchmarks/results] [--only ramp speed batch]

* **Ramp** (tfm.synth.timeseries): two different test sets, 6 frames each, every frame
  against one relaxed reference -- Eshelby's contracting sphere (radius 7 µm, 64³ voxels
  of 1 µm, eigenstrain -0.02 ... -0.12; truth: its total inward force) and the polarised
  FEM cell of benchmarks/inverse.py (contraction 0.08 times 0.25 ... 1.5; truth: the
  FEM force's contractility about the cell's centre) -- through
  ``tfm.series.reconstruct_series`` with the cell's mask: classical on the fine force
  grid (reference and incremental modes), classical on the DVC grid (the default), and
  the learned path. Per frame: contractility / truth; whether it rises as the truth does.
* **Speed**, the same sphere frames, the default pipeline: each way of running the series
  in a fresh process (wall time, imports and compilation from the persistent cache
  included): ``tfm reconstruct`` once per frame (a process each), ``tfm.reconstruct``
  per frame in one process, and ``tfm series`` without and with reuse. Also on a larger
  stack (80 x 192 x 192 voxels of 0.8 x 0.3 x 0.3 µm) where the DVC dominates.
* **Batch**: ``tfm.batch.run_batch`` on a manifest of 8 pairs (80 x 192 x 192) with a
  LocalCluster of 1 and of 2 worker processes (the cluster's start timed apart), beside
  the same rows one after another in one process; rows per minute.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import tfm
from benchmarks.common import ROOT, machine, write_report
from tfm.synth import cells, timeseries

E = 1000.0
SPHERE = dict(radius_um=7.0, eigenstrains=(-0.02, -0.04, -0.06, -0.08, -0.10, -0.12))
SCALES = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def _sets():
    gel = tfm.LinearElastic(E, 0.45)
    grid = tfm.Grid((64, 64, 64), 1.0)
    sphere = timeseries.contracting_sphere(grid, SPHERE["radius_um"], SPHERE["eigenstrains"], gel, seed=0)
    cell = cells.Cell(center_um=tuple(grid.center_um()), semi_axes_um=(12.0, 5.0, 4.0),
                      rotation=tuple(map(tuple, np.eye(3)[[2, 1, 0]])), protrusions=(), pattern="polarised",
                      loading="eigenstrain", contraction=0.08, traction_pa=0.0, youngs_modulus_pa=E, poisson_ratio=0.45,
                      cell_modulus_scale=1.0)
    fem = timeseries.fem_cell(grid, cell, gel, SCALES, seed=1)
    return grid, gel, {"contracting sphere": sphere, "polarised FEM cell": fem}


VARIANTS = {  # name: reconstruct_series arguments
    "classical, fine force grid": dict(method="classical", force_grid="fine"),
    "classical, fine force grid, incremental": dict(method="classical", force_grid="fine", mode="incremental"),
    "classical, DVC grid (default)": dict(method="classical"),
    "learned": dict(method="dl"),
}


def ramp_rows(grid, gel, sets) -> list:
    rows = []
    for set_name, data in sets.items():
        for name, kwargs in VARIANTS.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                s = tfm.reconstruct_series(data["reference"], data["frames"], grid, gel, mask=data["mask"],
                                                  **kwargs)
            center = data.get("center_um")
            got = np.array([s.frame(t).contractility(center_um=center) for t in range(len(s))])
            ratio = got / data["truth_pn"]
            rows.append({"set": set_name, "variant": name, "ratios": ratio.tolist(),
                         "max_abs_error": float(np.max(np.abs(ratio - 1))), "monotone": bool(np.all(np.diff(got) > 0)),
                         "net_over_total_max": float(s.column("net_force_over_total").max()),
                         "time_s": time.perf_counter() - t0})
            print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------------ speed
def _fresh(code: str) -> float:
    """Wall time of ``python -c code`` in a fresh process."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - t0


def speed_rows(folder: Path, grid, reference, frames, mask, label: str) -> list:
    tfm.io.write_volume(folder / "ref.tif", reference, grid.spacing_um)
    tfm.io.write_volume(folder / "cell.tif", mask.astype(np.uint8) * 200, grid.spacing_um)
    names = []
    for t, frame in enumerate(frames):
        tfm.io.write_volume(folder / f"f{t}.tif", frame, grid.spacing_um)
        names.append(str(folder / f"f{t}.tif"))
    cli = [sys.executable, "-m", "tfm.cli", "reconstruct", str(folder / "ref.tif")]
    gel = ["--youngs-modulus-pa", str(E), "--cell", str(folder / "cell.tif"), "--quiet"]
    subprocess.run([*cli, names[0], "-o", str(folder / "warmup.h5"), *gel], check=True, cwd=ROOT, capture_output=True)
    t0 = time.perf_counter()
    for t, name in enumerate(names):
        subprocess.run([*cli, name, "-o", str(folder / f"r{t}.h5"), *gel], check=True, cwd=ROOT, capture_output=True)
    separate = time.perf_counter() - t0
    load = (f"import numpy as np, tfm, warnings; warnings.simplefilter('ignore'); "
            f"ref, g = tfm.io.read_volume({str(folder / 'ref.tif')!r}); cell, _ = tfm.io.read_volume({str(folder / 'cell.tif')!r}); "
            f"mask = tfm.segment.cell_mask(cell, g); gel = tfm.LinearElastic({E}, 0.45); names = {names!r}; ")
    one = _fresh(load + "[tfm.reconstruct(ref, tfm.io.read_volume(n)[0], g, gel, mask=mask) for n in names]")
    series = {reuse: _fresh(load + f"tfm.reconstruct_series(ref, names, g, gel, mask=mask, reuse={reuse})")
              for reuse in (False, True)}
    rows = [{"stack": label, "way": "tfm reconstruct per frame (a process each)", "time_s": separate},
            {"stack": label, "way": "tfm.reconstruct per frame, one process", "time_s": one},
            {"stack": label, "way": "tfm series, no reuse", "time_s": series[False]},
            {"stack": label, "way": "tfm series (reuse: DVC and inverse start from the previous frame)", "time_s": series[True]}]
    for r in rows:
        r["frames"] = len(frames)
        r["speedup_vs_separate"] = separate / r["time_s"]
        r["speedup_vs_one_process"] = one / r["time_s"]
        print(r, flush=True)
    return rows


# ------------------------------------------------------------------------------ batch
def batch_rows(folder: Path, grid, data, n: int = 8) -> list:
    """``n`` pairs through tfm.batch.run_batch on a LocalCluster of 1 and of 2 workers
    (its start timed apart), beside the same pairs run one after another in this process."""
    from dask.distributed import Client, LocalCluster

    from tfm import batch

    tfm.io.write_volume(folder / "ref.tif", data["reference"], grid.spacing_um)
    tfm.io.write_volume(folder / "cell.tif", data["mask"].astype(np.uint8) * 200, grid.spacing_um)
    lines = ["reference,deformed,cell,name,youngs_modulus_pa"]
    for i in range(n):
        tfm.io.write_volume(folder / f"d{i}.tif", data["frames"][i % len(data["frames"])], grid.spacing_um)
        lines.append(f"ref.tif,d{i}.tif,cell.tif,p{i},{E}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    rows_, _ = batch.read_manifest(folder / "manifest.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch.run_row(rows_[0], folder / "warm")  # this process compiled, as the workers' cache is
        t0 = time.perf_counter()
        for row in rows_:
            batch.run_row(row, folder / "seq")
        seq = time.perf_counter() - t0
    rows = [{"way": "one after another in one process (no Dask)", "workers": 0, "rows": n, "start_s": 0.0, "time_s": seq}]
    for workers in (1, 2):
        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = batch.run_batch(folder / "manifest.csv", folder / f"out{workers}", client=client)
        wall = time.perf_counter() - t0
        client.close()
        cluster.close()
        assert report.ok, report.rows
        rows.append({"way": f"tfm batch, LocalCluster of {workers}", "workers": workers, "rows": n, "start_s": start,
                     "time_s": wall})
    for r in rows:
        r["rows_per_minute"] = 60 * n / r["time_s"]
        r["speedup_vs_one_process"] = seq / r["time_s"]
        print(r, flush=True)
    return rows


# --------------------------------------------------------------------------- report
def _markdown(report) -> str:
    L = ["# Time series and batches", "", f"Machine: {report['machine']}. Six frames per set, every frame against one "
         "relaxed reference, the cell's mask given.", "",
         "## A contractility ramp, frame by frame (contractility / truth)", "",
         "| set | variant | frame ratios | max error | rises with the truth | max net/total |", "|---|---|---|---|---|---|"]
    for r in report["ramp"]:
        L.append(f"| {r['set']} | {r['variant']} | {' '.join(f'{v:.2f}' for v in r['ratios'])} | {r['max_abs_error']:.2f} | "
                 f"{'yes' if r['monotone'] else 'no'} | {r['net_over_total_max']:.3f} |")
    L += ["", "## Speed: the same frames run four ways, each in a fresh process (wall time)", "",
          "| stack | way | frames | time (s) | speed-up vs a process per frame | vs one process |", "|---|---|---|---|---|---|"]
    for r in report["speed"]:
        L.append(f"| {r['stack']} | {r['way']} | {r['frames']} | {r['time_s']:.1f} | {r['speedup_vs_separate']:.2f} | "
                 f"{r['speedup_vs_one_process']:.2f} |")
    L += ["", f"## Batch: {report['batch'][0]['rows']} pairs of 80 x 192 x 192 voxels, the default pipeline with the cell's "
          "mask", "", "The cluster's start is timed apart; each worker is one process with one Dask thread (XLA's own "
          "thread pool in it uses every core).", "",
          "| way | rows | cluster start (s) | rows' time (s) | rows / minute | speed-up vs one process |",
          "|---|---|---|---|---|---|"]
    for r in report["batch"]:
        L.append(f"| {r['way']} | {r['rows']} | {r['start_s']:.1f} | {r['time_s']:.1f} | {r['rows_per_minute']:.1f} | "
                 f"{r['speedup_vs_one_process']:.2f} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--only", choices=("ramp", "speed", "batch"), nargs="+",
                   help="re-measure these sections only, the others kept from the report in --out")
    args = p.parse_args(argv)
    path = Path(args.out) / "series.json"
    report = json.loads(path.read_text()) if args.only and path.is_file() else {}
    only = set(args.only or ("ramp", "speed", "batch"))
    report["machine"] = machine()
    grid, gel, sets = _sets()
    if "ramp" in only:
        report["ramp"] = ramp_rows(grid, gel, sets)
    big = tfm.Grid((80, 192, 192), (0.8, 0.3, 0.3))
    large = timeseries.contracting_sphere(big, SPHERE["radius_um"], SPHERE["eigenstrains"], gel, seed=2)
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
        tmp = Path(tmp)
        sphere = sets["contracting sphere"]
        if "speed" in only:
            (tmp / "small").mkdir()
            report["speed"] = speed_rows(tmp / "small", grid, sphere["reference"], sphere["frames"], sphere["mask"],
                                         "64³, 1 µm voxels")
            (tmp / "large").mkdir()
            report["speed"] += speed_rows(tmp / "large", big, large["reference"], large["frames"], large["mask"],
                                          "80 x 192 x 192, 0.8 x 0.3 x 0.3 µm voxels")
        if "batch" in only:
            (tmp / "batch").mkdir()
            report["batch"] = batch_rows(tmp / "batch", big, large)
    write_report(args.out, "series", report, _markdown(report))
    print(json.dumps({"done": True}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
