"""Generate a synthetic dataset, read it back, and check the classical pipeline against
its ground truth.

    python examples/synthetic_dataset.py --out synth_output [--n 4] [--size 48] [--seed 7]

1. `tfm.synth.dataset.generate` draws N random cells, solves the voxel FEM (neo-Hookean
   matrix) and renders the bead volume pairs (the same as `tfm synth`), into
   OUT/dataset.h5 (resumable: re-run after a kill and it continues).
2. `SyntheticDataset` streams it back; a table of the samples is printed.
3. Sample 0 goes through the classical pipeline (DVC + the force inverse,
   `tfm.reconstruct`; and FTTC on the same displacement) and is compared with the FEM's
   displacement and force: the kind of comparison benchmarks/dl_vs_classical.py makes at
   scale. On the default 48³ volumes the DVC grid is 5³ windows and the displacement is
   barely above its noise: the inverse says so (``classical_warnings``) and keeps only what
   stands out of it.

Writes OUT/dataset.h5, OUT/sample0.png (beads, |u|, |f| on the mid-plane; truth and
classical reconstruction) and OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import tfm
from tfm.atomic import write_json
from tfm.synth import dataset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="synth_output")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "dataset.h5"
    t0 = time.perf_counter()
    if not path.exists():
        dataset.generate(path, args.n, seed=args.seed, config=dataset.SynthConfig(size=args.size), progress=not args.quiet)
    t_gen = time.perf_counter() - t0

    rows = []
    with dataset.SyntheticDataset(path) as ds:
        for i in range(len(ds)):
            s = ds[i]
            cell = s["params"]["cell"]
            g = ds.grid
            f = s["force"]
            rows.append({"sample": i, "pattern": cell["pattern"], "loading": cell["loading"],
                         "protrusions": len(cell["protrusions"]), "E_pa": round(float(s["youngs_modulus_pa"])),
                         "nu": round(float(s["poisson_ratio"]), 3), "max_u_um": round(float(np.abs(s["displacement"]).max()), 3),
                         "total_force_nN": round(float(np.linalg.norm(f, axis=-1).sum() * g.voxel_volume_um3 / 1000), 2),
                         "beads": int(s["n_beads"]), "fem_s": round(float(s["fem_seconds"]), 2)})
        if not args.quiet:
            print(" ".join(f"{k:>13}" for k in rows[0]))
            for r in rows:
                print(" ".join(f"{v!s:>13}" for v in r.values()))
        s0, grid = ds[0], ds.grid

    # Classical pipeline on sample 0 against the FEM truth.
    mat = tfm.LinearElastic(float(s0["youngs_modulus_pa"]), float(s0["poisson_ratio"]))
    t0 = time.perf_counter()
    res = tfm.reconstruct(s0["reference"].astype(np.float32), s0["deformed"].astype(np.float32), grid.spacing_um, mat,
                          progress=not args.quiet)
    t_cls = time.perf_counter() - t0
    fttc = tfm.reconstruct_forces(res.displacement, res.grid, mat, method="fttc")
    # DVC reports on window centres: compare the truth there (nodal values of the same grid).
    u_true = s0["displacement"][np.ix_(*grid.nearest_indices(res.grid))]
    err = res.displacement - u_true
    truth = tfm.Result(grid, displacement=s0["displacement"], force=s0["force"])
    cell_c = np.asarray(s0["params"]["cell"]["center_um"])
    summary = {
        "samples": len(rows), "generate_seconds": t_gen, "samples_table": rows,
        "classical_seconds": t_cls,
        "displacement_rms_error_um": float(np.sqrt(np.mean(np.sum(err**2, -1)))),
        "displacement_rms_truth_um": float(np.sqrt(np.mean(np.sum(u_true**2, -1)))),
        "displacement_correlation": float(np.sum(res.displacement * u_true) / np.sqrt(np.sum(res.displacement**2) * np.sum(u_true**2))),
        "contractility_truth_pn": float(truth.contractility(center_um=cell_c)),
        "contractility_classical_pn": float(res.contractility(center_um=cell_c)) if np.any(res.force) else 0.0,
        "contractility_fttc_pn": float(fttc.contractility(center_um=cell_c)),
        "classical_noise_um": res.info["noise_um"], "classical_warnings": res.info["warnings"],
    }
    write_json(out / "summary.json", summary)
    _figure(out / "sample0.png", s0, grid, res)
    if not args.quiet:
        print(json.dumps({k: v for k, v in summary.items() if k != "samples_table"}, indent=2))
        print(f"wrote {path}, {out / 'sample0.png'}, {out / 'summary.json'}")
    return 0


def _figure(path, s, grid, res) -> None:
    from tfm import viz

    plt = viz.pyplot()

    z = grid.shape[0] // 2
    zr = int(np.argmin(np.abs(res.grid.axes_um()[0] - grid.axes_um()[0][z])))
    fig, ax = plt.subplots(2, 3, figsize=(11, 7))
    ext = [0, grid.extent_um[2], grid.extent_um[1], 0]
    ax[0, 0].imshow(s["reference"][z], cmap="gray", extent=ext)
    ax[0, 0].set_title("reference beads (mid-plane)")
    ax[1, 0].imshow(s["deformed"][z], cmap="gray", extent=ext)
    ax[1, 0].contour(s["cell"][z], [0.5], colors="c", extent=[0, grid.extent_um[2], 0, grid.extent_um[1]], origin="upper")
    ax[1, 0].set_title("deformed beads, cell outline")
    um = np.linalg.norm(s["displacement"][z], axis=-1)
    fm = np.linalg.norm(s["force"][z], axis=-1)
    rext = [res.grid.axes_um()[2][0], res.grid.axes_um()[2][-1], res.grid.axes_um()[1][-1], res.grid.axes_um()[1][0]]
    for a, img, title, e in ((ax[0, 1], um, "|u| FEM truth, µm", ext), (ax[1, 1], np.linalg.norm(res.displacement[zr], axis=-1), "|u| DVC, µm", rext),
                             (ax[0, 2], fm, "|f| FEM truth, pN/µm³", ext)):
        im = a.imshow(img, extent=e, vmin=0, vmax=float(um.max()) if "u" in title else None)
        a.set_title(title)
        fig.colorbar(im, ax=a, shrink=0.8)
    zf = int(np.argmin(np.abs(res.grid.axes_um()[0] - grid.axes_um()[0][z])))
    im = ax[1, 2].imshow(np.linalg.norm(res.force[zf], axis=-1), extent=rext)
    ax[1, 2].set_title("|f| DVC + FTTC, pN/µm³")
    fig.colorbar(im, ax=ax[1, 2], shrink=0.8)
    for a in ax.ravel():
        a.set_xlabel("x, µm")
    fig.tight_layout()
    viz.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
