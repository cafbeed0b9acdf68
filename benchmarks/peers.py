"""Peers run side by side with tfm, each in its own interpreter (its own virtualenv):
saenopy 1.0.8's PIV and regularised FEM force solve.

    saenopy_raw(python, ref, dfm, window, element)   # its output, nodes and u in µm
    saenopy_solve(python, u, spacing, element, k, alphas)  # its force solve on a given field
    saenopy_axes(python, window, element, psf)       # its axis order and signs, measured
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SAENOPY_SCRIPT = r"""
import json, sys, time
import numpy as np
from saenopy.get_deformations import get_displacements_from_stacks

class Stack:
    # The three things get_displacements_from_stacks reads: an array (Y, X, C, Z),
    # the voxel size (x, y, z) and the shape.
    def __init__(self, vol):
        self.a = np.asarray(vol, np.float32).transpose(1, 2, 0)[:, :, None, :]
        self.voxel_size = (1.0, 1.0, 1.0)
        self.shape = self.a.shape
    def __array__(self, dtype=None, copy=None):
        return self.a

ref = np.load(sys.argv[1]); dfm = np.load(sys.argv[2])
window, element, max_iterations = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[6])
t0 = time.perf_counter()
mesh = get_displacements_from_stacks(Stack(ref), Stack(dfm), window_size=window, element_size=element,
                                     signal_to_noise=1.1, drift_correction=False)
el = time.perf_counter() - t0
out = {"time_s": el, "nodes": np.asarray(mesh.nodes).tolist(), "u": np.asarray(mesh.displacements_measured).tolist()}
if max_iterations > 0:
    # The force solve as saenopy's own pipeline runs it: the PIV field interpolated onto a
    # tetrahedral mesh of the PIV box, then solve_regularized with its defaults (alpha
    # 1e10, Huber weights, convergence when the energy's coefficient of variation over 6
    # iterations < 1 %), a linear material of stiffness k = E.
    from saenopy.solver import interpolate_mesh
    from saenopy.materials import LinearMaterial
    t1 = time.perf_counter()
    solver = interpolate_mesh(mesh, mesh.displacements_measured, {"mesh_size": "piv", "element_size": element})
    solver.set_material_model(LinearMaterial(float(sys.argv[7])))
    rec = solver.solve_regularized(max_iterations=max_iterations)
    out.update(time_solve_s=time.perf_counter() - t1, solve_iterations=len(rec) - 1,
               solve_converged=len(rec) - 1 < max_iterations, solve_nodes=int(solver.mesh.nodes.shape[0]))
