r"""The DVC's windows as measurements: the force inverse on a grid finer than the DVC's.

A DVC window does not measure the displacement at its centre: it reports (to first order)
the mean of the displacement over the window, :math:`d_j = (B u)(c_j)`, :math:`B` the box
mean of the window's size. Solving for the force on the DVC grid itself puts a small
cell's force on a few nodes 7-8 µm apart and loses much of it. Here the unknown field
lives on a finer grid whose nodes include the window centres (the DVC step divided by an
integer per axis, about ``target_um`` apart, extended by half a window beyond the outermost
centres so that every window lies inside it), each valid window enters the data term as
one measurement of :math:`B u` at its centre (:func:`tfm.classical.inverse.solve` with
``window_um``: the box's transfer function in the ADMM's Fourier step), and the force sits
wherever the fine grid and the cell's support allow. The noise level and its warning come
from the DVC grid, where the windows are (:func:`tfm.classical.inverse.noise_level`).

With a cell mask (:func:`solve_at_cell`, the default of :func:`solve` when a mask is
given) the force is allowed only within ``support_um`` of the cell, a window cut by the
cell measures the mean over its part outside the cell (where its beads are),
:math:`d_j = B(\chi u)(c_j) / B\chi(c_j)`, :math:`\chi` = 1 in the gel, and the force is
the least-squares fit on that support by conjugate gradients (CGLS, with a free
translation), stopped by the discrepancy principle -- the first iterate whose misfit is
within ``discrepancy`` x the noise -- or where the misfit stops falling (0.5 % over five
iterations: the noise estimate is below what the windows can be fitted to, and further
iterations fit the noise). Early-stopped CGLS is itself the regulariser: its iterates are
the smoothest force fields that explain the data up to that misfit. Without a mask, the
L1 inverse of :mod:`tfm.classical.inverse` with the window-mean model (slow to converge
where the DVC grid is coarse: docs/methods.md).

What it leaves out: a window's beads are not spread evenly over its gel part.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

import jax
import jax.numpy as jnp

from ..fields import resample
from ..grid import Grid
from ..progress import resolve
from . import inverse, modes
from .fttc import pad_widths

PLATEAU = (5, 0.005)  # CGLS stops where the misfit fell less than 0.5 % over 5 iterations


def fine_grid(dvc_grid: Grid, window_um, target_um: float) -> tuple:
    """``(grid, factor, margin)``: a grid of spacing ``step / factor`` per axis (``factor``
    the integer that brings it nearest ``target_um``, at least 1) whose node ``margin +
    i * factor`` is the DVC grid's point ``i``, extended by ``margin`` nodes (half a
    window) beyond the outermost centres."""
    if not (np.isfinite(target_um) and target_um > 0):
        raise ValueError(f"target_um must be a spacing > 0 (µm), got {target_um!r}")
    step = np.asarray(dvc_grid.spacing_um, float)
    factor = np.maximum(1, np.round(step / target_um)).astype(int)
    h = step / factor
    margin = np.array([math.ceil(0.5 * w / hh - 1e-9) for w, hh in zip(window_um, h)], int)
    shape = tuple(int((n - 1) * f + 1 + 2 * m) for n, f, m in zip(dvc_grid.shape, factor, margin))
    origin = tuple(np.asarray(dvc_grid.origin_um, float) - margin * h)
    return Grid(shape, tuple(h), origin), tuple(factor.tolist()), tuple(margin.tolist())


def dvc_nodes(dvc_shape, factor, margin) -> tuple:
    """The slices of the fine grid (:func:`fine_grid`) that are the DVC grid's points."""
    return tuple(slice(m, m + f * (n - 1) + 1, f) for m, f, n in zip(margin, factor, dvc_shape))


def place(values, shape, factor, margin) -> np.ndarray:
    """``values`` on the DVC grid (Z, Y, X, ...) placed at their nodes of the fine grid of
    ``shape``, zeros elsewhere."""
    values = np.asarray(values)
    out = np.zeros(tuple(shape) + values.shape[3:], values.dtype)
    out[dvc_nodes(values.shape[:3], factor, margin)] = values
    return out


def _cgls_operators(shape, spacing, window, lam2mu, mu, weights, support, gel):
    """``(A, AT)`` of the window-mean measurement of the displacement ``G f`` of forces on
    ``support`` plus a translation, ``sqrt(w) (B(chi G(s f)) / B chi + t)``, and its adjoint
    (fields channel-first, scaled units; ``gel``: chi, 1 where the windows' beads are)."""
    k2, khat = modes.fourier_modes(shape, spacing)
    bk = inverse.box_transfer(shape, spacing, window)
    g_l, g_t = inverse.green_modes(k2, lam2mu, mu)

    def green(f):
        return modes.ifft3(modes.apply_modes(modes.fft3(f), khat, g_l, g_t), shape)

    def box(v):
        return modes.ifft3(bk * modes.fft3(v), shape)

    sw = jnp.sqrt(weights)
    den = jnp.maximum(box(gel), 1e-3)

    def A(f, t):
        return sw * (box(gel * green(support * f)) / den + t)

    def AT(r):
        return support * green(gel * box(sw * r / den)), jnp.sum(sw * r, (1, 2, 3), keepdims=True)

    return jax.jit(A), jax.jit(AT), jax.jit(lambda f, t: green(support * f) + t)


