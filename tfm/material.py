"""Constitutive laws of the matrix: moduli in Pa, strains dimensionless, stresses in Pa.

Isotropic linear elasticity (Hooke's law)::

    sigma = lambda * tr(eps) * I + 2 * mu * eps
    W     = lambda / 2 * tr(eps)**2 + mu * eps : eps          (strain-energy density, Pa)

with the Lamé parameters ``lambda = E nu / ((1 + nu)(1 - 2 nu))`` and the shear modulus
``mu = E / (2 (1 + nu))``.

Compressible neo-Hookean (large strains; Simo & Pister / Bonet & Wood eq. 6.27)::

    W(F) = mu / 2 (tr(F^T F) - 3 - 2 ln J) + lambda / 2 (ln J)**2,    J = det F

which reduces to Hooke's law with the same ``lambda`` and ``mu`` at small strain.

Semi-affine fibre network (collagen; Steinwachs et al., Nat Methods 13, 171 (2016), the
law saenopy implements): an isotropic distribution of fibres that deform affinely, each
with the stretch strain ``s = |F e| - 1`` along its direction ``e`` and the energy
``w(s)`` whose stiffness ``w''(s)`` is ``k`` between buckling and stiffening, decays as
``k exp(s / d0)`` under compression (buckling) and grows as ``k exp((s - lambda_s) / d_s)``
beyond ``lambda_s`` (straightened fibres stiffen)::

    W(F) = < w(|F e| - 1) >_e         (the mean over fibre directions)

At small strain ``W`` is Hooke's law with ``lambda = mu = k / 15``: ``E = k / 6`` and
``nu = 1/4`` (fixed: an affine network of central-force fibres obeys the Cauchy relation).

Every material also exposes :meth:`Material.energy_density` as a function of the
displacement gradient ``H = grad u`` (``F = I + H``): the voxel FEM
(:mod:`tfm.synth.fem`) minimises its integral, so one code path serves every law.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


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

    @property
    def law(self) -> str:
        """The key of this law's energy in :func:`law_energy` (static: one compilation per law)."""
        raise NotImplementedError  # pragma: no cover - interface

    def law_parameters(self) -> tuple:
        """The numbers :func:`law_energy`'s function takes beside ``H`` (traced: every
        stiffness shares one compilation)."""
        raise NotImplementedError  # pragma: no cover - interface

    def first_piola_stress(self, grad_u):
        """P = dW/dF (Pa, per reference area), by autodiff of :meth:`energy_density`."""
        h = jnp.asarray(grad_u)
        return jax.grad(lambda x: jnp.sum(self.energy_density(x)))(h)

    def is_linear(self) -> bool:
        """Whether the force is linear in the displacement (the FFT operators need it)."""
        return False


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


class _SmallStrainModuli(Material):
    """The moduli derived from ``youngs_modulus_pa`` and ``poisson_ratio`` (the small-strain
    ones, for a nonlinear law), and its small-strain (Hookean) law."""

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

    def stress(self, strain):
        """Small-strain stress (the linearised law), Pa: for the FTTC-style linear operators."""
        return self.linearized().stress(strain)

    def strain_energy_density(self, strain):
        return self.linearized().strain_energy_density(strain)


@dataclasses.dataclass(frozen=True)
class _Isotropic(_SmallStrainModuli):
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

    def law_parameters(self) -> tuple:
        return (self.lame_lambda_pa, self.shear_modulus_pa)


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

    law = "linear"

    def is_linear(self) -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class NeoHookean(_Isotropic):
    """Compressible neo-Hookean matrix for large strains (cells strain gels by 10-30 %).

    ``W(F) = mu/2 (I1 - 3 - 2 ln J) + lambda/2 (ln J)^2`` with the Lamé parameters of
    ``youngs_modulus_pa`` and ``poisson_ratio``, so it agrees with :class:`LinearElastic`
    at small strain. ``W`` is +inf where ``J <= 0`` (an inverted element), which lets a
    line search back off.
    """

    law = "neo-hookean"

    def energy_density(self, grad_u):
        return neo_hookean_energy(grad_u, self.lame_lambda_pa, self.shear_modulus_pa)

    def first_piola_stress(self, grad_u):
        """P = dW/dF = mu (F - F^-T) + lambda ln J F^-T, Pa (per reference area)."""
        h = jnp.asarray(grad_u)
        f = h + jnp.eye(3, dtype=h.dtype)
        finv_t = jnp.swapaxes(inv3(f), -1, -2)
        lnj = jnp.log(det3(f))[..., None, None]
        return self.shear_modulus_pa * (f - finv_t) + self.lame_lambda_pa * lnj * finv_t


