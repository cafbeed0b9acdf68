"""The regularised force inverse (tfm.classical.inverse): its operators against finite
differences and closed forms, known forces recovered through each operator, the noise
estimate against the true noise, the discrepancy principle, and its refusals.

Grids are small (32³ for the FFT operator, 12³-16³ for the FEM one) to keep the suite fast;
the 64³ targets are measured by benchmarks/inverse.py."""

import math

import numpy as np
import pytest

import tfm
from tfm.classical import inverse
from tfm.classical.inverse_fem import fem_force
from tfm.classical.noise import estimate_noise
from tfm.synth import fem

MAT = tfm.LinearElastic(1000.0, 0.45)
G32 = tfm.Grid((32, 32, 32), 1.0)
C32 = np.asarray(G32.center_um())
R32 = np.linalg.norm(G32.coordinates_um() - C32, axis=-1)


def noisy(u, level, seed):
    rng = np.random.default_rng(seed)
    return (u + level * np.sqrt(np.mean(u**2)) * rng.standard_normal(u.shape)).astype(np.float32)


# ---------------------------------------------------------------- operators
def test_fft_operator_is_navier_on_a_fourier_mode_and_self_adjoint():
    """K u for u = a sin(k.x) is (mu k² a + (lambda + mu) k (k.a)) sin(k.x), exactly; and
    <K u, v> = <u, K v> for any u, v."""
    g = tfm.Grid((16, 12, 20), (0.5, 1.0, 0.8))
    x = g.coordinates_um()
    k = 2 * np.pi * np.array([2 / (16 * 0.5), 1 / (12 * 1.0), 3 / (20 * 0.8)])
    a = np.array([0.3, -0.2, 0.5])
    u = a * np.sin(x @ k)[..., None]
    expected = (MAT.shear_modulus_pa * (k @ k) * a + (MAT.lame_lambda_pa + MAT.shear_modulus_pa) * k * (k @ a)) * np.sin(x @ k)[..., None]
    got = np.asarray(inverse.apply_fft_operator(u, g.spacing_um, MAT))
    assert np.max(np.abs(got - expected)) < 1e-4 * np.max(np.abs(expected))
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((2, *g.shape, 3))
    ku, kv = (np.asarray(inverse.apply_fft_operator(w, g.spacing_um, MAT), np.float64) for w in (u, v))
    assert np.sum(ku * v) == pytest.approx(np.sum(u * kv), rel=1e-4)


@pytest.mark.parametrize("law", [tfm.LinearElastic(800.0, 0.4), tfm.NeoHookean(800.0, 0.4)])
def test_fem_operator_is_the_gradient_of_the_strain_energy(law):
    """<f(u), v> dV is the directional derivative of the FEM's strain energy (central
    differences), for the linear and the neo-Hookean law; linear: <f(u), v> = <u, f(v)>."""
    g = tfm.Grid((8, 9, 10), (0.8, 1.0, 1.2))
    rng = np.random.default_rng(1)
    u, v = 0.02 * rng.standard_normal((2, *g.shape, 3)).astype(np.float32)
    scale_e = np.ones(tuple(n - 1 for n in g.shape), np.float32)
    moduli = np.asarray([law.lame_lambda_pa, law.shear_modulus_pa], np.float32)
    name = "linear" if isinstance(law, tfm.LinearElastic) else "neo-hookean"
    f = np.asarray(fem_force(u, scale_e, moduli, name, g.spacing_um), np.float64)
    eps = 1e-2

    def energy(w):
        return float(fem.energy(w, scale_e, None, None, moduli, name, g.spacing_um))

    fd = (energy(u + eps * v) - energy(u - eps * v)) / (2 * eps)
    assert np.sum(f * v) * g.voxel_volume_um3 == pytest.approx(fd, rel=2e-3)
    if name == "linear":
        fv = np.asarray(fem_force(v, scale_e, moduli, name, g.spacing_um), np.float64)
        assert np.sum(f * v) == pytest.approx(np.sum(u * fv), rel=1e-4)


