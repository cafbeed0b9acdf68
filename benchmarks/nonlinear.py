"""Force reconstruction in nonlinear matrices (issue 38): the force inverse with the linear,
neo-Hookean and semi-affine fibre (collagen) laws, on fields whose forces are known, side
by side, and beside saenopy 1.0.8's regularised solve with the same fibre law.

    python -m benchmarks.nonlinear --out benchmarks/results [--saenopy-python PY] [--n 32]

Cases (1 µm voxels; noise: Gaussian, std a fraction of the RMS displacement component):

* small strain: Eshelby's contracting sphere (radius n/6 µm, eigenstrain -1e-5, E = 200 Pa,
  nu = 1/4 -- the fibre law's), the closed-form field with 1 % noise, through the inverse
  with each law (FEM operator, faces held at the field: ``boundary="fixed"``): the inward
  radial force within two radii over the closed form's total. Every law is linear there.
* FEM ground truth at large strain: an elongated, polarised cell (semi-axes n/4 x n/9 x
  n/10 µm, uniaxial eigenstrain ``--contraction``) in an n³ box with fixed faces, solved by
  the voxel FEM (tfm.synth.fem) with the neo-Hookean law (E = 200 Pa, nu = 0.45) and with
  the fibre law (saenopy's collagen values, k = 6 x 200 Pa); the peak strain is the largest
  principal Green-Lagrange strain in the gel. Each field with 1 % noise through the inverse
  with the matching law and with the linear law of the same small-strain moduli, and the
  exact field through the matching law: force
  relative L2 in 4 µm blocks (the force summed per block) and contractility about the
  cell's centre against the FEM's, with the time.
* saenopy (``--saenopy-python``, its virtualenv from ``scripts/install-peers``): the fibre
  case's noisy field interpolated onto its box mesh (2 µm elements), its
  ``solve_regularized`` with ``SemiAffineFiberMaterial`` of the same parameters at each alpha
  of a log scan, alpha at the L-curve's corner; its forces (reactions) sign-flipped,
  compared in 4 µm blocks centred on its nodes.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import tfm
from tfm.material import SemiAffineFiber
from tfm.synth import cells, fem

from .common import machine, write_report
from .inverse import blocks, contractility_of, grid_blocks, lcurve_corner, noisy

E = 200.0  # small-strain Young's modulus, Pa (the fibre law's k = 1200 Pa)
NOISE = 0.01


def _solve(u, grid, law, **kw):
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = tfm.reconstruct_forces(u, grid, law, operator="fem", boundary="fixed", **kw)
    return res, time.perf_counter() - t0


def laws() -> dict:
    """Each law at the fibre law's small-strain moduli (E, nu = 1/4)."""
    return {"linear": tfm.LinearElastic(E, 0.25), "neo-hookean": tfm.NeoHookean(E, 0.25),
            "fiber": SemiAffineFiber.collagen(6 * E)}


def small_strain(n: int) -> list:
    grid = tfm.Grid((n,) * 3, 1.0)
    c = np.asarray(grid.center_um())
    a = n / 6.0
    sphere = tfm.analytic.EshelbySphere(a, -1e-5, tuple(c), tfm.LinearElastic(E, 0.25))
    u = noisy(np.asarray(sphere.sample(grid)), NOISE, 0)
    x = grid.coordinates_um()
    r = np.linalg.norm(x - c, axis=-1)
    e = (x - c) / np.maximum(r, 1e-9)[..., None]
    rows = []
    for name, law in laws().items():
        res, el = _solve(u, grid, law)
        inward = float(-np.sum(np.sum(res.force * e, -1) * (r < 2 * a)) * grid.voxel_volume_um3)
        rows.append({"case": "sphere 1e-5", "law": name, "inward_over_closed_form": inward / sphere.total_radial_force_pn,
                     "time_s": el, "iterations": res.info.get("iterations")})
        print(rows[-1], flush=True)
    return rows


