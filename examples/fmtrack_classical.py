"""Classical pipeline on real data: the FM-Track valve interstitial cell in a PEG gel.

    python examples/fmtrack_classical.py --out fmtrack_output [--data ../shared/data/fmtrack_avic_3d]
    python examples/fmtrack_classical.py --crop 96 256 256 --out /tmp/small   # a centred crop, faster

Reference = CytoD stacks (relaxed by cytochalasin D), deformed = Normal stacks
(contractile). Voxel size 0.8 x 0.29286 x 0.29286 µm (the TIFFs do not store it). The
gel's modulus is not published with the data: forces are computed for an ASSUMED
E = 1 kPa, nu = 0.45 and scale linearly with E.

Steps: read the stacks -> cell mask from the Normal cell channel (Otsu) -> DVC with the
cell excluded and a per-plane drift removed (a ~3-voxel x-drift and axial displacements
of whole z-planes between the acquisitions) -> the force inverse (forces within two DVC
grid spacings of the cell; FTTC beside it for comparison) -> analysis: |u| against distance
from the cell surface, the direction of the displacements beyond the cell's tips and
beside it, the force dipole near the cell, and figures.
Writes into --out: result.h5, result.vti, decay.png (|u| against distance from the cell),
beads.png (max-intensity projections of both bead stacks with the cell outline and
displacement arrows; |u| and |f| on the plane through the cell), view3d.png (PyVista,
offscreen: the cell's surface from its channel, force arrows coloured by |f|,
displacement glyphs, a translucent bead plane), forces.png (|f| through the cell, the
inverse beside FTTC, one colour scale) and summary.json (net force, contractility,
strain energy, the force dipole, noise and regularisation, drift, decay, timings; FTTC's
under "fttc").
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
from tfm.atomic import write_json

SPACING_UM = (0.8, 0.29286, 0.29286)
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fmtrack_avic_3d"


def load_pair(data: Path, crop=None):
    """CytoD (reference) and Normal (deformed) bead stacks, the Normal cell's mask (Otsu)
    and their Grid, cropped around the cell to ``crop`` voxels when given."""
    ref, grid = io.read_volume(data / "CytoD_Beads.tif", spacing_um=SPACING_UM)
    dfm, _ = io.read_volume(data / "Normal_Beads.tif", spacing_um=SPACING_UM)
    cell, _ = io.read_volume(data / "Normal_Cell.tif", spacing_um=SPACING_UM)
    mask = segment.cell_mask(cell, grid)
    if crop:
        sl = segment.crop_around(mask, crop)
        ref, dfm, mask = ref[sl], dfm[sl], mask[sl]
    return ref, dfm, mask, tfm.Grid(ref.shape, SPACING_UM)


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
    measured = result.measured()  # the DVC's own field on its windows (the forces may be on a finer grid)
    decay = segment.displacement_decay(measured, mask, spacing)
    d, valid, toward = decay["distance_um"], decay["valid"], decay["toward_cell"]
    c, axes, sizes = cell_axes(mask, spacing)
    x = measured.grid.coordinates_um()  # window centres, µm from the first voxel
    rel = x - c
    cos_long = np.abs(rel @ axes[0]) / np.maximum(np.linalg.norm(rel, axis=-1), 1e-12)
    near = valid & (d < 15)
    tips, sides = near & (cos_long > 0.8), near & (cos_long < 0.4)
    # Force dipole of the reconstructed forces within 15 µm of the cell, about its centroid.
    image = tfm.Grid(mask.shape, spacing)
    d_force = segment.distance_at_voxels_um(mask, spacing, np.stack(segment.nearest_voxels(result.grid, image), -1))
    m = result.dipole_moment(mask=d_force < 15, center_um=c)
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
    return decay, checks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder with CytoD_Beads.tif, Normal_Beads.tif, Normal_Cell.tif")
    p.add_argument("--out", default="fmtrack_output")
    p.add_argument("--crop", type=int, nargs=3, metavar=("Z", "Y", "X"), help="analyse a crop of this size centred on the cell")
    p.add_argument("--youngs-modulus-pa", type=float, default=1000.0, help="ASSUMED gel modulus (not published with the data)")
    p.add_argument("--drift", default="auto", choices=("auto", "rigid", "affine", "slicewise"),
                   help="drift model (default auto: the one the far field supports; slicewise on these stacks)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        print(f"data folder not found: {data} (this example needs ../shared/data/fmtrack_avic_3d)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    ref, dfm, mask, grid = load_pair(data, args.crop)
    gel = tfm.LinearElastic(args.youngs_modulus_pa, 0.45)
    # The DVC's defaults: windows from the beads (8 per last-pass window, near-cubic in
    # µm) and the drift model the far field supports. Here that is "slicewise": besides
    # the ~3-voxel x-drift, whole z-planes of the two stacks are displaced axially, by ~7 %
    # compression plus non-uniform steps (an acquisition artefact: a cell cannot move a
    # 150 x 150 µm plane). See docs/fmtrack.md.
    result = tfm.reconstruct(ref, dfm, grid, gel, mask=mask, progress=not args.quiet, dvc_options={"drift": args.drift})
    decay, checks = analyse(result, mask, SPACING_UM)
    rows = decay["bins"]
    io.write_result(out / "result.h5", result, {"command": "examples/fmtrack_classical.py", "argv": sys.argv[1:],
                                                  "assumed_youngs_modulus_pa": args.youngs_modulus_pa})
    io.write_vtk(out / "result.vti", result)
    from tfm import viz

    viz.decay_figure(decay, out / "decay.png", title="FM-Track cell: displacement decay")
    viz.bead_pair_figure(ref, dfm, grid, result, out / "beads.png", mask=mask,
                         title="FM-Track cell: relaxed (CytoD) and contractile (Normal) beads")
    viz.render_png(result, out / "view3d.png", cell=(mask.astype(np.float32), grid), beads=(ref, grid))
    dvc_info = result.info["dvc"]
    summary = {
        "volume_shape": list(ref.shape), "dvc_grid": list(result.measured().grid.shape), "force_grid": list(result.grid.shape),
        "force_grid_spacing_um": list(result.grid.spacing_um), "windows_voxels": dvc_info["windows_voxels"],
        "windows_auto": dvc_info.get("windows_auto"), "drift_model": dvc_info["drift_model"],
        "rigid_shift_voxels": dvc_info["rigid_shift_voxels"],
        "drift_removed_voxels": dvc_info["drift_removed_voxels"],
        "drift_per_plane_voxels": dvc_info.get("drift_per_plane_voxels"),
        "valid_window_fraction": float(dvc_info["valid"][~dvc_info["masked"]].mean()),
        **checks,
        "decay": rows,
        "assumed_youngs_modulus_pa": args.youngs_modulus_pa,
        **result.summary(),  # net force, contractility, strain energy, regularisation parameter
        "time_dvc_s": result.info["time_dvc_s"], "time_forces_s": result.info["time_forces_s"],
        "time_total_s": time.perf_counter() - t0,
    }
    summary["net_force_fraction_of_contractility"] = float(np.linalg.norm(result.net_force()) / result.contractility())
    # FTTC on the same displacement, for comparison with the default inverse.
    fttc = tfm.reconstruct_forces(result.measured().displacement, result.measured().grid, gel, method="fttc")
    _, fchecks = analyse(fttc, mask, SPACING_UM)
    summary["fttc"] = {"contractility_pn": fttc.contractility(), "net_force_pn": fttc.net_force().tolist(),
                       "net_force_fraction_of_contractility": float(np.linalg.norm(fttc.net_force()) / fttc.contractility()),
                       "total_force_over_contractility": fttc.total_force() / fttc.contractility(),
                       "time_s": fttc.info["time_total_s"],
                       **{k: fchecks[k] for k in ("dipole_eigenvalues_pn_um", "angle_most_contractile_axis_to_cell_axis_deg")}}
    summary["total_force_over_contractility"] = result.total_force() / result.contractility()
    viz.force_planes_figure({"inverse (default)": result, "FTTC": fttc}, out / "forces.png", mask=mask, spacing_um=SPACING_UM,
                            title="FM-Track cell: force density through the cell (assumed E = 1 kPa)")
    write_json(out / "summary.json", summary)
    if not args.quiet:
        print(json.dumps({k: v for k, v in summary.items() if k not in ("decay", "drift_per_plane_voxels")}, indent=2))
        for r in rows:
            print(f"  {r['distance_um'][0]:5.0f}-{r['distance_um'][1]:<5.0f} µm  n={r['n']:4d}  median |u| {r['median_u_um']:.3f} µm"
                  f"  toward cell {r['fraction_toward_cell']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