# ----------------------------------------------------------------- semi-affine fibres
# saenopy's collagen values (1.2 mg/ml; Steinwachs et al. 2016); the CLI's --fiber-* defaults repeat them
COLLAGEN = {"d0": 0.0008, "lambda_s": 0.0075, "d_s": 0.033}
SERIES = 2e-2  # below this |x| the fibre's exponential parts are summed as a series (float32: no cancellation)
EXP_MAX = 30.0  # beyond this (s - lambda_s) / d_s the stiffening continues with the stiffness it has there


def _exp_parts(x):
    """``(g(x) / x², g'(x) / x, g''(x))`` of ``g(x) = exp(x) - 1 - x``, stable at every ``x``
    (``1/2, 1, 1`` at 0); beyond :data:`EXP_MAX` ``g`` continues as its second-order Taylor
    polynomial there (finite energy and stiffness at any stretch: line searches back off)."""
    small = jnp.abs(x) < SERIES
    xs = jnp.where(small, 1.0, x)
    xc = jnp.minimum(xs, EXP_MAX)
    e = math.exp(EXP_MAX)
    over = jnp.maximum(xs - EXP_MAX, 0.0)
    g0 = (jnp.expm1(xc) - xc + (e - 1.0) * over + 0.5 * e * over**2) / xs**2
    g1 = (jnp.expm1(xc) + e * over) / xs
    g0 = jnp.where(small, 0.5 + x * (1 / 6 + x * (1 / 24 + x * (1 / 120 + x / 720))), g0)
    g1 = jnp.where(small, 1.0 + x * (0.5 + x * (1 / 6 + x * (1 / 24 + x / 120))), g1)
    return g0, g1, jnp.exp(jnp.minimum(x, EXP_MAX))


def fiber_stretch_energy(s, k, d0, lambda_s, d_s, order: int = 0):
    """One fibre at stretch strain ``s``: its energy (``order=0``, Pa per fibre density),
    or its first or second derivative in ``s``. Stiffness ``k`` for ``0 <= s <= lambda_s``,
    ``k exp(s / d0)`` for ``s < 0`` (buckling), ``k exp((s - lambda_s) / d_s)`` beyond
    ``lambda_s`` (stiffening); ``w(0) = w'(0) = 0``. ``d0``, ``lambda_s`` or ``d_s`` inf
    switches that regime off (a linear spring there)."""
    neg = jnp.minimum(s, 0.0)
    pos = jnp.maximum(s, 0.0)
    t = jnp.maximum(s - lambda_s, 0.0)
    bn, bt = _exp_parts(neg / d0), _exp_parts(t / d_s)
    if order == 0:
        return k * (neg**2 * bn[0] + 0.5 * pos**2 + t**2 * (bt[0] - 0.5))
    if order == 1:
        return k * (neg * bn[1] + pos + t * (bt[1] - 1.0))
    return k * (jnp.where(s < 0, bn[2], 1.0) + jnp.where(s > lambda_s, bt[2] - 1.0, 0.0))


def sphere_directions(order: int):
    """Unit directions (D, 3) and weights (D,) summing to 1: a product Gauss rule on the
    sphere (Gauss-Legendre in cos(theta), ``2 order`` equal steps in phi), exact for
    polynomials of degree ``2 order - 1``, halved by the antipodal symmetry of fibres
    (``D = order²``, ``order`` even)."""
    c, wc = np.polynomial.legendre.leggauss(order)
    keep = c > 0
    c, wc = c[keep], 2.0 * wc[keep]
    phi = (np.arange(2 * order) + 0.5) * np.pi / order
    cc, pp = np.meshgrid(c, phi, indexing="ij")
    sn = np.sqrt(1.0 - cc**2)
    e = np.stack([cc, sn * np.sin(pp), sn * np.cos(pp)], -1).reshape(-1, 3)
    w = np.repeat(wc, 2 * order) / (2.0 * 2 * order)
    return e, w / w.sum()


_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))  # the six components of a symmetric 3 x 3


def _direction_tables(order: int):
    """The weights (D,), ``e e`` as six components with the off-diagonal ones doubled (6, D):
    ``q = e (C - I) e`` is then ``six(C - I) @ table``; and the 21 products of that table's
    rows ``(21, D)`` (the upper triangle of the 6 x 6 tangent)."""
    e, w = sphere_directions(order)
    ee = np.stack([e[:, i] * e[:, j] * (1.0 if i == j else 2.0) for i, j in _PAIRS], 0)
    tri = np.stack([ee[a] * ee[b] for a in range(6) for b in range(a, 6)], 0)
    return w, ee, tri