def fem_truth(n: int, law, contraction: float) -> dict:
    grid = tfm.Grid((n,) * 3, 1.0)
    cell = cells.Cell(center_um=tuple(grid.center_um()), semi_axes_um=(n / 4, n / 9, n / 10),
                      rotation=tuple(map(tuple, np.eye(3)[[2, 1, 0]])), protrusions=(), pattern="polarised",
                      loading="eigenstrain", contraction=contraction, traction_pa=0.0, youngs_modulus_pa=E,
                      poisson_ratio=0.45, cell_modulus_scale=1.0)
    frac, eps, _ = cells.rasterize(cell, grid)
    t0 = time.perf_counter()
    sol = fem.solve(grid, law, eigenstrain=eps, boundary="fixed")
    u = np.asarray(sol.displacement, np.float64)
    h = np.stack(np.gradient(u, *grid.spacing_um, axis=(0, 1, 2)), -1)  # H[..., i, j] = du_i / dx_j
    green = 0.5 * (h + np.swapaxes(h, -1, -2) + np.einsum("...ki,...kj->...ij", h, h))
    gel = frac < 0.01
    gel[[0, -1]] = gel[:, [0, -1]] = gel[:, :, [0, -1]] = False
    peak = float(np.abs(np.linalg.eigvalsh(green[gel])).max())
    return {"grid": grid, "u": np.asarray(sol.displacement), "f": np.asarray(sol.force_density), "mask": frac > 0.5,
            "center": np.asarray(grid.center_um()), "fem_s": time.perf_counter() - t0, "peak_strain": peak,
            "fem_info": {k: sol.info[k] for k in ("newton_iterations", "cg_iterations", "load_steps")}}


def large_strain(n: int, contraction: float) -> tuple[list, dict]:
    rows, fields = [], {}
    for truth_name, law in (("neo-hookean", tfm.NeoHookean(E, 0.45)), ("fiber", laws()["fiber"])):
        data = fem_truth(n, law, contraction)
        fields[truth_name] = data
        grid, f_true = data["grid"], data["f"]
        c_true = tfm.Result(grid, data["u"], f_true).contractility(center_um=data["center"])
        b_true, _ = grid_blocks(grid, f_true)
        data["u_noisy"] = noisy(data["u"], NOISE, 1)
        runs = [(NOISE, truth_name, law), (NOISE, "linear", law.linearized()), (0.0, truth_name, law)]
        for level, name, rec in runs:
            # noise-free: the exact FEM field, the noise given as 1e-4 of its RMS (alpha near zero)
            u = data["u_noisy"] if level else data["u"]
            kw = {} if level else {"noise_um": 1e-4 * float(np.sqrt(np.mean(data["u"] ** 2)))}
            res, el = _solve(u, grid, rec, **kw)
            b, _ = grid_blocks(grid, res.force)
            rows.append({"truth": truth_name, "noise": level, "law": name, "peak_strain": data["peak_strain"],
                         "fem_s": data["fem_s"],
                         "rel_l2_blocks": float(np.linalg.norm(b - b_true) / np.linalg.norm(b_true)),
                         "contractility_ratio": res.contractility(center_um=data["center"]) / c_true,
                         "net_over_total": float(np.linalg.norm(res.net_force()) / res.total_force()),
                         "time_s": el, "iterations": res.info.get("iterations")})
            print(rows[-1], flush=True)
    return rows, fields


def saenopy_rows(python, data, alphas, element_um: float = 2.0) -> dict:
    from .peers import saenopy_solve

    grid, f_true = data["grid"], data["f"]
    law = laws()["fiber"]
    c_true = tfm.Result(grid, data["u"], f_true).contractility(center_um=data["center"])
    b_true, nb = grid_blocks(grid, f_true)
    t0 = time.perf_counter()
    out = saenopy_solve(python, data["u_noisy"], grid.spacing_um, element_um, law.k_pa, alphas,
                        fiber=(law.d0, law.lambda_s, law.d_s))
    wall = time.perf_counter() - t0
    scan = []
    for row, f in zip(out["rows"], out["forces_pn"]):
        f = -f  # its reactions -> the force applied to the matrix
        b = blocks(out["nodes_um"], f, nb)
        scan.append({**row, "rel_l2_blocks": float(np.linalg.norm(b - b_true) / np.linalg.norm(b_true)),
                     "contractility_ratio": contractility_of(out["nodes_um"], f, data["center"]) / c_true})
    k = lcurve_corner([r["misfit_m"] for r in scan], [r["force_norm_n"] for r in scan])
    return {"element_um": element_um, "nodes": out["nodes"], "scan": scan, "corner": k, "wall_s": wall,
            "total_scan_s": float(sum(r["time_s"] for r in scan))}


