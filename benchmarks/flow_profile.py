"""Where the learned path's time goes, warm, on one volume pair (1 µm voxels, a contracting
Gaussian inclusion): the working pair, the motion front end in total and its LK products per
pyramid level, the network; the step a faster path has to cut.

    python -m benchmarks.flow_profile [--size 128] [--out benchmarks/results]

Writes benchmarks/results/flow_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time

import numpy as np

from .common import machine, write_report


def _best_of(fn, repeats: int = 3) -> float:
    """The fastest of ``repeats`` warm calls (after one to compile), seconds."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def profile(size: int) -> dict:
    import jax

    import tfm
    from tfm.analytic import GaussianDilatation
    from tfm.nn import flow, infer
    from tfm.synth import beads

    grid = tfm.Grid((size,) * 3, 1.0)
    mat = tfm.LinearElastic(1000.0, 0.45)
    sol = GaussianDilatation(6.0, -0.1, grid.center_um(), mat)
    pos = beads.random_positions(grid, 0.02, np.random.default_rng(0), margin_um=3.0)
    ref, dfm = beads.render_pair(grid, pos, lambda p: np.asarray(sol.displacement(p)), (1.0, 0.45, 0.45))
    model = infer.load_model()
    fc = model.config.flow_config
    rep = {"size": size, "jax": jax.__version__}
    rep["predict_s"] = _best_of(lambda: infer.predict(ref, dfm, grid, mat, model=model, progress=False))
    rep["working_pair_s"] = _best_of(lambda: infer.working_pair(ref, dfm, grid, model.config.spacing_um, fc.prefilter))
    r, d, _ = infer.working_pair(ref, dfm, grid, model.config.spacing_um, fc.prefilter)
    cfg = dataclasses.replace(fc, min_edge=1)
    rep["pyramid_flow_s"] = _best_of(lambda: flow.pyramid_flow(r, d, cfg, prefiltered=True))
    levels = flow.n_levels(r.shape, cfg)
    rep["levels"] = []
    for lev in range(levels):
        level = flow.PyramidLevel(r, d, fc.interpolation, fc.warp)
        u = np.zeros(tuple(n // 2 for n in r.shape) + (3,), np.float32)
        seconds = _best_of(lambda: level.products(u).block_until_ready())
        n_iter = fc.fine_iterations if lev == 0 else fc.iterations
        rep["levels"].append({"level": lev, "shape": list(r.shape), "products_s": seconds, "iterations": n_iter,
                              "products_total_s": seconds * n_iter})
        r, d = flow.block_mean(r), flow.block_mean(d)
    res = infer.predict(ref, dfm, grid, mat, model=model, progress=False)
    rep["network_s"] = res.info["time_network_s"]
    rep["motion_s"] = res.info["time_motion_s"]
    return rep


def markdown(rep: dict) -> str:
    p = rep["profile"]
    products = sum(v["products_total_s"] for v in p["levels"])
    L = ["# Where the learned path's time goes", "",
         f"Machine: {rep['machine']}; jax {p['jax']}; command: `{rep['command']}`. One {p['size']}³ pair of 1 µm voxels, "
         "warm, best of 3.", "",
         "| step | seconds | share of predict |", "|---|---|---|",
         f"| predict, image pair -> displacement and force | {p['predict_s']:.3f} | 100 % |",
         f"| working pair (normalise, prefilter) | {p['working_pair_s']:.3f} | {100 * p['working_pair_s'] / p['predict_s']:.0f} % |",
         f"| motion front end (pyramid_flow) | {p['pyramid_flow_s']:.3f} | {100 * p['pyramid_flow_s'] / p['predict_s']:.0f} % |",
         f"| of which LK products (warp + gradients + block sums), all levels | {products:.3f} | "
         f"{100 * products / p['predict_s']:.0f} % |",
         f"| network (one pass) | {p['network_s']:.3f} | {100 * p['network_s'] / p['predict_s']:.0f} % |", "",
         "| pyramid level | working shape | products per iteration (s) | iterations | total (s) |", "|---|---|---|---|---|"]
    for v in p["levels"]:
        L.append(f"| {v['level']} | {' x '.join(map(str, v['shape']))} | {v['products_s']:.4f} | {v['iterations']} | "
                 f"{v['products_total_s']:.4f} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128, help="volume edge, voxels (default 128)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    rep = {"command": "python -m benchmarks.flow_profile " + shlex.join(sys.argv[1:] if argv is None else argv),
           "machine": machine(), "profile": profile(args.size)}
    write_report(args.out, "flow_profile", rep, markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
