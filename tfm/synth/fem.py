"""Matrix-free voxel finite elements in JAX: ground-truth displacement and force fields.

Discretisation
--------------
The nodes are the points of the image :class:`~tfm.grid.Grid` (one node per voxel, so
every field maps 1:1 onto the bead volumes); the elements are the boxes between 8
neighbouring nodes: trilinear hexahedra, integrated with 2 x 2 x 2 Gauss points (exact
for the linear stiffness). The discrete energy is

    Pi(u) = sum_e sum_g |e| / 8  s_e  W_e(H_eg(u)) - F_ext . u

with ``H = grad u`` at the Gauss points, ``s_e`` the modulus scale of the element (a
heterogeneous matrix: a softer cell, a stiffened or degraded shell) and ``W`` the
material's :meth:`~tfm.material.Material.energy_density`. A stress-free strain
(eigenstrain) ``eps*`` -- the cell's contraction -- enters as ``W(H - eps*)`` (linear)
or multiplicatively, ``F = F_e (I + eps*)`` (the nonlinear laws, ``det(I + eps*) W(F_e)``).
``grad Pi`` is the residual (by reverse-mode autodiff), its directional derivative the
tangent stiffness (forward-over-reverse): no matrix is ever assembled, and the same code
serves every material.

Solvers
-------
* Linear: conjugate gradients preconditioned by the *displacement decomposition*
  (Blaheta 1994; Axelsson 1999): the block-diagonal part of the stiffness of the
  homogeneous matrix, ``(lambda + 2 mu) d_i^2 + mu sum_{j != i} d_j^2`` for component
  ``i``, which on a box with fixed faces is diagonalised exactly by the type-I discrete
  sine transform (Q1 stiffness and mass matrices are tridiagonal Toeplitz along each
  axis). It is spectrally equivalent to the elasticity operator, so the iteration count
  does not grow with the grid (it grows with 1 / (1 - 2 nu) and the modulus contrast).
* Nonlinear laws (neo-Hookean, semi-affine fibres): Newton-Krylov with the same preconditioner, a backtracking line search
  on the energy (elements must not invert) and load stepping.

Boundary: the box faces are fixed (``u = 0``, or ``u`` prescribed by
``boundary_displacement``, e.g. an analytic far field).

Ground-truth force
------------------
``force_density`` is the force per volume (pN/µm³) that the active loads -- eigenstrain
and ``body_force`` -- exert on the passive matrix: ``grad Pi_passive(u) / voxel volume``
with ``Pi_passive`` the energy without eigenstrain (same, possibly heterogeneous,
moduli). It is exactly what force microscopy recovers from ``u``: for a homogeneous
linear matrix it equals ``K u / h^3``; it sums to zero (no net force) for an
eigenstrain load. Reaction forces on the fixed faces are excluded (set to zero there).
"""

from __future__ import annotations

import dataclasses
import math
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..fields import trilinear
from ..grid import Grid
from ..material import (
    LinearElastic,
    Material,
    NeoHookean,
    SemiAffineFiber,
    det3,
    inv3,
    law_energy,
)

GAUSS = (0.5 - 0.5 / math.sqrt(3.0), 0.5 + 0.5 / math.sqrt(3.0))


