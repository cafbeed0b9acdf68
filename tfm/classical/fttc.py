r"""Fourier-transform force reconstruction for a cell embedded in an elastic matrix (3D FTTC).

Model. An infinite, homogeneous, isotropic linear-elastic matrix (shear modulus
:math:`\mu`, Lamé :math:`\lambda`, Poisson ratio :math:`\nu`) holds the body-force density
:math:`f` (pN/µm³) applied by the cell; the displacement is the convolution
:math:`u = G * f` with Kelvin's Green's function, whose Fourier transform at angular
wavevector :math:`k` (rad/µm, :math:`\hat k = k/|k|`) is

.. math::
   \hat G(k) = \frac{1}{\mu k^2}\Big(I - \frac{\hat k \hat k^T}{2(1-\nu)}\Big)
            = \frac{\hat k \hat k^T}{(\lambda + 2\mu) k^2} + \frac{I - \hat k \hat k^T}{\mu k^2}.

:math:`\hat G(k)` has one longitudinal eigenvalue :math:`s_\parallel = 1/((\lambda+2\mu)k^2)`
and two transverse ones :math:`s_\perp = 1/(\mu k^2)`, so zeroth-order Tikhonov
regularisation, :math:`\min_f \|G*f - u\|^2 + \alpha \|f\|^2`, is solved in closed form
per wavevector:

.. math::
   \hat f(k) = \frac{s_\parallel}{s_\parallel^2 + \alpha} \hat k (\hat k \cdot \hat u)
             + \frac{s_\perp}{s_\perp^2 + \alpha} \big(\hat u - \hat k (\hat k \cdot \hat u)\big).

With :math:`\alpha = 0` this is the exact inverse :math:`\hat f = (\mu k^2 I + (\lambda+\mu) k k^T)\hat u`,
i.e. :math:`f = -\nabla\cdot\sigma(u)`, which amplifies noise as :math:`k^2`. The
:math:`k = 0` mode carries no force (:math:`s = \infty`), so the reconstructed net force
is zero, as it must be for a cell in equilibrium. :math:`\alpha` is chosen by GCV or the
L-curve (:mod:`tfm.classical.regularization`); the reported
``cutoff_wavelength_um`` is :math:`2\pi/k_c` with :math:`s_\perp(k_c)^2 = \alpha`: forces
varying on shorter scales are damped.

Padding. The discrete Fourier transform treats the box as periodic, so the fields of
periodic images of the cell leak into the box and the jump between opposite faces of
``u`` looks like a sheet of force. The displacement is therefore extended into a margin
(``pad_fraction`` of the box per side) by a cosine taper of its edge values down to
zero (``pad="taper"``), or by zeros (``pad="zero"``), reconstructed on the padded box,
and cropped back. The taper moves the truncation forces out of the measured box.

Example::

    >>> import tfm
    >>> grid = tfm.Grid((64, 64, 64), spacing_um=1.0)
    >>> mat = tfm.LinearElastic(1000.0, 0.45)
    >>> cell = tfm.analytic.EshelbySphere(6.0, -0.05, grid.center_um(), mat)
    >>> res = tfm.reconstruct_forces(cell.sample(grid), grid, mat)
    >>> res.info["regularization_rule"]
    'gcv'

References:
  Butler, Tolić-Nørrelykke, Fabry & Fredberg, Am J Physiol Cell Physiol 282, C595 (2002)
  -- FTTC. Sabass, Gardel, Waterman & Schwarz, Biophys J 94, 207 (2008) -- Tikhonov in FTTC.
  Landau & Lifshitz, Theory of Elasticity, sec. 8 -- Kelvin's solution.
  Golub, Heath & Wahba, Technometrics 21, 215 (1979) -- GCV.
"""

from __future__ import annotations

import math
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from scipy.fft import next_fast_len

from ..grid import Grid
from ..material import LinearElastic
from . import regularization as reg

PADS = ("taper", "zero", "none")
N_BINS = 8192  # eigenvalue bins for choosing alpha (see regularization.DiagonalProblem)


def check_inputs(displacement, grid: Grid, material, laws=(LinearElastic,), what: str = "3D FTTC") -> np.ndarray:
    """The checks every 3D force reconstruction makes: a 3D :class:`~tfm.grid.Grid`, a
    material of one of ``laws``, a finite floating-point (Z, Y, X, 3) displacement on it."""
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be a tfm.Grid, got {type(grid).__name__}")
    if not isinstance(material, laws):
        names = " or ".join(f"tfm.{c.__name__}" for c in laws)
        raise TypeError(f"material must be a {names} for {what}, got {type(material).__name__}")
    u = np.asarray(displacement)
    if grid.ndim != 3:
        raise ValueError(f"{what} needs a 3D grid, got shape {grid.shape}")
    if u.ndim != 4 or u.shape[-1] != 3:
        raise ValueError(f"displacement must have shape (Z, Y, X, 3) with components (u_z, u_y, u_x), got {u.shape}")
    grid.check_field(u, "displacement", components=3)
    if not np.issubdtype(u.dtype, np.floating):
        raise ValueError(f"displacement must be a floating-point array (µm), got dtype {u.dtype}")
    if not np.all(np.isfinite(u)):
        raise ValueError(f"displacement contains {int(np.sum(~np.isfinite(u)))} NaN or infinite values")
    return u


