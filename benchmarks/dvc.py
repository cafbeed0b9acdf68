"""Benchmark of tfm's digital volume correlation (and saenopy's PIV where installed).

    python -m benchmarks.dvc --out benchmarks/results                 # everything
    python -m benchmarks.dvc --out /tmp/b --skip-sizes --skip-sweeps  # the 96³ headline only
    python -m benchmarks.dvc --saenopy-python /path/to/venv/bin/python  # add saenopy side by side

Writes ``dvc.json`` and ``dvc.md``.

Data: beads rendered by forward projection (each bead drawn at X and at X + u(X); no
image interpolation), Gaussian PSF sigma (1.2, 0.8, 0.8) voxels (wider in z), shot noise
(200 photons at a bead's peak), read noise and background (tfm.synth.beads).

* headline: 96³, ~8,800 beads, smooth field of 1.4 voxel RMS with maximum strain 5 %
  (u_i = a sin(k x_j + phi_i), a = 1.14 voxel, wavelength 143 voxels). This is the case on
  which saenopy 1.0.8's PIV was measured on this machine class (48 s, 0.40 voxel RMS
  error; from ../shared/STACK-NOTES.md) and, with --saenopy-python, re-measured here.
* sweeps around the headline: bead density, noise, strain, final window size.
* sizes: time and peak memory (RSS of a fresh process) against volume size, up to the
  FM-Track stacks' 176 x 512 x 512, each in its own subprocess.

Times: "cold" includes JIT compilation (first call in a process), "warm" is a second
call in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import dvc_cases
from .dvc_cases import AMPLITUDE, WAVELENGTH, field
from .common import ROOT, machine, peak_rss_mb, run_one_size, write_report
from .peers import saenopy_axes, saenopy_raw

CASES = ("shift", "smooth_1.0", "smooth_1.4", "cell")

PSF = (1.2, 0.8, 0.8)


def make_pair(shape, density=0.0099, photons=200.0, amplitude=AMPLITUDE, seed=0):
    import tfm
    from tfm.synth import beads

    grid = tfm.Grid(shape, 1.0)
    rng = np.random.default_rng(seed)
    pos = beads.random_positions(grid, density, rng, margin_um=6)
    ref, dfm = beads.render_pair(grid, pos, lambda q: field(q, amplitude), psf_sigma_um=PSF)
    if photons:
        ref, dfm = beads.add_noise(ref, rng, photons=photons), beads.add_noise(dfm, rng, photons=photons)
    return ref, dfm, len(pos)


def score(u_vox, grid):
    truth = field(grid.coordinates_um())
    err = u_vox - truth
    rms = float(np.sqrt(np.mean(np.sum(err**2, -1))))
    inner = err[1:-1, 1:-1, 1:-1]
    gain = float(np.sum(u_vox * truth) / np.sum(truth * truth))
    return {"rms_error_voxels": rms, "rms_error_inner_voxels": float(np.sqrt(np.mean(np.sum(inner**2, -1)))), "gain": gain}


def run_tfm(ref, dfm, windows=(32, 24, 16), repeat=True):
    import tfm

    t0 = time.perf_counter()
    res = tfm.measure_displacement(ref, dfm, 1.0, progress=False, windows=windows, drift=None)
    cold = time.perf_counter() - t0
    warm = None
    if repeat:
        t0 = time.perf_counter()
        res = tfm.measure_displacement(ref, dfm, 1.0, progress=False, windows=windows, drift=None)
        warm = time.perf_counter() - t0
    return res, {"cold_s": cold, "warm_s": warm, **score(res.displacement, res.grid),
                 "iterations": [p["iterations"] for p in res.info["passes"]]}


def run_saenopy(python, ref, dfm, window=12.0, element=4.0):
    """saenopy's PIV in its own interpreter, scored at its own mesh nodes (voxel units)."""
    try:
        M = saenopy_axes(python, window, element, PSF)
        out = saenopy_raw(python, ref, dfm, window, element)
        t, nodes, u = out["time_s"], out["nodes_um"], out["u_um"]
    except RuntimeError as exc:
        return {"error": str(exc)}
    ok = np.all(np.isfinite(u), axis=1)
    # Node columns are (y, x, z) of the (Y, X, Z) stack, centred on the box (from saenopy's
    # source: np.indices of the (Y, X, Z) PIV grid, then centred).
    centre = (np.asarray(ref.shape) - 1) / 2
    q = nodes[ok][:, [2, 0, 1]] + centre
    est = u[ok] @ M  # back to tfm's (z, y, x) components: M is orthogonal
    truth = field(q)
    err = est - truth
    return {"time_s": t, "rms_error_voxels": float(np.sqrt(np.mean(np.sum(err**2, -1)))),
            "gain": float(np.sum(est * truth) / np.sum(truth * truth)), "nodes": int(ok.sum()), "nodes_total": int(len(u)),
            "window_size": window, "element_size": element, "axes_calibration": M.tolist()}


