"""The force inverse of :mod:`tfm.classical.inverse` with the voxel FEM as operator: a
finite box (free or fixed faces), any law of :mod:`tfm.material` (linear, neo-Hookean,
semi-affine fibres).

The force that holds the matrix in ``u`` is the gradient of the FEM's strain energy per
voxel volume (:func:`tfm.synth.fem.energy`, the very operator of the synthetic ground
truth). The objective

    1/2 sum w |u - u_m|² / U²  +  alpha sum s(x) rho(f(u) / F)

(``U`` the RMS displacement, ``F = E U / h²`` the force scale, ``s`` the support weight;
``rho`` the pseudo-Huber ``delta² (sqrt(1 + |f|²/delta²) - 1)`` with ``delta`` = 1 % of
the force scale for ``"l1"``, ``|f|²/2`` for ``"l2"``) is minimised by L-BFGS (optax,
zoom line search), its gradient by reverse-mode autodiff through the energy, so a
nonlinear law costs nothing more to write. With ``boundary="fixed"`` the faces' forces
are reactions of the support and are not penalised.

Preconditioning: the objective's curvature grows as ``|k|⁴`` with the wavenumber (the
force is a second derivative of ``u``), which left plain L-BFGS a thousand iterations per
solve. L-BFGS runs on ``v`` with ``u = T v``, ``T`` diagonal per Fourier mode and
polarisation: ``T = U (w + alpha (c |k|² h²)²)^(-1/2)`` with ``c`` the longitudinal or
transverse small-strain modulus over E (the inverse square root of the objective's
curvature for a linear law and the quadratic part of the penalty), so every mode has
curvature about 1 in ``v``. ``T`` is an exact change of variables (periodic transforms
on the box, all modes kept), so the minimiser is unchanged; only the iterations fall.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..synth import fem
from .modes import apply_modes, fft3, fourier_modes, ifft3

DELTA = 0.01  # pseudo-Huber corner, in units of the force scale


def fem_force(u, scale_e, moduli, law: str, spacing):
    """Force density (pN/µm³) holding the matrix in ``u`` (µm), every node (faces included)."""
    return jax.grad(fem.energy)(u, scale_e, None, None, moduli, law, spacing) / float(np.prod(spacing))


class FEMProblem:
    """The FEM-operator problem behind :func:`tfm.classical.inverse.solve` (same interface
    as its FFT problem: ``initial``, ``run``, ``alpha_guess``, ``debias``, ``fields``)."""

    def __init__(self, u, grid, material, weights, support, config, start_um=None):
        self.grid, self.config = grid, config
        self.spacing = tuple(float(h) for h in grid.spacing_um)
        self.h = float(np.exp(np.mean(np.log(self.spacing))))
        self.scale_u = float(np.sqrt(np.mean(np.sum(u**2, -1)))) or 1.0
        self.scale_f = material.youngs_modulus_pa * self.scale_u / self.h**2
        self.law = material.law
        self.moduli = jnp.asarray(material.law_parameters(), jnp.float32)
        self.scale_e = jnp.ones(tuple(n - 1 for n in grid.shape), jnp.float32)
        s = np.asarray(support, np.float32)
        if config.boundary == "fixed":
            s = s.copy()
            s[[0, -1]] = 0.0
            s[:, [0, -1]] = 0.0
            s[:, :, [0, -1]] = 0.0
        self.support = jnp.asarray(s[..., None])
        self.um = jnp.asarray(u, jnp.float32)
        self.start = self.um if start_um is None else jnp.asarray(start_um, jnp.float32)
        self.w = jnp.asarray(weights, jnp.float32)[..., None]
        self.iterations = 0
        self._steps = {}
        self.k2, self.khat = fourier_modes(grid.shape, self.spacing)
        self.w_mean = float(np.mean(weights))
        self.c_long = material.p_wave_modulus_pa / material.youngs_modulus_pa
        self.c_trans = material.shear_modulus_pa / material.youngs_modulus_pa

    def _gains(self, alpha):
        """The per-mode gains of ``T`` (longitudinal, transverse), (Z, Y, Xr)."""
        s4 = (self.k2 * self.h**2) ** 2
        g = [self.scale_u / jnp.sqrt(self.w_mean + alpha * c**2 * s4) for c in (self.c_long, self.c_trans)]
        return g[0], g[1]

    def transform(self, v, alpha, inverse: bool = False):
        """``u = T v`` (or ``v = T^-1 u``), channel-last (Z, Y, X, 3)."""
        gl, gt = self._gains(alpha)
        if inverse:
            gl, gt = 1.0 / gl, 1.0 / gt
        out = ifft3(apply_modes(fft3(jnp.moveaxis(v, -1, 0)), self.khat, gl, gt), v.shape[:3])
        return jnp.moveaxis(out, 0, -1).astype(v.dtype)

    def _objective(self, penalty: str):
        um, w, s, su, sf = self.um, self.w, self.support, self.scale_u, self.scale_f
        moduli, law, spacing, scale_e = self.moduli, self.law, self.spacing, self.scale_e

        def value(u, alpha):
            f = fem_force(u, scale_e, moduli, law, spacing) / sf
            data = 0.5 * jnp.sum(w * (u - um) ** 2) / su**2
            if penalty == "l2":
                reg = 0.5 * jnp.sum(s * f**2)
            else:
                n2 = jnp.sum(f * f, -1, keepdims=True)
                reg = jnp.sum(s * DELTA**2 * (jnp.sqrt(1.0 + n2 / DELTA**2) - 1.0))
            return data + alpha * reg

        return value

    def _step(self, penalty: str):
        if penalty not in self._steps:
            value = self._objective(penalty)
            opt = optax.lbfgs()

            @jax.jit
            def step(v, opt_state, alpha):
                fn = lambda x: value(self.transform(x, alpha), alpha)  # noqa: E731
                val, grad = optax.value_and_grad_from_state(fn)(v, state=opt_state)
                updates, opt_state = opt.update(grad, opt_state, v, value=val, grad=grad, value_fn=fn)
                return optax.apply_updates(v, updates), opt_state, jnp.sqrt(jnp.sum(grad**2))

            self._steps[penalty] = (opt, step)
        return self._steps[penalty]

    def initial(self):
        return (self.start,), None

    def run(self, alpha: float, start, tolerance: float | None = None):
        """L-BFGS at ``alpha`` from ``start = ((u,), None)``; returns ``(((u,), None), misfit)``."""
        (u,), _ = start
        penalty = "l2" if self.config.penalty == "l2" else "l1"
        opt, step = self._step(penalty)
        v = self.transform(u, jnp.float32(alpha), inverse=True)
        opt_state = opt.init(v)
        tol = self.config.tolerance if tolerance is None else tolerance
        g0 = None
        for _ in range(self.config.max_iterations):
            v, opt_state, gnorm = step(v, opt_state, jnp.float32(alpha))
            self.iterations += 1
            gnorm = float(gnorm)
            g0 = gnorm if g0 is None else g0
            if not math.isfinite(gnorm) or gnorm <= tol * g0:
                break
        u = self.transform(v, jnp.float32(alpha))
        return ((u,), None), self.misfit(u)

    def misfit(self, u) -> float:
        return float(jnp.sum(self.w * (u - self.um) ** 2) / jnp.maximum(jnp.sum(self.w), 1e-30) / 3.0 / self.scale_u**2)

    def alpha_guess(self, target: float) -> float:
        return math.sqrt(target) * 10.0

    def debias(self, alpha: float, start):
        """The smooth penalty barely shrinks the forces it keeps: the solve converged to the
        full tolerance instead."""
        return self.run(alpha, start)

    def fields(self, state):
        u = state[0]
        f = fem_force(u, self.scale_e, self.moduli, self.law, self.spacing)
        if self.config.boundary == "fixed":
            f = f * jnp.asarray(np.pad(np.ones(tuple(n - 2 for n in self.grid.shape), np.float32), 1))[..., None]
        return np.asarray(u, np.float32), np.asarray(f, np.float32)
