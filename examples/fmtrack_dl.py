"""The learned reconstruction against the classical one on a real stack pair (FM-Track).

    python examples/fmtrack_dl.py --out fmtrack_dl [--classical fmtrack_output/result.h5] [--crop 96 256 256]

Reference CytoD, deformed Normal (as examples/fmtrack_classical.py; voxel 0.8 x 0.29286 x
0.29286 µm, ASSUMED E = 1 kPa). The classical result is computed here (DVC with the cell
excluded, then the force inverse), or read from ``--classical`` (a result.h5 of
fmtrack_classical.py on the same crop). The network then runs on the same stacks with the
drift model the DVC chose, the cell mask telling it where "far" is. Compared on the DVC
grid, at the valid windows outside the cell: Pearson r per component (z, y, x), the
median |u| of both, and |u| against distance from the cell for both.

Writes into --out: summary.json, compare.png (per component: network against DVC at each
window, and |u| against distance), learned.h5 (the network's result on its own grid, with a
preview copy at every 2nd point).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import tfm
from tfm import io, segment
from tfm.atomic import write_json
from tfm.fields import resample

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fmtrack_avic_3d"
BINS_UM = (0, 5, 10, 20, 40, 60, 100)


def _classical_example():
    """examples/fmtrack_classical.py as a module (its loader: the same stacks, mask and crop)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fmtrack_classical", Path(__file__).resolve().parent / "fmtrack_classical.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(classical, learned, mask, grid) -> dict:
    """The two fields at the DVC's valid windows outside the cell."""
    classical = classical.measured()  # the DVC's own field, where the forces were solved on a finer grid
    dvc = classical.info.get("dvc", classical.info)
    keep = np.asarray(dvc["valid"], bool) & ~np.asarray(dvc["masked"], bool)
    u_dl = resample(learned.displacement, learned.grid, classical.grid)
    a, b = u_dl[keep], classical.displacement[keep]
    r = [float(np.corrcoef(a[:, c], b[:, c])[0, 1]) for c in range(3)]
    decay = {}
    for name, res in (("classical", classical), ("dl", learned)):
        d = segment.displacement_decay(res, mask, grid.spacing_um, bins_um=BINS_UM)
        decay[name] = [(b_["distance_um"], b_["median_u_um"]) for b_ in d["bins"]]
    return {"windows_compared": int(keep.sum()), "pearson_r_zyx": r,
            "median_abs_u_um": {"dl": float(np.median(np.linalg.norm(a, axis=-1))),
                                "classical": float(np.median(np.linalg.norm(b, axis=-1)))},
            "slope_dl_on_classical_zyx": [float(np.polyfit(b[:, c], a[:, c], 1)[0]) for c in range(3)],
            "median_u_by_distance_um": decay, "_pairs": (a, b)}


def force_near_cell(res, mask, grid, within_um=(5.0, 10.0, 20.0)) -> dict:
    """Share of the total |f| (pN) at points within each distance of the cell (µm): where a
    reconstruction puts the force (the matrix itself carries none)."""
    dist = segment.distance_at_voxels_um(mask, grid.spacing_um, np.stack(segment.nearest_voxels(res.grid, grid), -1))
    mag = res.force_magnitude()
    total = float(mag.sum())
    return {f"{d:g}": float(mag[dist <= d].sum()) / total if total > 0 else 0.0 for d in within_um}


