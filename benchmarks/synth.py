"""Benchmark of the synthetic-data generator: FEM solve time and memory against DOFs
(linear and neo-Hookean side by side), whole samples per minute against grid size, and
the FEM's error against closed-form solutions under refinement.

    python -m benchmarks.synth --out benchmarks/results                     # full run
    python -m benchmarks.synth --out /tmp/b --sizes 32 48 --samples 2       # quick

Writes ``synth.json`` and ``synth.md`` into ``--out``.

* FEM: one random cell (seed 0, the dataset's default CellConfig scaled to the box) per
  grid size, solved cold (with JIT compilation) then warm, each size in a fresh
  subprocess so its peak resident memory is its own.
* Samples per minute: ``tfm.synth.dataset.generate_sample`` (cell, FEM, beads, camera) on
  ``--samples`` consecutive indices after one warm-up sample, per law.
* Accuracy (float64): Gaussian dilatation (smooth; theory: order 2) and the Eshelby
  sphere (a surface cutting the voxels; theory: order 1.5 globally, 2 away from it) in a
  16 µm box with the exact field imposed on the faces; fitted orders of log-error vs log-h.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .common import machine, peak_rss_mb, run_one_size, write_report

LAWS = ("linear", "neo-hookean")


def _config(n: int, law: str):
    from tfm.synth import cells, dataset

    s = n / 48.0  # scale the cells with the box, so every size solves a comparable problem
    cfg = cells.CellConfig(radius_um=(3.0 * s, 6.0 * s), protrusion_length_um=(3.0 * s, 9.0 * s),
                           protrusion_radius_um=(0.8 * s, 1.8 * s))
    return dataset.SynthConfig(size=n, material=law, cell=cfg)


def run_size(n: int) -> dict:
    """FEM time and memory at n³ for both laws (fresh process)."""
    import jax

    from tfm.material import LinearElastic, NeoHookean
    from tfm.synth import cells, fem

    out = {"size": n, "dofs": 3 * (n - 2) ** 3}
    for law in LAWS:
        cfg = _config(n, law)
        grid = cfg.grid
        cell = cells.random_cell(np.random.default_rng(0), grid, cfg.cell)
        frac, eps, _ = cells.rasterize(cell, grid)
        mat = (LinearElastic if law == "linear" else NeoHookean)(cell.youngs_modulus_pa, cell.poisson_ratio)
        t0 = time.perf_counter()
        sol = fem.solve(grid, mat, eigenstrain=eps)
        jax.block_until_ready(sol.displacement)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        sol = fem.solve(grid, mat, eigenstrain=eps)
        warm = time.perf_counter() - t0
        out[law] = {"cold_s": cold, "warm_s": warm, "cg_iterations": sol.info["cg_iterations"],
                    "newton_iterations": sol.info["newton_iterations"], "max_u_um": float(np.abs(sol.displacement).max())}
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def samples_per_minute(sizes, n_samples: int) -> list:
    from tfm.synth import dataset

    rows = []
    for n in sizes:
        for law in LAWS:
            cfg = _config(n, law)
            dataset.generate_sample(cfg, 0, 0)  # warm-up: compilation
            t0 = time.perf_counter()
            fem_s = 0.0
            for i in range(1, n_samples + 1):
                fem_s += dataset.generate_sample(cfg, 0, i)["fem_seconds"]
            dt = time.perf_counter() - t0
            rows.append({"size": n, "law": law, "samples": n_samples, "seconds": dt, "per_minute": 60 * n_samples / dt,
                         "fem_fraction": fem_s / dt})
            print(f"  {n}^3 {law}: {60 * n_samples / dt:.1f} samples/min (FEM {100 * fem_s / dt:.0f} %)", flush=True)
    return rows


def accuracy(sizes) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import tfm
    from tfm.analytic import EshelbySphere, GaussianDilatation
    from tfm.synth import cells, fem

    mat = tfm.LinearElastic(1000.0, 0.3)
    L = 16.0
    out = {"gaussian": [], "eshelby": []}
    gsol = GaussianDilatation(2.0, -0.05, (0.1, 0.2, -0.15), mat)
    esol = EshelbySphere(3.0, -0.05, (0.1, 0.2, -0.15), mat)
    for n in sizes:
        g = tfm.Grid((n,) * 3, L / (n - 1), (-L / 2,) * 3)
        x = g.coordinates_um()
        cfg = fem.FEMConfig(rtol=1e-9)
        ua = np.asarray(gsol.sample(g))
        s = fem.solve(g, mat, eigenstrain=np.asarray(gsol.eigenstrain_field(x)), boundary_displacement=ua, config=cfg)
        fa = np.asarray(gsol.equivalent_body_force(x))[1:-1, 1:-1, 1:-1]
        out["gaussian"].append({"h_um": g.spacing_um[0], "u_rel_l2": float(np.linalg.norm(s.displacement - ua) / np.linalg.norm(ua)),
                                "f_rel_l2": float(np.linalg.norm(s.force_density[1:-1, 1:-1, 1:-1] - fa) / np.linalg.norm(fa))})
        d = x - np.asarray(esol.center_um)
        r = np.linalg.norm(d, axis=-1)
        frac = cells.volume_fraction(lambda p: np.sum((p - np.asarray(esol.center_um)) ** 2, -1) < 9.0, g, 6).astype(np.float64)
        ua = np.asarray(esol.sample(g))
        s = fem.solve(g, mat, eigenstrain=-0.05 * frac, boundary_displacement=ua, config=cfg)
        far = r > 4.5
        radial = np.sum(s.force_density * d / np.maximum(r, 1e-12)[..., None]) * g.voxel_volume_um3
        out["eshelby"].append({
            "h_um": g.spacing_um[0], "u_rel_l2": float(np.linalg.norm(s.displacement - ua) / np.linalg.norm(ua)),
            "u_rel_l2_far": float(np.linalg.norm((s.displacement - ua)[far]) / np.linalg.norm(ua[far])),
            "radial_force_rel_err": float(abs(radial + esol.total_radial_force_pn) / esol.total_radial_force_pn)})
    for key, rows in list(out.items()):
        h = np.log([r["h_um"] for r in rows])
        out[key + "_orders"] = {m: float(np.polyfit(h, np.log([r[m] for r in rows]), 1)[0]) for m in rows[0] if m != "h_um"}
    return out


def markdown(rep: dict) -> str:
    lines = ["# Synthetic data: FEM and sample generation", "",
             f"Command: `{rep['command']}`; {rep['machine']}; jax {rep['jax_version']} ({rep['backend']}).", "",
             "## FEM solve time against size (one random cell, eigenstrain load)", "",
             "| grid | DOFs | linear warm s | CG its | neo-Hookean warm s | Newton its | CG its | NH / linear | cold s (lin / NH) | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in rep["fem"]:
        a, b = t["linear"], t["neo-hookean"]
        lines.append(f"| {t['size']}³ | {t['dofs']:,} | {a['warm_s']:.2f} | {a['cg_iterations']} | {b['warm_s']:.2f} | "
                     f"{b['newton_iterations']} | {b['cg_iterations']} | {b['warm_s'] / a['warm_s']:.1f} | "
                     f"{a['cold_s']:.1f} / {b['cold_s']:.1f} | {t['peak_rss_mb']:.0f} |")
    lines += ["", "## Samples per minute (cell + FEM + beads + camera noise, warm)", "",
              "| grid | law | samples/min | share of time in the FEM |", "|---|---|---|---|"]
    for r in rep["samples"]:
        lines.append(f"| {r['size']}³ | {r['law']} | {r['per_minute']:.1f} | {100 * r['fem_fraction']:.0f} % |")
    acc = rep["accuracy"]
    lines += ["", "## FEM error against closed forms (float64, exact boundary values)", "",
              "| h µm | Gaussian u | Gaussian f | Eshelby u | Eshelby u (r > 1.5 a) | Eshelby radial force |", "|---|---|---|---|---|---|"]
    for g, e in zip(acc["gaussian"], acc["eshelby"]):
        lines.append(f"| {g['h_um']:.3f} | {g['u_rel_l2']:.2e} | {g['f_rel_l2']:.2e} | {e['u_rel_l2']:.2e} | "
                     f"{e['u_rel_l2_far']:.2e} | {e['radial_force_rel_err']:.2e} |")
    go, eo = acc["gaussian_orders"], acc["eshelby_orders"]
    lines.append(f"| **order** | **{go['u_rel_l2']:.2f}** (theory 2) | **{go['f_rel_l2']:.2f}** | **{eo['u_rel_l2']:.2f}** (theory 1.5) | "
                 f"**{eo['u_rel_l2_far']:.2f}** (theory 2) | **{eo['radial_force_rel_err']:.2f}** |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results", help="folder for synth.json and synth.md")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64, 96, 128], help="FEM timing grid sizes")
    p.add_argument("--sample-sizes", type=int, nargs="+", default=[32, 48, 64], help="samples/min grid sizes")
    p.add_argument("--samples", type=int, default=4, help="samples timed per size and law")
    p.add_argument("--accuracy-sizes", type=int, nargs="+", default=[17, 25, 33, 49, 65])
    p.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one_size:
        print(json.dumps(run_size(args.one_size)))
        return 0
    import jax

    timing = []
    for n in args.sizes:
        print(f"FEM {n}^3 ...", flush=True)
        timing.append(run_one_size("synth", n))
        t = timing[-1]
        print(f"  linear {t['linear']['warm_s']:.2f}s neo-Hookean {t['neo-hookean']['warm_s']:.2f}s peak {t['peak_rss_mb']:.0f} MB", flush=True)
    print("samples per minute ...", flush=True)
    rows = samples_per_minute(args.sample_sizes, args.samples)
    print("accuracy ...", flush=True)
    acc = accuracy(args.accuracy_sizes)
    report = {"command": "python -m benchmarks.synth " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "jax_version": jax.__version__, "backend": jax.default_backend(),
              "fem": timing, "samples": rows, "accuracy": acc}
    write_report(args.out, "synth", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