def check_scale(force_scale: float, u_scale: float, e_pa: float) -> None:
    """Refuse magnitudes whose force density float32 cannot hold (a units mistake)."""
    info = np.finfo(np.float32)
    if not (float(info.tiny) * 1e3 < force_scale < float(info.max) * 1e-3):
        raise ValueError(f"the force density of max |u| = {u_scale:.3g} µm in a matrix of youngs_modulus_pa = {e_pa:.3g} "
                         f"(~{force_scale:.3g} pN/µm³) is outside what float32 holds: check the displacement's units "
                         "(µm) and the modulus (Pa)")


def pad_displacement(u, pad_width: tuple, mode: str):
    """Extend ``u`` (Z, Y, X, C) by ``pad_width[a]`` points on both sides of each axis.

    ``mode="taper"``: the edge values are continued outward and multiplied by a cosine
    ramp from 1 to 0; ``"zero"``: zeros; ``"none"``: no padding.
    """
    if mode not in PADS:
        raise ValueError(f"pad must be one of {PADS}, got {mode!r}")
    if mode == "none" or not any(pad_width):
        return u
    widths = [(p, p) for p in pad_width] + [(0, 0)]
    if mode == "zero":
        return jnp.pad(u, widths)
    out = jnp.pad(u, widths, mode="edge")
    for axis, p in enumerate(pad_width):
        if p == 0:
            continue
        n = u.shape[axis]
        ramp = 0.5 * (1 + jnp.cos(jnp.pi * jnp.arange(1, p + 1) / (p + 1)))  # 1 -> 0 outward
        w = jnp.concatenate([ramp[::-1], jnp.ones(n), ramp])
        shape = [1] * out.ndim
        shape[axis] = w.shape[0]
        out = out * w.reshape(shape)
    return out


@partial(jax.jit, static_argnums=(1, 2))
def _padded_rfft(u, widths, pad):
    return jnp.fft.rfftn(pad_displacement(u, widths, pad), axes=(0, 1, 2))