def figure(path, rep, pairs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = pairs
    fig, ax = plt.subplots(1, 4, figsize=(16, 4), constrained_layout=True)
    for c, name in enumerate("zyx"):
        lim = float(np.percentile(np.abs(np.concatenate([a[:, c], b[:, c]])), 99.5)) or 1.0
        ax[c].scatter(b[:, c], a[:, c], s=3, alpha=0.4)
        ax[c].plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
        ax[c].set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel=f"DVC u_{name} (µm)", ylabel=f"network u_{name} (µm)",
                  title=f"u_{name}: r = {rep['pearson_r_zyx'][c]:.2f}")
    for name, style in (("classical", "o-"), ("dl", "s-")):
        rows = rep["median_u_by_distance_um"][name]
        ax[3].plot([0.5 * (lo + hi) for (lo, hi), _ in rows], [m for _, m in rows], style, label=name)
    ax[3].set(xlabel="distance from the cell (µm)", ylabel="median |u| (µm)", title="decay", yscale="log")
    ax[3].legend()
    fig.suptitle("FM-Track CytoD -> Normal: the shipped network against DVC (valid windows outside the cell)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder with CytoD_Beads.tif, Normal_Beads.tif, Normal_Cell.tif")
    p.add_argument("--out", default="fmtrack_dl")
    p.add_argument("--classical", help="result.h5 of examples/fmtrack_classical.py on the same stacks (and crop)")
    p.add_argument("--crop", type=int, nargs=3, metavar=("Z", "Y", "X"), help="a crop of this size centred on the cell")
    p.add_argument("--model", help="saved model or run directory (default: the shipped weights)")
    p.add_argument("--support-um", type=float, default=4.0,
                   help="forces of the network farther than this from the cell mask are set to zero (µm, default 4)")
    p.add_argument("--no-mask", action="store_true",
                   help="run without the cell mask (the network's own support map decides where its forces are; the "
                   "classical pipeline, unless --classical is given, runs without it too); the mask still measures "
                   "distances from the cell")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "CytoD_Beads.tif").is_file():
        print(f"FM-Track data not found in {data} (see ../shared/data/fmtrack_avic_3d/README.md)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ref, dfm, mask, grid = _classical_example().load_pair(data, args.crop)
    gel = tfm.LinearElastic(1000.0, 0.45)
    rep = {"volume_shape": list(ref.shape), "assumed_youngs_modulus_pa": 1000.0}
    if args.classical:
        classical = io.read_result(args.classical)
        if tuple(np.asarray(classical.measured().info.get("dvc", classical.measured().info)["valid"]).shape) != \
                classical.measured().grid.shape:
            raise SystemExit(f"{args.classical} is not a classical reconstruction (no DVC validity map)")
        rep["classical_from"] = str(args.classical)
    else:
        t0 = time.perf_counter()
        # without the mask, both methods run without it: where each puts the force on its own
        classical = tfm.reconstruct(ref, dfm, grid, gel, mask=None if args.no_mask else mask, progress=False)
        rep["time_classical_s"] = time.perf_counter() - t0
    drift = classical.info["dvc"]["drift_model"]
    t0 = time.perf_counter()
    learned = tfm.reconstruct(ref, dfm, grid, gel, method="dl", mask=None if args.no_mask else mask, model=args.model,
                              progress=False, dl_options={"drift": drift, "support_um": args.support_um})
    rep["time_dl_s"] = time.perf_counter() - t0
    rep.update(drift_model=drift, dl_confident_fraction=learned.info["confident_fraction"],
               dl_rigid_shift_um=learned.info["rigid_shift_um"], dl_working_grid_um=learned.info["working_grid_um"],
               dl_output_grid_um=list(learned.grid.spacing_um), dl_time_motion_s=learned.info["time_motion_s"],
               dl_time_network_s=learned.info["time_network_s"])
    cmp = compare(classical, learned, mask, grid)
    pairs = cmp.pop("_pairs")
    rep.update(cmp)
    centre = segment.centroid_um(mask, grid.spacing_um, grid.origin_um)
    rep.update(dl_mask_given=not args.no_mask, dl_support_um=args.support_um, cell_centre_um=centre.tolist())
    for name, res in (("dl", learned), ("classical", classical)):
        rep[f"{name}_contractility_pn"] = res.contractility(center_um=centre)  # about the cell's centre
        rep[f"{name}_net_force_pn"] = res.net_force().tolist()
    rep["force_share_within_um"] = {"dl": force_near_cell(learned, mask, grid), "classical": force_near_cell(classical, mask, grid)}
    figure(out / "compare.png", rep, pairs)
    io.write_result(out / "learned.h5", learned, {"command": "examples/fmtrack_dl.py"}, preview_factor=2)
    write_json(out / "summary.json", rep)
    print(f"r (z, y, x) = {', '.join(f'{v:.2f}' for v in rep['pearson_r_zyx'])}; median |u| network "
          f"{rep['median_abs_u_um']['dl']:.3f} µm, DVC {rep['median_abs_u_um']['classical']:.3f} µm; network "
          f"{rep['time_dl_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
