"""Helpers shared by the benchmark scripts: machine description, report writing and
one-measurement-per-process runs, and the error measures the accuracy benchmarks share."""

import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from tfm.atomic import jsonable, write_text

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def write_report(out, name: str, report: dict, markdown: str) -> None:
    """Write ``name``.json and ``name``.md into ``out`` (created), atomically."""
    out = Path(out)
    write_text(out / f"{name}.json", json.dumps(jsonable(report), indent=2, allow_nan=False))
    write_text(out / f"{name}.md", markdown)
    print(f"wrote {out / (name + '.json')} and {out / (name + '.md')}")


def example(name: str):
    """The module examples/NAME.py, imported by file (the examples are scripts, not a
    package); benchmarks reuse their loaders and comparisons instead of copying them."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one_size(benchmark: str, *args) -> dict:
    """Run ``python -m benchmarks.BENCHMARK --one-size ARGS`` in a fresh Python (so its
    peak memory is its own) and return the JSON on its last output line; on failure print
    its stderr and exit 1."""
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{benchmark}", "--one-size", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(1)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def box_mean_at(field, grid, coarse):
    """Average ``field`` (Z, Y, X, C) on ``grid`` over boxes of the coarse grid's step centred on its points."""
    from scipy import ndimage

    step = [max(1, int(round(hc / h))) for hc, h in zip(coarse.spacing_um, grid.spacing_um)]
    sm = np.stack([ndimage.uniform_filter(field[..., c], size=step, mode="constant") for c in range(field.shape[-1])], -1)
    return sm[np.ix_(*grid.nearest_indices(coarse))]


def rel_l2(a, b):
    """|a - b| / |b| (L2 over all entries)."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def rms(a):
    """RMS length of the vectors along the last axis."""
    return float(np.sqrt(np.mean(np.sum(a**2, -1))))


def truth_at_dvc(sample, grid, dvc_grid):
    """A synthetic sample's truth where the DVC measures: u at the window centres and the
    force averaged over a DVC cell (the classical force is a density smoothed over one)."""
    return sample["displacement"][np.ix_(*grid.nearest_indices(dvc_grid))], box_mean_at(sample["force"], grid, dvc_grid)


def on_voxels(res, grid):
    """(u, f) of result ``res`` on the voxel grid ``grid``: as they are when the result is
    there, else interpolated (trilinear) from the result's own grid (the learned path's
    output grid is coarser than the voxels)."""
    from tfm.fields import resample

    if res.grid == grid:
        return res.displacement, res.force
    return resample(res.displacement, res.grid, grid), resample(res.force, res.grid, grid)


def score_at_dvc(res, grid, dvc_grid, truth_c) -> dict:
    """Displacement RMS error (µm) and force relative L2 of result ``res`` against ``truth_c``
    (from :func:`truth_at_dvc`): a result already on ``dvc_grid`` is compared as it is;
    any other is brought to the voxel grid (:func:`on_voxels`), then sampled / box-averaged
    like the truth."""
    if res.grid == dvc_grid:
        u_c, f_c = res.displacement, res.force
    else:
        u, f = on_voxels(res, grid)
        u_c, f_c = u[np.ix_(*grid.nearest_indices(dvc_grid))], box_mean_at(f, grid, dvc_grid)
    return {"u_rms_error_um": rms(u_c - truth_c[0]), "force_rel_l2": rel_l2(f_c, truth_c[1])}


def score_on_own_grid(res, sample, grid) -> dict:
    """The learned result against the truth on the result's own grid (the truth interpolated
    there; the force anti-aliased): displacement RMS error (µm) and force relative L2."""
    from tfm.fields import resample

    u = resample(sample["displacement"], grid, res.grid)
    f = resample(sample["force"], grid, res.grid, antialias=True)
    return {"u_rms_error_um": rms(res.displacement - u), "force_rel_l2": rel_l2(res.force, f)}