json.dump(out, open(sys.argv[5], "w"))
"""


def saenopy_raw(python, ref, dfm, window, element, solve_iterations: int = 0, stiffness_pa: float = 1000.0) -> dict:
    """saenopy's PIV (and, with ``solve_iterations`` > 0, its regularised FEM force solve,
    at most that many iterations) in its own interpreter. Returns its output dict with the
    PIV nodes and displacements converted to arrays in µm (``nodes_um``, ``u_um``)."""
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/r.npy", ref)
        np.save(f"{tmp}/d.npy", dfm)
        Path(f"{tmp}/s.py").write_text(SAENOPY_SCRIPT)
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
        proc = subprocess.run([python, f"{tmp}/s.py", f"{tmp}/r.npy", f"{tmp}/d.npy", str(window), str(element), f"{tmp}/o.json",
                               str(int(solve_iterations)), str(stiffness_pa)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-1500:])
        out = json.loads(Path(f"{tmp}/o.json").read_text())
    out["nodes_um"], out["u_um"] = np.asarray(out.pop("nodes")) * 1e6, np.asarray(out.pop("u")) * 1e6  # m -> µm (= voxels here)
    return out


def saenopy_axes(python, window, element, psf_sigma_um):
    """Signed permutation M with u_saenopy = M u_tfm, measured with uniform shifts along
    each of tfm's axes (z, y, x): saenopy's component order and signs are read off its
    output, not assumed."""
    import tfm
    from tfm.synth import beads

    M = np.zeros((3, 3))
    grid = tfm.Grid((48, 48, 48), 1.0)
    for a in range(3):
        shift = np.zeros(3)
        shift[a] = 0.6
        rng = np.random.default_rng(10 + a)
        pos = beads.random_positions(grid, 0.0099, rng, margin_um=4)
        r, d = beads.render_pair(grid, pos, lambda q: np.broadcast_to(shift, q.shape), psf_sigma_um=psf_sigma_um)
        u = saenopy_raw(python, r, d, window, element)["u_um"]
        med = np.nanmedian(u, axis=0)
        j = int(np.argmax(np.abs(med)))
        M[j, a] = np.sign(med[j])
    if not np.allclose(np.abs(M).sum(0), 1) or not np.allclose(np.abs(M).sum(1), 1):
        raise RuntimeError(f"could not calibrate saenopy's axes: {M}")
    return M


SAENOPY_SOLVE_SCRIPT = r"""
import json, sys, time
import numpy as np
from scipy.interpolate import RegularGridInterpolator
from saenopy import Solver
from saenopy.materials import LinearMaterial, SemiAffineFiberMaterial
from saenopy.multigrid_helper import create_box_mesh, get_nodes_with_one_face

d = np.load(sys.argv[1])
u, spacing, element, k = d["u"], d["spacing"], float(d["element"]), float(d["k"])
fiber = [None if not np.isfinite(v) else float(v) for v in d["fiber"]]  # d_0, lambda_s, d_s (inf: None)
axes = [np.arange(n) * h for n, h in zip(u.shape[:3], spacing)]  # tfm's (z, y, x), µm
# saenopy's coordinates (x, y, z) in m are tfm's (z, y, x) reversed.
lines = [np.arange(0.0, a[-1] + 1e-9, element) * 1e-6 for a in axes[::-1]]
R, T = create_box_mesh(*lines)
U = RegularGridInterpolator(axes, u)(R[:, ::-1] * 1e6)[:, ::-1] * 1e-6
inside = np.ones(len(R), bool)
inside[get_nodes_with_one_face(T)] = False
rows, fields = [], {}
for i, alpha in enumerate(d["alphas"]):
    t0 = time.perf_counter()
    M = Solver()
    M.set_nodes(R)
    M.set_tetrahedra(T)
    M.set_target_displacements(U, inside)
    M.set_material_model(LinearMaterial(k) if all(v is None for v in fiber) else SemiAffineFiberMaterial(k, *fiber))
    rec = M.solve_regularized(alpha=float(alpha), max_iterations=int(d["max_iterations"]))
    el = time.perf_counter() - t0
    f, uf = np.asarray(M.mesh.forces), np.asarray(M.mesh.displacements)
    rows.append({"alpha": float(alpha), "time_s": el, "iterations": len(rec) - 1,
                 "converged": len(rec) - 1 < int(d["max_iterations"]),
                 "misfit_m": float(np.sqrt(np.mean((uf - U)[inside] ** 2))), "force_norm_n": float(np.linalg.norm(f))})
    fields[f"f{i}"] = f[:, ::-1] * 1e12  # pN, tfm's (z, y, x) order
