"""Force reconstruction from a displacement field: tfm's regularised inverse beside FTTC,
and beside saenopy 1.0.8's regularised FEM solve, on fields whose forces are known.

    python -m benchmarks.inverse --out benchmarks/results [--saenopy-python /path/to/venv/bin/python] [--quick]

Cases (E = 1 kPa; noise: Gaussian, std a fraction of the RMS displacement component):

* closed forms on 64³ grids of 1 µm (nu = 0.45): Eshelby's contracting sphere (a = 6 µm,
  eigenstrain -0.05) and a Kelvin force dipole (2 x 2000 pN, 16 µm apart along x, core
  1.5 µm). "ratio" is the inward radial force within 2 radii over the true total (sphere)
  or the x-force within 4 core radii of each pole over the true one (dipole); "outside"
  is |f| summed beyond those regions over the true summed |f|.
* an elongated, polarised cell (semi-axes 12 x 5 x 4 µm along x, uniaxial eigenstrain
  0.08, tfm.synth.cells) in a 64³ box of 1 µm voxels, faces fixed, solved by the voxel FEM
  of tfm.synth.fem: force relative L2 error per voxel and in 4 µm blocks (the force summed
  per block), contractility about the cell's centre against the FEM's.
* saenopy (``--saenopy-python``): the same cell with nu = 0.25, where saenopy's linear
  fibre network is the same matrix for k = 6E (its energy for uniaxial, shear and
  dilational strain matches E = k/6, nu = 0.25), the displacement with 5 % noise
  interpolated onto its box mesh (4 µm elements), its ``solve_regularized`` at each alpha
  of a log scan, alpha chosen at the L-curve's corner (as its documentation advises). Its
  ``mesh.forces`` are the matrix's reactions (minus the applied force; checked on the
  contracting sphere: -19,155 pN against +20,106 pN), so their sign is flipped. Compared in
  4 µm blocks centred on its nodes.
* speed: the sphere at 128³ (a = 12 µm, 5 % noise), warm, beside FTTC.
* end to end from rendered beads (``--beads``: added to the existing report): Eshelby
  spheres (radius 7 and 5 µm at 64³ voxels of 1 µm, radius 7 µm at 80 x 192 x 192 voxels of
  0.8 x 0.3 x 0.3 µm; eigenstrain -0.01, -0.05, -0.15; two bead seeds) and the polarised
  FEM cell, rendered into bead pairs (tfm.synth.beads, camera noise), through
  ``tfm.reconstruct`` with the cell's mask, the force solved on the DVC grid
  (``force_grid="dvc"``) and on the fine grid with the windows as window means
  (``force_grid="fine"``); the inward force over the closed form (and its share within two
  radii), for the cell the force in 4 µm blocks and the contractility against the FEM's.

Methods: ``inverse`` (tfm.reconstruct_forces default: L1 penalty, noise estimated from the
field, alpha by the discrepancy principle); ``inverse+mask`` (the cell's mask given: left
out of the noise estimate, forces within 2 grid spacings of it); ``fttc`` (Tikhonov, GCV).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np

import tfm
from tfm.synth import cells, fem

from .common import machine, write_report

E = 1000.0
BLOCK_UM = 4.0


def noisy(u, level, seed):
    rng = np.random.default_rng(seed)
    return (u + level * np.sqrt(np.mean(u**2)) * rng.standard_normal(u.shape)).astype(np.float32)


def _methods(mask):
    return (("inverse", {}), ("inverse+mask", {"mask": mask}), ("fttc", {"method": "fttc"}))


def _run(u, grid, mat, kw):
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = tfm.reconstruct_forces(u, grid, mat, **kw)
    return res, time.perf_counter() - t0


# --------------------------------------------------------------------- closed forms
def closed_form(levels) -> list:
    grid = tfm.Grid((64, 64, 64), 1.0)
    mat = tfm.LinearElastic(E, 0.45)
    c = np.asarray(grid.center_um())
    x = grid.coordinates_um()
    r = np.linalg.norm(x - c, axis=-1)
    rows = []
    sphere = tfm.analytic.EshelbySphere(6.0, -0.05, tuple(c), mat)
    core, sep = 1.5, 16.0
    dipole = tfm.analytic.KelvinForceDipole(2000.0, sep, (0, 0, 1), tuple(c), mat, core_radius_um=core)
    poles = [c + np.array([0.0, 0.0, s * sep / 2]) for s in (1, -1)]
    d_pole = np.minimum(*[np.linalg.norm(x - p, axis=-1) for p in poles])
    f_dip = np.asarray(dipole.body_force(x))
    right = x[..., 2] > c[2]
    cases = {
        "sphere": (np.asarray(sphere.sample(grid)), r < 6.0, r < 12.0, sphere.total_radial_force_pn, None),
        "dipole": (np.asarray(dipole.sample(grid)), d_pole < 2 * core, d_pole < 4 * core,
                   float(np.linalg.norm(f_dip, axis=-1).sum()), float(f_dip[..., 2][right].sum())),
    }
    e = (x - c) / np.maximum(r, 1e-9)[..., None]
    for name, (u0, cell, near, total, pole_true) in cases.items():
        for level in levels:
            u = noisy(u0, level, 0)
            for method, kw in _methods(cell):
                res, el = _run(u, grid, mat, kw)
                f = res.force
                mag = np.linalg.norm(f, axis=-1)
                if name == "sphere":
                    ratio = float(-np.sum(np.sum(f * e, -1) * near) / total)
                else:
                    ratio = float(np.sum(f[..., 2] * (near & right)) / pole_true)
                rows.append({"case": name, "noise": level, "method": method, "ratio": ratio,
                             "outside_fraction": float(mag[~near].sum() / total),
                             "net_over_total": float(np.linalg.norm(f.sum((0, 1, 2))) / mag.sum()), "time_s": el,
                             "alpha": res.info.get("alpha"), "noise_um": res.info.get("noise_um")})
                print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------ FEM ground truth
def fem_cell(n: int = 64, nu: float = 0.45) -> dict:
    """The elongated, polarised cell in a fixed box: displacement, force, cell mask."""
    grid = tfm.Grid((n,) * 3, 1.0)
    mat = tfm.LinearElastic(E, nu)
    cell = cells.Cell(center_um=tuple(grid.center_um()), semi_axes_um=(12.0, 5.0, 4.0),
                      rotation=tuple(map(tuple, np.eye(3)[[2, 1, 0]])), protrusions=(), pattern="polarised",
                      loading="eigenstrain", contraction=0.08, traction_pa=0.0, youngs_modulus_pa=E, poisson_ratio=nu,
                      cell_modulus_scale=1.0)
    frac, eps, _ = cells.rasterize(cell, grid)
    t0 = time.perf_counter()
    sol = fem.solve(grid, mat, eigenstrain=eps, boundary="fixed")
    return {"grid": grid, "material": mat, "u": np.asarray(sol.displacement), "f": np.asarray(sol.force_density),
            "mask": frac > 0.5, "center": np.asarray(grid.center_um()), "fem_s": time.perf_counter() - t0}


def blocks(points_um, forces_pn, shape_blocks):
    """Forces (pN) summed in BLOCK_UM blocks centred on multiples of BLOCK_UM."""
    idx = np.floor((points_um + BLOCK_UM / 2) / BLOCK_UM).astype(int)
    idx = np.clip(idx, 0, np.asarray(shape_blocks) - 1)
    out = np.zeros((*shape_blocks, 3))
    np.add.at(out, tuple(idx.T), forces_pn)
    return out


def grid_blocks(grid, force):
    nb = tuple(int(math.floor((n - 1) * h / BLOCK_UM + 0.5)) + 1 for n, h in zip(grid.shape, grid.spacing_um))
    pts = grid.coordinates_um().reshape(-1, 3) - np.asarray(grid.origin_um)
    return blocks(pts, force.reshape(-1, 3) * grid.voxel_volume_um3, nb), nb


def contractility_of(points_um, forces_pn, center):
    rel = points_um - center
    return float(-np.sum(np.sum(forces_pn * rel, 1) / np.maximum(np.linalg.norm(rel, axis=1), 1e-9)))


def fem_rows(data, levels) -> list:
    grid, mat, f_true = data["grid"], data["material"], data["f"]
    truth = tfm.Result(grid, data["u"], f_true)
    c_true = truth.contractility(center_um=data["center"])
    b_true, _ = grid_blocks(grid, f_true)
    rows = []
    for level in levels:
        u = noisy(data["u"], level, 1)
        for method, kw in _methods(data["mask"]):
            res, el = _run(u, grid, mat, kw)
            b, _ = grid_blocks(grid, res.force)
            rows.append({"case": "polarised cell", "noise": level, "method": method,
                         "rel_l2": float(np.linalg.norm(res.force - f_true) / np.linalg.norm(f_true)),
                         "rel_l2_blocks": float(np.linalg.norm(b - b_true) / np.linalg.norm(b_true)),
                         "contractility_ratio": res.contractility(center_um=data["center"]) / c_true,
                         "net_over_contractility": float(np.linalg.norm(res.net_force()) / c_true), "time_s": el})
            print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------- from rendered beads
def _render(grid, displacement, mask, seed):
    from tfm.synth import beads

    rng = np.random.default_rng(seed)
    pos = beads.random_positions(grid, 0.02, rng, margin_um=2)
    pos = pos[~_inside(grid, mask, pos)]  # no beads inside the cell
    ref, dfm = beads.render_pair(grid, pos, displacement, psf_sigma_um=(1.0, 0.5, 0.5) if grid.spacing_um[0] >= 1 else
                                 (0.9, 0.35, 0.35))
    return beads.camera(ref, rng, 300, 0.02, 0.05), beads.camera(dfm, rng, 300, 0.02, 0.05)


def _inside(grid, mask, pos):
    idx = np.clip(np.round((pos - np.asarray(grid.origin_um)) / np.asarray(grid.spacing_um)).astype(int), 0,
                  np.asarray(grid.shape) - 1)
    return mask[tuple(idx.T)]


def _inward(res, center):
    x = res.grid.coordinates_um() - center
    r = np.linalg.norm(x, axis=-1)
    f = np.sum(np.asarray(res.force) * -x / np.maximum(r, 1e-9)[..., None], -1) * res.grid.voxel_volume_um3
    return f, r


def bead_rows(seeds=(0, 1), loads=(-0.01, -0.05, -0.15)) -> list:
    """The spheres, rendered into beads, through tfm.reconstruct on both force grids."""
    mat = tfm.LinearElastic(E, 0.45)
    rows = []
    for radius, shape, spacing in ((7.0, (64, 64, 64), 1.0), (5.0, (64, 64, 64), 1.0), (7.0, (80, 192, 192), (0.8, 0.3, 0.3))):
        grid = tfm.Grid(shape, spacing)
        c = np.asarray(grid.center_um())
        mask = np.linalg.norm(grid.coordinates_um() - c, axis=-1) <= radius
        for eps in loads:
            cell = tfm.analytic.EshelbySphere(radius, eps, tuple(c), mat)
            for seed in seeds:
                ref, dfm = _render(grid, lambda q: np.asarray(cell.displacement(q)), mask, seed)
                for force_grid in ("dvc", "fine"):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        t0 = time.perf_counter()
                        res = tfm.reconstruct(ref, dfm, grid, mat, mask=mask, progress=False, force_grid=force_grid)
                    f, r = _inward(res, c)
                    rows.append({"case": f"sphere {radius:g} µm, {' x '.join(f'{h:g}' for h in grid.spacing_um)} µm voxels",
                                 "eigenstrain": eps, "seed": seed, "force_grid": force_grid,
                                 "inward_ratio": float(f.sum() / cell.total_radial_force_pn),
                                 "within_2r": float(f[r <= 2 * radius].sum() / cell.total_radial_force_pn),
                                 "net_over_total": float(np.linalg.norm(res.net_force()) / res.total_force()),
                                 "time_forces_s": res.info["time_forces_s"], "time_s": time.perf_counter() - t0})
                    print(rows[-1], flush=True)
    return rows


def bead_cell_rows(data, seeds=(0, 1)) -> list:
    """The polarised FEM cell rendered into beads (its displacement interpolated at each bead)."""
    from tfm.fields import trilinear

    grid, mat, f_true = data["grid"], data["material"], data["f"]
    c_true = tfm.Result(grid, data["u"], f_true).contractility(center_um=data["center"])
    b_true, nb = grid_blocks(grid, f_true)
    rows = []
    for seed in seeds:
        ref, dfm = _render(grid, lambda q: np.asarray(trilinear(data["u"], (q - np.asarray(grid.origin_um)) /
                                                              np.asarray(grid.spacing_um))), data["mask"], seed)
        for force_grid in ("dvc", "fine"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = tfm.reconstruct(ref, dfm, grid, mat, mask=data["mask"], progress=False, force_grid=force_grid)
            pts = res.grid.coordinates_um().reshape(-1, 3) - np.asarray(grid.origin_um)
            b = blocks(pts, np.asarray(res.force).reshape(-1, 3) * res.grid.voxel_volume_um3, nb)
            rows.append({"case": "polarised cell", "seed": seed, "force_grid": force_grid,
                         "rel_l2_blocks": float(np.linalg.norm(b - b_true) / np.linalg.norm(b_true)),
                         "contractility_ratio": res.contractility(center_um=data["center"]) / c_true,
                         "net_over_total": float(np.linalg.norm(res.net_force()) / res.total_force()),
                         "time_forces_s": res.info["time_forces_s"]})
            print(rows[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------- saenopy
def lcurve_corner(misfit, norm) -> int:
    """Index of the L-curve's corner: the largest Menger curvature of consecutive triples of
    (log misfit, log force norm), alphas in increasing order."""
    p = np.stack([np.log(misfit), np.log(norm)], 1)
    best, k = -np.inf, 1
    for i in range(1, len(p) - 1):
        a, b, c = p[i - 1], p[i], p[i + 1]
        area2 = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        curv = 2 * area2 / (np.linalg.norm(b - a) * np.linalg.norm(c - b) * np.linalg.norm(c - a) + 1e-30)
        if curv > best:
            best, k = curv, i
    return k


def saenopy_rows(python, alphas, level: float = 0.05, element_um: float = 4.0) -> dict:
    from .peers import saenopy_solve

    data = fem_cell(64, 0.25)
    grid, mat = data["grid"], data["material"]
    u = noisy(data["u"], level, 2)
    truth = tfm.Result(grid, data["u"], data["f"])
    c_true = truth.contractility(center_um=data["center"])
    b_true, nb = grid_blocks(grid, data["f"])
    out = saenopy_solve(python, u, grid.spacing_um, element_um, 6 * E, alphas)
    nodes = out["nodes_um"]
    scan = []
    for row, f in zip(out["rows"], out["forces_pn"]):
        f = -f  # its reactions -> the force applied to the matrix
        b = blocks(nodes, f, nb)
        scan.append({**row, "rel_l2_blocks": float(np.linalg.norm(b - b_true) / np.linalg.norm(b_true)),
                     "contractility_ratio": contractility_of(nodes, f, data["center"]) / c_true})
    k = lcurve_corner([r["misfit_m"] for r in scan], [r["force_norm_n"] for r in scan])
    res, el = _run(u, grid, mat, {})
    b, _ = grid_blocks(grid, res.force)
    tfm_row = {"rel_l2_blocks": float(np.linalg.norm(b - b_true) / np.linalg.norm(b_true)),
               "contractility_ratio": res.contractility(center_um=data["center"]) / c_true, "time_s": el}
    return {"noise": level, "element_um": element_um, "nodes": out["nodes"], "scan": scan, "corner": k,
            "saenopy_total_scan_s": float(sum(r["time_s"] for r in scan)), "tfm": tfm_row}


# ------------------------------------------------------------------------------ speed
def speed(n: int = 128) -> dict:
    grid = tfm.Grid((n,) * 3, 1.0)
    mat = tfm.LinearElastic(E, 0.45)
    a = n / 10.0
    c = np.asarray(grid.center_um())
    sphere = tfm.analytic.EshelbySphere(a, -0.05, tuple(c), mat)
    u = noisy(np.asarray(sphere.sample(grid)), 0.05, 3)
    out = {"n": n}
    for method, kw in (("inverse", {}), ("fttc", {"method": "fttc"})):
        _run(u, grid, mat, kw)  # compile
        res, el = _run(u, grid, mat, kw)
        r = np.linalg.norm(grid.coordinates_um() - c, axis=-1)
        e = (grid.coordinates_um() - c) / np.maximum(r, 1e-9)[..., None]
        out[method] = {"warm_s": el, "radial_ratio": float(-np.sum(np.sum(res.force * e, -1) * (r < 2 * a)) / sphere.total_radial_force_pn),
                       "outside_fraction": float(res.force_magnitude()[r >= 2 * a].sum() / sphere.total_radial_force_pn),
                       "iterations": res.info.get("iterations")}
        print(method, out[method], flush=True)
    return out


# ----------------------------------------------------------------------------- report
def _beads_markdown(report) -> list:
    rows, cell = report.get("beads"), report.get("beads_cell")
    if not rows:
        return []
    L = ["", "## End to end from rendered beads, the cell's mask given: the force on the DVC grid and on the fine grid", "",
         "`tfm.reconstruct(..., mask=cell, force_grid=...)`, the DVC's defaults otherwise (bead density 0.02 per µm³); mean over the bead seeds "
         f"({len({r['seed'] for r in rows})}). Inward force over the closed form (targets: within 10 %, >= 85 % within "
         "two radii).", "",
         "| case | eigenstrain | inward, DVC grid | inward, fine grid | within 2 radii, fine | net / total, fine | forces (s), "
         "DVC / fine |", "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["case"], r["eigenstrain"]) for r in rows}, key=lambda k: (k[0], -k[1]))
    for case, eps in keys:
        sel = {g: [r for r in rows if r["case"] == case and r["eigenstrain"] == eps and r["force_grid"] == g] for g in ("dvc", "fine")}
        m = {g: {k: float(np.mean([r[k] for r in v])) for k in ("inward_ratio", "within_2r", "net_over_total", "time_forces_s")}
             for g, v in sel.items()}
        L.append(f"| {case} | {eps:g} | {m['dvc']['inward_ratio']:.3f} | {m['fine']['inward_ratio']:.3f} | "
                 f"{m['fine']['within_2r']:.3f} | {m['fine']['net_over_total']:.4f} | {m['dvc']['time_forces_s']:.1f} / "
                 f"{m['fine']['time_forces_s']:.1f} |")
    if cell:
        L += ["", "| polarised cell (FEM, rendered) | force rel. L2, 4 µm blocks (target <= 0.40) | contractility / truth "
              "(target 1 ± 0.1) | net / total |", "|---|---|---|---|"]
        for g in ("dvc", "fine"):
            v = [r for r in cell if r["force_grid"] == g]
            L.append(f"| {g} grid | {np.mean([r['rel_l2_blocks'] for r in v]):.3f} | "
                     f"{np.mean([r['contractility_ratio'] for r in v]):.3f} | {np.mean([r['net_over_total'] for r in v]):.4f} |")
    return L


def _markdown(report) -> str:
    L = ["# Force reconstruction: the regularised inverse beside FTTC and saenopy", "",
         f"Machine: {report['machine']}. E = 1 kPa; noise: std as a fraction of the RMS displacement component. "
         "Method details: the module docstring of `benchmarks/inverse.py` and docs/methods.md.", "",
         "## Closed forms (64³, 1 µm, nu = 0.45)", "",
         "| case | noise | method | ratio (target: 1 ± 0.03 clean, ± 0.08 noisy) | outside / total (target <= 0.05 clean, "
         "<= 0.15 noisy) | net / total | time (s) |", "|---|---|---|---|---|---|---|"]
    for r in report["closed_form"]:
        L.append(f"| {r['case']} | {r['noise']:.0%} | {r['method']} | {r['ratio']:.4f} | {r['outside_fraction']:.3f} | "
                 f"{r['net_over_total']:.4f} | {r['time_s']:.1f} |")
    L += ["", "## FEM ground truth: polarised cell (64³, 1 µm, nu = 0.45, fixed faces)", "",
          "| noise | method | force rel. L2 per voxel (target <= 0.35) | in 4 µm blocks | contractility / truth "
          "(target 1 ± 0.1) | net / contractility | time (s) |", "|---|---|---|---|---|---|---|"]
    for r in report["fem"]:
        L.append(f"| {r['noise']:.0%} | {r['method']} | {r['rel_l2']:.3f} | {r['rel_l2_blocks']:.3f} | "
                 f"{r['contractility_ratio']:.3f} | {r['net_over_contractility']:.4f} | {r['time_s']:.1f} |")
    s = report.get("saenopy")
    if s:
        L += ["", f"## Beside saenopy 1.0.8 (the polarised cell, nu = 0.25, {s['noise']:.0%} noise; saenopy k = 6E, "
              f"{s['element_um']:.0f} µm elements, {s['nodes']} nodes)", "",
              "| alpha | iterations | converged | time (s) | force rel. L2, 4 µm blocks | contractility / truth |",
              "|---|---|---|---|---|---|"]
        for i, r in enumerate(s["scan"]):
            mark = " (L-curve corner)" if i == s["corner"] else ""
            L.append(f"| {r['alpha']:.0e}{mark} | {r['iterations']} | {r['converged']} | {r['time_s']:.1f} | "
                     f"{r['rel_l2_blocks']:.3f} | {r['contractility_ratio']:.3f} |")
        t, k = s["tfm"], s["scan"][s["corner"]]
        L += ["", f"tfm's inverse on the same field: force rel. L2 in blocks {t['rel_l2_blocks']:.3f}, contractility / "
              f"truth {t['contractility_ratio']:.3f}, {t['time_s']:.1f} s (its own choice of alpha included). saenopy at its "
              f"L-curve corner: {k['rel_l2_blocks']:.3f}, {k['contractility_ratio']:.3f}, {k['time_s']:.1f} s for that one "
              f"solve ({k['time_s'] / t['time_s']:.1f}x tfm's time), {s['saenopy_total_scan_s']:.0f} s for the whole "
              f"L-curve ({s['saenopy_total_scan_s'] / t['time_s']:.0f}x)."]
    L += _beads_markdown(report)
    sp = report.get("speed")
    if sp:
        i, f = sp["inverse"], sp["fttc"]
        L += ["", f"## Speed: contracting sphere at {sp['n']}³, 5 % noise, warm", "",
              "| method | time (s) (target for the inverse: <= 10) | radial ratio | outside / total |", "|---|---|---|---|",
              f"| inverse | {i['warm_s']:.1f} | {i['radial_ratio']:.4f} | {i['outside_fraction']:.3f} |",
              f"| fttc | {f['warm_s']:.2f} | {f['radial_ratio']:.4f} | {f['outside_fraction']:.3f} |",
              "", f"The inverse takes {i['warm_s'] / f['warm_s']:.0f}x FTTC's time."]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--saenopy-python", help="python of a virtualenv with saenopy 1.0.8 (adds the side-by-side solve)")
    p.add_argument("--saenopy-alphas", type=float, nargs="+", default=[1e7, 1e8, 1e9, 1e10, 1e11])
    p.add_argument("--quick", action="store_true", help="clean cases only, no 128³ timing")
    p.add_argument("--beads", action="store_true",
                   help="only the end-to-end runs from rendered beads, added to the report already in --out (the other "
                        "sections are kept)")
    args = p.parse_args(argv)
    if args.beads:
        import json
        from pathlib import Path

        path = Path(args.out) / "inverse.json"
        report = json.loads(path.read_text()) if path.is_file() else {"machine": machine(), "closed_form": [], "fem": []}
        report["beads"] = bead_rows()
        report["beads_cell"] = bead_cell_rows(fem_cell(64))
        write_report(args.out, "inverse", report, _markdown(report))
        return 0
    levels = (0.0,) if args.quick else (0.0, 0.05)
    report = {"machine": machine(), "closed_form": closed_form(levels), "fem": fem_rows(fem_cell(64), levels)}
    if not args.quick:
        report["speed"] = speed(128)
    if args.saenopy_python:
        report["saenopy"] = saenopy_rows(args.saenopy_python, args.saenopy_alphas)
    write_report(args.out, "inverse", report, _markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
