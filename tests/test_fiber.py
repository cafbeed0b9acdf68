"""The semi-affine fibre law (collagen; tfm.SemiAffineFiber): its small-strain limit, its
stress-strain curves against the orientation integrals written out independently, its
derivatives, objectivity, Newton convergence, and the FEM and force inverse with it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import tfm
from tfm import cli
from tfm.material import SemiAffineFiber, make_law
from tfm.synth import fem

COLLAGEN = dict(d0=0.0008, lambda_s=0.0075, d_s=0.033)


def fiber_force_1d(s, k, d0, lambda_s, d_s):
    """w'(s) of one fibre, piecewise as Steinwachs et al. (2016) write it (independent of tfm's stable form)."""
    s = np.asarray(s, np.float64)
    out = k * s
    out = np.where(s < 0, k * d0 * (np.exp(s / d0) - 1.0), out)
    return np.where(s > lambda_s, k * lambda_s + k * d_s * (np.exp((s - lambda_s) / d_s) - 1.0), out)


def uniaxial_exact(g, k):
    """P_11 of F = diag(1 + g, 1, 1): the mean over directions of w'(s) ds/dF11, which depends
    only on c = e_1 (uniform on [-1, 1]): a 1D integral."""
    def f(c):
        n = np.sqrt(1.0 + ((1.0 + g) ** 2 - 1.0) * c * c)
        return fiber_force_1d(n - 1.0, k, **COLLAGEN) * (1.0 + g) * c * c / n
    return integrate.quad(f, 0.0, 1.0, epsabs=0, epsrel=1e-10, limit=500, points=[0.1, 0.3, 0.5, 0.7, 0.9])[0]


def shear_exact(g, k, n=600):
    """P_01 of F = I + g e0 e1, by a dense product rule over the sphere (the reference)."""
    c, wc = np.polynomial.legendre.leggauss(n)
    phi = (np.arange(2 * n) + 0.5) * np.pi / n
    cc, pp = np.meshgrid(c, phi, indexing="ij")
    sn = np.sqrt(1 - cc**2)
    e0, e1 = cc, sn * np.sin(pp)
    fe0 = e0 + g * e1
    norm = np.sqrt(fe0**2 + e1**2 + (sn * np.cos(pp)) ** 2)
    vals = fiber_force_1d(norm - 1.0, k, **COLLAGEN) * fe0 * e1 / norm
    return float(np.sum(vals * wc[:, None]) / (2.0 * 2 * n))


def test_small_strain_limit_is_hooke_with_e_k6_nu_quarter(x64):
    """Every law is linear at small strain: the fibre law's Hessian at H = 0 is Hooke's with
    E = k/6 and nu = 1/4, which youngs_modulus_pa, poisson_ratio and from_linear state."""
    for law in (SemiAffineFiber(1200.0), SemiAffineFiber.collagen(1200.0)):
        hess = jax.hessian(lambda h: law.energy_density(h))(jnp.zeros((3, 3)))
        lin = tfm.LinearElastic(law.youngs_modulus_pa, law.poisson_ratio)
        want = jax.hessian(lambda h: lin.energy_density(h))(jnp.zeros((3, 3)))
        # the rotation parts differ (the linear law ignores them; the fibre law is geometrically exact)
        sym = lambda t: 0.25 * (t + t.transpose(1, 0, 2, 3) + t.transpose(0, 1, 3, 2) + t.transpose(1, 0, 3, 2))  # noqa: E731
        np.testing.assert_allclose(np.asarray(sym(hess)), np.asarray(sym(want)), atol=1e-9 * law.k_pa)
    assert law.youngs_modulus_pa == 200.0 and law.poisson_ratio == 0.25 and law.shear_modulus_pa == 80.0
    assert SemiAffineFiber.from_linear(274.0, **COLLAGEN).k_pa == pytest.approx(1644.0)
    assert make_law("fiber", 100.0) == SemiAffineFiber(600.0, **COLLAGEN)


@pytest.mark.parametrize("g", [0.01, 0.1, 0.3, -0.1])
def test_uniaxial_stress_matches_the_orientation_integral(g, x64):
    law = SemiAffineFiber.collagen(1000.0)
    for axis in (0, 2):  # the quadrature's pole and its equator: isotropy of the rule
        h = np.zeros((3, 3))
        h[axis, axis] = g
        p = float(law.first_piola_stress(jnp.asarray(h))[axis, axis])
        assert p == pytest.approx(uniaxial_exact(g, 1000.0), rel=0.01), (g, axis)


@pytest.mark.parametrize("g", [0.05, 0.3])
def test_shear_stress_matches_the_orientation_integral(g, x64):
    law = SemiAffineFiber.collagen(1000.0)
    h = np.zeros((3, 3))
    h[0, 1] = g
    assert float(law.first_piola_stress(jnp.asarray(h))[0, 1]) == pytest.approx(shear_exact(g, 1000.0), rel=0.01)
    # stiffening: the secant shear modulus at 30 % is many times the small-strain one
    if g == 0.3:
        assert float(law.first_piola_stress(jnp.asarray(h))[0, 1]) / g > 5 * law.shear_modulus_pa


def test_derivatives_match_finite_differences_and_the_law_is_objective(x64):
    rng = np.random.default_rng(1)
    law = SemiAffineFiber.collagen(1000.0)
    h = jnp.asarray(rng.normal(size=(6, 3, 3)) * 0.05)
    d = jnp.asarray(rng.normal(size=h.shape))
    w = lambda x: jnp.sum(law.energy_density(x))  # noqa: E731
    eps = 1e-6
    fd = (w(h + eps * d) - w(h - eps * d)) / (2 * eps)
    assert float(jnp.sum(jax.grad(w)(h) * d)) == pytest.approx(float(fd), rel=1e-7)
    hv = jax.jvp(jax.grad(w), (h,), (d,))[1]
    fd2 = (jax.grad(w)(h + eps * d) - jax.grad(w)(h - eps * d)) / (2 * eps)
    np.testing.assert_allclose(np.asarray(hv), np.asarray(fd2), rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(hv))))
    # a rigid rotation of the deformed state leaves the energy unchanged
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.linalg.det(q))
    f = np.eye(3) + np.asarray(h)
    rotated = jnp.asarray(np.einsum("ij,njk->nik", q, f) - np.eye(3))
    np.testing.assert_allclose(np.asarray(law.energy_density(rotated)), np.asarray(law.energy_density(h)), rtol=1e-10)


def test_newton_on_a_homogeneous_stretch_converges_quadratically(x64):
    """The consistent tangent: Newton for the F that a stress P holds (W(F) - P:F stationary)
    doubles the correct digits per step once close."""
    law = SemiAffineFiber.collagen(1000.0)
    target = np.diag([0.2, -0.05, -0.05]) + np.array([[0, 0.05, 0], [0.05, 0, 0], [0, 0, 0]])
    p = law.first_piola_stress(jnp.asarray(target))
    grad = jax.grad(lambda x: jnp.sum(law.energy_density(x.reshape(3, 3))) - jnp.sum(p * x.reshape(3, 3)))
    hess = jax.hessian(lambda x: jnp.sum(law.energy_density(x.reshape(3, 3))))
    x = jnp.asarray(target).ravel() * 0.9
    res = []
    for _ in range(8):
        r = grad(x)
        res.append(float(jnp.linalg.norm(r)))
        if res[-1] < 1e-9:
            break
        x = x - jnp.linalg.solve(hess(x), r)
    np.testing.assert_allclose(np.asarray(x).reshape(3, 3), target, atol=1e-8)
    fast = [b / a**2 for a, b in zip(res, res[1:]) if a < 1e-1 * res[0] and b > 1e-11]
    assert fast and max(fast) < 10.0 / res[0], res  # r_{k+1} <= C r_k^2 near the solution


def test_bad_parameters_are_refused():
    for kw, name in ((dict(k_pa=0.0), "k_pa"), (dict(k_pa=100.0, d0=-1.0), "d0"), (dict(k_pa=100.0, d_s=0.0, lambda_s=0.1), "d_s"),
                     (dict(k_pa=100.0, lambda_s=0.01), "lambda_s and d_s"), (dict(k_pa=100.0, directions=5), "directions"),
                     (dict(k_pa="x"), "k_pa")):
        with pytest.raises(ValueError, match=name):
            SemiAffineFiber(**kw)
    with pytest.raises(ValueError, match="material must be one of"):
        make_law("rubber", 100.0)


def test_fem_with_fibres_stiffens_and_the_inverse_recovers_its_force():
    """A contracting ellipsoid in collagen (fixed faces): at 1e-4 eigenstrain the fibre FEM
    equals the linear one (E = k/6, nu = 1/4); at 15 % it moves the gel differently; the
    force inverse with the fibre law recovers the contractility of that nonlinear field
    within 10 %, where the linear law is off by far more."""
    n = 20
    grid = tfm.Grid((n,) * 3, 1.0)
    z, y, x = np.meshgrid(*[np.arange(n) - n / 2 + 0.5] * 3, indexing="ij")
    inside = np.sqrt(z**2 + y**2 + (x / 1.6) ** 2) < 3.5
    law = SemiAffineFiber.collagen(1200.0)
    small = fem.solve(grid, law, eigenstrain=np.where(inside, -1e-4, 0.0).astype(np.float32))
    ref = fem.solve(grid, law.linearized(), eigenstrain=np.where(inside, -1e-4, 0.0).astype(np.float32))
    assert np.linalg.norm(small.displacement - ref.displacement) < 0.03 * np.linalg.norm(ref.displacement)
    big = fem.solve(grid, law, eigenstrain=np.where(inside, -0.15, 0.0).astype(np.float32))
    assert big.info["converged"] and big.info["law"] == "fiber8"
    truth = tfm.Result(grid, big.displacement, big.force_density).contractility()
    u = big.displacement + np.random.default_rng(0).normal(size=big.displacement.shape).astype(np.float32) * 2e-3
    got = {}
    for m in (law, law.linearized()):
        res = tfm.reconstruct_forces(u, grid, m, boundary="fixed", noise_um=2e-3)
        got[m.law] = res.contractility() / truth
    assert abs(got["fiber8"] - 1) < 0.1, got
    assert abs(got["linear"] - 1) > 2 * abs(got["fiber8"] - 1), got


def test_cli_refuses_what_the_fibre_law_cannot_do(tmp_path, capsys):
    u = tmp_path / "u.npy"
    np.save(u, np.zeros((8, 8, 8, 3), np.float32))
    base = ["forces", str(u), "--spacing-um", "1", "1", "1", "--youngs-modulus-pa", "300", "-o", str(tmp_path / "f.h5")]
    assert cli.main(base + ["--material", "fiber", "--poisson-ratio", "0.3"]) == 2
    assert "--poisson-ratio does not apply" in capsys.readouterr().err
    assert cli.main(base + ["--material", "fiber", "--method", "fttc"]) == 2
    assert "needs --method inverse" in capsys.readouterr().err
    assert cli.main(base + ["--material", "fiber", "--fiber-d0", "-1"]) == 2
    assert "d0" in capsys.readouterr().err
