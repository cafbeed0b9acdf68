"""Constitutive laws of the matrix: moduli in Pa, strains dimensionless, stresses in Pa.

Isotropic linear elasticity (Hooke's law)::

    sigma = lambda * tr(eps) * I + 2 * mu * eps
    W     = lambda / 2 * tr(eps)**2 + mu * eps : eps          (strain-energy density, Pa)

with the Lamé parameters ``lambda = E nu / ((1 + nu)(1 - 2 nu))`` and the shear modulus
``mu = E / (2 (1 + nu))``. Hyperelastic laws (neo-Hookean) subclass :class:`Material`
with the same ``stress`` / ``strain_energy_density`` interface.
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


@dataclasses.dataclass(frozen=True)
class LinearElastic(Material):
    """Isotropic, homogeneous, linear-elastic matrix.

    Args:
      youngs_modulus_pa: Young's modulus E, Pa (> 0). Typical hydrogels: 100 Pa - 10 kPa.
      poisson_ratio: Poisson's ratio nu, in (-1, 0.5). Hydrogels are close to
        incompressible (0.45-0.49); exactly 0.5 is excluded because lambda diverges.
    """

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
        return self.youngs_modulus_pa / (2.0 * (1.0 + self.poisson_ratio))

    @property
    def lame_lambda_pa(self) -> float:
        """lambda = E nu / ((1 + nu)(1 - 2 nu)), Pa."""
        E, nu = self.youngs_modulus_pa, self.poisson_ratio
        return E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))

    @property
    def bulk_modulus_pa(self) -> float:
        """K = E / (3 (1 - 2 nu)), Pa."""
        return self.youngs_modulus_pa / (3.0 * (1.0 - 2.0 * self.poisson_ratio))

    @property
    def p_wave_modulus_pa(self) -> float:
        """lambda + 2 mu, Pa: the stiffness of longitudinal (compressive) modes."""
        return self.lame_lambda_pa + 2.0 * self.shear_modulus_pa

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