@pytest.mark.parametrize("penalty, eps", [("l2", 1e-2), ("l1", 1e-3)])
def test_fem_objective_gradient_matches_finite_differences(penalty, eps):
    """The L-BFGS objective's gradient (autodiff through the energy and the penalty: Tikhonov,
    or the pseudo-Huber smoothing of |f|) against central differences along a random
    direction (float32: steps that keep rounding and curvature errors below 1e-3)."""
    import jax

    g = tfm.Grid((8, 8, 8), 1.0)
    rng = np.random.default_rng(2)
    um = 0.05 * rng.standard_normal((*g.shape, 3))
    value = inverse_fem_problem(um, g)._objective(penalty)
    u = jax.numpy.asarray(um + 0.01 * rng.standard_normal(um.shape), jax.numpy.float32)
    v = rng.standard_normal(um.shape).astype(np.float32)
    grad = np.asarray(jax.grad(value)(u, 0.3), np.float64)
    fd = (float(value(u + eps * v, 0.3)) - float(value(u - eps * v, 0.3))) / (2 * eps)
    assert np.sum(grad * v) == pytest.approx(fd, rel=1e-3)


def inverse_fem_problem(u, grid, boundary="free"):
    from tfm.classical.inverse_fem import FEMProblem

    return FEMProblem(u, grid, MAT, np.ones(grid.shape), np.ones(grid.shape), inverse.InverseConfig(operator="fem", boundary=boundary))


# ----------------------------------------------------- known forces recovered
@pytest.mark.parametrize("level", [0.0, 0.05])
def test_contracting_sphere_recovered_and_localised(level):
    """Eshelby's sphere (a = 4 µm) at 32³: the inward radial force within 2a to 3 % (clean)
    / 8 % (5 % noise), and |f| beyond 2a at most 5 % / 15 % of the true total (measured:
    1.006 / 1.006 and 0.000 / 0.017); with the mask, none beyond 2a."""
    sph = tfm.analytic.EshelbySphere(4.0, -0.05, tuple(C32), MAT)
    u = noisy(np.asarray(sph.sample(G32)), level, 0)
    e = (G32.coordinates_um() - C32) / np.maximum(R32, 1e-9)[..., None]
    total = sph.total_radial_force_pn
    for kw, outside in (({}, 0.05 if level == 0 else 0.15), ({"mask": R32 < 4.0}, 0.005)):
        res = tfm.reconstruct_forces(u, G32, MAT, **kw)
        radial = -np.sum(np.sum(res.force * e, -1) * (R32 < 8)) / total
        assert radial == pytest.approx(1.0, abs=0.03 if level == 0 else 0.08)
        assert res.force_magnitude()[R32 >= 8].sum() / total <= outside
        assert np.linalg.norm(res.net_force()) < 0.01 * res.total_force()
    if level:
        # Morozov: the misfit sits at the target (tau = 1.1 times the estimated noise) ...
        assert res.info["misfit_um"] == pytest.approx(res.info["discrepancy_target_um"], rel=0.1)
        # ... and FTTC, on the same field, spreads force far from the cell
        fttc = tfm.reconstruct_forces(u, G32, MAT, method="fttc")
        assert fttc.force_magnitude()[R32 >= 8].sum() / total > 1.0