def one_size(shape):
    """Time and peak RSS of one DVC run at ``shape`` (runs in a fresh subprocess)."""
    import tfm

    ref, dfm, n = make_pair(shape, seed=1)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    res = tfm.measure_displacement(ref, dfm, 1.0, progress=False, drift=None)
    el = time.perf_counter() - t0
    return {"shape": list(shape), "beads": n, "time_s": el, "grid": list(res.grid.shape),
            "peak_rss_mb": peak_rss_mb(), "rss_before_dvc_mb": base,
            "iterations": [p["iterations"] for p in res.info["passes"]], **score(res.displacement, res.grid)}


def peers(aldvc_python) -> list:
    """tfm (defaults) and pyALDVC (subset 16, step 8) on the four cases of dvc_cases."""
    rows = []
    for name in CASES:
        ref, dfm, grid, truth, unit = dvc_cases.make_case(name)
        row = {"case": name, "unit": unit, "shape": list(grid.shape), "spacing_um": list(grid.spacing_um),
               "tfm": dvc_cases.run_tfm(name, ref, dfm, grid, truth)}
        if aldvc_python:
            row["aldvc"] = dvc_cases.run_aldvc(aldvc_python, name, ref, dfm, grid, truth)
        rows.append(row)
        print("peers", row, flush=True)
    return rows


PROBE = r"""
import collections, json, sys, time
import jax.monitoring as mon
dur = collections.Counter()
mon.register_event_duration_secs_listener(lambda name, d, **kw: dur.update({name: d}))
from benchmarks import dvc_cases
import tfm
ref, dfm, grid, truth, _ = dvc_cases.make_case(sys.argv[1])
before = dur["/jax/core/compile/backend_compile_duration"]
t0 = time.perf_counter()
tfm.measure_displacement(ref, dfm, grid, drift=None)
print(json.dumps({"dvc_s": time.perf_counter() - t0, "compile_s": dur["/jax/core/compile/backend_compile_duration"] - before}))
"""