def pad_widths(shape, pad: str, pad_fraction: float) -> tuple:
    """Points added on each side of each axis: about ``pad_fraction`` of the axis, rounded
    up so that the padded length is FFT-friendly (none for ``pad="none"``)."""
    if pad not in PADS:
        raise ValueError(f"pad must be one of {PADS}, got {pad!r}")
    if pad == "none":
        return (0,) * len(shape)
    if not (0 <= pad_fraction <= 2):
        raise ValueError(f"pad_fraction must lie in [0, 2], got {pad_fraction}")
    out = []
    for n in shape:
        p = int(math.ceil(pad_fraction * n))
        total = next_fast_len(n + 2 * p)
        out.append((total - n) // 2 if p else 0)
    return tuple(out)


def _modes(k_axes, lam2mu, mu):
    """Unit wavevectors and the Green's eigenvalues (inf at k = 0) on the rFFT grid."""
    kz, ky, kx = jnp.meshgrid(*k_axes, indexing="ij")
    kvec = jnp.stack([kz, ky, kx], axis=-1)
    k2 = jnp.sum(kvec**2, axis=-1)
    safe = jnp.where(k2 > 0, k2, 1.0)
    khat = kvec / jnp.sqrt(safe)[..., None]
    s_long = jnp.where(k2 > 0, 1.0 / (lam2mu * safe), jnp.inf)
    s_trans = jnp.where(k2 > 0, 1.0 / (mu * safe), jnp.inf)
    return khat, s_long, s_trans


def _rfft_weights(shape) -> jax.Array:
    """Real degrees of freedom per rFFT coefficient along the last axis (1 or 2)."""
    n = shape[-1]
    w = np.full(n // 2 + 1, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return jnp.asarray(w)


@partial(jax.jit, static_argnums=(4, 5))
def _spectrum_summary(uh, k_axes, lam2mu, mu, shape, n_bins):
    """The data's power per eigenvalue bin, for choosing alpha (no full-size outputs)."""
    khat, s_long, s_trans = _modes(k_axes, lam2mu, mu)
    n = shape[0] * shape[1] * shape[2]  # unitary normalisation of the power
    b2_long = jnp.abs(jnp.sum(khat * uh, axis=-1)) ** 2 / n
    b2_trans = jnp.maximum(jnp.sum(jnp.abs(uh) ** 2, axis=-1) / n - b2_long, 0.0)
    w = jnp.broadcast_to(_rfft_weights(shape), s_long.shape)
    return reg.bin_modes(
        jnp.concatenate([s_long.ravel(), s_trans.ravel()]),
        jnp.concatenate([b2_long.ravel(), b2_trans.ravel()]),
        jnp.concatenate([w.ravel(), 2.0 * w.ravel()]),
        n_bins,
    )


@partial(jax.jit, static_argnums=(5,))
def _solve(uh, k_axes, lam2mu, mu, alpha, shape):
    """Tikhonov solution per wavevector, back to real space on the padded grid."""
    khat, s_long, s_trans = _modes(k_axes, lam2mu, mu)
    g_long = jnp.where(jnp.isinf(s_long), 0.0, s_long / (s_long**2 + alpha))
    g_trans = jnp.where(jnp.isinf(s_trans), 0.0, s_trans / (s_trans**2 + alpha))
    long = khat * jnp.sum(khat * uh, axis=-1, keepdims=True)
    fh = g_long[..., None] * long + g_trans[..., None] * (uh - long)
    return jnp.fft.irfftn(fh, s=shape, axes=(0, 1, 2))


def fttc_3d(
    displacement,
    grid: Grid,
    material: LinearElastic,
    regularization="auto",
    pad: str = "taper",
    pad_fraction: float = 0.25,
):
    """Reconstruct the body-force density (pN/µm³) from a displacement field (µm).

    Args:
      displacement: (Z, Y, X, 3) array, components (u_z, u_y, u_x), µm.
      grid: the :class:`~tfm.grid.Grid` the displacement is sampled on.
      material: :class:`~tfm.material.LinearElastic` matrix.
      regularization: ``"auto"`` (= ``"gcv"``), ``"gcv"``, ``"lcurve"``, or a float
        ``alpha >= 0`` (units (µm⁴/pN)², see module docstring; 0 = no regularisation).
      pad: ``"taper"`` (default), ``"zero"`` or ``"none"``.
      pad_fraction: margin added on each side, as a fraction of the box along each axis.

    Returns:
      ``(force, info)``: force (Z, Y, X, 3) in pN/µm³, info a dict with the chosen
      ``alpha``, the rule, ``cutoff_wavelength_um``, the padded shape and timings.
    """
    t0 = time.perf_counter()
    u = check_inputs(displacement, grid, material)
    alpha = reg.parse(regularization)
    widths = pad_widths(grid.shape, pad, pad_fraction)
    # Solved in units where the modulus and the largest displacement are 1 (FTTC is linear
    # in u and in 1/E): no float32 overflow or underflow whatever the units' magnitudes.
    e_pa = material.youngs_modulus_pa
    u_scale = float(np.max(np.abs(u))) or 1.0
    check_scale(e_pa * u_scale / min(grid.spacing_um) ** 2, u_scale, e_pa)
    uh = _padded_rfft(jnp.asarray(u / u_scale), widths, pad)  # float32 unless x64 is on
    shape = tuple(n + 2 * p for n, p in zip(grid.shape, widths))
    k_axes = tuple(jnp.asarray(k, dtype=uh.real.dtype) for k in grid.with_shape(shape).wavevector_axes(rfft=True))
    mu, lam2mu = material.shear_modulus_pa, material.p_wave_modulus_pa
    t_fft = time.perf_counter()

    info = {"pad": pad, "pad_fraction": pad_fraction, "padded_shape": shape}
    if alpha is None:
        problem = reg.DiagonalProblem.from_bins(*_spectrum_summary(uh, k_axes, lam2mu / e_pa, mu / e_pa, shape, N_BINS))
        alpha_unit, rinfo = reg.choose(problem, regularization)
        alpha = alpha_unit / e_pa**2
        info["regularization_rule"] = rinfo.pop("rule")
        info.update({f"regularization_{k}": v for k, v in rinfo.items()})
    else:
        info["regularization_rule"] = "fixed"
    t_reg = time.perf_counter()

    f = _solve(uh, k_axes, lam2mu / e_pa, mu / e_pa, jnp.asarray(alpha * e_pa**2, uh.real.dtype), shape)
    del uh
    sl = tuple(slice(p, p + n) for p, n in zip(widths, grid.shape))
    with np.errstate(over="ignore"):
        force = np.asarray(f[sl]) * np.asarray(e_pa * u_scale, np.float64).astype(f.dtype)
    if not np.all(np.isfinite(force)):
        check_scale(np.inf, u_scale, e_pa)
    t_end = time.perf_counter()
    info.update(
        {
            "alpha": alpha,
            "cutoff_wavelength_um": (2 * math.pi * math.sqrt(mu) * alpha**0.25) if alpha > 0 else 0.0,
            "time_fft_s": t_fft - t0,
            "time_regularization_s": t_reg - t_fft,
            "time_solve_s": t_end - t_reg,
            "time_total_s": t_end - t0,
        }
    )
    return force, info