def test_ball_projection_is_the_nearest_point_of_the_weighted_ball():
    """x = (v + lam w u_m) / (1 + lam w) with the misfit bound tight (Newton from the last
    lam, as ADMM calls it), points already inside left as they are."""
    import jax.numpy as jnp

    rng = np.random.default_rng(3)
    v, um = (jnp.asarray(rng.standard_normal((3, 6, 7, 8)), jnp.float32) for _ in range(2))
    w = jnp.asarray(rng.uniform(0, 2, (1, 6, 7, 8)) * (rng.uniform(size=(1, 6, 7, 8)) > 0.2), jnp.float32)
    d2 = float(jnp.sum(w * (v - um) ** 2))
    lam = jnp.float32(0.0)
    for _ in range(4):
        x, lam = inverse.project_ball(v, um, w, 0.25 * d2, lam)
    assert float(jnp.sum(w * (x - um) ** 2)) == pytest.approx(0.25 * d2, rel=1e-4)
    assert np.allclose(np.asarray(x)[:, np.asarray(w[0]) == 0], np.asarray(v)[:, np.asarray(w[0]) == 0])
    # any other point of the ball is farther from v (a few random ones, scaled onto the ball)
    for seed in range(5):
        y = um + jnp.asarray(np.random.default_rng(seed).standard_normal(v.shape), jnp.float32) * 0.3
        y = um + (y - um) * min(1.0, math.sqrt(0.25 * d2 / float(jnp.sum(w * (y - um) ** 2))))
        assert float(jnp.sum((y - v) ** 2)) >= float(jnp.sum((x - v) ** 2))
    inside, lam0 = inverse.project_ball(v, um, w, 2.0 * d2, jnp.float32(1.0))
    assert float(lam0) == 0.0 and np.array_equal(np.asarray(inside), np.asarray(v))


def test_constrained_discrepancy_solve_is_the_penalised_solve_at_its_alpha():
    """The direct (constrained) solve of the discrepancy principle and the penalised solve at
    the alpha it reports (its multiplier) are the same problem: the same misfit and forces."""
    sph = tfm.analytic.EshelbySphere(4.0, -0.05, tuple(C32), MAT)
    u = noisy(np.asarray(sph.sample(G32)), 0.05, 0)
    direct = tfm.reconstruct_forces(u, G32, MAT, debias=False)
    assert direct.info["discrepancy_solver"] == "constrained"
    assert direct.info["misfit_um"] == pytest.approx(direct.info["discrepancy_target_um"], rel=0.05)
    fixed = tfm.reconstruct_forces(u, G32, MAT, regularization=direct.info["alpha"], debias=False, tolerance=1e-3)
    assert fixed.info["misfit_um"] == pytest.approx(direct.info["misfit_um"], rel=0.05)
    assert np.linalg.norm(fixed.force - direct.force) < 0.1 * np.linalg.norm(direct.force)


def test_mask_support_keeps_every_force_near_the_cell():
    sph = tfm.analytic.EshelbySphere(4.0, -0.05, tuple(C32), MAT)
    u = noisy(np.asarray(sph.sample(G32)), 0.1, 5)
    res = tfm.reconstruct_forces(u, G32, MAT, mask=R32 < 4.0, support_um=1.5)
    assert res.info["support_um"] == 1.5
    assert not np.any(res.force_magnitude()[R32 > 4.0 + 1.5 + 1e-6])
    assert res.contractility() > 0


def test_fem_operator_recovers_point_forces_in_a_fixed_box():
    """A contractile pair of point forces solved by the voxel FEM in a fixed 14³ box, 2 %
    noise: the FEM operator recovers it (relative L2 < 0.15; measured 0.03 at 24³), the
    infinite-medium FFT operator cannot (the box's walls carry part of the load)."""
    g = tfm.Grid((14, 14, 14), 1.0)
    f = np.zeros((*g.shape, 3))
    f[7, 7, 4, 2], f[7, 7, 10, 2] = 50.0, -50.0
    sol = fem.solve(g, MAT, body_force=f, boundary="fixed")
    u = noisy(np.asarray(sol.displacement), 0.02, 3)
    truth = np.asarray(sol.force_density)
    inner = (slice(1, -1),) * 3
    res = tfm.reconstruct_forces(u, g, MAT, operator="fem", boundary="fixed")
    err = np.linalg.norm((res.force - truth)[inner]) / np.linalg.norm(truth[inner])
    assert err < 0.15
    assert res.force[7, 7, 4, 2] > 0.8 * 50 and res.force[7, 7, 10, 2] < -0.8 * 50


