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

What it leaves out: a window's beads are not spread evenly, and a window cut by the cell
measures only its bead-bearing part; :math:`B` averages over the whole box.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..fields import resample
from ..grid import Grid
from . import inverse


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


def place(values, shape, factor, margin) -> np.ndarray:
    """``values`` on the DVC grid (Z, Y, X, ...) placed at their nodes of the fine grid of
    ``shape``, zeros elsewhere."""
    values = np.asarray(values)
    out = np.zeros(tuple(shape) + values.shape[3:], values.dtype)
    out[tuple(slice(m, m + f * (n - 1) + 1, f) for m, f, n in zip(margin, factor, values.shape[:3]))] = values
    return out


def solve(displacement, dvc_grid: Grid, material, window_um, weights=None, mask=None,
          config: inverse.InverseConfig = inverse.InverseConfig(), target_um: float = 1.5) -> tuple:
    """Force density (pN/µm³) on a grid finer than the DVC's, from the DVC's windows.

    Args:
      displacement: (Z, Y, X, 3) µm, the DVC's, on ``dvc_grid`` (window centres).
      window_um: (z, y, x) µm, the size of the DVC's (last-pass) windows.
      weights: (Z, Y, X) >= 0 on ``dvc_grid``, the trust in each window (0: not measured).
      mask: optional bool cell mask on the fine grid (see :func:`fine_grid`) or on
        ``dvc_grid`` (then taken as the windows it covers, for the noise estimate only).
      target_um: about how far apart the fine grid's nodes are.

    Returns ``(force, fitted_displacement, fine_grid, info)`` on the fine grid; info as
    :func:`tfm.classical.inverse.solve`'s, plus ``force_grid_factor``.
    """
    u = np.asarray(displacement, np.float32)
    if u.shape != tuple(dvc_grid.shape) + (3,):
        raise ValueError(f"displacement must have shape {tuple(dvc_grid.shape) + (3,)} (the DVC grid's), got {u.shape}")
    window_um = np.broadcast_to(np.asarray(window_um, float), (3,))
    if not np.all(np.isfinite(window_um) & (window_um > 0)):
        raise ValueError(f"window_um must be three sizes > 0 (µm), got {window_um.tolist()}")
    w = np.ones(dvc_grid.shape) if weights is None else np.asarray(weights, np.float64)
    if w.shape != tuple(dvc_grid.shape):
        raise ValueError(f"weights must have the DVC grid's shape {tuple(dvc_grid.shape)}, got {w.shape}")
    grid, factor, margin = fine_grid(dvc_grid, window_um, target_um)
    mask_fine = mask_dvc = None
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.shape == tuple(grid.shape):
            mask_fine = m
            mask_dvc = m[tuple(slice(mg, mg + f * (n - 1) + 1, f) for mg, f, n in zip(margin, factor, dvc_grid.shape))]
        elif m.shape == tuple(dvc_grid.shape):
            mask_dvc = m
        else:
            raise ValueError(f"mask must be on the fine grid {tuple(grid.shape)} or the DVC grid {tuple(dvc_grid.shape)}, "
                             f"got {m.shape}")
    estimated = config.noise_um is None
    if estimated and np.any(u[w > 0]):  # the noise where the windows are, on their grid
        sigma, _ = inverse.noise_level(u, w, mask_dvc if mask_dvc is not None and mask_dvc.any() else None, config)
        config = dataclasses.replace(config, noise_um=float(sigma))
    start = resample(u, dvc_grid, grid)  # a smooth start: the data are known at a few nodes only
    force, u_fit, info = inverse.solve(place(u, grid.shape, factor, margin), grid, material,
                                       weights=place(w, grid.shape, factor, margin),
                                       mask=mask_fine if mask_fine is not None and mask_fine.any() else None,
                                       config=config, window_um=tuple(window_um), start_um=start)
    info.update(force_grid_factor=list(factor), window_um=window_um.tolist(), noise_estimated=estimated)
    return force, u_fit, grid, info