def _cgls(A, AT, r, history, goal: float, max_iterations: int, bar) -> tuple:
    """CGLS for ``A (f, t) = r`` from zero (``history`` gets each squared residual norm);
    returns ``((f, t), stop rule)``: the discrepancy ``goal``, the plateau, or the cap."""
    p_f, p_t = AT(r)
    f, t = jnp.zeros_like(p_f), jnp.zeros_like(p_t)
    gamma = float(jnp.vdot(p_f, p_f) + jnp.vdot(p_t, p_t))
    lag, drop = PLATEAU
    for _ in range(max_iterations):
        q = A(p_f, p_t)
        qq = float(jnp.vdot(q, q))
        if not qq > 0 or not gamma > 0:
            return (f, t), "converged"
        a = gamma / qq
        f, t, r = f + a * p_f, t + a * p_t, r - a * q
        history.append(float(jnp.vdot(r, r)))
        bar.update(1, f"misfit {math.sqrt(history[-1] / max(history[0], 1e-30)):.3f} of the data")
        if history[-1] <= goal:
            return (f, t), "discrepancy"
        if len(history) > lag and history[-1] > (1 - drop) ** 2 * history[-1 - lag]:
            return (f, t), "plateau"
        s_f, s_t = AT(r)
        g2 = float(jnp.vdot(s_f, s_f) + jnp.vdot(s_t, s_t))
        p_f, p_t, gamma = s_f + g2 / gamma * p_f, s_t + g2 / gamma * p_t, g2
    return (f, t), "max_iterations"


def solve_at_cell(displacement, grid: Grid, material, window_um, weights, mask, noise_um: float,
                  discrepancy: float = 1.1, support_um=None, max_iterations: int = 200, pad_fraction: float = 0.125,
                  progress=None):
    """The force on the cell's support from window means placed on ``grid`` (the fine
    grid: ``displacement`` and ``weights`` nonzero at the window centres, :func:`place`),
    by early-stopped CGLS (the module docs). ``mask``: bool, the cell on ``grid``;
    ``progress``: where the iterations are reported (:mod:`tfm.progress`).
    Returns ``(force, fitted_displacement, info)``."""
    h = float(np.exp(np.mean(np.log(grid.spacing_um))))
    w = np.asarray(weights, np.float32)
    u = np.asarray(displacement, np.float32)
    scale_u = float(np.sqrt(np.sum(w[..., None] * u**2) / max(float(np.sum(w)), 1e-30) / 3.0)) or 1.0
    e = material.youngs_modulus_pa
    pw = [(p, p) for p in pad_widths(grid.shape, "zero", pad_fraction)]
    crop = tuple(slice(p, p + n) for (p, _), n in zip(pw, grid.shape))
    support = jnp.asarray(np.pad(inverse.support_of(mask, grid, "auto" if support_um is None else support_um), pw)[None],
                          jnp.float32)
    d = jnp.asarray(np.moveaxis(np.pad(u / scale_u, pw + [(0, 0)]), -1, 0))
    wp = jnp.asarray(np.pad(w, pw)[None])
    shape = d.shape[1:]
    A, AT, field = _cgls_operators(shape, tuple(x / h for x in grid.spacing_um), tuple(np.asarray(window_um) / h),
                                   material.p_wave_modulus_pa / e, material.shear_modulus_pa / e, wp, support,
                                   jnp.asarray(np.pad(~np.asarray(mask, bool), pw, constant_values=True)[None], jnp.float32))
    n = 3.0 * float(jnp.sum(wp))
    # The discrepancy principle where the noise estimate is credible; where it rivals the
    # signal (a DVC grid of a few windows: its "noise" is the field itself), the plateau alone.
    credible = noise_um < inverse.LOW_SNR * scale_u
    goal = (discrepancy * noise_um / scale_u) ** 2 * n if credible else 0.0
    r = jnp.sqrt(wp) * d
    history = [float(jnp.vdot(r, r))]
    t0 = jnp.sum(wp * d, (1, 2, 3), keepdims=True) / jnp.sum(wp)  # the best translation alone
    if float(jnp.sum(wp * (d - t0) ** 2)) <= goal:  # a translation already fits within the noise: no force
        (f, t), rule = (jnp.zeros_like(d), t0), "translation_fits"
        history.append(float(jnp.sum(wp * (d - t0) ** 2)))
    else:
        with resolve(progress).task(max_iterations, "forces (fine grid)") as bar:
            (f, t), rule = _cgls(A, AT, r, history, goal, max_iterations, bar)
    force = np.moveaxis(np.asarray(f)[(slice(None),) + crop], 0, -1)  # on the support: CGLS adds only A^T r's
    u_fit = np.moveaxis(np.asarray(field(f, t))[(slice(None),) + crop], 0, -1)
    info = {"solver": "cgls", "stop_rule": rule, "iterations": len(history) - 1,
            "misfit_um": float(np.sqrt(history[-1] / n)) * scale_u, "discrepancy_target_um": discrepancy * noise_um,
            "support_um": inverse.support_distance(mask, grid, "auto" if support_um is None else support_um)}
    return (force * (e * scale_u / h**2)).astype(np.float32), (u_fit * scale_u).astype(np.float32), info


