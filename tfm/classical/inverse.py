r"""A regularised force inverse that keeps forces where the cell is.

Formulation (as saenopy's: the unknown is the displacement, the force follows from it
through the matrix's law). With measured displacement :math:`u_m` and weights
:math:`w \ge 0` (the DVC's valid windows, 0 in the padding and where nothing was
measured), the fitted displacement :math:`u` and the force :math:`f = K u` minimise

.. math::
   \tfrac12 \sum_x w(x)\,|u(x) - u_m(x)|^2 \;+\; \alpha \sum_x R\big(f(x)\big)\;\Delta V,
   \qquad f = K u,

where :math:`K` is the forward operator's inverse -- the force density that holds the
matrix in ``u``:

* ``operator="fft"``: an infinite linear matrix, :math:`\hat f(k) = (\mu k^2 I +
  (\lambda+\mu) k k^T)\,\hat u(k)` (Kelvin's solution inverted; the box is padded by
  ``pad_fraction`` with zero data weight, so periodic images stay out of it);
* ``operator="fem"``: the voxel FEM of a finite box (:mod:`tfm.synth.fem`: Q1 elements,
  the gradient of its strain energy, linear or neo-Hookean), faces ``"free"``
  (traction-free) or ``"fixed"`` (their reactions left unpenalised).

Penalties :math:`R`: ``"l1"`` (the default) is the group-L1 norm :math:`|f|`: a few strong
forces at the cell cost little, weak spurious forces elsewhere are driven to exactly zero;
``"l2"`` is Tikhonov :math:`|f|^2/2` (FTTC's, for comparison); ``"elastic-net"`` is
:math:`|f| + \gamma |f|^2/2`. With a cell ``mask``, forces are allowed only within
``support_um`` of the cell (default two grid spacings: the displacement's resolution
spreads a surface force that far; a hard constraint).

Solvers (matrix-free, JAX, jitted):

* ``"fft"``: ADMM with the splittings :math:`x = u` (data) and :math:`z = K u` (force):
  the :math:`u`-step is a diagonal solve in Fourier space (per wavevector, on the
  longitudinal and transverse modes of :math:`K`), the :math:`x`-step pointwise, the
  :math:`z`-step the penalty's proximal map (group soft-thresholding, projection onto the
  support); Boyd et al., Found Trends Mach Learn 3, 1 (2011).
* ``"fem"``: L-BFGS (optax) on the same objective with the group-L1 norm smoothed to a
  pseudo-Huber :math:`\delta^2(\sqrt{1 + |f|^2/\delta^2} - 1)`, :math:`\delta` a small
  fraction of the force scale; works for nonlinear laws too.

Noise and the choice of :math:`\alpha`: the displacement noise :math:`\sigma` is estimated
from the data when not given (:func:`estimate_noise`: the robust spread of what a
3 x 3 x 3 binomial smoothing removes, scaled for white noise) and :math:`\alpha` chosen by
Morozov's discrepancy principle: the weighted misfit equals the noise,
:math:`\sum w |u - u_m|^2 / \sum w = 3 \sigma^2`. It needs only :math:`\sigma`, which the
data give, and applies to non-quadratic penalties where GCV and the L-curve need the
solution's linearisation. With the ``"fft"`` operator the principle is solved directly, as
the constrained problem :math:`\min R(Ku)` subject to the misfit bound (C-SALSA, Afonso,
Bioucas-Dias & Figueiredo, IEEE TIP 20, 681 (2011)): one ADMM run whose data step is the
projection onto that ball, :math:`\alpha` its multiplier; the penalty's scale starts at
:math:`\max|K^{-1} r|` for a white residual :math:`r` of the target's size (the optimality
condition). Where that run does not converge (a target below what the grid can fit) and
for the ``"fem"`` operator, :math:`\alpha` is found by bisection in :math:`\log \alpha`
with warm starts, which also finds that misfit floor.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..grid import Grid
from ..material import LinearElastic
from ..synth.fem import MATERIALS
from .fttc import check_inputs, check_scale, pad_widths
from .modes import apply_modes, fft3, fourier_modes, ifft3
from .noise import estimate_noise

OPERATORS = ("fft", "fem")
RELAX = 1.6  # ADMM over-relaxation
NOISE_FLOOR = 0.005  # the estimated noise is taken as at least this fraction of the RMS displacement
LOW_SNR = 0.5  # noise above this fraction of the RMS displacement: warn that the forces are unreliable
PENALTIES = ("l1", "l2", "elastic-net")


@dataclasses.dataclass(frozen=True)
class InverseConfig:
    """Settings of :func:`solve` (see the module docs)."""

    operator: str = "fft"  # "fft" (infinite linear matrix) or "fem" (voxel FEM of the box)
    boundary: str = "free"  # fem: "free" (traction-free faces) or "fixed" (face reactions unpenalised)
    penalty: str = "l1"  # "l1" (group |f|), "l2" (Tikhonov) or "elastic-net"
    gamma: float = 1.0  # elastic-net: weight of |f|²/2 relative to |f| (in units of the force scale)
    alpha: float | str = "auto"  # "auto" (discrepancy principle) or a fixed value (in the solver's scaled units)
    noise_um: float | None = None  # displacement noise, std per component, µm (None: estimated)
    discrepancy: float = 1.1  # the misfit aimed at, in units of the noise (Morozov's tau; 1.1: the usual safety margin)
    support_um: float | str | None = "auto"  # with a mask: forces only within this distance of it, µm ("auto": 2 grid
    # spacings, the reach of the displacement's resolution; None: anywhere). Without a mask, forces may be anywhere.
    pad_fraction: float = 0.125  # fft: margin of zero data weight, fraction of the box per side
    pad_penalty: float = 0.3  # fft: weight of the penalty on forces in that margin (the world beyond the box)
    max_iterations: int = 400  # per solve
    tolerance: float = 5e-3  # relative primal and dual residual of ADMM / gradient norm of L-BFGS
    bisection_steps: int = 10  # discrepancy principle: solves to bracket and refine alpha
    debias: bool = True  # refit on the forces' support with a 100x weaker penalty (undoes the L1 shrinkage)

    def __post_init__(self):
        if self.operator not in OPERATORS:
            raise ValueError(f"operator must be one of {OPERATORS}, got {self.operator!r}")
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {self.penalty!r}")
        if self.boundary not in ("free", "fixed"):
            raise ValueError(f"boundary must be 'free' or 'fixed', got {self.boundary!r}")
        if not (isinstance(self.alpha, str) and self.alpha == "auto"):
            if isinstance(self.alpha, (bool, str)) or not (np.isfinite(self.alpha) and self.alpha >= 0):
                raise ValueError(f"alpha must be 'auto' or a finite number >= 0, got {self.alpha!r}")
        for name in ("noise_um", "support_um"):
            v = getattr(self, name)
            if name == "support_um" and isinstance(v, str) and v == "auto":
                continue
            if v is not None and (isinstance(v, (bool, str)) or not (np.isfinite(v) and v > 0)):
                raise ValueError(f"{name} must be > 0 (µm) or None, got {v!r}")
        for name, lo in (("gamma", 0.0), ("discrepancy", 0.0), ("pad_fraction", 0.0), ("tolerance", 0.0), ("pad_penalty", 0.0)):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= lo) or (name in ("discrepancy", "tolerance") and v <= 0):
                raise ValueError(f"{name} must be a finite number {'> 0' if name in ('discrepancy', 'tolerance') else '>= 0'}, got {v!r}")
        for name in ("max_iterations", "bisection_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")


# ------------------------------------------------------------------ fft operator
def green_modes(k2, lam2mu, mu):
    """``K^-1`` per wavevector: gains ``1 / ((lam + 2 mu) k²)``, ``1 / (mu k²)`` (no mean mode)."""
    safe = jnp.where(k2 > 0, k2, 1.0)
    return jnp.where(k2 > 0, 1.0 / (lam2mu * safe), 0.0), jnp.where(k2 > 0, 1.0 / (mu * safe), 0.0)


def box_transfer(shape, spacing, window) -> jnp.ndarray:
    """(Z, Y, Xr): the mean over a centred box of ``window`` on the rFFT grid, ``prod_a sinc(k_a L_a / 2)``."""
    b = [np.sinc(np.asarray(k) * length / (2 * np.pi))  # numpy's sinc(x) = sin(pi x) / (pi x)
         for k, length in zip(Grid(shape, spacing).wavevector_axes(rfft=True), window)]
    return jnp.asarray(b[0][:, None, None] * b[1][None, :, None] * b[2][None, None, :], jnp.float32)


def apply_fft_operator(u, spacing, material):
    """``K u``: the force density (pN/µm³) holding an infinite linear matrix in ``u``
    ((Z, Y, X, 3) µm, periodic on its grid; ``spacing`` µm)."""
    u = jnp.moveaxis(jnp.asarray(u, jnp.float32), -1, 0)
    k2, khat = fourier_modes(u.shape[1:], tuple(spacing))
    f = ifft3(apply_modes(fft3(u), khat, material.p_wave_modulus_pa * k2, material.shear_modulus_pa * k2), u.shape[1:])
    return jnp.moveaxis(f, 0, -1)


def _prox(v, t, penalty: str, gamma: float):
    """Proximal map of ``t R`` on vectors (first axis)."""
    if penalty == "l2":
        return v / (1.0 + t)
    n = jnp.sqrt(jnp.sum(v * v, 0, keepdims=True))
    shrunk = v * jnp.maximum(0.0, 1.0 - t / jnp.maximum(n, 1e-30))
    return shrunk / (1.0 + t * gamma) if penalty == "elastic-net" else shrunk


def project_ball(v, um, w, radius2, lam):
    """Euclidean projection of ``v`` onto the weighted ball ``sum w |x - u_m|² <= radius2``:
    ``x = (v + lam w u_m) / (1 + lam w)``, ``lam >= 0`` the root of the convex, decreasing
    ``sum w |v - u_m|² / (1 + lam w)² = radius2`` (0 inside the ball), by Newton steps from
    ``lam`` (the previous iteration's root: a few steps suffice)."""
    d2 = jnp.sum((v - um) ** 2, 0, keepdims=True)
    inside = jnp.sum(w * d2) <= radius2

    def newton(_, lam):
        q = 1.0 / (1.0 + lam * w)
        g = jnp.sum(w * d2 * q * q) - radius2
        dg = -2.0 * jnp.sum(w * w * d2 * q * q * q)
        return jnp.maximum(lam - g / jnp.minimum(dg, -1e-30), 0.0)

    lam = jnp.where(inside, 0.0, jax.lax.fori_loop(0, 3, newton, lam))
    return (v + lam * w * um) / (1.0 + lam * w), lam


@partial(jax.jit, static_argnames=("penalty", "iterations"))
def _admm(state, um, w, support, k2, khat, bk, lam2mu, mu, alpha, rho, gamma, radius2, penalty, iterations):
    """``iterations`` ADMM steps from ``state = (u_hat, x, z, y1, y2, lam)``; returns the
    state and the relative primal / dual residuals of the last step (computed on that step
    only: the reductions cost a pass over every field). ``radius2 > 0``: the data term is
    the constraint ``sum w |u - u_m|² <= radius2`` (its x-step a projection, ``lam`` its
    multiplier: the penalised problem's alpha is ``alpha / lam``); otherwise the penalty
    ``sum w |u - u_m|² / 2`` (``lam`` unused). ``bk`` (Z, Y, Xr): the measurement's
    transfer function B (1: a pointwise measurement; a window mean's: :func:`box_transfer`);
    the data split is then ``x = B u``."""
    shape = um.shape[1:]
    al, at = lam2mu * k2, mu * k2
    inv_l, inv_t = 1.0 / (bk * bk + rho * al**2), 1.0 / (bk * bk + rho * at**2)
    # The u-step u = (B² + rho K²)⁻¹ (B a + rho K b), a = F(x + y1), b = F(z - y2), and K u,
    # with every mode operator applied once: per wavevector, c_t v + (c_l - c_t) k̂ (k̂·v).
    ca, cb = bk * inv_t, rho * at * inv_t  # transverse parts of u from a and b
    la, lb = bk * inv_l, rho * al * inv_l  # longitudinal parts (of k̂·u)

    def step(carry):
        uh, x, z, y1, y2, lam = carry
        a, b = fft3(x + y1), fft3(z - y2)
        uh_t = ca * a + cb * b  # the transverse operator applied to both
        ul = la * jnp.sum(khat * a, 0, keepdims=True) + lb * jnp.sum(khat * b, 0, keepdims=True)  # k̂·u
        uh = uh_t + khat * (ul - jnp.sum(khat * uh_t, 0, keepdims=True))
        u = ifft3(bk * uh, shape)  # B u: what the data see
        ku = ifft3(at * uh + khat * ((al - at) * ul), shape)
        # Over-relaxation (Boyd et al. 2011, 3.4.3): the new iterates mixed with the old.
        u_r = RELAX * u + (1 - RELAX) * x
        ku_r = RELAX * ku + (1 - RELAX) * z
        x, lam = jax.lax.cond(radius2 > 0, lambda: project_ball(u_r - y1, um, w, radius2, lam),
                              lambda: ((w * um + (u_r - y1)) / (w + 1.0), lam))
        z_new = jnp.where(support > 0, _prox(ku_r + y2, alpha * support / rho, penalty, gamma), 0.0)
        y1 = y1 + x - u_r
        y2 = y2 + ku_r - z_new
        return (uh, x, z_new, y1, y2, lam), (u, ku, z)

    state = jax.lax.fori_loop(0, iterations - 1, lambda _, c: step(c)[0], state)
    state, (u, ku, z_old) = step(state)
    x, z = state[1], state[2]
    primal = jnp.sqrt(jnp.sum((x - u) ** 2) + jnp.sum((ku - z) ** 2))
    scale = jnp.sqrt(jnp.sum(u**2) + jnp.sum(ku**2)) + 1e-30
    dual = jnp.sqrt(jnp.sum((z - z_old) ** 2)) * rho
    return state, primal / scale, dual / scale


@jax.jit
def _green_max(r, w, k2, khat, bk, lam2mu, mu):
    """``max |K^-1 B (r on the measured points)|`` (the mean mode left out)."""
    g = ifft3(apply_modes(fft3(r * (w > 0)), khat, *(bk * gain for gain in green_modes(k2, lam2mu, mu))), r.shape[1:])
    return jnp.max(jnp.sqrt(jnp.sum(g * g, 0)))


@jax.jit
def _misfit(uh, um, w, bk):
    u = ifft3(bk * uh, um.shape[1:])
    return jnp.sum(w * (u - um) ** 2) / jnp.maximum(jnp.sum(w), 1e-30) / 3.0


class _FFTProblem:
    """The padded, scaled problem of the ``"fft"`` operator; ``run(alpha, state)`` solves it."""

    def __init__(self, u, grid: Grid, material, weights, support, config: InverseConfig, window_um=None, start_um=None):
        self.h = float(np.exp(np.mean(np.log(grid.spacing_um))))  # lengths in units of the mean voxel size
        self.scale_u = float(np.sqrt(np.mean(np.sum(u**2, -1)))) or 1.0
        e = material.youngs_modulus_pa
        self.scale_f = e * self.scale_u / self.h**2  # pN/µm³ per unit of the scaled force
        self.widths = pad_widths(grid.shape, "zero", config.pad_fraction) if config.pad_fraction > 0 else (0, 0, 0)
        pw = [(p, p) for p in self.widths] + [(0, 0)]
        self.crop = tuple(slice(p, p + n) for p, n in zip(self.widths, grid.shape))
        self.um = jnp.asarray(np.moveaxis(np.pad(u / self.scale_u, pw), -1, 0), jnp.float32)
        self.w = jnp.asarray(np.pad(weights, pw[:3])[None], jnp.float32)
        # Forces are allowed in the padding, penalised only by ``pad_penalty``: there they
        # stand for the world beyond the measured box (on a periodic grid the measured field
        # cannot continue without them), and they are cropped away.
        self.support = jnp.asarray(np.pad(support, pw[:3], constant_values=config.pad_penalty)[None], jnp.float32)
        self._in_box = np.pad(np.ones(grid.shape, bool), pw[:3])
        self.shape = self.um.shape[1:]
        spacing = tuple(h / self.h for h in grid.spacing_um)  # scaled units
        self.k2, self.khat = fourier_modes(self.shape, spacing)
        self.lam2mu, self.mu = material.p_wave_modulus_pa / e, material.shear_modulus_pa / e
        self.u0 = None if start_um is None else jnp.asarray(np.moveaxis(np.pad(start_um / self.scale_u, pw), -1, 0), jnp.float32)
        self.bk = jnp.ones_like(self.k2) if window_um is None else box_transfer(self.shape, spacing, np.divide(window_um, self.h))
        self.config = config
        self.iterations = 0

    def initial(self):
        """ADMM's start: u = x = the data, or ``start_um`` (u) and its measurement (x)."""
        zero, uh = jnp.zeros_like(self.um), fft3(self.um if self.u0 is None else self.u0)
        x = self.um if self.u0 is None else ifft3(self.bk * uh, self.shape)
        return (uh, x, zero, zero, zero, jnp.float32(0.0)), 4.0

    def _block(self, state, alpha, rho, radius2, iterations):
        cfg = self.config
        state, primal, dual = _admm(state, self.um, self.w, self.support, self.k2, self.khat, self.bk, self.lam2mu, self.mu,
                                    jnp.float32(alpha), jnp.float32(rho), jnp.float32(cfg.gamma), jnp.float32(radius2),
                                    cfg.penalty, iterations)
        self.iterations += iterations
        return state, float(primal), float(dual)

    @staticmethod
    def _balance(state, rho, primal, dual):
        """Residual balancing (Boyd et al. 2011, 3.4.1): rho doubled or halved where one
        residual is 10x the other (the scaled dual of the force split rescaled with it)."""
        if primal > 10 * dual or dual > 10 * primal:
            factor = 2.0 if primal > dual else 0.5
            return (*state[:4], state[4] / factor, state[5]), rho * factor
        return state, rho

    def run(self, alpha: float, start, tolerance: float | None = None):
        """ADMM at ``alpha`` from ``start = (state, rho)`` to the tolerance; returns
        ``((state, rho), misfit per component (scaled units²))``."""
        state, rho = start
        cfg = self.config
        tolerance = cfg.tolerance if tolerance is None else tolerance
        block = 10
        for _ in range(0, cfg.max_iterations, block):
            state, primal, dual = self._block(state, alpha, rho, 0.0, block)
            if primal < tolerance and dual < tolerance:
                break
            state, rho = self._balance(state, rho, primal, dual)
        return (state, rho), self.misfit(state)

    def constrained(self, target: float, alpha: float, start):
        """Morozov's principle solved directly (C-SALSA: Afonso, Bioucas-Dias & Figueiredo,
        IEEE TIP 20, 681 (2011)): the least penalty whose fit has misfit ``target`` (per
        component, scaled units²), one ADMM run whose data step projects onto that ball.
        ``alpha`` (a guess of the penalised problem's) sets the scale of the penalty; it is
        moved by 3x where the multiplier says it is 10x off (so the fixed x-split weight of 1
        stays matched to the data). Returns ``((state, rho), alpha, misfit, converged)``;
        not converged: the target is below what the grid can fit (or the iterations ran out)."""
        state, rho = start
        cfg = self.config
        radius2 = target * 3.0 * float(jnp.sum(self.w))
        floor_alpha = 1e-2 * alpha  # below this, the target is taken as out of reach (a misfit floor)
        block, converged = 10, False
        for i in range(0, 2 * cfg.max_iterations, block):
            state, primal, dual = self._block(state, alpha, rho, radius2, block)
            lam = float(state[5])
            if primal < cfg.tolerance and dual < cfg.tolerance and 0.1 <= lam <= 10:
                converged = True
                break
            # ADMM converges for any penalty scale, but at a scale far below the solution's
            # alpha (lam << 1) its residuals stall long before the support is sparse: the scale
            # is raised where the fit sits inside the ball (lam = 0: too weak a penalty to reach
            # the target) or lam stays below 0.1, lowered where lam stays above 10 (the first
            # blocks' lam is a transient, several times its limit).
            if i >= 2 * block and (lam < 0.1 or lam > 10):
                factor = 1.0 / 3.0 if lam < 0.1 else 3.0
                alpha /= factor  # and the scaled duals with it: the same fixed point, lam / factor
                state = (*state[:3], state[3] / factor, state[4] / factor, state[5] / factor)
                if alpha < floor_alpha:
                    break
            state, rho = self._balance(state, rho, primal, dual)
        lam = float(state[5])
        return (state, rho), alpha / lam if lam > 0 else alpha, self.misfit(state), converged

    def alpha_guess(self, target: float) -> float:
        """Where the discrepancy search starts: alpha ~ sigma / rms(K) (the optimality
        condition ``w (u - u_m) = alpha K^T s`` with ``|s| <= 1``, misfit ~ sigma)."""
        rms_k = float(jnp.sqrt(jnp.mean((self.lam2mu**2 + 2 * self.mu**2) * self.k2**2 / 3.0)))
        return math.sqrt(target) / max(rms_k, 1e-12)

    def alpha_dual(self, target: float) -> float:
        """The alpha whose solution leaves a residual like white noise of variance
        ``target`` (per component, scaled units²) on the measured points: the optimality
        condition ``w (u_m - u) = alpha K s`` with ``|s| <= 1`` (attained on the forces'
        support) gives ``alpha = max |K^-1 r|`` for the residual ``r``, here a seeded white
        draw on the points of nonzero weight (Gaussian fields: the max is a few times the
        RMS; measured within 2x of the discrepancy principle's alpha on closed forms)."""
        r = np.random.default_rng(0).standard_normal(self.um.shape, dtype=np.float32)
        out = float(_green_max(jnp.asarray(r), self.w, self.k2, self.khat, self.bk, self.lam2mu, self.mu)) * math.sqrt(target)
        return out or self.alpha_guess(target)

    def misfit(self, state) -> float:
        return float(_misfit(state[0], self.um, self.w, self.bk))

    def debias(self, alpha: float, start):
        """The penalty shrinks every force it keeps (by about ``alpha``); re-solving with a
        100x weaker penalty, forces allowed only where the first solve put forces above that
        shrinkage (and one voxel around), keeps the support and restores their magnitudes.
        (A force below ``alpha`` is one the penalty does not tell from zero: an ADMM solve
        stopped at its tolerance leaves a faint tail of them, which the weaker penalty would
        inflate: at 32³, 5 % noise, 18.6 % of the true total outside the cell instead of 3.3 %.)
        ``start`` and the return value are ``(state, rho)`` and ``((state, rho), misfit)``."""
        from scipy import ndimage

        state = start[0]
        strong = np.asarray(jnp.sum(state[2] ** 2, 0) > alpha**2)
        keep = strong & self._in_box  # the margin's forces do not spill into the box
        keep = (ndimage.binary_dilation(keep) & self._in_box) | ~self._in_box
        saved = self.support
        self.support = jnp.where(jnp.asarray(keep)[None], self.support, 0.0)
        try:
            return self.run(0.01 * alpha, start)
        finally:
            self.support = saved

    def fields(self, state):
        """(displacement µm, force pN/µm³) on the unpadded grid."""
        crop = (slice(None), *self.crop)
        u = np.moveaxis(np.asarray(ifft3(state[0], self.shape))[crop], 0, -1) * self.scale_u
        f = np.moveaxis(np.asarray(state[2])[crop], 0, -1) * self.scale_f
        return u.astype(np.float32), f.astype(np.float32)


def _discrepancy(problem, target: float, config: InverseConfig, finish: bool = True):
    """Alpha with misfit(alpha) = target (misfit grows with alpha): bracketed by steps along
    the local slope, then secant / bisection in (log alpha, log misfit), warm-started. The
    misfit of a nearly unregularised solve is the best the grid can do (a kink of the
    field, the box's truncation); where it exceeds the noise, that floor (times the same
    margin) is the target. ``finish``: converge the chosen solve to the full tolerance (not
    needed where a debiasing solve follows). Returns ``(alpha, (state, rho), misfit, trace,
    floor)``."""
    trace = []

    def at(alpha, start):
        sol, m = problem.run(alpha, start, 3 * config.tolerance)
        trace.append((alpha, m))
        return sol, m

    guess = problem.alpha_guess(target)
    sol, floor = at(guess * 1e-3, problem.initial())  # nearly unregularised: the best fit the grid allows (roughly)
    if config.discrepancy**2 * floor > target:
        target = config.discrepancy**2 * floor
    else:
        floor = None
    alpha = guess
    sol, m = at(alpha, sol)
    lo = hi = None  # lo: misfit below target (the largest such alpha); hi: above (the smallest)
    prev = None
    for _ in range(16):
        if m < target:
            lo = (alpha, sol, m)
        else:
            hi = (alpha, sol, m)
        if lo is not None and hi is not None:
            break
        gap = math.log(target) - math.log(max(m, 1e-30))
        slope = 0.5  # d log misfit / d log alpha: from the last two solves once there are two
        if prev is not None and prev[0] != alpha:
            slope = max((math.log(max(m, 1e-30)) - math.log(max(prev[1], 1e-30))) / (math.log(alpha) - math.log(prev[0])), 0.05)
        step = min(max(1.3 * gap / slope, -math.log(30.0)), math.log(30.0))  # 1.3: overshoot, to bracket
        prev = (alpha, m)
        alpha *= math.exp(step if abs(step) > math.log(1.5) else math.copysign(math.log(1.5), step))
        sol, m = at(alpha, sol)
    if lo is None or hi is None:  # no alpha reaches the target
        best = lo if lo is not None else hi
    else:
        for _ in range(config.bisection_steps):
            la, lb = math.log(lo[0]), math.log(hi[0])
            ma, mb = math.log(max(lo[2], 1e-30)), math.log(max(hi[2], 1e-30))
            t = (math.log(target) - ma) / (mb - ma) if mb != ma else 0.5
            x = la + min(max(t, 0.1), 0.9) * (lb - la)  # secant, kept inside the bracket
            sol, m = at(math.exp(x), lo[1] if abs(x - la) < abs(x - lb) else hi[1])
            if m < target:
                lo = (math.exp(x), sol, m)
            else:
                hi = (math.exp(x), sol, m)
            if abs(math.log(max(m, 1e-30)) - math.log(target)) < 0.1:  # within 5 % of the noise level
                break
        best = lo if abs(math.log(lo[2] / target)) < abs(math.log(hi[2] / target)) else hi
    sol, m = best[1], best[2]
    if finish:
        sol, m = problem.run(best[0], sol)  # converged to the full tolerance
        trace.append((best[0], m))
    return best[0], sol, m, trace, floor


def _check(displacement, grid, material, weights, mask, config):
    laws = (LinearElastic,) if config.operator == "fft" else MATERIALS
    u = check_inputs(displacement, grid, material, laws, f"the force inverse (operator={config.operator!r})")
    scale = float(np.max(np.abs(u))) or 1.0
    check_scale(material.youngs_modulus_pa * scale / min(grid.spacing_um) ** 2, scale, material.youngs_modulus_pa)
    w = np.ones(grid.shape) if weights is None else np.asarray(weights, np.float64)
    if w.shape != grid.shape or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite, >= 0 and of the grid's shape {grid.shape}, got shape {w.shape}")
    if not np.any(w > 0):
        raise ValueError("weights are zero everywhere: nothing was measured")
    m = None
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != grid.shape or not (m.dtype == bool or np.all((m == 0) | (m == 1))):
            raise ValueError(f"mask must be a bool (or 0/1) array of the grid's shape {grid.shape}, got {m.dtype} {m.shape}")
        m = m.astype(bool)
    if isinstance(config.support_um, (int, float)) and (m is None or not m.any()):
        raise ValueError("support_um needs a (non-empty) cell mask")
    return u.astype(np.float32), w, m  # the solvers run in float32


def support_distance(mask, grid: Grid, support_um) -> float | None:
    """The distance from the mask within which forces are allowed (None: anywhere)."""
    if mask is None or not np.any(mask) or support_um is None:
        return None
    return 2.0 * max(grid.spacing_um) if isinstance(support_um, str) else float(support_um)


def support_of(mask, grid: Grid, support_um) -> np.ndarray:
    """1 where forces are allowed: within ``support_um`` of the mask (everywhere without one)."""
    support_um = support_distance(mask, grid, support_um)
    if support_um is None:
        return np.ones(grid.shape)
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(~np.asarray(mask, bool), sampling=grid.spacing_um)
    return (dist <= support_um).astype(np.float64)


def rms_of(u, w) -> float:
    """Weighted RMS per component of a (Z, Y, X, 3) field."""
    return float(np.sqrt(np.sum(w[..., None] * u**2) / np.sum(w) / 3.0))


def noise_level(u, w, m, config: InverseConfig):
    """The noise (given, or estimated but never below NOISE_FLOOR of the signal, where the
    grid's own resolution of the field dominates) and a warning where it rivals the signal."""
    rms = float(np.sqrt(np.mean(np.sum(u[w > 0] ** 2, -1)) / 3.0))
    if config.noise_um is not None:
        sigma = config.noise_um
    else:
        try:
            sigma = max(estimate_noise(u, valid=w > 0, mask=m), NOISE_FLOOR * rms)
        except ValueError as exc:
            raise ValueError(f"{exc}: pass noise_um (tfm forces / reconstruct: --noise-um)") from None
    notes = []
    if sigma > LOW_SNR * rms:
        notes.append(f"the displacement (RMS {rms:.3g} µm per component) is hardly above its noise ({sigma:.3g} µm"
                     f"{', estimated' if config.noise_um is None else ''}): the forces are unreliable, and zero where "
                     "nothing stands out of the noise; a finer displacement grid (more beads per window) or a "
                     "measured noise level (noise_um) helps")
        warnings.warn(notes[-1], stacklevel=5)  # from the caller of tfm.reconstruct_forces
    return sigma, notes


def solve(displacement, grid: Grid, material, weights=None, mask=None, config: InverseConfig = InverseConfig(),
          window_um=None, start_um=None):
    """Force density (pN/µm³) and fitted displacement (µm) from a measured displacement.

    Args:
      displacement: (Z, Y, X, 3) µm on ``grid``.
      material: :class:`~tfm.material.LinearElastic` (``"fft"``), also nonlinear (``"fem"``).
      weights: (Z, Y, X) >= 0, the trust in each measurement (default 1; 0 = unmeasured).
      mask: optional (Z, Y, X) bool, the cell, on ``grid``: left out of the noise estimate,
        and with its neighbourhood (``support_um``, default 2 grid spacings) the only place
        forces may be.
      window_um: None: each point of nonzero weight measures ``u`` there; (z, y, x) µm: the
        mean of ``u`` over a box of that size around it (``"fft"`` only; tfm.classical.windows).
      start_um: optional (Z, Y, X, 3) µm, where the solver starts (default: the data).

    Returns ``(force, fitted_displacement, info)``; info holds the noise (given or
    estimated), alpha and how it was chosen, the misfit, iterations and timings.
    """
    t0 = time.perf_counter()
    u, w, m = _check(displacement, grid, material, weights, mask, config)
    if not np.any(u[w > 0]):  # nothing moved: no force (and no noise to fit)
        zero = np.zeros(u.shape, np.float32)
        return zero, zero, {"operator": config.operator, "penalty": config.penalty, "noise_um": 0.0, "alpha": None,
                            "alpha_rule": "no_data", "misfit_um": 0.0, "iterations": 0, "time_total_s": time.perf_counter() - t0}
    sigma, notes = noise_level(u, w, m, config)
    support = support_of(m, grid, config.support_um)
    if config.operator == "fem":
        from .inverse_fem import FEMProblem
        if window_um is not None:
            raise ValueError("window_um (window-mean measurements) needs operator='fft'")
        problem = FEMProblem(u, grid, material, w, support, config, start_um)
    else:
        problem = _FFTProblem(u, grid, material, w, support, config, window_um, start_um)
    info = {"operator": config.operator, "penalty": config.penalty, "noise_um": sigma,
            "noise_estimated": config.noise_um is None, "support_um": support_distance(m, grid, config.support_um),
            "warnings": notes}
    if isinstance(config.alpha, str):
        target = (config.discrepancy * sigma / problem.scale_u) ** 2
        if target >= float(np.sum(w[..., None] * u**2) / np.sum(w) / 3.0) / problem.scale_u**2:
            # Zero force already fits within the noise: no alpha can do better (alpha -> inf).
            zero = np.zeros(u.shape, np.float32)
            info.update(alpha=math.inf, alpha_rule="discrepancy", discrepancy_target_um=config.discrepancy * sigma,
                        misfit_um=rms_of(u, w), iterations=0, time_total_s=time.perf_counter() - t0)
            return zero, zero, info
        debias = config.debias and config.penalty != "l2"
        info.update(alpha_rule="discrepancy", discrepancy_target_um=config.discrepancy * sigma)
        solved = False
        if hasattr(problem, "constrained"):  # one constrained solve (fft) ...
            sol, alpha, misfit, solved = problem.constrained(max(target, 1e-30), problem.alpha_dual(target), problem.initial())
            info["discrepancy_solver"] = "constrained"
        if not solved:  # ... or a search over alpha, which also finds the misfit floor where the target is below it
            alpha, sol, misfit, trace, floor = _discrepancy(problem, max(target, 1e-30), config, finish=not debias)
            info.update(discrepancy_solver="search", misfit_floor_um=None if floor is None else float(np.sqrt(floor)) * problem.scale_u,
                        alpha_trace=[[a, float(np.sqrt(mm)) * problem.scale_u] for a, mm in trace])
    else:
        alpha = float(config.alpha)
        sol, misfit = problem.run(alpha, problem.initial())
        info["alpha_rule"] = "fixed"
    if config.debias and config.penalty != "l2":
        sol, misfit = problem.debias(alpha, sol)
        info["debiased"] = True
    state = sol[0]
    u_fit, force = problem.fields(state)
    info.update(alpha=alpha, misfit_um=float(np.sqrt(misfit)) * problem.scale_u, iterations=problem.iterations,
                force_scale_pn_um3=problem.scale_f, time_total_s=time.perf_counter() - t0)
    return force, u_fit, info
