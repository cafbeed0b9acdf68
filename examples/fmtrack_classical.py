"""Classical pipeline on real data: the FM-Track valve interstitial cell in a PEG gel.

    python examples/fmtrack_classical.py --out fmtrack_output [--data ../shared/data/fmtrack_avic_3d]
    python examples/fmtrack_classical.py --crop 96 256 256 --out /tmp/small   # a centred crop, faster

Reference = CytoD stacks (relaxed by cytochalasin D), deformed = Normal stacks
(contractile). Voxel size 0.8 x 0.29286 x 0.29286 µm (the TIFFs do not store it). The
gel's modulus is not published with the data: forces are computed for an ASSUMED
E = 1 kPa, nu = 0.45 and scale linearly with E.

Steps: read the stacks -> cell mask from the Normal cell channel (Otsu) -> DVC with the
cell excluded and a per-plane drift removed (a ~3-voxel x-drift and axial displacements
of whole z-planes between the acquisitions) -> FTTC -> analysis: |u| against distance
from the cell surface, the direction of the displacements beyond the cell's tips and
beside it, the force dipole near the cell, and figures.
Writes into --out: result.h5, result.vti, decay.png (|u| against distance from the cell),
slice.png (bead max-intensity projection, cell outline, displacement arrows), view3d.png
(PyVista, offscreen: the cell's surface from its channel, force arrows coloured by |f|,
displacement glyphs, a translucent bead plane) and summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import tfm
from tfm import io, segment

SPACING_UM = (0.8, 0.29286, 0.29286)
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fmtrack_avic_3d"


def crop_around(mask, shape, crop):
    """Slices of size ``crop`` centred on the mask's centroid, clipped to the volume."""
    c = np.round(np.argwhere(mask).mean(0)).astype(int)
    out = []
    for ci, n, w in zip(c, shape, crop):
        w = min(w, n)
        lo = int(np.clip(ci - w // 2, 0, n - w))
        out.append(slice(lo, lo + w))
    return tuple(out)


def cell_axes(mask, spacing):
    """Centroid (µm) and principal axes (rows, longest first) of the cell mask."""
    pts = np.argwhere(mask) * np.asarray(spacing)
    c = pts.mean(0)
    evals, evecs = np.linalg.eigh(np.cov((pts - c).T))
    return c, evecs[:, ::-1].T, np.sqrt(evals[::-1])


def analyse(result, mask, spacing):
    """|u| against distance from the cell surface, direction of the displacements beyond
    the cell's tips and beside it, and the force dipole near the cell.

    A contractile cell pulls the gel in along its long axis and, like any contractile
    force dipole, pushes it outward beside its middle (the (F.e)e term of Kelvin's
    solution), so "pointing toward the cell" is expected beyond the tips, not everywhere.
    """
    dist = segment.distance_from_mask_um(mask, spacing)
    grad = np.stack(np.gradient(dist, *spacing), -1)  # points away from the cell
    # Window centres in voxel indices of the analysed volume (the DVC grid is in µm from voxel 0).
    x = result.grid.coordinates_um()
    vox = np.clip(np.round(x / np.asarray(spacing)).astype(int), 0, np.asarray(mask.shape) - 1)
    d = dist[vox[..., 0], vox[..., 1], vox[..., 2]]
    g = grad[vox[..., 0], vox[..., 1], vox[..., 2]]
    u = result.displacement
    mag = np.linalg.norm(u, axis=-1)
    valid = result.info.get("dvc", result.info)["valid"] & (d > 0)
    toward = -np.sum(u * g, -1) / np.maximum(mag * np.linalg.norm(g, axis=-1), 1e-12)
    bins = np.array([0, 5, 10, 15, 20, 30, 40, 60, 100])
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = valid & (d >= lo) & (d < hi)
        if sel.sum() >= 3:
            rows.append({"distance_um": [float(lo), float(hi)], "n": int(sel.sum()), "median_u_um": float(np.median(mag[sel])),
                         "p90_u_um": float(np.percentile(mag[sel], 90)), "fraction_toward_cell": float(np.mean(toward[sel] > 0))})
    c, axes, sizes = cell_axes(mask, spacing)
    rel = x - c
    cos_long = np.abs(rel @ axes[0]) / np.maximum(np.linalg.norm(rel, axis=-1), 1e-12)
    near = valid & (d < 15)
    tips, sides = near & (cos_long > 0.8), near & (cos_long < 0.4)
    # Force dipole of the reconstructed forces within 15 µm of the cell, about its centroid.
    m = result.dipole_moment(mask=d < 15, center_um=c)
    m = 0.5 * (m + m.T)
    w, v = np.linalg.eigh(m)
    angle = float(np.degrees(np.arccos(min(1.0, abs(float(v[:, 0] @ axes[0]))))))
    checks = {
        "cell_centroid_um": c.tolist(), "cell_long_axis_zyx": axes[0].tolist(), "cell_axis_sd_um": sizes.tolist(),
        "fraction_toward_cell_beyond_tips": float(np.mean(toward[tips] > 0)) if tips.any() else None, "n_tips": int(tips.sum()),
        "fraction_toward_cell_beside_cell": float(np.mean(toward[sides] > 0)) if sides.any() else None, "n_sides": int(sides.sum()),
        "dipole_eigenvalues_pn_um": w.tolist(),
        "angle_most_contractile_axis_to_cell_axis_deg": angle,
    }
    return d, mag, valid, rows, checks


def figures(out, d, mag, valid, rows, result, reference, mask, spacing):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
    ax.scatter(d[valid], mag[valid], s=4, alpha=0.3, color="0.5", label="DVC windows")
    mids = [0.5 * sum(r["distance_um"]) for r in rows]
    ax.plot(mids, [r["median_u_um"] for r in rows], "o-", color="C3", label="median per distance bin")
    ax.set_xlabel("distance from the cell surface (µm)")
    ax.set_ylabel("|u| (µm)")
    ax.set_title("FM-Track cell: displacement decay")
    ax.legend()
    with io.atomic_path(out / "decay.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

    # Max-intensity projection of the reference beads over z, cell outline and in-plane vectors.
    fig, ax = plt.subplots(figsize=(6, 6), constrained_layout=True)
    mip = reference.max(axis=0)
    ny, nx = mip.shape
    ext = (0, nx * spacing[2], 0, ny * spacing[1])
    ax.imshow(mip, cmap="gray", origin="lower", extent=ext, vmax=np.percentile(mip, 99.5))
    ax.contour(mask.any(axis=0), levels=[0.5], colors="yellow", origin="lower", extent=ext, linewidths=1)
    g = result.grid
    zc = np.argmin(np.abs(g.axes_um()[0] - np.argwhere(mask)[:, 0].mean() * spacing[0]))
    yy, xx = np.meshgrid(g.axes_um()[1], g.axes_um()[2], indexing="ij")
    u = result.displacement[zc]
    ax.quiver(xx, yy, u[..., 2], u[..., 1], color="cyan", angles="xy", scale_units="xy", scale=0.1, width=0.003)
    ax.set_title(f"reference MIP, cell outline, u at z = {g.axes_um()[0][zc]:.1f} µm (arrows x10)")
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    with io.atomic_path(out / "slice.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder with CytoD_Beads.tif, Normal_Beads.tif, Normal_Cell.tif")
    p.add_argument("--out", default="fmtrack_output")
    p.add_argument("--crop", type=int, nargs=3, metavar=("Z", "Y", "X"), help="analyse a crop of this size centred on the cell")
    p.add_argument("--youngs-modulus-pa", type=float, default=1000.0, help="ASSUMED gel modulus (not published with the data)")
    p.add_argument("--drift", default="slicewise", choices=("rigid", "affine", "slicewise"), help="drift model (default slicewise)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        print(f"data folder not found: {data} (this example needs ../shared/data/fmtrack_avic_3d)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    ref, _ = io.read_volume(data / "CytoD_Beads.tif", spacing_um=SPACING_UM)
    dfm, _ = io.read_volume(data / "Normal_Beads.tif", spacing_um=SPACING_UM)
    cell, _ = io.read_volume(data / "Normal_Cell.tif", spacing_um=SPACING_UM)
    mask = segment.cell_mask(cell, SPACING_UM)
    if args.crop:
        sl = crop_around(mask, ref.shape, args.crop)
        ref, dfm, mask = ref[sl], dfm[sl], mask[sl]
    windows = ((24, 64, 64), (16, 48, 48), (16, 40, 40))
    gel = tfm.LinearElastic(args.youngs_modulus_pa, 0.45)
    # drift="slicewise" (default here): besides the ~3-voxel x-drift, whole z-planes of
    # the two stacks are displaced axially, by ~7 % compression plus non-uniform steps
    # (an acquisition artefact: a cell cannot move a 150 x 150 µm plane), which a rigid
    # or affine correction leaves in the displacement. See docs/fmtrack.md.
    dvc_options = {"windows": windows, "drift": args.drift}
    result = tfm.reconstruct(ref, dfm, SPACING_UM, gel, mask=mask, progress=not args.quiet, dvc_options=dvc_options)
    d, mag, valid, rows, checks = analyse(result, mask, SPACING_UM)
    io.write_result(out / "result.h5", result, {"command": "examples/fmtrack_classical.py", "argv": sys.argv[1:],
                                                  "assumed_youngs_modulus_pa": args.youngs_modulus_pa})
    io.write_vtk(out / "result.vti", result)
    figures(out, d, mag, valid, rows, result, ref, mask, SPACING_UM)
    from tfm import viz

    viz.render_png(result, out / "view3d.png", cell=(mask.astype(np.float32), SPACING_UM), beads=(ref, SPACING_UM))
    dvc_info = result.info["dvc"]
    summary = {
        "volume_shape": list(ref.shape), "dvc_grid": list(result.grid.shape), "windows_voxels": [list(w) for w in windows],
        "rigid_shift_voxels": dvc_info["rigid_shift_voxels"],
        "drift_removed_voxels": dvc_info["drift_removed_voxels"],
        "drift_per_plane_voxels": dvc_info.get("drift_per_plane_voxels"),
        "valid_window_fraction": float(dvc_info["valid"].mean()),
        **checks,
        "decay": rows,
        "assumed_youngs_modulus_pa": args.youngs_modulus_pa,
        "contractility_pn": result.contractility(),
        "net_force_pn": result.net_force().tolist(),
        "time_dvc_s": result.info["time_dvc_s"], "time_fttc_s": result.info["time_fttc_s"],
        "time_total_s": time.perf_counter() - t0,
    }
    with io.atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    if not args.quiet:
        print(json.dumps({k: v for k, v in summary.items() if k not in ("decay", "drift_per_plane_voxels")}, indent=2))
        for r in rows:
            print(f"  {r['distance_um'][0]:5.0f}-{r['distance_um'][1]:<5.0f} µm  n={r['n']:4d}  median |u| {r['median_u_um']:.3f} µm"
                  f"  toward cell {r['fraction_toward_cell']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
