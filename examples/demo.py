"""tfm demo: reconstruct the forces of synthetic contracting cells and compare with the truth.

    python examples/demo.py --out demo_output

Part 1 (displacement -> forces):
A contracting "cell" (a sphere of radius 6 µm with dilatational eigenstrain -2 %,
Eshelby's closed-form field) plus a force dipole along x (two 5 nN Kelvinlets 24 µm
apart, pulling toward the centre, like the tips of a polarised cell) sits in a 1 kPa gel (nu = 0.45). The displacement is sampled on
a 64 x 96 x 96 grid of 0.8 x 0.5 x 0.5 µm voxels (confocal-like anisotropy), 3 % noise
is added, and tfm reconstructs the force density with its default, the regularised inverse
(L1 penalty, noise estimated from the field, alpha by the discrepancy principle), and, for
comparison, by 3D FTTC with GCV. Writes into --out:

  result.h5      the Result (displacement µm, force pN/µm³, units and provenance)
  result.vti     VTK image data for ParaView
  slices.png     |u| and |f| on the mid-plane, truth beside reconstruction
  view3d.png     3D view (PyVista, offscreen): strongest force arrows, displacement glyphs, cell
  summary.json   net force, contractility, strain energy, regularisation, timings, errors;
                 summary.json["fttc"]: the same numbers of FTTC

Part 2 (bead volume pair -> displacement and forces, both methods side by side): a held-out
sample of the shipped synthetic dataset (data/synthetic/sample48.h5: a random cell in a
neo-Hookean gel, FEM ground truth, rendered beads with camera noise) goes through the
learned reconstruction with the shipped default weights (``method="dl"``) and the classical
pipeline (DVC + the force inverse). Writes:

  pair_dl.h5, pair_classical.h5   both Results
  pair.png                       beads, |u| and |f| on the mid-plane: truth, DL, classical
  pair_beads.png                 max-intensity projections of both bead volumes with the
                                 DL displacement arrows, |u| and |f| through the cell
  pair_decay.png                 |u| (DL) against distance from the cell surface
  pair_view3d.png                3D: cell surface, DL force arrows, displacement glyphs,
                                 a translucent bead plane
  summary.json["bead_pair"]      times and errors of both against the FEM truth

Part 3 (real data, when ../shared/data/fmtrack_avic_3d is present): a 96 x 256 x 256 crop
around the FM-Track cell through the classical pipeline (examples/fmtrack_classical.py):

  fmtrack/result.h5, result.vti  the Result (forces for an ASSUMED E = 1 kPa)
  fmtrack/beads.png              max-intensity projections of both bead stacks, cell outline,
                                 displacement arrows; |u| and |f| through the cell
  fmtrack/decay.png              |u| against distance from the cell surface
  fmtrack/view3d.png             3D: cell surface, force arrows, displacement glyphs, bead plane
  fmtrack/summary.json           net force, contractility, strain energy, regularisation,
                                 drift, contraction toward the cell, decay, timings
  summary.json["fmtrack_crop"]   the headline numbers of it
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import tfm
from tfm import analytic, io, viz
from tfm.atomic import write_json
from tfm.fields import resample


DIPOLE_PN, DIPOLE_UM = 5000.0, 24.0


def make_cell(grid: tfm.Grid, material: tfm.LinearElastic):
    c = grid.center_um()
    sphere = analytic.EshelbySphere(6.0, -0.02, c, material)
    dipole = analytic.KelvinForceDipole(DIPOLE_PN, DIPOLE_UM, (0, 0, 1), c, material, core_radius_um=1.5)
    return sphere, dipole


def figure(path: Path, grid, u_true, result, f_dipole_true):
    plt = viz.pyplot()

    k = grid.shape[0] // 2
    zyx = grid.axes_um()
    ext = (zyx[2][0], zyx[2][-1], zyx[1][0], zyx[1][-1])
    fig, ax = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    panels = [
        (np.linalg.norm(u_true[k], axis=-1), "|u| true (µm)"),
        (np.linalg.norm(result.displacement[k], axis=-1), "|u| measured, 3 % noise (µm)"),
        (np.linalg.norm(result.force[k], axis=-1), "|f| reconstructed (pN/µm³)"),
    ]
    for a, (img, title) in zip(ax, panels):
        im = a.imshow(img, origin="lower", extent=ext, cmap="magma")
        a.set_title(title)
        a.set_xlabel("x (µm)")
        a.set_ylabel("y (µm)")
        fig.colorbar(im, ax=a, shrink=0.8)
    # In-plane force arrows where |f| exceeds 15 % of its maximum; the longest is 4 µm.
    s = 3
    f = result.force[k, ::s, ::s]
    mag = np.linalg.norm(f[..., 1:], axis=-1)
    keep = mag > 0.15 * mag.max()
    yy, xx = np.meshgrid(zyx[1][::s], zyx[2][::s], indexing="ij")
    ax[2].quiver(xx[keep], yy[keep], f[..., 2][keep], f[..., 1][keep], color="cyan", angles="xy",
                 scale_units="xy", scale=mag.max() / 4.0, width=0.004)
    fig.suptitle("tfm demo: contracting cell in a 1 kPa gel, mid-plane z = %.1f µm" % zyx[0][k])
    viz.save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_output", help="output folder (created)")
    p.add_argument("--noise", type=float, default=0.03, help="noise std as a fraction of the RMS displacement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-real-data", action="store_true", help="skip part 3 (the FM-Track crop) even if the data are present")
    args = p.parse_args(argv)
    out = Path(args.out)

    grid = tfm.Grid((64, 96, 96), spacing_um=(0.8, 0.5, 0.5))
    material = tfm.LinearElastic(youngs_modulus_pa=1000.0, poisson_ratio=0.45)
    sphere, dipole = make_cell(grid, material)
    print(f"[1/4] sampling the closed-form field on {grid.shape} voxels of {grid.spacing_um} µm", flush=True)
    u_true = np.asarray(sphere.sample(grid)) + np.asarray(dipole.sample(grid))
    rng = np.random.default_rng(args.seed)
    u = (u_true + args.noise * np.sqrt(np.mean(u_true**2)) * rng.standard_normal(u_true.shape)).astype(np.float32)

    print("[2/4] reconstructing forces (the regularised inverse; 3D FTTC beside it)", flush=True)
    t0 = time.perf_counter()
    result = tfm.reconstruct_forces(u, grid, material)
    elapsed = time.perf_counter() - t0
    fttc = tfm.reconstruct_forces(u, grid, material, method="fttc")

    print(f"[3/4] writing {out}/result.h5, result.vti, slices.png, view3d.png", flush=True)
    prov = {"command": "examples/demo.py", "argv": sys.argv[1:], "noise": args.noise, "seed": args.seed,
            "truth": {"sphere_radius_um": sphere.radius_um, "eigenstrain": sphere.eigenstrain,
                      "dipole_force_pn": DIPOLE_PN, "dipole_separation_um": DIPOLE_UM}}
    io.write_result(out / "result.h5", result, prov)
    io.write_vtk(out / "result.vti", result)
    figure(out / "slices.png", grid, u_true, result, np.asarray(dipole.body_force(grid.coordinates_um())))
    # PyVista, offscreen: force arrows coloured by |f|, displacement glyphs, the cell
    cell = (np.linalg.norm(grid.coordinates_um() - np.asarray(grid.center_um()), axis=-1) < sphere.radius_um).astype(np.float32)
    viz.render_png(result, out / "view3d.png", cell=cell)

    c = np.array(grid.center_um())
    x = grid.coordinates_um()
    near = np.linalg.norm(x - c, axis=-1) < 16.0
    true_contractility = sphere.total_radial_force_pn + 2 * DIPOLE_PN  # each dipole force points at the centre
    def numbers(res):
        mag = res.force_magnitude()
        within = res.contractility(mask=near, center_um=c)
        return {"contractility_within_16um_pn": within, "contractility_error": within / true_contractility - 1,
                "force_beyond_16um_fraction": float(mag[~near].sum() / mag.sum())}

    summary = {
        **result.summary(),
        "wall_time_s": elapsed,
        **numbers(result),
        "true_contractility_pn": true_contractility,
        "noise_fraction_of_rms_u": args.noise,
        "fttc": {**fttc.summary(), **numbers(fttc), "wall_time_s": fttc.info["time_total_s"]},
    }
    write_json(out / "summary.json", summary)
    summary["bead_pair"] = bead_pair(out)
    write_json(out / "summary.json", summary)
    summary["fmtrack_crop"] = None if args.no_real_data else fmtrack_crop(out)
    write_json(out / "summary.json", summary)
    print("[4/4] summary")
    for key in ("contractility_within_16um_pn", "true_contractility_pn", "contractility_error", "force_beyond_16um_fraction",
                "net_force_pn", "strain_energy_pn_um", "noise_um", "alpha", "wall_time_s"):
        v = summary[key]
        print(f"  {key:30s} " + (", ".join(f"{x:.4g}" for x in v) if isinstance(v, list) else f"{float(v):.4g}"))
    f = summary["fttc"]
    print(f"  FTTC beside it: contractility error {f['contractility_error']:+.3f}, force beyond 16 µm "
          f"{f['force_beyond_16um_fraction']:.3f} of the total, {f['wall_time_s']:.2f} s")
    bp = summary["bead_pair"]
    for m in ("dl", "classical"):
        r = bp[m]
        print(f"  bead pair, {m:9s}: {r['seconds']:.2f} s, displacement correlation {r['displacement_correlation']:.2f}, "
              f"contractility {r['contractility_pn']:.4g} pN (truth {bp['contractility_truth_pn']:.4g})")
    fm = summary["fmtrack_crop"]
    if fm:
        print(f"  FM-Track crop: {fm['time_total_s']:.1f} s, {100 * fm['fraction_toward_cell_beyond_tips']:.0f} % of the gel "
              f"beyond the cell's tips moves toward it; results in {out / 'fmtrack'}")
    return 0


PAIR_SAMPLE = 7
FMTRACK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fmtrack_avic_3d"


def fmtrack_crop(out: Path) -> dict | None:
    """Part 3: a crop of the real FM-Track stacks through the classical pipeline, if present."""
    if not FMTRACK.is_dir():
        print(f"[3c/4] real data not found at {FMTRACK}: part 3 skipped", flush=True)
        return None
    import importlib.util

    print("[3c/4] real stacks (FM-Track): a 96 x 256 x 256 crop around the cell, classical pipeline", flush=True)
    spec = importlib.util.spec_from_file_location("fmtrack_classical", Path(__file__).with_name("fmtrack_classical.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    rc = example.main(["--data", str(FMTRACK), "--out", str(out / "fmtrack"), "--crop", "96", "256", "256", "--quiet"])
    if rc != 0:
        raise RuntimeError(f"the FM-Track part failed (exit status {rc})")
    s = json.loads((out / "fmtrack" / "summary.json").read_text())
    keep = ("volume_shape", "rigid_shift_voxels", "fraction_toward_cell_beyond_tips", "assumed_youngs_modulus_pa",
            "contractility_pn", "net_force_pn", "strain_energy_pn_um", "alpha", "regularization_rule", "time_total_s")
    return {k: s[k] for k in keep if k in s} | {"median_u_um_by_distance": [(r["distance_um"], r["median_u_um"]) for r in s["decay"]]}


def bead_pair(out: Path) -> dict:
    """Part 2: one shipped synthetic bead pair through both methods, against the FEM truth."""
    from tfm.synth.dataset import SyntheticDataset

    print("[3b/4] a shipped bead volume pair: learned (shipped weights) and classical reconstructions", flush=True)
    with SyntheticDataset(Path(__file__).resolve().parents[1] / "data" / "synthetic" / "sample48.h5") as ds:
        s, grid = ds[PAIR_SAMPLE], ds.grid
    gel = tfm.NeoHookean(float(s["youngs_modulus_pa"]), float(s["poisson_ratio"]))
    ref, dfm = s["reference"].astype(np.float32), s["deformed"].astype(np.float32)
    centre = np.asarray(s["params"]["cell"]["center_um"])
    truth = tfm.Result(grid, displacement=s["displacement"], force=s["force"])
    rep = {"sample": f"data/synthetic/sample48.h5 [{PAIR_SAMPLE}]", "youngs_modulus_pa": gel.youngs_modulus_pa,
           "poisson_ratio": gel.poisson_ratio, "contractility_truth_pn": truth.contractility(center_um=centre)}
    results = {}
    # 48³ voxels hold only 5³ windows at the DVC's default 50 % overlap: too few for the force
    # inverse to tell the cell's field from noise. 75 % overlap gives 9³.
    for name, kw in (("dl", {"method": "dl"}), ("classical", {"method": "classical", "dvc_options": {"overlap": 0.75}})):
        t0 = time.perf_counter()
        res = tfm.reconstruct(ref, dfm, grid.spacing_um, gel if name == "dl" else gel.linearized(), progress=False, **kw)
        el = time.perf_counter() - t0
        u_true = resample(s["displacement"], grid, res.grid)  # the network's grid, or the DVC window centres
        rep[name] = {"seconds": el, "grid": list(res.grid.shape),
                     "displacement_correlation": float(np.sum(res.displacement * u_true)
                                                       / np.sqrt(np.sum(res.displacement**2) * np.sum(u_true**2))),
                     "displacement_rms_error_um": float(np.sqrt(np.mean(np.sum((res.displacement - u_true) ** 2, -1)))),
                     "contractility_pn": res.contractility(center_um=centre)}
        io.write_result(out / f"pair_{name}.h5", res, {"command": "examples/demo.py", "sample": rep["sample"]})
        results[name] = res
    pair_figure(out / "pair.png", s, grid, results)
    # The views a user gets from a real pair, here of the learned reconstruction.
    from tfm import segment

    cell = np.asarray(s["cell"]) > 0.5
    viz.bead_pair_figure(ref, dfm, grid.spacing_um, results["dl"], out / "pair_beads.png", mask=cell, slab_um=4.0,
                         title="shipped synthetic pair, learned reconstruction")
    decay = segment.displacement_decay(results["dl"], cell, grid.spacing_um, bins_um=(0, 2, 4, 6, 8, 10, 14, 18, 24, 40))
    viz.decay_figure(decay, out / "pair_decay.png", title="shipped synthetic pair: displacement decay (DL)")
    viz.render_png(results["dl"], out / "pair_view3d.png", cell=(cell.astype(np.float32), grid.spacing_um),
                   beads=(ref, grid.spacing_um))
    rep["dl"]["median_u_um_by_distance"] = [(r["distance_um"], r["median_u_um"]) for r in decay["bins"]]
    return rep


def pair_figure(path: Path, s, grid, results) -> None:
    plt = viz.pyplot()

    k = grid.shape[0] // 2
    z = grid.axes_um()[0][k]
    ext = [0, grid.extent_um[2], grid.extent_um[1], 0]
    fig, ax = plt.subplots(2, 4, figsize=(15, 7), constrained_layout=True)
    ax[0, 0].imshow(s["reference"][k], cmap="gray", extent=ext)
    ax[0, 0].set_title("reference beads")
    ax[1, 0].imshow(s["deformed"][k], cmap="gray", extent=ext)
    ax[1, 0].contour(s["cell"][k], [0.5], colors="c", extent=[0, grid.extent_um[2], 0, grid.extent_um[1]], origin="upper")
    ax[1, 0].set_title("deformed beads, cell outline")
    umax = float(np.linalg.norm(s["displacement"][k], axis=-1).max())
    fmax = float(np.linalg.norm(s["force"][k], axis=-1).max())
    cols = [("FEM truth", grid, s["displacement"], s["force"]),
            ("DL (shipped weights)", results["dl"].grid, results["dl"].displacement, results["dl"].force),
            ("classical (DVC + inverse)", results["classical"].grid, results["classical"].displacement, results["classical"].force)]
    for j, (title, g, u, f) in enumerate(cols, start=1):
        kk = int(np.argmin(np.abs(g.axes_um()[0] - z)))
        ax_ = g.axes_um()
        e = [ax_[2][0], ax_[2][-1], ax_[1][-1], ax_[1][0]]
        im = ax[0, j].imshow(np.linalg.norm(u[kk], axis=-1), extent=e, vmin=0, vmax=umax, cmap="viridis")
        ax[0, j].set_title(f"|u| {title}, µm")
        fig.colorbar(im, ax=ax[0, j], shrink=0.8)
        im = ax[1, j].imshow(np.linalg.norm(f[kk], axis=-1), extent=e, vmin=0, cmap="magma",
                             vmax=fmax if j < 3 else None)
        ax[1, j].set_title(f"|f| {title}, pN/µm³")
        fig.colorbar(im, ax=ax[1, j], shrink=0.8)
    for a in ax.ravel():
        a.set_xlabel("x, µm")
    fig.suptitle(f"a bead volume pair, mid-plane z = {z:.0f} µm")
    viz.save_figure(fig, path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