# ------------------------------------------------------------------- noise
@pytest.mark.parametrize("sigma", [0.002, 0.01, 0.05])
def test_noise_estimate_within_20_percent(sigma):
    """On a cell's field plus white noise (3D), and on a 2D traction field's displacement."""
    sph = tfm.analytic.EshelbySphere(4.0, -0.05, tuple(C32), MAT)
    u = np.asarray(sph.sample(G32)) + sigma * np.random.default_rng(7).standard_normal((*G32.shape, 3))
    assert estimate_noise(u) == pytest.approx(sigma, rel=0.2)
    assert estimate_noise(u, mask=R32 < 6) == pytest.approx(sigma, rel=0.2)
    g2 = tfm.Grid((48, 48), 0.5)
    y, x = np.meshgrid(*g2.axes_um(), indexing="ij")
    u2 = np.stack([np.exp(-((x - 12) ** 2 + (y - 12) ** 2) / 20.0)] * 2, -1) * 0.3
    u2 = u2 + sigma * np.random.default_rng(8).standard_normal(u2.shape)
    assert estimate_noise(u2) == pytest.approx(sigma, rel=0.2)
    # a grid of 2 planes (a thin stack's DVC grid): the noise from the axes of 3 or more points
    noise = sigma * np.random.default_rng(9).standard_normal((2, *G32.shape[1:], 3))
    thin = np.asarray(sph.sample(G32))[15:17] + noise
    assert estimate_noise(thin) == pytest.approx(sigma, rel=0.2)
    with pytest.raises(ValueError, match="at least 3 points along one axis"):
        estimate_noise(np.zeros((2, 2, 2, 3)))


def test_zero_and_noise_only_fields():
    zero = tfm.reconstruct_forces(np.zeros((*G32.shape, 3), np.float32), G32, MAT)
    assert not np.any(zero.force) and zero.info["alpha_rule"] == "no_data"
    pure = 0.01 * np.random.default_rng(4).standard_normal((*G32.shape, 3)).astype(np.float32)
    with pytest.warns(UserWarning, match="hardly above its noise"):
        res = tfm.reconstruct_forces(pure, G32, MAT)
    assert res.info["warnings"] and res.force_magnitude().sum() < 0.05 * tfm.reconstruct_forces(
        pure, G32, MAT, method="fttc").force_magnitude().sum()


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("kw, error, match", [
    ({"regularization": "gcv"}, ValueError, "regularization"),
    ({"regularization": -1.0}, ValueError, "regularization"),
    ({"alpha": 1.0}, TypeError, "alpha"),
    ({"bogus": 1}, TypeError, "bogus"),
    ({"penalty": "l3"}, ValueError, "penalty"),
    ({"operator": "bem"}, ValueError, "operator"),
    ({"boundary": "periodic"}, ValueError, "boundary"),
    ({"noise_um": -0.1}, ValueError, "noise_um"),
    ({"noise_um": True}, ValueError, "noise_um"),
    ({"support_um": 2.0}, ValueError, "support_um"),
    ({"max_iterations": 0}, ValueError, "max_iterations"),
    ({"discrepancy": 0.0}, ValueError, "discrepancy"),
    ({"weights": np.ones((4, 4, 4))}, ValueError, "weights"),
    ({"weights": np.zeros(G32.shape)}, ValueError, "weights"),
    ({"mask": np.ones((4, 4, 4), bool)}, ValueError, "mask"),
    ({"mask": np.full(G32.shape, 0.5)}, ValueError, "mask"),
    ({"method": "fttc", "mask": np.ones(G32.shape, bool)}, ValueError, "mask"),
])
def test_bad_parameters_are_refused_by_name(kw, error, match):
    u = np.zeros((*G32.shape, 3), np.float32)
    u[16, 16, 16] = 0.1
    with pytest.raises(error, match=match):
        tfm.reconstruct_forces(u, G32, MAT, **kw)


def test_neo_hookean_needs_the_fem_operator():
    """A nonlinear law runs on the FEM operator by default; the FFT operator refuses it."""
    with pytest.raises(TypeError, match="material"):
        tfm.reconstruct_forces(np.zeros((*G32.shape, 3), np.float32), G32, tfm.NeoHookean(1000.0, 0.45), operator="fft")