def _markdown(rep) -> str:
    L = ["# Nonlinear matrices: the force inverse with linear, neo-Hookean and fibre (collagen) laws", "",
         f"`{rep['command']}` on {rep['machine']}, jax {rep['jax']}; {rep['n']}³ voxels of 1 µm, noise "
         f"{NOISE:.0%} of the RMS displacement; the inverse on the voxel FEM's operator with the box faces held "
         "(benchmarks/nonlinear.py docstring for the cases).", "",
         "## Small strain (eigenstrain 1e-5): every law is linear there", "",
         "| law | inward force / closed form (target 1 ± 0.05) | time, s |", "|---|---|---|"]
    L += [f"| {r['law']} | {r['inward_over_closed_form']:.3f} | {r['time_s']:.1f} |" for r in rep["small_strain"]]
    L += ["", f"## FEM ground truth at large strain (polarised cell, eigenstrain {rep['contraction']})", "",
          "| truth (FEM law) | peak strain | noise | reconstructed with | force rel. L2, 4 µm blocks (target <= 0.35) | "
          "contractility / truth (target 1 ± 0.1) | net / total | time, s |", "|---|---|---|---|---|---|---|---|"]
    L += [f"| {r['truth']} | {r['peak_strain']:.2f} | {r['noise']:.0%} | {r['law']} | {r['rel_l2_blocks']:.3f} | "
          f"{r['contractility_ratio']:.3f} | {r['net_over_total']:.3f} | {r['time_s']:.1f} |" for r in rep["large_strain"]]
    s = rep.get("saenopy")
    if s:
        k = s["scan"][s["corner"]]
        t = next(r for r in rep["large_strain"] if r["truth"] == "fiber" and r["law"] == "fiber" and r["noise"] == NOISE)
        L += ["", "## Beside saenopy 1.0.8 (the fibre case, same law and parameters)", "",
              f"saenopy on its box mesh ({s['element_um']:g} µm elements, {s['nodes']} nodes), alpha at the L-curve's "
              f"corner ({k['alpha']:.0e}): force rel. L2 {k['rel_l2_blocks']:.3f}, contractility / truth "
              f"{k['contractility_ratio']:.3f}, {k['time_s']:.1f} s for that solve, {s['total_scan_s']:.0f} s for the "
              f"scan. tfm: {t['rel_l2_blocks']:.3f}, {t['contractility_ratio']:.3f}, {t['time_s']:.1f} s with its "
              f"own choice of alpha (saenopy's corner solve / tfm: {k['time_s'] / t['time_s']:.2f}x; its scan / tfm: "
              f"{s['total_scan_s'] / t['time_s']:.1f}x).", "",
              "| alpha | iterations | force rel. L2 | contractility / truth | time, s |", "|---|---|---|---|---|"]
        L += [f"| {r['alpha']:.0e} | {r['iterations']} | {r['rel_l2_blocks']:.3f} | {r['contractility_ratio']:.3f} | "
              f"{r['time_s']:.1f} |" for r in s["scan"]]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--n", type=int, default=32, help="box edge, voxels of 1 µm (default 32)")
    p.add_argument("--contraction", type=float, default=0.5, help="the cell's uniaxial eigenstrain (default 0.5: peak strain about 0.3)")
    p.add_argument("--saenopy-python", help="python of a virtualenv with saenopy 1.0.8 (scripts/install-peers)")
    p.add_argument("--saenopy-alphas", type=float, nargs="+", default=[1e8, 1e9, 1e10, 1e11])
    args = p.parse_args(argv)
    import jax

    rep = {"command": "python -m benchmarks.nonlinear " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
           "machine": machine(), "jax": jax.__version__, "n": args.n, "contraction": args.contraction}
    rep["small_strain"] = small_strain(args.n)
    rep["large_strain"], fields = large_strain(args.n, args.contraction)
    if args.saenopy_python:
        rep["saenopy"] = saenopy_rows(args.saenopy_python, fields["fiber"], args.saenopy_alphas)
    write_report(args.out, "nonlinear", rep, _markdown(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
