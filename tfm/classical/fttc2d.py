r"""Traction force microscopy for cells on a gel: 2D and 2.5D Fourier reconstruction.

Model. The gel is a linear-elastic layer of thickness ``h`` (``None``: a half-space),
bonded to a rigid coverslip at its bottom. The cell applies a traction ``t`` (Pa) to its
top surface; the measured surface displacement ``u`` (µm) is ``û(k) = G(k) t̂(k)`` per
in-plane wavevector ``k`` (rad/µm). In the frame (``k̂``, in-plane ``⊥``, normal ``z``)::

    G = [[g_ll, 0, g_lz], [0, g_tt, 0], [g_zl, 0, g_zz]]

* antiplane (``⊥``) mode: ``g_tt = tanh(k h) / (mu k)``;
* the in-plane-longitudinal/normal block ``[[g_ll, g_lz], [g_zl, g_zz]]`` comes from
  the Fourier-transformed Navier equations across the layer (a 4x4 first-order system
  for (u_l, u_z, sigma_lz, sigma_zz), propagated from the fixed bottom to the loaded
  top by its matrix exponential; del Álamo et al., PLoS One 8, e69850 (2013) give the
  same kernel in closed form). It is tabulated over ``k h`` and interpolated.
* half-space (Boussinesq-Cerruti in Fourier space; Butler et al. 2002)::

      g_ll = g_zz = 2 (1 - nu^2) / (E k),  g_tt = 2 (1 + nu) / (E k),
      g_lz = -g_zl = -i (1 + nu)(1 - 2 nu) / (E k)   (sign: e^{+ikx} modes, z out of the gel)

``mode="2d"`` reconstructs in-plane tractions from in-plane displacements (normal
traction assumed zero: the classic FTTC); ``mode="2.5d"`` reconstructs all three traction
components from all three displacement components (u_z from 3D imaging of the gel
surface). Per wavevector the small kernel is decomposed by SVD; zeroth-order Tikhonov is
then diagonal and shares :mod:`tfm.classical.regularization` with the 3D solver
(GCV, L-curve, or a fixed ``alpha``).

Units: displacement µm, traction Pa; ``alpha`` in (µm/Pa)^2.
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy.linalg import expm

from ..grid import Grid
from ..material import LinearElastic
from . import regularization as reg
from .fttc import pad_displacement, pad_widths
from .noise import estimate_noise

MODES = ("2d", "2.5d")
_KH_MAX = 12.0  # beyond this the layer is a half-space to within e^-24
_TABLE = np.logspace(-5, math.log10(_KH_MAX), 1500)


def _layer_block(kh: np.ndarray, nu: float) -> np.ndarray:
    """Dimensionless (l, z) block ``mu k G`` of a layer for each ``k h`` (shape (n, 2, 2))."""
    mu = 1.0
    lam = 2 * mu * nu / (1 - 2 * nu)
    p = lam + 2 * mu
    k = 1.0  # lengths in units of 1/k: the layer is kh thick
    A = np.zeros((4, 4), complex)
    # State (U, W, S, N): u_l = U e^{ikx}, u_z = W e^{ikx}, sigma_lz = S e^{ikx}, sigma_zz = N e^{ikx}.
    A[0, 1], A[0, 2] = -1j * k, 1 / mu
    A[1, 0], A[1, 3] = -1j * lam * k / p, 1 / p
    A[2, 0], A[2, 3] = (p - lam**2 / p) * k**2, -1j * lam * k / p
    A[3, 2] = -1j * k
    T = expm(A[None] * kh[:, None, None])  # maps the bottom (z = -h) to the top (z = 0)
    # Bottom fixed (U = W = 0); top tractions (S, N) given: u_top = T12 T22^-1 t.
    return T[:, :2, 2:] @ np.linalg.inv(T[:, 2:, 2:])


def _half_space_block(nu: float) -> np.ndarray:
    """Dimensionless ``mu k G`` (l, z) block of a half-space."""
    c = 2 * (1 - nu**2) / (2 * (1 + nu))  # 2 (1 - nu^2) / E  times  mu = E / (2 (1 + nu))
    cz = (1 + nu) * (1 - 2 * nu) / (2 * (1 + nu))
    return np.array([[c, -1j * cz], [1j * cz, c]])  # coupling sign as the layer solution gives it


def kernel(k_abs, material: LinearElastic, thickness_um: float | None = None):
    """Kernel blocks for wavenumbers ``k_abs`` (rad/µm): returns ``(block_lz, g_tt)`` with
    ``block_lz`` (..., 2, 2) complex (µm/Pa) and ``g_tt`` (...,) (µm/Pa); ``inf`` at k = 0."""
    k = np.asarray(k_abs, dtype=float)
    mu, nu = material.shear_modulus_pa, material.poisson_ratio
    with np.errstate(divide="ignore"):
        inv_muk = np.where(k > 0, 1.0 / (mu * np.where(k > 0, k, 1.0)), np.inf)
    if thickness_um is None:
        block = np.broadcast_to(_half_space_block(nu), k.shape + (2, 2)).astype(complex)
        g_tt = inv_muk.copy()
    else:
        if not (math.isfinite(thickness_um) and thickness_um > 0):
            raise ValueError(f"thickness_um must be > 0 (or None for a half-space), got {thickness_um}")
        kh = k * thickness_um
        table = _layer_block(_TABLE, nu)  # (n, 2, 2)
        logt = np.log(_TABLE)
        x = np.log(np.clip(kh, _TABLE[0], _TABLE[-1]))
        block = np.empty(k.shape + (2, 2), complex)
        for i in range(2):
            for j in range(2):
                re = np.interp(x, logt, table[:, i, j].real)
                im = np.interp(x, logt, table[:, i, j].imag)
                block[..., i, j] = re + 1j * im
        deep = kh >= _KH_MAX
        block[deep] = _half_space_block(nu)
        thin = kh < _TABLE[0]  # below the table: thin-layer limits (shear h/mu, compression h/(lam+2mu))
        if np.any(thin):
            p_over_mu = 2 * (1 - nu) / (1 - 2 * nu)
            block[thin] = np.array([[1.0, 0.0], [0.0, 1.0 / p_over_mu]]) * kh[thin][:, None, None]
        with np.errstate(invalid="ignore"):  # k = 0: tanh(0) * inf, replaced by s = inf later
            g_tt = np.tanh(kh) * inv_muk
    with np.errstate(invalid="ignore"):
        block = block * inv_muk[..., None, None]
    block[k == 0] = np.inf
    return block, g_tt


def _full_kernel(grid: Grid, material, thickness_um, mode):
    """Per-wavevector kernel in the (y, x[, z]) frame of the padded grid, (ny, nx, c, c)."""
    ky, kx = np.meshgrid(*grid.wavevector_axes(rfft=False), indexing="ij")
    k = np.hypot(ky, kx)
    block, g_tt = kernel(k, material, thickness_um)
    safe = np.where(k > 0, k, 1.0)
    e = np.stack([ky / safe, kx / safe], -1)  # k-hat in (y, x)
    p = np.stack([-e[..., 1], e[..., 0]], -1)  # in-plane perpendicular
    c = 2 if mode == "2d" else 3
    G = np.zeros(k.shape + (c, c), complex)
    ee = e[..., :, None] * e[..., None, :]
    pp = p[..., :, None] * p[..., None, :]
    finite = k > 0
    block = np.where(finite[..., None, None], block, 0)  # k = 0 is handled as s = inf below
    g_tt = np.where(finite, g_tt, 0)
    G[..., :2, :2] = block[..., 0, 0][..., None, None] * ee + g_tt[..., None, None] * pp
    if mode == "2.5d":
        G[..., :2, 2] = block[..., 0, 1][..., None] * e
        G[..., 2, :2] = block[..., 1, 0][..., None] * e
        G[..., 2, 2] = block[..., 1, 1]
    return G, finite


def _estimated_noise_variance(u):
    """The field's own noise variance (None where it cannot be told: too small, or noise-free)."""
    try:
        sigma = estimate_noise(u)
    except ValueError:
        return None
    return sigma**2 if sigma > 0 else None


