"""Closed-form solutions of linear elasticity, used as ground truth by tests and benchmarks.

Every solution takes points ``(..., 3)`` in µm, ``(z, y, x)`` order, and returns the exact
displacement ``(..., 3)`` in µm. Strain, stress (Pa) and the Navier residual
``div sigma + f`` (pN/µm³) follow by exact automatic differentiation of the displacement
formula, so a typo in a formula shows up as a non-zero residual in the tests.

Solutions (``mu`` shear modulus, ``nu`` Poisson ratio, ``r = |x - x0|``):

* :class:`KelvinPointForce` -- point force F in an infinite medium (Kelvin 1848)::

      u = [(3 - 4 nu) F + (F . e) e] / (16 pi mu (1 - nu) r),   e = (x - x0) / r

  With ``core_radius_um = eps > 0`` it is the *regularised Kelvinlet* (de Goes & James,
  ACM TOG 2017): the exact field of the smooth body force
  ``f = F * 15 eps^4 / (8 pi (r^2 + eps^2)^(7/2))``, which integrates to F and is known at
  every point, so a force reconstruction can be compared voxel by voxel.
* :class:`KelvinForceDipole` -- two opposite Kelvin forces (a contractile dipole).
* :class:`HalfSpacePointForce` -- a point force on the surface of an elastic half-space:
  Boussinesq (1885) for the normal component, Cerruti (1882) for the tangential ones
  (formulas as in K. L. Johnson, *Contact Mechanics*, 1985, sec. 3.2). Built with
  :func:`boussinesq` or :func:`cerruti`.
* :class:`EshelbySphere` -- spherical inclusion of the matrix's own moduli with a
  dilatational eigenstrain ``eps*`` (Eshelby 1957): ``u = A (x - x0)`` inside,
  ``u = A a^3 (x - x0) / r^3`` outside, ``A = eps* (1 + nu) / (3 (1 - nu))``. Its forces are
  a radial surface layer of ``3 K eps*`` Pa on the sphere: with ``eps* < 0`` it is the
  *contracting sphere*, the simplest model of a contracting cell embedded in a gel.
* :class:`GaussianDilatation` -- a smooth (Gaussian) dilatational eigenstrain
  ``eps*(r) = e0 exp(-r^2 / 2 s^2)`` in an infinite matrix: ``u = grad phi`` with
  ``lap phi = (1 + nu) / (1 - nu) eps*``, so ``u_r = (1 + nu) / ((1 - nu) r^2) int_0^r eps* s^2 ds``
  in closed form (erf); its equivalent body force is ``-3 K grad eps*``. Smooth, so a
  discretisation converges at its full order (the voxel FEM's order test).
* :class:`SphericalCavity` -- a spherical hole of radius a under internal pressure p:
  ``u_r = p a^3 / (4 mu r^2)`` for ``r >= a`` (negative p: a cavity pulling on the matrix).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from .material import LinearElastic


def _vec3(v, name: str) -> tuple:
    arr = np.asarray(v, dtype=float).ravel()
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be 3 finite numbers in (z, y, x) order, got {v!r}")
    return tuple(float(a) for a in arr)


def _points(points):
    p = jnp.asarray(points)
    if p.ndim < 1 or p.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., 3) in (z, y, x) order, got {tuple(p.shape)}")
    if not jnp.issubdtype(p.dtype, jnp.floating):
        p = p.astype(jnp.float32)
    return p


def _check_sphere(sol) -> None:
    """Validate and normalise ``center_um`` and ``radius_um`` of a spherical solution."""
    object.__setattr__(sol, "center_um", _vec3(sol.center_um, "center_um"))
    if not sol.radius_um > 0:
        raise ValueError(f"radius_um must be > 0, got {sol.radius_um}")


class AnalyticSolution:
    """Base class: subclasses define ``material`` and ``_u(x)`` for one point ``x`` (3,)."""

    material: LinearElastic

    def _u(self, x):  # pragma: no cover - interface
        raise NotImplementedError

    def _f(self, x):
        """Body-force density at one point (pN/µm³); zero unless the solution defines one."""
        return jnp.zeros_like(x)

    def _eigenstress(self, x):
        """Stress-free-strain contribution ``C : eps*`` (Pa) at one point; zero by default."""
        return jnp.zeros((3, 3), x.dtype)

    def _map(self, fn, points):
        p = _points(points)
        flat = p.reshape(-1, 3)
        out = jax.vmap(fn)(flat)
        return out.reshape(p.shape[:-1] + out.shape[1:])

    def displacement(self, points):
        """Displacement (µm) at ``points`` (..., 3) -> (..., 3)."""
        return self._map(self._u, points)

    def body_force(self, points):
        """Body-force density applied to the matrix (pN/µm³); zero away from the loads."""
        return self._map(self._f, points)

    def _grad(self, x):
        return jax.jacfwd(self._u)(x)

    def _stress(self, x):
        g = self._grad(x)
        eps = 0.5 * (g + g.T)
        return self.material.stress(eps) - self._eigenstress(x)

    def displacement_gradient(self, points):
        """``[..., i, j] = d u_i / d x_j`` (exact, by autodiff)."""
        return self._map(self._grad, points)

    def strain(self, points):
        g = self.displacement_gradient(points)
        return 0.5 * (g + jnp.swapaxes(g, -1, -2))

    def stress(self, points):
        """Cauchy stress (Pa) at ``points`` -> (..., 3, 3), exact by autodiff."""
        return self._map(self._stress, points)

    def navier_residual(self, points):
        """``div sigma + f`` (pN/µm³): zero wherever the solution is exact."""

        def res(x):
            dsig = jax.jacfwd(self._stress)(x)  # (3, 3, 3): d sigma_ij / d x_k
            return jnp.einsum("ijj->i", dsig) + self._f(x)

        return self._map(res, points)

    def sample(self, grid):
        """Displacement on every point of a :class:`~tfm.grid.Grid`, shape ``(*grid.shape, 3)``."""
        return self.displacement(grid.coordinates_um())


@dataclasses.dataclass(frozen=True)
class KelvinPointForce(AnalyticSolution):
    """Point force ``force_pn`` (pN, (z, y, x)) at ``position_um`` in an infinite medium.

    ``core_radius_um > 0`` spreads the force over the smooth blob of de Goes & James
    (regularised Kelvinlet), making both u and f finite and exactly known everywhere.
    """

    force_pn: tuple
    position_um: tuple
    material: LinearElastic
    core_radius_um: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "force_pn", _vec3(self.force_pn, "force_pn"))
        object.__setattr__(self, "position_um", _vec3(self.position_um, "position_um"))
        if not (math.isfinite(self.core_radius_um) and self.core_radius_um >= 0):
            raise ValueError(f"core_radius_um must be >= 0, got {self.core_radius_um}")

    def _u(self, x):
        F = jnp.asarray(self.force_pn, x.dtype)
        d = x - jnp.asarray(self.position_um, x.dtype)
        eps2 = self.core_radius_um**2
        r2 = jnp.sum(d * d)
        re = jnp.sqrt(r2 + eps2)
        mu, nu = self.material.shear_modulus_pa, self.material.poisson_ratio
        a = 1.0 / (4 * jnp.pi * mu)
        b = a / (4 * (1 - nu))
        return ((a - b) / re + a * eps2 / (2 * re**3)) * F + b * jnp.dot(d, F) * d / re**3

    def _f(self, x):
        if self.core_radius_um == 0:
            return jnp.zeros_like(x)
        d = x - jnp.asarray(self.position_um, x.dtype)
        e = self.core_radius_um
        rho = 15 * e**4 / (8 * jnp.pi * (jnp.sum(d * d) + e**2) ** 3.5)
        return rho * jnp.asarray(self.force_pn, x.dtype)


@dataclasses.dataclass(frozen=True)
class Superposition(AnalyticSolution):
    """Sum of solutions in the same material (linear elasticity superposes)."""

    parts: tuple

    def __post_init__(self):
        mats = {p.material for p in self.parts}
        if len(mats) != 1:
            raise ValueError("all parts of a Superposition must share one material")

    @property
    def material(self):
        return self.parts[0].material

    def _u(self, x):
        return sum(p._u(x) for p in self.parts)

    def _f(self, x):
        return sum(p._f(x) for p in self.parts)

    def _eigenstress(self, x):
        return sum(p._eigenstress(x) for p in self.parts)


def KelvinForceDipole(force_pn: float, separation_um: float, axis, center_um, material, core_radius_um=0.0):
    """Contractile force dipole: forces of magnitude ``force_pn`` at
    ``center ± separation/2 * axis``, each pointing toward the centre (``force_pn < 0``
    gives an extensile dipole). Returns a :class:`Superposition` of two Kelvin forces."""
    e = np.asarray(_vec3(axis, "axis"))
    n = np.linalg.norm(e)
    if n == 0:
        raise ValueError("axis must be a non-zero vector")
    e = e / n
    c = np.asarray(_vec3(center_um, "center_um"))
    if not separation_um > 0:
        raise ValueError(f"separation_um must be > 0, got {separation_um}")
    h = 0.5 * separation_um * e
    return Superposition(
        (
            KelvinPointForce(tuple(-force_pn * e), tuple(c + h), material, core_radius_um),
            KelvinPointForce(tuple(force_pn * e), tuple(c - h), material, core_radius_um),
        )
    )


@dataclasses.dataclass(frozen=True)
class HalfSpacePointForce(AnalyticSolution):
    """Point force on the free surface of an elastic half-space (Boussinesq + Cerruti).

    Geometry: the surface is the plane ``z = surface_z_um``; the medium fills
    ``z <= surface_z_um`` (the z axis points out of the gel, toward a cell lying on it).
    ``force_pn = (F_z, F_y, F_x)`` acts at ``(surface_z_um, y0, x0)``: ``F_z < 0`` pushes
    into the gel, ``F_z > 0`` pulls it up; ``F_y, F_x`` shear it. Valid for points inside
    the medium, away from the load point.
    """

    force_pn: tuple
    position_um: tuple  # (surface_z_um, y0, x0)
    material: LinearElastic

    def __post_init__(self):
        object.__setattr__(self, "force_pn", _vec3(self.force_pn, "force_pn"))
        object.__setattr__(self, "position_um", _vec3(self.position_um, "position_um"))

    def _u(self, x):
        # Work in depth coordinates (zeta, y, x) with zeta = surface - z >= 0 into the medium.
        d = x - jnp.asarray(self.position_um, x.dtype)
        zeta, y, xx = -d[0], d[1], d[2]
        G, nu = self.material.shear_modulus_pa, self.material.poisson_ratio
        R = jnp.sqrt(zeta**2 + y**2 + xx**2)
        c = 1.0 / (4 * jnp.pi * G)
        P = -self.force_pn[0]  # force along +zeta (into the medium)

        def cerruti(Q, s, t):
            # tangential force Q along s; t the other in-plane coordinate. Returns (u_s, u_t, u_zeta).
            us = Q * c * (1 / R + s**2 / R**3 + (1 - 2 * nu) * (1 / (R + zeta) - s**2 / (R * (R + zeta) ** 2)))
            ut = Q * c * (s * t / R**3 - (1 - 2 * nu) * s * t / (R * (R + zeta) ** 2))
            uz = Q * c * (s * zeta / R**3 + (1 - 2 * nu) * s / (R * (R + zeta)))
            return us, ut, uz

        # Boussinesq, normal force P.
        ux = P * c * (xx * zeta / R**3 - (1 - 2 * nu) * xx / (R * (R + zeta)))
        uy = P * c * (y * zeta / R**3 - (1 - 2 * nu) * y / (R * (R + zeta)))
        uzeta = P * c * (zeta**2 / R**3 + 2 * (1 - nu) / R)
        # Cerruti along x and along y.
        sx, tx, zx = cerruti(self.force_pn[2], xx, y)
        sy, ty, zy = cerruti(self.force_pn[1], y, xx)
        ux, uy, uzeta = ux + sx + ty, uy + tx + sy, uzeta + zx + zy
        return jnp.stack([-uzeta, uy, ux])


def boussinesq(normal_force_pn: float, position_um, material) -> HalfSpacePointForce:
    """Boussinesq problem: ``normal_force_pn`` > 0 pushes into the gel (force (-P, 0, 0))."""
    return HalfSpacePointForce((-float(normal_force_pn), 0.0, 0.0), position_um, material)


def cerruti(tangential_force_pn, position_um, material) -> HalfSpacePointForce:
    """Cerruti problem: in-plane force ``(F_y, F_x)`` pN on the gel surface."""
    fy, fx = (float(v) for v in np.asarray(tangential_force_pn, dtype=float).ravel())
    return HalfSpacePointForce((0.0, fy, fx), position_um, material)


@dataclasses.dataclass(frozen=True)
class EshelbySphere(AnalyticSolution):
    """Sphere of radius ``radius_um`` with dilatational eigenstrain ``eigenstrain``
    (``eps*_ij = eigenstrain * delta_ij``) in an infinite matrix of the same moduli.

    ``eigenstrain < 0`` is a contracting cell: it pulls the matrix inward with a radial
    surface traction ``3 K |eps*|`` Pa, total radial force
    :attr:`total_radial_force_pn` ``= 4 pi a^2 3 K |eps*|`` and zero net force.
    """

    radius_um: float
    eigenstrain: float
    center_um: tuple
    material: LinearElastic

    def __post_init__(self):
        _check_sphere(self)

    @property
    def interior_strain(self) -> float:
        """A = eps* (1 + nu) / (3 (1 - nu)): uniform dilatational strain inside."""
        nu = self.material.poisson_ratio
        return self.eigenstrain * (1 + nu) / (3 * (1 - nu))

    @property
    def surface_traction_pa(self) -> float:
        """Radial force per area on the sphere, ``3 K eps*`` (negative: pointing inward)."""
        return 3 * self.material.bulk_modulus_pa * self.eigenstrain

    @property
    def total_radial_force_pn(self) -> float:
        """Sum of force magnitudes, ``4 pi a^2 |3 K eps*|``, pN."""
        return 4 * math.pi * self.radius_um**2 * abs(self.surface_traction_pa)

    def _inside(self, x):
        d = x - jnp.asarray(self.center_um, x.dtype)
        return jnp.sum(d * d) < self.radius_um**2

    def _u(self, x):
        d = x - jnp.asarray(self.center_um, x.dtype)
        r2 = jnp.sum(d * d)
        a3 = self.radius_um**3
        outside = self.interior_strain * a3 * d / jnp.maximum(r2, 1e-30) ** 1.5
        return jnp.where(r2 < self.radius_um**2, self.interior_strain * d, outside)

    def _eigenstress(self, x):
        s = 3 * self.material.bulk_modulus_pa * self.eigenstrain
        return jnp.where(self._inside(x), s, 0.0) * jnp.eye(3, dtype=x.dtype)


@dataclasses.dataclass(frozen=True)
class GaussianDilatation(AnalyticSolution):
    """Dilatational eigenstrain ``eps*_ij(x) = e0 exp(-r^2 / (2 sigma^2)) delta_ij`` about
    ``center_um`` in an infinite matrix of uniform moduli (``e0 < 0``: a contracting blob).

    The displacement is radial, ``u = d g(r)`` with ``d = x - x0`` and
    ``g(r) = (1 + nu) / (1 - nu) * I(r) / r^3``,
    ``I(r) = e0 sigma^3 (sqrt(pi/2) erf(r / (sqrt(2) sigma)) - (r / sigma) exp(-r^2 / (2 sigma^2)))``;
    the same construction with a step profile gives :class:`EshelbySphere`.
    """

    sigma_um: float
    eigenstrain: float
    center_um: tuple
    material: LinearElastic

    def __post_init__(self):
        object.__setattr__(self, "center_um", _vec3(self.center_um, "center_um"))
        if not self.sigma_um > 0:
            raise ValueError(f"sigma_um must be > 0, got {self.sigma_um}")

    def _profile(self, x):
        d = x - jnp.asarray(self.center_um, x.dtype)
        return self.eigenstrain * jnp.exp(-jnp.sum(d * d) / (2 * self.sigma_um**2))

    def _u(self, x):
        d = x - jnp.asarray(self.center_um, x.dtype)
        s = self.sigma_um
        r2 = jnp.sum(d * d)
        r = jnp.sqrt(jnp.maximum(r2, 1e-30))
        exact = s**3 * (math.sqrt(math.pi / 2) * jax.scipy.special.erf(r / (math.sqrt(2) * s)) - r / s * jnp.exp(-r2 / (2 * s * s))) / r**3
        series = 1 / 3 - r2 / (10 * s**2) + r2**2 / (56 * s**4)  # I(r)/r^3 near 0 (cancellation)
        nu = self.material.poisson_ratio
        return (1 + nu) / (1 - nu) * self.eigenstrain * jnp.where(r < 0.2 * s, series, exact) * d

    def _eigenstress(self, x):
        return 3 * self.material.bulk_modulus_pa * self._profile(x) * jnp.eye(3, dtype=x.dtype)

    def eigenstrain_field(self, points):
        """The scalar eigenstrain ``eps*(x)`` (dimensionless)."""
        return self._map(self._profile, points)

    def equivalent_body_force(self, points):
        """``-3 K grad eps*`` (pN/µm³): the body force that a matrix without eigenstrain needs
        to deform by :meth:`displacement` -- the force a force-microscopy method recovers."""
        k3 = 3 * self.material.bulk_modulus_pa
        return self._map(lambda x: -k3 * jax.grad(self._profile)(x), points)


@dataclasses.dataclass(frozen=True)
class SphericalCavity(AnalyticSolution):
    """Spherical hole of radius ``radius_um`` under internal pressure ``pressure_pa`` in an
    infinite matrix: ``u_r = p a^3 / (4 mu r^2)`` for ``r >= a``; NaN inside the hole.
    ``pressure_pa < 0`` models a cell pulling the cavity wall inward."""

    radius_um: float
    pressure_pa: float
    center_um: tuple
    material: LinearElastic

    def __post_init__(self):
        _check_sphere(self)

    def _u(self, x):
        d = x - jnp.asarray(self.center_um, x.dtype)
        r2 = jnp.sum(d * d)
        c = self.pressure_pa * self.radius_um**3 / (4 * self.material.shear_modulus_pa)
        u = c * d / jnp.maximum(r2, 1e-30) ** 1.5
        return jnp.where(r2 >= self.radius_um**2, u, jnp.nan)