def solve(displacement, dvc_grid: Grid, material, window_um, weights=None, mask=None,
          config: inverse.InverseConfig = inverse.InverseConfig(), target_um: float = 1.5, progress=None) -> tuple:
    """Force density (pN/µm³) on a grid finer than the DVC's, from the DVC's windows.

    Args:
      displacement: (Z, Y, X, 3) µm, the DVC's, on ``dvc_grid`` (window centres).
      window_um: (z, y, x) µm, the size of the DVC's (last-pass) windows.
      weights: (Z, Y, X) >= 0 on ``dvc_grid``, the trust in each window (0: not measured).
      mask: optional bool cell mask on the fine grid (see :func:`fine_grid`) or on
        ``dvc_grid`` (then resampled to the fine grid): forces only within
        ``config.support_um`` of it (:func:`solve_at_cell`); without one, the L1 inverse.
      target_um: about how far apart the fine grid's nodes are.
      progress: where the fit's iterations are reported (:mod:`tfm.progress`; with a mask).

    Returns ``(force, fitted_displacement, fine_grid, info)`` on the fine grid; info as
    :func:`solve_at_cell`'s or :func:`tfm.classical.inverse.solve`'s, plus
    ``force_grid_factor``, ``window_um``, ``noise_um``."""
    u = np.asarray(displacement, np.float32)
    if u.shape != tuple(dvc_grid.shape) + (3,):
        raise ValueError(f"displacement must have shape {tuple(dvc_grid.shape) + (3,)} (the DVC grid's), got {u.shape}")
    if not np.all(np.isfinite(u)):
        raise ValueError("displacement holds NaN or infinite values (give unmeasured windows weight 0 and any finite value)")
    window_um = np.broadcast_to(np.asarray(window_um, float), (3,))
    if not np.all(np.isfinite(window_um) & (window_um > 0)):
        raise ValueError(f"window_um must be three sizes > 0 (µm), got {window_um.tolist()}")
    w = np.ones(dvc_grid.shape) if weights is None else np.asarray(weights, np.float64)
    if w.shape != tuple(dvc_grid.shape) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite, >= 0 and of the DVC grid's shape {tuple(dvc_grid.shape)}, got shape {w.shape}")
    grid, factor, margin = fine_grid(dvc_grid, window_um, target_um)
    mask_fine = mask_dvc = None
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.shape == tuple(grid.shape):
            mask_fine = m
            mask_dvc = m[dvc_nodes(dvc_grid.shape, factor, margin)]
        elif m.shape == tuple(dvc_grid.shape):
            mask_dvc = m
        else:
            raise ValueError(f"mask must be on the fine grid {tuple(grid.shape)} or the DVC grid {tuple(dvc_grid.shape)}, "
                             f"got {m.shape}")
        if mask_fine is None:  # the windows' cell on the fine grid
            mask_fine = resample(m.astype(np.float32), dvc_grid, grid) > 0.5
    estimated = config.noise_um is None
    if estimated and np.any(u[w > 0]):  # the noise where the windows are, on their grid
        sigma, _ = inverse.noise_level(u, w, mask_dvc if mask_dvc is not None and mask_dvc.any() else None, config)
        config = dataclasses.replace(config, noise_um=float(sigma))
    if mask_fine is not None and mask_fine.any() and np.any(u[w > 0]):  # forces at the cell: early-stopped CGLS
        force, u_fit, info = solve_at_cell(place(u, grid.shape, factor, margin), grid, material, window_um,
                                           place(w, grid.shape, factor, margin), mask_fine, config.noise_um,
                                           config.discrepancy, None if config.support_um == "auto" else config.support_um,
                                           progress=progress)
        info.update(force_grid_factor=list(factor), window_um=window_um.tolist(), noise_um=config.noise_um,
                    noise_estimated=estimated)
        return force, u_fit, grid, info
    start = resample(u, dvc_grid, grid)  # a smooth start: the data are known at a few nodes only
    force, u_fit, info = inverse.solve(place(u, grid.shape, factor, margin), grid, material,
                                       weights=place(w, grid.shape, factor, margin),
                                       mask=mask_fine if mask_fine is not None and mask_fine.any() else None,
                                       config=config, window_um=tuple(window_um), start_um=start)
    info.update(force_grid_factor=list(factor), window_um=window_um.tolist(), noise_estimated=estimated)
    return force, u_fit, grid, info
