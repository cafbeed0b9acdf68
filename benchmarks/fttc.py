"""Benchmark of 3D FTTC: time and peak memory against grid size, and accuracy against
noise, with the regularisation rules side by side in one run.

    python -m benchmarks.fttc --out benchmarks/results            # full run (sizes 32..256)
    python -m benchmarks.fttc --out /tmp/b --sizes 32 64 --seeds 1  # quick

Writes ``fttc.json`` and ``fttc.md`` into ``--out``.

Timing: each grid size runs in a fresh subprocess (so its peak resident memory is its
own): a contracting sphere field is reconstructed once cold (including JIT compilation)
and then ``--repeats`` times warm; the median warm time is reported per rule.
Accuracy: a contracting sphere (Eshelby, radius 6 µm, eps* = -0.05) and a regularised
Kelvin dipole (1000 pN, 16 µm apart, core 1.5 µm) on 64³ grids of 1 µm in a 1 kPa,
nu = 0.45 matrix; Gaussian noise of standard deviation ``level x RMS(u)``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from .common import machine, peak_rss_mb, run_one_size, write_report

RULES = ("gcv", "lcurve", "fixed")


def run_size(n: int, repeats: int) -> dict:
    """Time and memory at one grid size (runs inside a subprocess)."""
    import jax

    import tfm

    base = peak_rss_mb()
    g = tfm.Grid((n, n, n), spacing_um=1.0)
    mat = tfm.LinearElastic(1000.0, 0.45)
    sol = tfm.analytic.EshelbySphere(n / 10, -0.05, g.center_um(), mat)
    u = np.array(sol.sample(g), np.float32)
    u += 0.02 * np.sqrt(np.mean(u**2)) * np.random.default_rng(0).standard_normal(u.shape).astype(np.float32)
    out = {"n": n, "voxels": n**3, "rss_after_setup_mb": peak_rss_mb(), "rss_baseline_mb": base}
    alpha_fixed = None
    for rule in RULES:
        reg = alpha_fixed if rule == "fixed" else rule
        t0 = time.perf_counter()
        res = tfm.reconstruct_forces(u, g, mat, regularization=reg)
        cold = time.perf_counter() - t0
        if rule == "gcv":
            alpha_fixed = res.info["alpha"]
        warm = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = tfm.reconstruct_forces(u, g, mat, regularization=reg)
            warm.append(time.perf_counter() - t0)
        out[rule] = {"cold_s": cold, "warm_s": statistics.median(warm), "alpha": res.info["alpha"],
                     "padded_shape": res.info["padded_shape"]}
    out["peak_rss_mb"] = peak_rss_mb()
    out["jax_backend"] = jax.default_backend()
    return out


def accuracy(levels, seeds) -> list[dict]:
    import tfm
    from tfm import analytic as A

    g = tfm.Grid((64, 64, 64), spacing_um=1.0)
    mat = tfm.LinearElastic(1000.0, 0.45)
    c = np.array(g.center_um())
    x = g.coordinates_um()
    r = np.linalg.norm(x - c, axis=-1)
    e = (x - c) / np.maximum(r, 1e-9)[..., None]
    sphere = A.EshelbySphere(6.0, -0.05, tuple(c), mat)
    dipole = A.KelvinForceDipole(1000.0, 16.0, (1, 0, 0), tuple(c), mat, core_radius_um=1.5)
    u_s = np.asarray(sphere.sample(g), np.float32)
    u_d = np.asarray(dipole.sample(g), np.float32)
    f_d = np.asarray(dipole.body_force(x))
    near = r < 20
    rows = []
    for level in levels:
        for rule in ("gcv", "lcurve", "none"):
            reg = 0.0 if rule == "none" else rule
            errs = {"sphere_radial_force": [], "dipole_force": [], "dipole_force_l2_near": []}
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                us = u_s + level * np.sqrt(np.mean(u_s**2)) * rng.standard_normal(u_s.shape).astype(np.float32)
                ud = u_d + level * np.sqrt(np.mean(u_d**2)) * rng.standard_normal(u_d.shape).astype(np.float32)
                rs = tfm.reconstruct_forces(us, g, mat, regularization=reg)
                rd = tfm.reconstruct_forces(ud, g, mat, regularization=reg)
                radial = -np.sum(np.sum(rs.force * e, -1) * (r < 12))
                errs["sphere_radial_force"].append(abs(radial / sphere.total_radial_force_pn - 1))
                half = -np.sum(rd.force[..., 0] * (x[..., 0] > c[0]) * near)
                errs["dipole_force"].append(abs(half / 1000.0 - 1))
                errs["dipole_force_l2_near"].append(
                    float(np.linalg.norm((rd.force - f_d)[near]) / np.linalg.norm(f_d[near])))
            rows.append({"noise": level, "rule": rule, **{k: float(np.mean(v)) for k, v in errs.items()}})
            print(f"  noise {level:.2f} {rule:6s} " + " ".join(f"{k}={rows[-1][k]:.4f}" for k in errs), flush=True)
    return rows


def markdown(report: dict) -> str:
    lines = ["# 3D FTTC benchmark", "",
             f"Machine: {report['machine']}; jax {report['jax_version']} ({report['backend']}); "
             f"command: `{report['command']}`.", "",
             "## Time and peak memory against grid size", "",
             "Contracting sphere with 2 % noise; warm = median of repeated runs after compilation; "
             "peak RSS is the whole process (Python + JAX runtime included).", "",
             "| grid | padded | GCV warm (s) | L-curve warm (s) | fixed alpha warm (s) | GCV cold (s) | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|"]
    for t in report["timing"]:
        lines.append(f"| {t['n']}³ | {'x'.join(map(str, t['gcv']['padded_shape']))} | {t['gcv']['warm_s']:.3f} | "
                     f"{t['lcurve']['warm_s']:.3f} | {t['fixed']['warm_s']:.3f} | {t['gcv']['cold_s']:.2f} | {t['peak_rss_mb']:.0f} |")
    lines += ["", "## Error against noise (64³, mean over seeds)", "",
              "Noise: Gaussian, std = level x RMS(u). Errors are relative: total radial force of the contracting "
              "sphere within 12 µm; dipole force (upper half within 20 µm); L2 error of the dipole's force "
              "density within 20 µm of its centre against the exact regularised-Kelvinlet force.", "",
              "| noise | rule | sphere radial force | dipole force | dipole force field (L2, near) |", "|---|---|---|---|---|"]
    for a in report["accuracy"]:
        lines.append(f"| {a['noise']:.0%} | {a['rule']} | {a['sphere_radial_force']:.2%} | {a['dipole_force']:.2%} | "
                     f"{a['dipole_force_l2_near']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results", help="folder for fttc.json and fttc.md")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 192, 256])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.01, 0.02, 0.05, 0.1, 0.2])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one_size:
        print(json.dumps(run_size(args.one_size, args.repeats)))
        return 0

    import jax

    timing = []
    for n in args.sizes:
        print(f"timing {n}^3 ...", flush=True)
        timing.append(run_one_size("fttc", n, "--repeats", args.repeats))
        t = timing[-1]
        print(f"  gcv {t['gcv']['warm_s']:.3f}s lcurve {t['lcurve']['warm_s']:.3f}s fixed {t['fixed']['warm_s']:.3f}s "
              f"peak {t['peak_rss_mb']:.0f} MB", flush=True)
    print("accuracy against noise ...", flush=True)
    acc = accuracy(args.noise, args.seeds)
    report = {
        "command": "python -m benchmarks.fttc " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "jax_version": jax.__version__, "backend": jax.default_backend(),
        "timing": timing, "accuracy": acc,
    }
    write_report(args.out, "fttc", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