@dataclasses.dataclass(frozen=True)
class FEMConfig:
    """Solver settings."""

    rtol: float = 1e-5  # stop when ||residual|| <= rtol * ||load|| (free nodes)
    maxiter: int = 3000  # conjugate-gradient iterations per linear solve
    newton_maxiter: int = 25  # Newton iterations per load step (nonlinear laws)
    load_steps: int = 1  # initial number of load increments (nonlinear laws); halved steps on failure
    max_load_steps: int = 64  # give up beyond this many increments
    # give up beyond this many Newton iterations in all (a failing solve otherwise retries up
    # to 64 load steps x 25 iterations; measured: one such sample held `tfm synth` > 10 min)
    newton_budget: int = 300
    # and beyond this many conjugate-gradient iterations in all (Newton steps near a failing
    # load each ran up to `maxiter` CG iterations: one acquisition-preset sample held
    # `tfm synth` over 20 min within the Newton budget; the slowest of 205 that converged took 2,055)
    cg_budget: int = 4000

    def __post_init__(self):
        if not 0 < self.rtol < 1:
            raise ValueError(f"rtol must lie in (0, 1), got {self.rtol}")
        for name in ("maxiter", "newton_maxiter", "load_steps", "max_load_steps", "newton_budget", "cg_budget"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass
class FEMSolution:
    """Displacement (µm) and force density (pN/µm³) on the grid's nodes, plus solver info."""

    displacement: np.ndarray
    force_density: np.ndarray
    grid: Grid
    info: dict


class ConvergenceError(RuntimeError):
    """The solver did not reach the requested tolerance."""


# -- element kinematics ------------------------------------------------------------------


def _lo_hi(v, axis):
    n = v.shape[axis]
    return jax.lax.slice_in_dim(v, 0, n - 1, axis=axis), jax.lax.slice_in_dim(v, 1, n, axis=axis)


def _gauss_gradients(u, spacing):
    """Yield ``H = grad u`` ``(Ez, Ey, Ex, 3, 3)`` at each of the 8 Gauss points in turn
    (``H[..., i, j] = du_i / dx_j``; nodal ``u`` is ``(Z, Y, X, 3)``)."""
    diffs = []
    for a in range(3):
        lo, hi = _lo_hi(u, a)
        diffs.append((hi - lo) / spacing[a])
    for gz in GAUSS:
        for gy in GAUSS:
            for gx in GAUSS:
                g = (gz, gy, gx)
                cols = []
                for a in range(3):
                    v = diffs[a]
                    for b in range(3):
                        if b != a:
                            lo, hi = _lo_hi(v, b)
                            v = (1 - g[b]) * lo + g[b] * hi
                    cols.append(v)
                yield jnp.stack(cols, axis=-1)


def nodes_to_elements(v):
    """Mean of the 8 corner values: nodal ``(Z, Y, X, ...)`` -> element ``(Z-1, Y-1, X-1, ...)``."""
    for a in range(3):
        lo, hi = _lo_hi(v, a)
        v = 0.5 * (lo + hi)
    return v


MATERIALS = (LinearElastic, NeoHookean, SemiAffineFiber)


def _law(material) -> str:
    return material.law


def _moduli(material, dtype):
    return jnp.asarray(material.law_parameters(), dtype)


def energy(u, scale_e, eps_e, f_ext, moduli, law: str, spacing):
    """Total potential energy (pN µm) of nodal displacement ``u`` (Z, Y, X, 3) µm:
    ``scale_e`` the element modulus scale (Z-1, Y-1, X-1), ``eps_e`` the element eigenstrain
    (or None), ``f_ext`` nodal external forces in pN (or None), ``moduli`` the law's
    parameters (:meth:`~tfm.material.Material.law_parameters`, e.g. ``(lambda, mu)`` Pa;
    traced, so one compilation serves every stiffness), ``law`` a key of
    :func:`~tfm.material.law_energy`,
    ``spacing`` the voxel size. Its gradient is the nodal internal force (pN)."""
    law_density = law_energy(law)

    def density(h):
        return law_density(h, moduli)

    if eps_e is not None and law != "linear":
        fstar = jnp.eye(3, dtype=u.dtype) + eps_e
        fstar_inv, fstar_det = inv3(fstar), det3(fstar)
    w = 0.0
    for h in _gauss_gradients(u, spacing):  # accumulate point by point: no 8x temporaries
        if eps_e is None:
            w = w + density(h)
        elif law == "linear":
            w = w + density(h - eps_e)
        else:
            he = jnp.einsum("...ij,...jk->...ik", h - eps_e, fstar_inv)  # F_e - I, no cancellation
            w = w + fstar_det * density(he)
    e = spacing[0] * spacing[1] * spacing[2] / 8.0 * jnp.sum(scale_e * w)  # spacing may be traced
    if f_ext is not None:
        e = e - jnp.sum(f_ext * u)
    return e


# -- preconditioner: displacement decomposition, diagonalised by DST-I ------------------


def _dst1(x, axis):
    """Type-I discrete sine transform along ``axis`` (unnormalised; its own inverse up to
    ``(n + 1) / 2``), via the FFT of the odd extension."""
    n = x.shape[axis]
    x = jnp.moveaxis(x, axis, -1)
    z = jnp.zeros(x.shape[:-1] + (1,), x.dtype)
    y = jnp.concatenate([z, x, z, -x[..., ::-1]], axis=-1)
    out = -0.5 * jnp.fft.rfft(y, axis=-1)[..., 1 : n + 1].imag
    return jnp.moveaxis(out.astype(x.dtype), -1, axis)


def preconditioner_eigenvalues(interior_shape, spacing, material) -> np.ndarray:
    """Eigenvalues ``(nz, ny, nx, 3)`` of the block-diagonal Q1 stiffness (pN/µm per µm
    of nodal displacement) on the interior nodes of a box with fixed faces."""
    lam, mu = material.lame_lambda_pa, material.shear_modulus_pa
    s, m = [], []
    for n, h in zip(interior_shape, spacing):
        c = np.cos(np.pi * np.arange(1, n + 1) / (n + 1))
        s.append((2 - 2 * c) / h)  # 1D stiffness  (1/h) tridiag(-1, 2, -1)
        m.append(h * (4 + 2 * c) / 6)  # 1D mass   (h/6) tridiag(1, 4, 1)
    sz, sy, sx = np.meshgrid(*s, indexing="ij")
    mz, my, mx = np.meshgrid(*m, indexing="ij")
    terms = (sz * my * mx, mz * sy * mx, mz * my * sx)
    eig = np.stack([sum((lam + 2 * mu if a == c else mu) * terms[a] for a in range(3)) for c in range(3)], axis=-1)
    return eig


def _apply_preconditioner(r, eig, edge_inv):
    """Solve the block-diagonal system for the interior nodes; on the faces, scale by
    ``edge_inv`` (the inverse diagonal where faces are free, 0 where they are fixed)."""
    ri = r[1:-1, 1:-1, 1:-1]
    t = ri
    for a in range(3):
        t = _dst1(t, a)
    t = t / eig
    for a in range(3):
        t = _dst1(t, a)
    norm = np.prod([2.0 / (n + 1) for n in ri.shape[:3]])
    return (r * edge_inv).at[1:-1, 1:-1, 1:-1].set(t * norm)


def _pcg(apply_a, precond, b, tol_abs, maxiter):
    """Preconditioned conjugate gradients from x = 0 (``lax.while_loop``).

    Returns ``(x, iterations, ||b - A x||)``."""
    x = jnp.zeros_like(b)
    r = b
    z = precond(r)
    p = z
    rz = jnp.vdot(r, z)

    def cond(state):
        _, r, _, _, _, k = state
        return (k < maxiter) & (jnp.linalg.norm(r) > tol_abs)

    def body(state):
        x, r, z, p, rz, k = state
        ap = apply_a(p)
        alpha = rz / jnp.vdot(p, ap)
        x = x + alpha * p
        r = r - alpha * ap
        z = precond(r)
        rz_new = jnp.vdot(r, z)
        p = z + (rz_new / rz) * p
        return x, r, z, p, rz_new, k + 1

    x, r, _, _, _, k = jax.lax.while_loop(cond, body, (x, r, z, p, rz, jnp.asarray(0)))
    return x, k, jnp.linalg.norm(r)


# -- jitted pieces (the law and the spacing are static; moduli are traced) -------------


@partial(jax.jit, static_argnames=("law", "spacing"))
def _residual(u, t, scale_e, eps_e, f_ext, free, moduli, law, spacing):
    """Load ``t F_ext`` minus internal force, on the free nodes (``free``: 1 or 0 per node)."""
    eps = None if eps_e is None else t * eps_e
    g = jax.grad(energy)(u, scale_e, eps, None, moduli, law, spacing)
    load = 0.0 if f_ext is None else t * f_ext
    return free * (load - g)


@partial(jax.jit, static_argnames=("law", "spacing"))
def _total_energy(u, t, scale_e, eps_e, f_ext, moduli, law, spacing):
    eps = None if eps_e is None else t * eps_e
    f = None if f_ext is None else t * f_ext
    return energy(u, scale_e, eps, f, moduli, law, spacing)


@partial(jax.jit, static_argnames=("law", "spacing", "maxiter"))
def _tangent_solve(u, t, rhs, scale_e, eps_e, eig, edge_inv, free, tol_abs, moduli, law, spacing, maxiter):
    """Solve ``K_t(u) du = rhs`` on the free nodes (K_t: Hessian of the energy)."""
    eps = None if eps_e is None else t * eps_e
    grad = jax.grad(energy)

    if law == "linear":
        # Quadratic energy: K v is the gradient of the eigenstrain-free energy at v.
        def apply_a(v):
            return free * grad(v, scale_e, None, None, moduli, law, spacing)
    else:
        # Linearise once per Newton step; each CG iteration then only runs the tangent map.
        _, tangent = jax.linearize(lambda w: grad(w, scale_e, eps, None, moduli, law, spacing), u)

        def apply_a(v):
            return free * tangent(v)

    return _pcg(apply_a, lambda r: _apply_preconditioner(r, eig, edge_inv), rhs, tol_abs, maxiter)


@partial(jax.jit, static_argnames=("law", "spacing"))
def _passive_force(u, scale_e, free, moduli, law, spacing):
    """``grad Pi_passive(u)`` on free nodes (pN): the force the loads apply to the matrix."""
    return free * jax.grad(energy)(u, scale_e, None, None, moduli, law, spacing)


# -- public API ----------------------------------------------------------------------------


def _prepare(grid, material, eigenstrain, body_force, modulus_scale, boundary_displacement, dtype):
    if not isinstance(grid, Grid) or grid.ndim != 3:
        raise ValueError(f"grid must be a 3D tfm.Grid, got {grid!r}")
    if any(n < 3 for n in grid.shape):
        raise ValueError(f"the FEM needs at least 3 nodes along each axis, got grid shape {grid.shape}")
    if not isinstance(material, MATERIALS):
        raise TypeError(f"material must be tfm.LinearElastic, tfm.NeoHookean or tfm.SemiAffineFiber, got "
                        f"{type(material).__name__}")
    if eigenstrain is None and body_force is None and boundary_displacement is None:
        raise ValueError("give a load: eigenstrain, body_force or boundary_displacement")

    def finite(a, name):
        a = np.asarray(a, dtype=dtype)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or infinite values")
        return a

    eps_e = None
    if eigenstrain is not None:
        e = finite(eigenstrain, "eigenstrain")
        if e.shape == grid.shape:
            e = e[..., None, None] * np.eye(3, dtype=dtype)
        elif e.shape != (*grid.shape, 3, 3):
            raise ValueError(f"eigenstrain must have shape {grid.shape} (dilatational) or {(*grid.shape, 3, 3)}, got {e.shape}")
        if np.any(np.abs(e - np.swapaxes(e, -1, -2)) > 1e-6 * max(np.abs(e).max(), 1e-30)):
            raise ValueError("eigenstrain must be a symmetric tensor field")
    f_ext = None
    if body_force is not None:
        f = finite(body_force, "body_force")
        grid.check_field(f, "body_force", components=3)
        f_ext = jnp.asarray(f * grid.voxel_volume_um3)  # lumped nodal forces, pN
    if modulus_scale is None:
        scale = np.ones(grid.shape, dtype)
    else:
        scale = finite(modulus_scale, "modulus_scale")
        grid.check_field(scale, "modulus_scale")
        if np.any(scale <= 0):
            raise ValueError("modulus_scale must be > 0 everywhere")
    scale_e = nodes_to_elements(jnp.asarray(scale))
    if eigenstrain is not None:
        # Average the eigenstress s * eps*, not eps* alone: an element cut by the cell's
        # surface carries the load of the part inside, at the cell's modulus.
        eps_e = nodes_to_elements(jnp.asarray(e * scale[..., None, None])) / scale_e[..., None, None]
    u0 = np.zeros((*grid.shape, 3), dtype)
    if boundary_displacement is not None:
        b = finite(boundary_displacement, "boundary_displacement")
        grid.check_field(b, "boundary_displacement", components=3)
        u0 = b.copy()
        u0[1:-1, 1:-1, 1:-1] = 0.0
    return jnp.asarray(u0), scale_e, eps_e, f_ext


BOUNDARIES = ("fixed", "free")


def _boundary_arrays(grid, spacing, material, boundary, dtype):
    """Preconditioner eigenvalues, face scaling and the free-node mask of a boundary type."""
    eig = jnp.asarray(preconditioner_eigenvalues(tuple(n - 2 for n in grid.shape), spacing, material), dtype)
    free = np.zeros((*grid.shape, 1), dtype)
    free[1:-1, 1:-1, 1:-1] = 1
    edge_inv = np.zeros((*grid.shape, 3), dtype)
    if boundary == "free":
        free[:] = 1
        lam, mu = material.lame_lambda_pa, material.shear_modulus_pa
        vol = float(np.prod(spacing))
        # Half the interior diagonal of the Q1 stiffness (a face node has half the elements).
        diag = [0.5 * sum((lam + 2 * mu if a == c else mu) * (2 / spacing[a] ** 2) * (4 / 6) ** 2 * vol for a in range(3))
                for c in range(3)]
        edge_inv[:] = 1.0 / np.asarray(diag)
    return eig, jnp.asarray(edge_inv), jnp.asarray(free)


def rigid_body_modes(points_um) -> np.ndarray:
    """Orthonormal rigid-body modes (3 translations, 3 infinitesimal rotations about the
    points' centroid) of vectors at ``points_um`` (N, 3): an array (6, 3 N) (float64)."""
    x = np.asarray(points_um, np.float64).reshape(-1, 3)
    x = x - x.mean(axis=0)
    modes = [np.tile(np.eye(3)[i], (len(x), 1)).ravel() for i in range(3)]
    modes += [np.cross(np.eye(3)[i], x).ravel() for i in range(3)]
    q, _ = np.linalg.qr(np.stack(modes, 1))
    return q.T


def solve(grid: Grid, material: Material, eigenstrain=None, body_force=None, modulus_scale=None,
          boundary_displacement=None, boundary: str = "fixed", config: FEMConfig = FEMConfig(), dtype=None) -> FEMSolution:
    """Equilibrium of the matrix on ``grid`` under the given loads.

    Args:
      grid: the voxel grid (nodes = voxels), spacing in µm.
      material: :class:`~tfm.material.LinearElastic`, :class:`~tfm.material.NeoHookean`
        or :class:`~tfm.material.SemiAffineFiber` (the matrix; ``modulus_scale``
        multiplies its energy pointwise).
      eigenstrain: stress-free strain of the cell, ``(Z, Y, X)`` (dilatational, ``< 0``
        contracts) or ``(Z, Y, X, 3, 3)`` symmetric; zero outside the cell.
      body_force: applied force density ``(Z, Y, X, 3)``, pN/µm³ (e.g. cell-surface tractions
        spread over the boundary voxels).
      modulus_scale: ``(Z, Y, X)`` > 0, the local modulus over the material's (default 1).
      boundary_displacement: ``(Z, Y, X, 3)`` µm, whose values on the box faces are imposed
        (default: faces fixed at 0).
      boundary: ``"fixed"`` (faces held, default) or ``"free"`` (traction-free faces: the
        load must have no net force or torque; the rigid-body motion of the solution is
        removed).
      config: :class:`FEMConfig`.
      dtype: float32 by default (float64 when x64 is enabled).

    Returns:
      :class:`FEMSolution` with ``info``: iterations, load steps, relative residual,
      wall time, ``converged``. Raises :class:`ConvergenceError` if it did not converge.
    """
    if dtype is None:
        dtype = jnp.zeros(()).dtype
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    if boundary == "free" and boundary_displacement is not None:
        raise ValueError("boundary_displacement needs boundary='fixed' (free faces have no prescribed displacement)")
    t0 = time.perf_counter()
    u, scale_e, eps_e, f_ext = _prepare(grid, material, eigenstrain, body_force, modulus_scale, boundary_displacement, dtype)
    spacing = tuple(float(h) for h in grid.spacing_um)
    law, mp = _law(material), _moduli(material, dtype)
    eig, edge_inv, free = _boundary_arrays(grid, spacing, material, boundary, dtype)
    ops = (eig, edge_inv, free)
    args = (scale_e, eps_e, f_ext)

    # Reference load: the residual of the undeformed state at full load (pN).
    r_full = _residual(u, 1.0, *args, free, mp, law, spacing)
    load_norm = float(jnp.linalg.norm(r_full))
    if boundary == "free":
        q = rigid_body_modes(grid.coordinates_um())
        unbalanced = np.abs(q @ np.asarray(r_full, np.float64).ravel()).max()
        if unbalanced > 1e-4 * float(jnp.linalg.norm(r_full)):
            raise ValueError(f"with boundary='free' the load must have no net force or torque (its rigid-mode part is "
                             f"{unbalanced / float(jnp.linalg.norm(r_full)):.1e} of its norm): use boundary='fixed'")
    info = {"solver": "pcg" if law == "linear" else "newton-krylov", "law": law, "boundary": boundary,
            "dofs": 3 * int(np.sum(np.asarray(free))),
            "cg_iterations": 0, "newton_iterations": 0, "load_steps": 0}
    if load_norm == 0.0:
        info.update(relative_residual=0.0, converged=True, seconds=time.perf_counter() - t0)
        return _finish(u, grid, scale_e, free, mp, law, spacing, info)
    tol_abs = config.rtol * load_norm

    if law == "linear":
        du, k, _ = _tangent_solve(u, 1.0, r_full, scale_e, eps_e, eig, edge_inv, free, tol_abs, mp, law, spacing, config.maxiter)
        u = u + du
        info["cg_iterations"] = int(k)
        info["load_steps"] = 1
    else:
        u = _newton(u, args, ops, mp, law, spacing, config, tol_abs, load_norm, info)
    if boundary == "free":  # remove the rigid-body motion the singular system leaves free
        flat = np.asarray(u, np.float64).ravel()
        u = jnp.asarray((flat - q.T @ (q @ flat)).reshape(u.shape), dtype)
    res = float(jnp.linalg.norm(_residual(u, 1.0, *args, free, mp, law, spacing)))
    info.update(relative_residual=res / load_norm, converged=res <= 1.01 * tol_abs + 1e-30)
    info["seconds"] = time.perf_counter() - t0
    if not info["converged"]:
        raise ConvergenceError(f"FEM did not converge: relative residual {res / load_norm:.2e} > rtol {config.rtol:.1e} ({info})")
    return _finish(u, grid, scale_e, free, mp, law, spacing, info)


def _newton(u, args, ops, mp, law, spacing, config, tol_abs, load_norm, info):
    """Load-stepped Newton-Krylov with a backtracking line search on the energy."""
    scale_e, eps_e, _ = args
    eig, edge_inv, free = ops
    steps = config.load_steps
    t_done = 0.0
    while t_done < 1.0 - 1e-12:
        t = min(1.0, t_done + 1.0 / steps)
        u_try, ok = u, False
        for _ in range(config.newton_maxiter):
            r = _residual(u_try, t, *args, free, mp, law, spacing)
            rn = float(jnp.linalg.norm(r))
            if rn <= tol_abs:
                ok = True
                break
            inner_tol = max(min(0.1, math.sqrt(rn / load_norm)) * rn, 0.5 * tol_abs)  # Eisenstat-Walker-like forcing
            du, k, _ = _tangent_solve(u_try, t, r, scale_e, eps_e, eig, edge_inv, free, inner_tol, mp, law, spacing, config.maxiter)
            info["cg_iterations"] += int(k)
            info["newton_iterations"] += 1
            if info["newton_iterations"] > config.newton_budget:
                raise ConvergenceError(f"nonlinear solve failed: more than {config.newton_budget} Newton iterations "
                                       f"(newton_budget) at load factor {t:.3f}; the load is too large for the matrix")
            if info["cg_iterations"] > config.cg_budget:
                raise ConvergenceError(f"nonlinear solve failed: more than {config.cg_budget} conjugate-gradient "
                                       f"iterations (cg_budget) at load factor {t:.3f}; the load is too large for the matrix")
            e0 = float(_total_energy(u_try, t, *args, mp, law, spacing))
            slope = -float(jnp.vdot(r, du))  # directional derivative of the energy along du
            # Energy differences near convergence fall below float32 resolution: there a
            # smaller residual accepts the step instead (both need finite energy: no inversion).
            noise = 64 * float(jnp.finfo(u.dtype).eps) * abs(e0)
            alpha = 1.0
            while alpha > 1e-4:
                u_new = u_try + alpha * du
                e1 = float(_total_energy(u_new, t, *args, mp, law, spacing))
                if math.isfinite(e1) and (e1 <= e0 + 1e-4 * alpha * slope or (
                        e1 <= e0 + noise and float(jnp.linalg.norm(_residual(u_new, t, *args, free, mp, law, spacing))) < rn)):
                    break
                alpha *= 0.5
            else:
                break  # no descent: cut the load step
            u_try = u_try + alpha * du
        if ok:
            u, t_done = u_try, t
            info["load_steps"] += 1
        else:
            steps *= 2
            if steps > config.max_load_steps:
                raise ConvergenceError(
                    f"nonlinear solve failed at load factor {t:.3f} even with {config.max_load_steps} load steps: "
                    "the load is too large for the matrix (elements invert) or rtol is below float precision")
    return u


def _finish(u, grid, scale_e, free, mp, law, spacing, info) -> FEMSolution:
    force = _passive_force(u, scale_e, free, mp, law, spacing) / grid.voxel_volume_um3
    return FEMSolution(np.asarray(u), np.asarray(force), grid, info)


def interpolate(field, grid: Grid, points_um):
    """Trilinear interpolation of a nodal field ``(Z, Y, X, ...)`` at ``points_um`` (N, 3) --
    the FEM's own displacement between nodes. Points are clamped to the box."""
    f = jnp.asarray(field)
    p = (jnp.asarray(points_um, f.dtype) - jnp.asarray(grid.origin_um, f.dtype)) / jnp.asarray(grid.spacing_um, f.dtype)
    return trilinear(f, jnp.clip(p, 0, jnp.asarray(grid.shape, f.dtype) - 1))