def fttc_2d(displacement, grid: Grid, material: LinearElastic, thickness_um: float | None = None, mode: str = "2d",
            regularization="auto", pad: str = "taper", pad_fraction: float = 0.25, noise_variance: float | None = None):
    """Tractions (Pa) on the gel surface from its displacement (µm).

    Args:
      displacement: (Y, X, 2) in-plane (u_y, u_x) for ``mode="2d"``, or (Y, X, 3)
        (u_y, u_x, u_z) for ``mode="2.5d"``, µm.
      grid: 2D :class:`~tfm.grid.Grid` of the displacement samples.
      thickness_um: gel thickness, µm; ``None`` for a half-space.
      regularization: ``"auto"`` (= ``"bayesian"``), ``"gcv"``, ``"lcurve"``,
        ``"bayesian"`` or a float alpha >= 0.
      noise_variance: variance of the displacement noise per component, µm² (for
        ``"bayesian"``). When None it is estimated from the field itself
        (:func:`tfm.classical.noise.estimate_noise`: what a binomial high-pass leaves,
        scaled for white noise); the evidence profiles it out only where no estimate can
        be made (a field of fewer than 5 x 5 points, or one without noise).

    Returns:
      ``(traction, info)``, traction with the displacement's components, Pa.
    """
    t0 = time.perf_counter()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(grid, Grid) or grid.ndim != 2:
        raise ValueError("grid must be a 2D tfm.Grid (Y, X)")
    c = 2 if mode == "2d" else 3
    u = np.asarray(displacement)
    grid.check_field(u, "displacement", components=c)
    if not np.issubdtype(u.dtype, np.floating) or not np.all(np.isfinite(u)):
        raise ValueError("displacement must be finite floating-point values (µm)")
    alpha = reg.parse(regularization)
    if isinstance(regularization, str) and regularization == "auto":
        # The Bayesian evidence with the field's own noise estimate: on pytraction's reference
        # field GCV under-regularises (mean |t| x1.96 of pytraction's), the evidence does not
        # (x0.98; examples/pytraction_crosscheck.py).
        regularization = "bayesian"
    widths = pad_widths(grid.shape, pad, pad_fraction)
    u_scale = float(np.max(np.abs(u))) or 1.0  # solved for u / max|u| (linear): no overflow in float32 padding
    noise_estimated = False
    if noise_variance is not None:
        if isinstance(noise_variance, bool) or not (np.isfinite(noise_variance) and noise_variance > 0):
            raise ValueError(f"noise_variance must be > 0 (µm²), got {noise_variance}")
        noise_variance = noise_variance / u_scale**2
    elif regularization == "bayesian":
        noise_variance, noise_estimated = _estimated_noise_variance(u / u_scale), True
    up = np.asarray(pad_displacement(u.astype(np.float64) / u_scale, widths, pad))
    pgrid = grid.with_shape(up.shape[:2])
    G, finite = _full_kernel(pgrid, material, thickness_um, mode)
    uh = np.fft.fft2(up, axes=(0, 1))  # (ny, nx, c)
    U, s, Vh = np.linalg.svd(G)  # G = U diag(s) Vh per wavevector
    b = np.einsum("...ji,...j->...i", U.conj(), uh)  # U^H u
    info = {"mode": mode, "thickness_um": thickness_um, "pad": pad, "padded_shape": list(up.shape[:2])}
    s_modes = np.where(finite[..., None], s, np.inf)
    if alpha is None:
        # Full complex spectrum, unitary normalisation (|b|^2 / N): each coefficient is one
        # of the N real degrees of freedom and beta is a per-sample noise precision.
        power = (np.abs(b) ** 2).ravel() / up.shape[0] / up.shape[1]
        problem = reg.DiagonalProblem.from_modes(s_modes.ravel(), power, np.ones(s.size))
        alpha, rinfo = reg.choose(problem, regularization, noise_variance)
        if regularization == "bayesian":
            rinfo["noise_variance_um2"] = None if noise_variance is None else noise_variance * u_scale**2
            rinfo["noise_estimated"] = noise_estimated and noise_variance is not None
        info["regularization_rule"] = rinfo.pop("rule")
        info.update({f"regularization_{k}": v for k, v in rinfo.items()})
    else:
        info["regularization_rule"] = "fixed"
    with np.errstate(invalid="ignore"):
        gain = np.where(np.isinf(s_modes), 0.0, s_modes / (s_modes**2 + alpha))
    th = np.einsum("...ji,...j->...i", Vh.conj(), gain * b)  # V diag(gain) U^H u
    t = np.real(np.fft.ifft2(th, axes=(0, 1))) * u_scale
    sl = tuple(slice(p, p + n) for p, n in zip(widths, grid.shape))
    info.update(alpha=alpha, time_total_s=time.perf_counter() - t0)
    with np.errstate(over="ignore"):
        out = t[sl].astype(np.float32)
    scale = float(np.max(np.abs(t[sl]))) if t.size else 0.0
    if not np.all(np.isfinite(out)) or (0 < scale < float(np.finfo(np.float32).tiny) * 1e3):
        raise ValueError(f"the traction of max |u| = {float(np.max(np.abs(u))):.3g} µm on a gel of youngs_modulus_pa = "
                         f"{material.youngs_modulus_pa:.3g} (~{scale:.3g} Pa) is outside what float32 holds: check the "
                         "displacement's units (µm) and the modulus (Pa)")
    return out, info
