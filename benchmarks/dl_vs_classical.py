"""The learned reconstruction against the classical pipeline, side by side in one run.

    python -m benchmarks.dl_vs_classical [--test FILE.h5] [--model DIR] [--sizes 64,128]
                                         [--saenopy-python /path/to/venv/bin/python]

1. Accuracy on a held-out synthetic test set (default: 24 samples at 48³, seed 777 -- a
   seed no training set used -- generated on first use into .cache/bench/): each sample's
   bead pair goes through ``tfm.reconstruct(method="dl")`` (shipped weights unless
   --model) and ``method="classical"`` (DVC + 3D FTTC, regularisation by GCV), both
   compared with the FEM truth:

   * displacement RMS error (µm) at the DVC window centres (both methods there) and, for
     the network, on every voxel;
   * force relative L2 error on the DVC grid: the classical force is a density smoothed
     over a DVC cell, so the truth and the network's voxel field are averaged over the
     same boxes (edge = DVC grid step) before comparing; the network's voxel-level error is
     reported too;
   * contractility (pN) about the cell's centre, relative error against the truth.

2. Time per volume pair (image pair -> forces) at 64³ and 128³ (a Gaussian-dilatation
   field rendered into beads): cold (first call, includes JIT compilation) and warm, DL
   and classical, and saenopy 1.0.8 where --saenopy-python is given: its PIV, then its
   regularised FEM force solve (its own end-to-end pipeline; --saenopy-solve-iterations).

Writes benchmarks/results/dl_vs_classical.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .common import machine, peak_rss_mb, rel_l2, rms, run_one_size, score_at_dvc, truth_at_dvc, write_report
from .peers import saenopy_raw

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEST = ROOT / ".cache" / "bench" / "test48_seed777_n24.h5"


ACQUISITION_TEST = ROOT / ".cache" / "bench" / "acquisition72x192x192_seed778_n24.h5"
ACQUISITION_COMMAND = ["synth", "--preset", "acquisition", "--n", "24", "--size", "72", "192", "192", "--seed", "778",
                       "--quiet", "-o"]


def ensure_test_set(path: Path, n: int, size: int, seed: int) -> Path:
    from tfm.synth import dataset

    if not path.exists():
        print(f"generating the test set {path} ({n} samples, {size}³, seed {seed})", flush=True)
        dataset.generate(path, n, seed=seed, config=dataset.SynthConfig(size=size))
    return path


def ensure_acquisition_set(path: Path = ACQUISITION_TEST) -> Path:
    """The realistic held-out set: ``tfm synth --preset acquisition`` (0.8 x 0.3 x 0.3 µm
    voxels, FEM on a 1.2 µm mesh, sparse to dense beads, drift), 24 pairs, seed 778."""
    from tfm.cli import main as tfm_main

    if not path.exists():
        print(f"generating the test set {path}: tfm {' '.join(ACQUISITION_COMMAND)} {path}", flush=True)
        if tfm_main(ACQUISITION_COMMAND + [str(path)]) != 0:
            raise RuntimeError("generating the acquisition test set failed")
    return path


def accuracy(test: Path, model, limit: int | None = None, ablation: dict | None = None) -> list:
    """Per-sample errors of "dl" (``model``), "classical" and each ``ablation`` model."""
    import tfm
    from tfm.synth.dataset import SyntheticDataset

    rows = []
    with SyntheticDataset(test) as ds:
        grid = ds.grid
        law = tfm.NeoHookean if ds.material == "neo-hookean" else tfm.LinearElastic
        for i in range(len(ds) if limit is None else min(limit, len(ds))):
            s = ds[i]
            e, nu = float(s["youngs_modulus_pa"]), float(s["poisson_ratio"])
            centre = np.asarray(s["params"]["cell"]["center_um"])
            ref, dfm = s["reference"].astype(np.float32), s["deformed"].astype(np.float32)
            truth = tfm.Result(grid, displacement=s["displacement"], force=s["force"])
            learned = {}
            for name, m in {"dl": model, **(ablation or {})}.items():
                m, opts = m if isinstance(m, tuple) else (m, None)  # a model, or (model, dl_options)
                t0 = time.perf_counter()
                learned[name] = (tfm.reconstruct(ref, dfm, grid.spacing_um, law(e, nu), method="dl", model=m, progress=False,
                                                 dl_options=opts), time.perf_counter() - t0)
            dl = learned["dl"][0]
            t0 = time.perf_counter()
            cl = tfm.reconstruct(ref, dfm, grid.spacing_um, tfm.LinearElastic(e, nu), progress=False)
            t_cl = time.perf_counter() - t0
            truth_c = truth_at_dvc(s, grid, cl.grid)
            c_true = truth.contractility(center_um=centre)
            row = {"sample": i, "youngs_modulus_pa": e, "poisson_ratio": nu, "u_rms_truth_um": rms(s["displacement"]),
                   "contractility_truth_pn": c_true, "dvc_grid": list(cl.grid.shape)}
            for name, (res, t) in {**learned, "classical": (cl, t_cl)}.items():
                c = res.contractility(center_um=centre)
                row[name] = {"time_s": t, **score_at_dvc(res, grid, cl.grid, truth_c),
                             "contractility_pn": c, "contractility_rel_error": abs(c - c_true) / abs(c_true)}
            row["dl"]["u_rms_error_voxels_um"] = rms(dl.displacement - s["displacement"])
            row["dl"]["force_rel_l2_voxels"] = rel_l2(dl.force, s["force"])
            rows.append(row)
            print(f"sample {i}: " + "  ".join(f"{m} f {row[m]['force_rel_l2']:.3f} C {row[m]['contractility_rel_error']:.3f} "
                                              f"u {row[m]['u_rms_error_um']:.4f}" for m in (*learned, "classical")), flush=True)
    return rows


def summarise(rows: list) -> dict:
    out = {}
    for m in [k for k, v in rows[0].items() if isinstance(v, dict)]:
        out[m] = {k: float(np.median([r[m][k] for r in rows])) for k in rows[0][m]}
        out[m]["mean_force_rel_l2"] = float(np.mean([r[m]["force_rel_l2"] for r in rows]))
        out[m]["mean_contractility_rel_error"] = float(np.mean([r[m]["contractility_rel_error"] for r in rows]))
    out["u_rms_truth_um"] = float(np.median([r["u_rms_truth_um"] for r in rows]))
    out["dl_better_force"] = int(sum(r["dl"]["force_rel_l2"] < r["classical"]["force_rel_l2"] for r in rows))
    out["dl_better_contractility"] = int(sum(r["dl"]["contractility_rel_error"] < r["classical"]["contractility_rel_error"] for r in rows))
    out["n"] = len(rows)
    return out


def timing_pair(n: int):
    import tfm
    from tfm.analytic import GaussianDilatation
    from tfm.synth import beads

    grid = tfm.Grid((n,) * 3, 1.0)
    mat = tfm.LinearElastic(1000.0, 0.45)
    sol = GaussianDilatation(4.0, -0.1, grid.center_um(), mat)
    pos = beads.random_positions(grid, 0.025, np.random.default_rng(n), margin_um=3.0)
    ref, dfm = beads.render_pair(grid, pos, lambda p: np.asarray(sol.displacement(p)), (1.0, 0.45, 0.45))
    rng = np.random.default_rng(1)
    return (beads.camera(ref, rng, 200.0, 0.02, 0.05).astype(np.float32),
            beads.camera(dfm, rng, 200.0, 0.02, 0.05).astype(np.float32), mat)


def timing(sizes, model, saenopy_python=None, saenopy_solve_iterations: int = 0) -> list:
    import tfm

    rows = []
    for n in sizes:
        ref, dfm, mat = timing_pair(n)
        row = {"size": n}
        whole = None
        for name, kw in (("dl", {"method": "dl", "model": model}), ("classical", {"method": "classical"})):
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                res = tfm.reconstruct(ref, dfm, 1.0, mat, progress=False, **kw)
                times.append(time.perf_counter() - t0)
            row[name] = {"cold_s": times[0], "warm_s": times[1]}
            whole = res if name == "dl" else whole
        if n > 64:  # the same volume in 64³ tiles (default overlap): the cost of tiling, and its effect
            tfm.reconstruct(ref, dfm, 1.0, mat, progress=False, method="dl", model=model, dl_options={"tile": 64})
            t0 = time.perf_counter()
            tiled = tfm.reconstruct(ref, dfm, 1.0, mat, progress=False, method="dl", model=model, dl_options={"tile": 64})
            row["dl"]["warm_tiles64_s"] = time.perf_counter() - t0
            row["dl"]["tiles64_overlap"] = tiled.info["overlap"]
            for f in ("displacement", "force"):
                row["dl"][f"tiles64_vs_whole_rel_{f}"] = rel_l2(getattr(tiled, f), getattr(whole, f))
        if saenopy_python:

            try:
                out = saenopy_raw(saenopy_python, ref, dfm, 12.0, 4.0, solve_iterations=saenopy_solve_iterations,
                                   stiffness_pa=mat.youngs_modulus_pa)
                row["saenopy_piv_s"] = out["time_s"]
                for k in ("time_solve_s", "solve_iterations", "solve_converged", "solve_nodes"):
                    if k in out:
                        row["saenopy_" + k] = out[k]
            except RuntimeError as exc:
                row["saenopy_piv_error"] = str(exc)
        rows.append(row)
        print("timing", row, flush=True)
    return rows


FMTRACK = ROOT.parent / "shared" / "data" / "fmtrack_avic_3d"
FMTRACK_SPACING = (0.8, 0.29286, 0.29286)


def fmtrack_one(model_dir) -> dict:
    """DL inference on the full FM-Track stacks (176 x 512 x 512), in a fresh process: time, peak memory."""
    import tfm
    from tfm import io

    ref, _ = io.read_volume(FMTRACK / "CytoD_Beads.tif", spacing_um=FMTRACK_SPACING)
    dfm, _ = io.read_volume(FMTRACK / "Normal_Beads.tif", spacing_um=FMTRACK_SPACING)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    res = tfm.reconstruct(ref, dfm, FMTRACK_SPACING, tfm.LinearElastic(1000.0, 0.45), method="dl", model=model_dir or None,
                          progress=False)
    return {"shape": list(ref.shape), "time_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
            "rss_before_mb": base, "resampled_to_um": res.info["resampled_to_um"], "tile": res.info["tile"],
            "volume_mb": ref.nbytes / 2**20}


def markdown(rep: dict) -> str:
    s = rep["summary"]
    L = ["# Learned (DL) vs classical reconstruction", "",
         f"Machine: {rep['machine']}; jax {rep['jax']}; backend {rep['backend']}; command: `{rep['command']}`.",
         f"Model: `{rep['model']}`. Test set: `{rep['test_set']}` ({s['n']} samples, unseen seed; median RMS |u| "
         f"{s['u_rms_truth_um']:.4f} µm).", "",
         "Force errors are on the DVC grid (truth and network averaged over the DVC cell); contractility about the "
         "cell centre. Medians over the samples (means in brackets).", "",
         "| method | force rel. L2 | contractility rel. error | displacement RMS error (µm) | time / pair (s) |",
         "|---|---|---|---|---|"]
    for m, label in (("dl", "DL (physics-informed 3D U-Net)"), ("classical", "classical (DVC + force inverse)")):
        r = s[m]
        L.append(f"| {label} | {r['force_rel_l2']:.3f} ({r['mean_force_rel_l2']:.3f}) | {r['contractility_rel_error']:.3f} "
                 f"({r['mean_contractility_rel_error']:.3f}) | {r['u_rms_error_um']:.4f} | {r['time_s']:.2f} |")
    L += ["", f"DL better on force error in {s['dl_better_force']} / {s['n']} samples, on contractility in "
          f"{s['dl_better_contractility']} / {s['n']}. Network on every voxel: force rel. L2 {s['dl']['force_rel_l2_voxels']:.3f}, "
          f"displacement RMS error {s['dl']['u_rms_error_voxels_um']:.4f} µm (median).", ""]
    if "ablation:single-level" in s:
        r, d = s["ablation:single-level"], s["dl"]
        L += ["## Large-motion ablation: the same network without its coarse-to-fine pyramid", "",
              "| network | force rel. L2 | contractility rel. error | displacement RMS error (µm) | time / pair (s) |",
              "|---|---|---|---|---|",
              f"| pyramid (levels auto, the default) | {d['force_rel_l2']:.3f} | {d['contractility_rel_error']:.3f} | "
              f"{d['u_rms_error_um']:.4f} | {d['time_s']:.2f} |",
              f"| one level (levels=1) | {r['force_rel_l2']:.3f} | {r['contractility_rel_error']:.3f} | "
              f"{r['u_rms_error_um']:.4f} | {r['time_s']:.2f} |", ""]
    abl = [k for k in s if k.startswith("ablation:") and k != "ablation:single-level"]
    if abl:
        L += ["## Loss-term ablation (short runs: same data, 8 epochs)", "",
              "Each row is a model trained with one setting of the loss weights, on the same data and schedule; "
              "the shipped model (trained longer, on more data) is not comparable to these rows.", "",
              "| loss weights | force rel. L2 | contractility rel. error | displacement RMS error (µm) |", "|---|---|---|---|"]
        for k in abl:
            r = s[k]
            L.append(f"| {k.split(':', 1)[1]} | {r['force_rel_l2']:.3f} ({r['mean_force_rel_l2']:.3f}) | "
                     f"{r['contractility_rel_error']:.3f} ({r['mean_contractility_rel_error']:.3f}) | {r['u_rms_error_um']:.4f} |")
        L.append("")
    if rep.get("timing"):
        L += ["## Time per volume pair (image pair -> displacement and forces)", "",
              "| volume | DL cold (s) | DL warm (s) | DL warm, 64³ tiles (s) | classical cold (s) | classical warm (s) | "
              "warm speed-up | saenopy PIV (s) | saenopy PIV + FEM solve (s) | saenopy / DL warm |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rep["timing"]:
            sp = f"{r['saenopy_piv_s']:.1f}" if "saenopy_piv_s" in r else "not run"
            total = r.get("saenopy_piv_s", 0.0) + r.get("saenopy_time_solve_s", 0.0)
            if "saenopy_time_solve_s" in r:
                conv = "converged" if r["saenopy_solve_converged"] else "NOT converged"
                full = f"{total:.1f} ({r['saenopy_solve_iterations']} iterations, {conv}, {r['saenopy_solve_nodes']} nodes)"
            else:
                full = "not run"
            ratio = f"{total / r['dl']['warm_s']:.0f}x" if "saenopy_piv_s" in r else "-"
            t64 = f"{r['dl']['warm_tiles64_s']:.2f}" if "warm_tiles64_s" in r["dl"] else "(one tile)"
            L.append(f"| {r['size']}³ | {r['dl']['cold_s']:.2f} | {r['dl']['warm_s']:.2f} | {t64} | {r['classical']['cold_s']:.2f} | "
                     f"{r['classical']['warm_s']:.2f} | {r['classical']['warm_s'] / r['dl']['warm_s']:.1f}x | {sp} | {full} | {ratio} |")
        L += ["", "saenopy 1.0.8 runs in its own interpreter: PIV (window 12, element 4 voxels), then its regularised FEM "
              "solve with its defaults (alpha 1e10, Huber weights, stop when the energy varies < 1 % over 6 "
              "iterations, at most the given iterations) on a linear material of stiffness k = E. Its times include "
              "its numba compilation (it has no warm state across calls)."]
    tiled = [r for r in rep.get("timing", []) if "tiles64_vs_whole_rel_displacement" in r["dl"]]
    for r in tiled:
        L.append(f"\nAt {r['size']}³, 64³ tiles (overlap {r['dl'].get('tiles64_overlap', 32)}) differ from one {r['size']}³ pass by a relative L2 of "
                 f"{r['dl']['tiles64_vs_whole_rel_displacement']:.3f} (displacement) and "
                 f"{r['dl']['tiles64_vs_whole_rel_force']:.3f} (force).")
    if rep.get("fmtrack"):
        r = rep["fmtrack"]
        L += ["", "## Tiled inference on a real stack pair (FM-Track, fresh process)", "",
              f"{' x '.join(map(str, r['shape']))} voxels of {FMTRACK_SPACING} µm ({r['volume_mb']:.0f} MB per stack), "
              f"resampled to {r['resampled_to_um']} µm, in tiles of up to {r['tile']}³ voxels: {r['time_s']:.1f} s, peak RSS "
              f"{r['peak_rss_mb']:.0f} MB ({r['rss_before_mb']:.0f} MB before the call, stacks loaded). Timing and "
              "memory only: these motions lie outside the shipped model's training range (see its model card)."]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--test", help="synthetic test set (.h5), or 'acquisition' (generated: tfm synth --preset acquisition, "
                   "24 pairs of 72 x 192 x 192 voxels, seed 778); default: generated, 24 samples at 48³, seed 777")
    p.add_argument("--report", default="dl_vs_classical", help="name of the report files (default dl_vs_classical)")
    p.add_argument("--no-fmtrack", action="store_true", help="skip the real-stack run")
    p.add_argument("--model", help="saved model or run directory (default: the shipped weights)")
    p.add_argument("--sizes", default="64,128", help="volume edges for the timing, comma-separated")
    p.add_argument("--limit", type=int, help="use only the first N test samples")
    p.add_argument("--saenopy-python", help="python of a virtualenv with saenopy installed (times its PIV and FEM force solve)")
    p.add_argument("--saenopy-solve-iterations", type=int, default=300,
                   help="with --saenopy-python: also time saenopy's FEM force solve, at most this many iterations "
                        "(its default 300; 0: PIV only)")
    p.add_argument("--ablation", nargs="+", default=[], metavar="NAME=RUN",
                   help="also score these models (e.g. trained with other loss weights) on the test set")
    p.add_argument("--single-level", action="store_true",
                   help="also run the model without its coarse-to-fine pyramid (levels=1), the large-motion ablation")
    p.add_argument("--one-size", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one_size == "fmtrack":
        print(json.dumps(fmtrack_one(args.model)))
        return 0
    import jax

    from tfm.nn import infer

    if args.test == "acquisition":
        test = ensure_acquisition_set()
    else:
        test = Path(args.test) if args.test else ensure_test_set(DEFAULT_TEST, 24, 48, 777)
    model = infer.load_model(args.model)
    ablation = {}
    for spec in args.ablation:
        name, _, run = spec.partition("=")
        ablation["ablation:" + name] = infer.load_model(run)
    if args.single_level:
        ablation["ablation:single-level"] = (model, {"levels": 1})  # the same network without the pyramid
    rows = accuracy(test, model, args.limit, ablation)
    rep = {"command": "python -m benchmarks.dl_vs_classical " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": machine(), "jax": jax.__version__, "backend": jax.default_backend(),
           "model": args.model or "shipped default (tfm/nn/weights/default)", "test_set": str(test), "samples": rows,
           "summary": summarise(rows)}
    sizes = [int(v) for v in args.sizes.split(",") if v]
    rep["timing"] = timing(sizes, model, args.saenopy_python, args.saenopy_solve_iterations)
    write_report(args.out, args.report, rep, markdown(rep))  # kept if the FM-Track run below fails
    if FMTRACK.is_dir() and not args.no_fmtrack:
        rep["fmtrack"] = run_one_size("dl_vs_classical", "fmtrack", *(["--model", args.model] if args.model else []))
        print("fmtrack", rep["fmtrack"], flush=True)
    write_report(args.out, args.report, rep, markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
