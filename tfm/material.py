"""Constitutive laws of the matrix: moduli in Pa, strains dimensionless, stresses in Pa.

Isotropic linear elasticity (Hooke's law)::

    sigma = lambda * tr(eps) * I + 2 * mu * eps
    W     = lambda / 2 * tr(eps)**2 + mu * eps : eps          (strain-energy density, Pa)

with the Lamé parameters ``lambda = E nu / ((1 + nu)(1 - 2 nu))`` and the shear modulus
``mu = E / (2 (1 + nu))``.

Compressible neo-Hookean (large strains; Simo & Pister / Bonet & Wood eq. 6.27)::

    W(F) = mu / 2 (tr(F^T F) - 3 - 2 ln J) + lambda / 2 (ln J)**2,    J = det F

which reduces to Hooke's law with the same ``lambda`` and ``mu`` at small strain.

Every material also exposes :meth:`Material.energy_density` as a function of the
displacement gradient ``H = grad u`` (``F = I + H``): the voxel FEM
(:mod:`tfm.synth.fem`) minimises its integral, so one code path serves every law.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp


class Material:
    """Base class of matrix materials (documents the interface)."""

    def stress(self, strain):  # pragma: no cover - interface
        raise NotImplementedError

    def strain_energy_density(self, strain):  # pragma: no cover - interface
        raise NotImplementedError

    def energy_density(self, grad_u):  # pragma: no cover - interface
        """Strain-energy density (Pa) per reference volume from ``H = grad u`` ``(..., 3, 3)``,
        ``H[..., i, j] = du_i / dx_j``."""
        raise NotImplementedError


def det3(a):
    """Determinant of ``(..., 3, 3)`` matrices, written out (batched LU is slow on CPU)."""
    return (a[..., 0, 0] * (a[..., 1, 1] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 1])
            - a[..., 0, 1] * (a[..., 1, 0] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 0])
            + a[..., 0, 2] * (a[..., 1, 0] * a[..., 2, 1] - a[..., 1, 1] * a[..., 2, 0]))


def inv3(a):
    """Inverse of ``(..., 3, 3)`` matrices by cofactors."""
    c = [[a[..., (i + 1) % 3, (j + 1) % 3] * a[..., (i + 2) % 3, (j + 2) % 3]
          - a[..., (i + 1) % 3, (j + 2) % 3] * a[..., (i + 2) % 3, (j + 1) % 3] for j in range(3)] for i in range(3)]
    adj = jnp.stack([jnp.stack([c[j][i] for j in range(3)], axis=-1) for i in range(3)], axis=-2)
    return adj / det3(a)[..., None, None]


def linear_energy(grad_u, lam, mu):
    """Hookean strain-energy density (Pa) of the symmetric part of ``grad_u``; ``lam``, ``mu``
    in Pa may be traced arrays (the FEM compiles once for every modulus)."""
    h = jnp.asarray(grad_u)
    eps = 0.5 * (h + jnp.swapaxes(h, -1, -2))
    tr = jnp.trace(eps, axis1=-2, axis2=-1)
    return 0.5 * lam * tr**2 + mu * jnp.sum(eps * eps, axis=(-2, -1))


def neo_hookean_energy(grad_u, lam, mu):
    """Compressible neo-Hookean W (Pa) from ``H = F - I``, written without cancellation
    (float32 resolves strains of 1e-5): ``I1 - 3 - 2 ln J = |H|^2 - 2 (I2 + det H) + 2 (j - log1p j)``
    with ``j = J - 1 = tr H + I2 + det H``, ``I2 = ((tr H)^2 - tr(H H)) / 2``; +inf where
    ``J <= 0``."""
    h = jnp.asarray(grad_u)
    tr = jnp.trace(h, axis1=-2, axis2=-1)
    i2 = 0.5 * (tr**2 - jnp.einsum("...ij,...ji->...", h, h))
    dh = det3(h)
    j = tr + i2 + dh
    ok = j > -1.0
    js = jnp.where(ok, j, 0.0)
    lnj = jnp.log1p(js)
    small = jnp.abs(js) < 1e-2
    jt = jnp.where(small, js, 0.0)
    g = jnp.where(small, jt**2 / 2 - jt**3 / 3 + jt**4 / 4 - jt**5 / 5, js - lnj)  # j - log1p(j)
    w = 0.5 * mu * (jnp.sum(h * h, axis=(-2, -1)) - 2.0 * (i2 + dh) + 2.0 * g) + 0.5 * lam * lnj**2
    return jnp.where(ok, w, jnp.inf)


def lame_parameters(youngs_modulus, poisson_ratio):
    """``(lambda, mu)`` from Young's modulus and Poisson's ratio (floats or arrays, also
    traced JAX values): ``lambda = E nu / ((1 + nu)(1 - 2 nu))``, ``mu = E / (2 (1 + nu))``."""
    e, nu = youngs_modulus, poisson_ratio
    return e * nu / ((1.0 + nu) * (1.0 - 2.0 * nu)), e / (2.0 * (1.0 + nu))


@dataclasses.dataclass(frozen=True)
class _Isotropic(Material):
    """Young's modulus and Poisson's ratio, validated; the derived moduli."""

    youngs_modulus_pa: float
    poisson_ratio: float = 0.45

    def __post_init__(self):
        E, nu = self.youngs_modulus_pa, self.poisson_ratio
        try:
            E, nu = float(E), float(nu)
        except (TypeError, ValueError):
            raise ValueError(
                f"youngs_modulus_pa and poisson_ratio must be numbers, got {self.youngs_modulus_pa!r}, {self.poisson_ratio!r}"
            ) from None
        if not (math.isfinite(E) and E > 0):
            raise ValueError(f"youngs_modulus_pa must be finite and > 0 (Pa), got {E}")
        if not (math.isfinite(nu) and -1.0 < nu < 0.5):
            raise ValueError(f"poisson_ratio must lie in (-1, 0.5), got {nu}")
        object.__setattr__(self, "youngs_modulus_pa", E)
        object.__setattr__(self, "poisson_ratio", nu)

    @property
    def shear_modulus_pa(self) -> float:
        """mu = E / (2 (1 + nu)), Pa."""
        return lame_parameters(self.youngs_modulus_pa, self.poisson_ratio)[1]

    @property
    def lame_lambda_pa(self) -> float:
        """lambda = E nu / ((1 + nu)(1 - 2 nu)), Pa."""
        return lame_parameters(self.youngs_modulus_pa, self.poisson_ratio)[0]

    @property
    def bulk_modulus_pa(self) -> float:
        """K = E / (3 (1 - 2 nu)), Pa."""
        return self.youngs_modulus_pa / (3.0 * (1.0 - 2.0 * self.poisson_ratio))

    @property
    def p_wave_modulus_pa(self) -> float:
        """lambda + 2 mu, Pa: the stiffness of longitudinal (compressive) modes."""
        return self.lame_lambda_pa + 2.0 * self.shear_modulus_pa

    def linearized(self) -> LinearElastic:
        """The small-strain (Hookean) law with the same moduli."""
        return LinearElastic(self.youngs_modulus_pa, self.poisson_ratio)


@dataclasses.dataclass(frozen=True)
class LinearElastic(_Isotropic):
    """Isotropic, homogeneous, linear-elastic matrix.

    Args:
      youngs_modulus_pa: Young's modulus E, Pa (> 0). Typical hydrogels: 100 Pa - 10 kPa.
      poisson_ratio: Poisson's ratio nu, in (-1, 0.5). Hydrogels are close to
        incompressible (0.45-0.49); exactly 0.5 is excluded because lambda diverges.
    """

    def stress(self, strain):
        """Cauchy stress (Pa) from the small-strain tensor, both shaped ``(..., d, d)``."""
        strain = jnp.asarray(strain)
        d = strain.shape[-1]
        tr = jnp.trace(strain, axis1=-2, axis2=-1)[..., None, None]
        return self.lame_lambda_pa * tr * jnp.eye(d, dtype=strain.dtype) + 2.0 * self.shear_modulus_pa * strain

    def strain_energy_density(self, strain):
        """W = lambda/2 tr(eps)^2 + mu eps:eps, Pa (= pN µm / µm³)."""
        strain = jnp.asarray(strain)
        tr = jnp.trace(strain, axis1=-2, axis2=-1)
        return 0.5 * self.lame_lambda_pa * tr**2 + self.shear_modulus_pa * jnp.sum(strain * strain, axis=(-2, -1))

    def energy_density(self, grad_u):
        """W of the symmetric part of ``grad_u`` (small strain), Pa."""
        return linear_energy(grad_u, self.lame_lambda_pa, self.shear_modulus_pa)


@dataclasses.dataclass(frozen=True)
class NeoHookean(_Isotropic):
    """Compressible neo-Hookean matrix for large strains (cells strain gels by 10-30 %).

    ``W(F) = mu/2 (I1 - 3 - 2 ln J) + lambda/2 (ln J)^2`` with the Lamé parameters of
    ``youngs_modulus_pa`` and ``poisson_ratio``, so it agrees with :class:`LinearElastic`
    at small strain. ``W`` is +inf where ``J <= 0`` (an inverted element), which lets a
    line search back off.
    """

    def energy_density(self, grad_u):
        return neo_hookean_energy(grad_u, self.lame_lambda_pa, self.shear_modulus_pa)

    def first_piola_stress(self, grad_u):
        """P = dW/dF = mu (F - F^-T) + lambda ln J F^-T, Pa (per reference area)."""
        h = jnp.asarray(grad_u)
        f = h + jnp.eye(3, dtype=h.dtype)
        finv_t = jnp.swapaxes(inv3(f), -1, -2)
        lnj = jnp.log(det3(f))[..., None, None]
        return self.shear_modulus_pa * (f - finv_t) + self.lame_lambda_pa * lnj * finv_t

    def stress(self, strain):
        """Small-strain stress (the linearised law), Pa: for the FTTC-style linear operators."""
        return self.linearized().stress(strain)

    def strain_energy_density(self, strain):
        return self.linearized().strain_energy_density(strain)