def _stretch(q):
    """Fibre strain ``s = sqrt(1 + q) - 1`` without cancellation, ``ds/dq``, ``d²s/dq²``."""
    q = jnp.maximum(q, -1.0 + 1e-6)  # a collapsed fibre: finite derivatives
    r = jnp.sqrt(1.0 + q)
    return q / (r + 1.0), 0.5 / r, -0.25 / r**3


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def fiber_energy_c(six, params, order: int):
    """Semi-affine fibre W (Pa) from the six components of ``C - I`` (``C = F^T F``,
    :data:`_PAIRS` order); ``params = (k, d0, lambda_s, d_s)``. Its derivatives are written
    out (every direction at once, as matrix products), so that the tangent of its gradient
    is a 6 x 6 matrix per point: Newton and the force inverse store 21 numbers per point,
    not the directions' intermediates."""
    w, ee, _ = _direction_tables(order)
    s = _stretch(six @ jnp.asarray(ee, six.dtype))[0]
    return fiber_stretch_energy(s, *(params[i] for i in range(4))) @ jnp.asarray(w, six.dtype)


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def fiber_stress_c(six, params, order: int):
    """``dW / d six`` (Pa), the derivative of :func:`fiber_energy_c` (``S / 2`` of the second
    Piola-Kirchhoff stress, off-diagonal components counted once)."""
    w, ee, _ = _direction_tables(order)
    s, ds, _ = _stretch(six @ jnp.asarray(ee, six.dtype))
    a = fiber_stretch_energy(s, *(params[i] for i in range(4)), order=1) * ds * jnp.asarray(w, six.dtype)
    return a @ jnp.asarray(ee.T, six.dtype)


def fiber_tangent_c(six, params, order: int):
    """``d² W / d six²`` as (..., 6, 6)."""
    w, ee, tri = _direction_tables(order)
    s, ds, dds = _stretch(six @ jnp.asarray(ee, six.dtype))
    p = tuple(params[i] for i in range(4))
    b = (fiber_stretch_energy(s, *p, order=2) * ds**2 + fiber_stretch_energy(s, *p, order=1) * dds) * jnp.asarray(w, six.dtype)
    upper = b @ jnp.asarray(tri.T, six.dtype)
    idx = np.zeros((6, 6), int)
    n = 0
    for i in range(6):
        for j in range(i, 6):
            idx[i, j] = idx[j, i] = n
            n += 1
    return upper[..., idx]


@fiber_energy_c.defjvp
def _fiber_energy_jvp(order, primals, tangents):
    six, params = primals
    dsix, _ = tangents  # the law's parameters are not differentiated
    return fiber_energy_c(six, params, order), jnp.sum(fiber_stress_c(six, params, order) * dsix, -1)


@fiber_stress_c.defjvp
def _fiber_stress_jvp(order, primals, tangents):
    six, params = primals
    dsix, _ = tangents
    return fiber_stress_c(six, params, order), jnp.einsum("...ij,...j->...i", fiber_tangent_c(six, params, order), dsix)


def fiber_energy(grad_u, params, order: int):
    """Semi-affine fibre W (Pa) from ``H = F - I``: ``C - I = H + H^T + H^T H`` is formed
    without the ``1`` (float32 resolves strains of 1e-6)."""
    h = jnp.asarray(grad_u)
    g = h + jnp.swapaxes(h, -1, -2) + jnp.einsum("...ki,...kj->...ij", h, h)
    six = jnp.stack([g[..., i, j] for i, j in _PAIRS], -1)
    return fiber_energy_c(six, jnp.asarray(params, h.dtype), order)


def _optional(value, name, zero_ok=False):
    """A regime's parameter: a number > 0 (>= 0 with ``zero_ok``), or None / inf (the
    regime switched off)."""
    if value is None:
        return math.inf
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or None, got {value!r}") from None
    if math.isnan(v) or v < 0 or (v == 0 and not zero_ok):
        raise ValueError(f"{name} must be {'>= 0' if zero_ok else '> 0'} (or None to switch that regime off), got {value!r}")
    return v