np.savez(sys.argv[2], nodes_um=R[:, ::-1] * 1e6, **fields)
json.dump({"rows": rows, "nodes": len(R), "tetrahedra": len(T)}, open(sys.argv[3], "w"))
"""


def saenopy_solve(python, u, spacing_um, element_um: float, stiffness_k_pa: float, alphas, max_iterations: int = 300,
                  fiber=(None, None, None)) -> dict:
    """saenopy's regularised force solve (its ``solve_regularized``: Huber-weighted, its own
    convergence rule) on a given displacement field, in its own interpreter: the field
    ``u`` (Z, Y, X, 3) µm on a grid of ``spacing_um`` is interpolated onto saenopy's box mesh
    of ``element_um`` tetrahedral cells (border nodes unconstrained, as in its pipeline) and
    solved once per alpha, material ``LinearMaterial(stiffness_k_pa)`` or, with ``fiber =
    (d_0, lambda_s, d_s)``, ``SemiAffineFiberMaterial(stiffness_k_pa, *fiber)``. Returns per alpha
    its time (including the material's lookup table), iterations, misfit and force norm,
    and ``nodes_um`` (N, 3) with ``forces_pn`` (one (N, 3) array per alpha), in tfm's
    (z, y, x) order."""
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(f"{tmp}/in.npz", u=np.asarray(u, np.float64), spacing=np.asarray(spacing_um, float), element=element_um,
                 k=stiffness_k_pa, alphas=np.asarray(alphas, float), max_iterations=max_iterations,
                 fiber=np.asarray([np.inf if v is None else v for v in fiber], float))
        Path(f"{tmp}/s.py").write_text(SAENOPY_SOLVE_SCRIPT)
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
        proc = subprocess.run([python, f"{tmp}/s.py", f"{tmp}/in.npz", f"{tmp}/out.npz", f"{tmp}/out.json"],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-1500:])
        out = json.loads(Path(f"{tmp}/out.json").read_text())
        with np.load(f"{tmp}/out.npz") as z:
            out["nodes_um"] = z["nodes_um"]
            out["forces_pn"] = [z[f"f{i}"] for i in range(len(out["rows"]))]
    return out


ALDVC_SCRIPT = r"""
import json, sys, time
import numpy as np
from al_dvc import dvcpara_default, run_aldvc

ref = np.load(sys.argv[1]).astype(np.float32); dfm = np.load(sys.argv[2]).astype(np.float32)
subset, step = int(sys.argv[3]), int(sys.argv[4])
para = dvcpara_default(winsize=subset, winstepsize=step, verbose=False)
times = []
for _ in range(2):  # cold (numba JIT and its disk cache), then warm, in one process
    t0 = time.perf_counter()
    res = run_aldvc(para, [ref, dfm], compute_strain=False)
    times.append(time.perf_counter() - t0)
mesh, frame = res.dvc_mesh, res.result_disp[-1]
U = frame.U_accum if frame.U_accum is not None else frame.U
json.dump({"cold_s": times[0], "warm_s": times[1], "nodes_xyz": np.asarray(mesh.coordinates).tolist(),
           "u_xyz": np.asarray(U).tolist(), "valid": np.asarray(mesh.node_valid).tolist() if len(mesh.node_valid) else None},
          open(sys.argv[5], "w"))
"""


def aldvc_raw(python, ref, dfm, subset: int = 16, step: int = 8) -> dict:
    """pyALDVC (al-dvc) in its own interpreter, called twice in one process: ``cold_s``,
    ``warm_s``, node positions and displacements in tfm's (z, y, x) order, voxels
    (pyALDVC reports node coordinates and displacements as (x, y, z) of a (Z, Y, X)
    volume, checked by ``aldvc_axes``)."""
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/r.npy", ref)
        np.save(f"{tmp}/d.npy", dfm)
        Path(f"{tmp}/s.py").write_text(ALDVC_SCRIPT)
        proc = subprocess.run([python, f"{tmp}/s.py", f"{tmp}/r.npy", f"{tmp}/d.npy", str(subset), str(step), f"{tmp}/o.json"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-1500:])
        out = json.loads(Path(f"{tmp}/o.json").read_text())
    out["nodes_zyx"] = np.asarray(out.pop("nodes_xyz"))[:, ::-1]
    out["u_zyx"] = np.asarray(out.pop("u_xyz"))[:, ::-1]
    out["valid"] = None if out["valid"] is None else np.asarray(out["valid"], bool)
    return out