def second_process(case: str) -> dict:
    """Compile time (s, JAX's backend-compile events) of the DVC in a first and a second
    process, with tfm's persistent compilation cache in a fresh directory."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE") and k != "JAX_COMPILATION_CACHE_DIR"}
        env["TFM_JAX_CACHE"] = cache
        for which in ("first", "second"):
            proc = subprocess.run([sys.executable, "-c", PROBE, case], capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            out[which] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"case": case, **out}


def _peers_markdown(rep) -> list:
    L = []
    if rep.get("peers"):
        L += ["## Side by side with pyALDVC (al-dvc 1.2.1, its own virtualenv), identical volumes", "",
              "tfm with its defaults (windows and passes chosen from the beads); pyALDVC at subset 16 / step 8 "
              "voxels (its README's accuracy setting). Each scored against the imposed field at its own points "
              "(interior, outside the cell); warm = a second call in the same process, cold in brackets "
              "(pyALDVC's cold call includes its numba compilation).", "",
              "| case | volume | tfm RMS error | pyALDVC RMS error | tfm warm (cold) s | pyALDVC warm (cold) s | "
              "pyALDVC / tfm warm time |", "|---|---|---|---|---|---|---|"]
        for r in rep["peers"]:
            t, a = r["tfm"], r.get("aldvc") or {}
            vol = " x ".join(map(str, r["shape"])) + f" @ {' x '.join(f'{h:g}' for h in r['spacing_um'])} µm"
            if "rms_error" in a:
                L.append(f"| {r['case']} | {vol} | {t['rms_error']:.4f} {r['unit']} | {a['rms_error']:.4f} {r['unit']} | "
                         f"{t['warm_s']:.2f} ({t['cold_s']:.1f}) | {a['warm_s']:.2f} ({a['cold_s']:.1f}) | "
                         f"{a['warm_s'] / t['warm_s']:.2f} |")
            else:
                L.append(f"| {r['case']} | {vol} | {t['rms_error']:.4f} {r['unit']} | {a.get('error', 'not run')[:60]} | "
                         f"{t['warm_s']:.2f} ({t['cold_s']:.1f}) | - | - |")
        L.append("")
    if rep.get("second_process"):
        L += ["## Start-up: the persistent compilation cache", "",
              "JAX compile time (its backend-compile events) of the DVC in a first and a second process on the same "
              "shapes, tfm's cache in a fresh directory.", "",
              "| case | first process: compile (s) / DVC (s) | second process: compile (s) / DVC (s) |", "|---|---|---|"]
        for r in rep["second_process"]:
            f, s2 = r["first"], r["second"]
            L.append(f"| {r['case']} | {f['compile_s']:.2f} / {f['dvc_s']:.2f} | {s2['compile_s']:.2f} / {s2['dvc_s']:.2f} |")
        L.append("")
    if rep.get("fmtrack_like"):
        f = rep["fmtrack_like"]
        L += ["## FM-Track-like synthetic stack, the default call", "",
              f"{' x '.join(map(str, f['shape']))} voxels of 0.8 x 0.29 x 0.29 µm, {f['bead_density_per_um3']:.2g} beads / µm³ "
              f"(measured), a contracting sphere of 8 µm radius reaching {f['max_u_um']:.2f} µm, cell masked: "
              f"{100 * f['valid_fraction']:.1f} % valid windows, RMS error {f['rms_error']:.4f} µm outside the cell "
              f"(gain {f['gain']:.2f}), windows {f['windows']}, drift model chosen: {f['drift_model']}, "
              f"{f['seconds']:.1f} s.", ""]
    return L


def markdown(rep):
    L = ["# DVC benchmark", "", f"Machine: {rep['machine']}; jax {rep['jax']}; command: `{rep['command']}`.", ""]
    L += _peers_markdown(rep)
    L += [
         "saenopy is installed in its own virtualenv (`pip install --no-deps saenopy==1.0.8` plus its requirements "
         "except jointforces/compactionanalyzer, whose gmsh-sdk build downloads from the internet); its component "
         "order is calibrated with uniform shifts along each axis before scoring, and it is scored at its own mesh "
         "nodes. Time is the PIV call alone.", "",
         "## Headline: 96³, ~8,800 beads, smooth field 1.4 voxel RMS, max strain 5 % (tfm windows 32/24/16 as before)", "",
         "| method | time (s) | RMS error (voxel) | gain (1 = no shrinkage) | source |", "|---|---|---|---|---|"]
    h = rep["headline"]
    L.append(f"| tfm DVC, cold (incl. JIT) | {h['cold_s']:.1f} | {h['rms_error_voxels']:.3f} | {h['gain']:.3f} | measured |")
    L.append(f"| tfm DVC, warm | {h['warm_s']:.1f} | {h['rms_error_voxels']:.3f} | {h['gain']:.3f} | measured |")
    measured = [s for s in rep.get("saenopy", []) if "time_s" in s]
    for s in measured:
        L.append(f"| saenopy 1.0.8 PIV (window {s['window_size']:g}, element {s['element_size']:g}) | {s['time_s']:.1f} | "
                 f"{s['rms_error_voxels']:.3f} | {s['gain']:.3f} | measured here, same volumes |")
    if not measured:
        L.append("| saenopy 1.0.8 PIV | 48 | 0.40 | ~0.7 | STACK-NOTES.md (not installed here) |")
    for name, key, unit in (("bead density", "density", "beads / voxel"), ("noise", "photons", "photons at a bead's peak (0 = none)"),
                            ("strain", "max_strain", "max strain"), ("final window size", "window", "voxels")):
        rows = rep["sweeps"].get(key, [])
        if not rows:
            continue
        L += ["", f"## Error against {name} ({unit}); other parameters as in the headline", "",
              "| value | RMS error (voxel) | interior RMS (voxel) | gain | time (s) |", "|---|---|---|---|---|"]
        for r in rows:
            L.append(f"| {r['value']} | {r['rms_error_voxels']:.3f} | {r['rms_error_inner_voxels']:.3f} | {r['gain']:.3f} | {r['warm_s']:.1f} |")
    if rep.get("sizes"):
        L += ["", "## Time and peak memory against volume size (fresh process each; includes JIT)", "",
              "| volume (Z, Y, X) | beads | DVC grid | time (s) | peak RSS (MB) | RMS error (voxel) |", "|---|---|---|---|---|---|"]
        for r in rep["sizes"]:
            L.append(f"| {' x '.join(map(str, r['shape']))} | {r['beads']} | {' x '.join(map(str, r['grid']))} | {r['time_s']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['rms_error_voxels']:.3f} |")
    return "\n".join(L) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--saenopy-python", help="python of a virtualenv with saenopy installed")
    p.add_argument("--aldvc-python", help="python of a virtualenv with pyALDVC (pip install al-dvc==1.2.1)")
    p.add_argument("--saenopy-settings", default="12,4;16,8", help="saenopy window_size,element_size pairs (voxels), ';'-separated")
    p.add_argument("--skip-sweeps", action="store_true")
    p.add_argument("--skip-sizes", action="store_true")
    p.add_argument("--sizes", default="64,64,64;128,128,128;96,256,256;176,512,512")
    p.add_argument("--one-size", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one_size:
        print(json.dumps(one_size(tuple(int(v) for v in args.one_size.split(",")))))
        return 0
    import jax

    rep = {"command": "python -m benchmarks.dvc " + shlex.join(sys.argv[1:] if argv is None else argv),
           "machine": machine(), "jax": jax.__version__}
    rep["peers"] = peers(args.aldvc_python)
    rep["second_process"] = [second_process(c) for c in ("smooth_1.4", "cell")]
    print("second process", rep["second_process"], flush=True)
    rep["fmtrack_like"] = dvc_cases.fmtrack_like()
    print("fmtrack-like", rep["fmtrack_like"], flush=True)
    ref, dfm, n = make_pair((96, 96, 96))
    _, rep["headline"] = run_tfm(ref, dfm)
    rep["headline"]["beads"] = n
    print("headline", rep["headline"], flush=True)
    if args.saenopy_python:
        rep["saenopy"] = []
        for spec in args.saenopy_settings.split(";"):
            w, e = (float(v) for v in spec.split(","))
            rep["saenopy"].append(run_saenopy(args.saenopy_python, ref, dfm, w, e))
            print("saenopy", rep["saenopy"][-1], flush=True)
    rep["sweeps"] = {}
    if not args.skip_sweeps:
        sweeps = {"density": [0.003, 0.006, 0.0099, 0.02], "photons": [0, 1000, 200, 50],
                  "max_strain": [0.01, 0.025, 0.05, 0.1], "window": [12, 16, 24, 32]}
        for key, values in sweeps.items():
            rows = []
            for v in values:
                kw = {}
                if key == "density":
                    kw["density"] = v
                elif key == "photons":
                    kw["photons"] = v
                elif key == "max_strain":
                    kw["amplitude"] = v * WAVELENGTH / (2 * np.pi)
                r, d, _ = make_pair((96, 96, 96), seed=2, **kw)
                windows = {12: (32, 24, 12), 16: (32, 24, 16), 24: (32, 24), 32: (32,)}[v] if key == "window" else (32, 24, 16)
                res, row = run_tfm(r, d, windows=windows)
                if key == "max_strain":  # score against the scaled field
                    row.update(score(res.displacement / (kw["amplitude"] / AMPLITUDE), res.grid))
                    row["rms_error_voxels"] *= kw["amplitude"] / AMPLITUDE
                    row["rms_error_inner_voxels"] *= kw["amplitude"] / AMPLITUDE
                rows.append({"value": v, **row})
                print(key, v, row, flush=True)
            rep["sweeps"][key] = rows
    rep["sizes"] = []
    if not args.skip_sizes:
        for spec in args.sizes.split(";"):
            rep["sizes"].append(run_one_size("dvc", spec))
            print("size", rep["sizes"][-1], flush=True)
    write_report(args.out, "dvc", rep, markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