@dataclasses.dataclass(frozen=True)
class SemiAffineFiber(_SmallStrainModuli):
    """Collagen-like fibre network (Steinwachs et al. 2016; saenopy's ``SemiAffineFiberMaterial``).

    Args:
      k_pa: the fibres' linear stiffness ``k`` (Pa; saenopy's ``k``): the small-strain
        Young's modulus is ``k / 6`` (:meth:`from_linear` builds the law from it).
      d0: buckling: the stiffness under compression decays as ``exp(s / d0)`` (saenopy's
        ``d_0``); None: no buckling (a linear spring under compression too).
      lambda_s: the stretch strain where stiffening starts (saenopy's ``lambda_s``); None:
        no stiffening.
      d_s: the stiffening's strain scale, stiffness ``exp((s - lambda_s) / d_s)`` (saenopy's
        ``d_s``); None: no stiffening.
      directions: the order of the sphere quadrature over fibre directions (even, >= 4;
        ``directions²`` directions). 8 (64 directions) keeps uniaxial and shear stress
        within 1 % of the exact orientation average to 30 % strain at saenopy's collagen
        values (tests/test_fiber.py); higher costs proportionally more.

    Saenopy's collagen defaults (1.2 mg/ml, Steinwachs et al. 2016) are
    :meth:`collagen`: ``k = 1645 Pa`` (E = 274 Pa at small strain), ``d0 = 0.0008``,
    ``lambda_s = 0.0075``, ``d_s = 0.033``.
    """

    k_pa: float
    d0: float | None = None
    lambda_s: float | None = None
    d_s: float | None = None
    directions: int = 8

    def __post_init__(self):
        try:
            k = float(self.k_pa)
        except (TypeError, ValueError):
            raise ValueError(f"k_pa must be a number (Pa), got {self.k_pa!r}") from None
        if not (math.isfinite(k) and k > 0):
            raise ValueError(f"k_pa must be finite and > 0 (Pa), got {self.k_pa!r}")
        object.__setattr__(self, "k_pa", k)
        _optional(self.d0, "d0")
        _optional(self.lambda_s, "lambda_s", zero_ok=True)
        _optional(self.d_s, "d_s")
        if (self.lambda_s is None) != (self.d_s is None):
            raise ValueError(f"lambda_s and d_s go together (stiffening needs both), got lambda_s={self.lambda_s!r}, "
                             f"d_s={self.d_s!r}")
        n = self.directions
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 4 or n % 2:
            raise ValueError(f"directions must be an even whole number >= 4, got {n!r}")

    @classmethod
    def collagen(cls, k_pa: float = 1645.0, directions: int = 8) -> SemiAffineFiber:
        """Saenopy's collagen values (1.2 mg/ml; Steinwachs et al. 2016) at stiffness ``k_pa``."""
        return cls(k_pa, **COLLAGEN, directions=directions)

    @classmethod
    def from_linear(cls, youngs_modulus_pa: float, **kwargs) -> SemiAffineFiber:
        """The law whose small-strain Young's modulus is ``youngs_modulus_pa`` (``k = 6 E``;
        the Poisson ratio is 1/4 whatever the law's other parameters)."""
        e = float(youngs_modulus_pa)
        if not (math.isfinite(e) and e > 0):
            raise ValueError(f"youngs_modulus_pa must be finite and > 0 (Pa), got {youngs_modulus_pa!r}")
        return cls(6.0 * e, **kwargs)

    @property
    def youngs_modulus_pa(self) -> float:
        """The small-strain Young's modulus, ``k / 6`` (Pa)."""
        return self.k_pa / 6.0

    @property
    def poisson_ratio(self) -> float:
        """The small-strain Poisson ratio: 1/4 (the Cauchy relation lambda = mu of affine fibres,
        so lambda = mu = k / 15)."""
        return 0.25

    @property
    def law(self) -> str:
        return f"fiber{self.directions}"

    def law_parameters(self) -> tuple:
        return (self.k_pa, _optional(self.d0, "d0"), _optional(self.lambda_s, "lambda_s", zero_ok=True),
                _optional(self.d_s, "d_s"))

    def energy_density(self, grad_u):
        return fiber_energy(grad_u, jnp.asarray(self.law_parameters(), jnp.asarray(grad_u).dtype), self.directions)


def law_energy(law: str):
    """The energy density ``(H, params) -> W`` of a law key (:attr:`Material.law`)."""
    if law == "linear":
        return lambda h, p: linear_energy(h, p[0], p[1])
    if law == "neo-hookean":
        return lambda h, p: neo_hookean_energy(h, p[0], p[1])
    if law.startswith("fiber") and law[5:].isdigit():
        order = int(law[5:])
        return lambda h, p: fiber_energy(h, p, order)
    raise ValueError(f"unknown material law {law!r}")


LAW_NAMES = ("linear", "neo-hookean", "fiber")


def make_law(name: str, youngs_modulus_pa: float, poisson_ratio: float = 0.45, **fiber) -> Material:
    """The law named ``name`` (:data:`LAW_NAMES`) with small-strain modulus ``youngs_modulus_pa``:
    ``"fiber"`` is :class:`SemiAffineFiber` with ``k = 6 E`` and saenopy's collagen values
    unless ``fiber`` gives ``d0``, ``lambda_s``, ``d_s`` (its Poisson ratio is 1/4, so
    ``poisson_ratio`` does not apply to it)."""
    if name == "linear":
        return LinearElastic(youngs_modulus_pa, poisson_ratio)
    if name == "neo-hookean":
        return NeoHookean(youngs_modulus_pa, poisson_ratio)
    if name == "fiber":
        params = {**COLLAGEN, **fiber}
        return SemiAffineFiber.from_linear(youngs_modulus_pa, **params)
    raise ValueError(f"material must be one of {LAW_NAMES}, got {name!r}")
