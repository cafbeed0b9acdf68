"""The voxel FEM against closed-form elasticity: convergence orders, equilibrium,
symmetry, heterogeneous moduli, and the neo-Hookean law's small-strain limit."""

import numpy as np
import pytest

import tfm
from tfm.analytic import EshelbySphere, GaussianDilatation
from tfm.material import NeoHookean
from tfm.synth import cells, fem

L = 16.0  # box edge, µm; the convergence tests share grids (and compilations)
SIZES = (17, 25, 33)


def _grid(n):
    return tfm.Grid((n,) * 3, L / (n - 1), (-L / 2,) * 3)


def _order(hs, errs):
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


def _rel(a, b, sel=Ellipsis):
    return float(np.sqrt(np.sum((a - b)[sel] ** 2) / np.sum(b[sel] ** 2)))


def test_smooth_eigenstrain_converges_at_second_order(x64):
    """Q1 elements: L2 error of u is O(h^2) for a smooth solution (Gaussian dilatation,
    exact boundary values); the nodal force density converges too."""
    mat = tfm.LinearElastic(1000.0, 0.3)
    sol = GaussianDilatation(2.0, -0.05, (0.1, 0.2, -0.15), mat)
    hs, eu, ef = [], [], []
    for n in SIZES:
        g = _grid(n)
        x = g.coordinates_um()
        ua = np.asarray(sol.sample(g))
        s = fem.solve(g, mat, eigenstrain=np.asarray(sol.eigenstrain_field(x)), boundary_displacement=ua,
                      config=fem.FEMConfig(rtol=1e-9))
        inner = (slice(1, -1),) * 3
        hs.append(g.spacing_um[0])
        eu.append(_rel(s.displacement, ua))
        ef.append(_rel(s.force_density, np.asarray(sol.equivalent_body_force(x)), inner))
    assert 1.85 < _order(hs, eu) < 2.2, (hs, eu)
    assert _order(hs, ef) > 1.7, (hs, ef)
    assert eu[-1] < 0.01 and ef[-1] < 0.05


def test_eshelby_sphere_converges(x64):
    """A sharp sphere on an unfitted voxel mesh: u has a kink across a surface that cuts
    the elements, so the best L2 order is 3/2 (error O(h) in a band of width h); away
    from the sphere the field converges at order 2; the total radial force too."""
    mat = tfm.LinearElastic(1000.0, 0.3)
    a = 3.0
    sol = EshelbySphere(a, -0.05, (0.1, 0.2, -0.15), mat)
    hs, e_all, e_far, e_force = [], [], [], []
    for n in SIZES:
        g = _grid(n)
        d = g.coordinates_um() - np.asarray(sol.center_um)
        r = np.linalg.norm(d, axis=-1)
        frac = cells.volume_fraction(lambda p: np.sum((p - np.asarray(sol.center_um)) ** 2, -1) < a * a, g, 6)
        ua = np.asarray(sol.sample(g))
        s = fem.solve(g, mat, eigenstrain=-0.05 * frac.astype(np.float64), boundary_displacement=ua,
                      config=fem.FEMConfig(rtol=1e-9))
        hs.append(g.spacing_um[0])
        e_all.append(_rel(s.displacement, ua))
        e_far.append(_rel(s.displacement, ua, r > 1.5 * a))
        radial = np.sum(s.force_density * d / np.maximum(r, 1e-12)[..., None]) * g.voxel_volume_um3
        e_force.append(abs(radial + sol.total_radial_force_pn) / sol.total_radial_force_pn)
    assert 1.3 < _order(hs, e_all) < 1.8, (hs, e_all)
    assert _order(hs, e_far) > 1.7, (hs, e_far)
    assert _order(hs, e_force) > 1.5 and e_force[-1] < 0.02, e_force


def test_inhomogeneous_inclusion_converges(x64):
    """A sphere of modulus s E with eigenstrain e* (Eshelby's inhomogeneous inclusion):
    u = A x inside, A a^3 x / r^3 outside, A = 3 s K e* / (3 s K + 4 mu). Elements cut by
    the sphere mix the moduli (arithmetic mean, the eigenstress likewise), which is a
    first-order approximation of the interface: the error falls at order ~1."""
    mat = tfm.LinearElastic(1000.0, 0.3)
    a, e = 3.0, -0.05
    k, mu = mat.bulk_modulus_pa, mat.shear_modulus_pa
    for s in (0.2, 5.0):
        amp = 3 * s * k * e / (3 * s * k + 4 * mu)
        hs, errs = [], []
        for n in SIZES:
            g = _grid(n)
            x = g.coordinates_um()
            r = np.linalg.norm(x, axis=-1)
            ua = np.where((r < a)[..., None], amp * x, amp * a**3 * x / np.maximum(r, 1e-9)[..., None] ** 3)
            frac = cells.volume_fraction(lambda p: np.sum(p**2, -1) < a * a, g, 6).astype(np.float64)
            u = fem.solve(g, mat, eigenstrain=e * frac, modulus_scale=1 + (s - 1) * frac, boundary_displacement=ua,
                          config=fem.FEMConfig(rtol=1e-9)).displacement
            hs.append(g.spacing_um[0])
            errs.append(_rel(u, ua))
        assert 0.6 < _order(hs, errs) < 1.6, (s, hs, errs)
        assert errs[-1] < 0.1, (s, errs)


def test_equilibrium_net_force_and_symmetry():
    """float32, random-free: a centred sphere. The residual meets rtol, an eigenstrain
    load has no net force, and the field has the box's mirror and permutation symmetry."""
    g = tfm.Grid((17, 17, 17), 1.0)
    c = np.asarray(g.center_um())
    frac = cells.volume_fraction(lambda p: np.sum((p - c) ** 2, -1) < 9.0, g, 4)
    mat = tfm.LinearElastic(2000.0, 0.45)
    s = fem.solve(g, mat, eigenstrain=-0.1 * frac)
    assert s.info["converged"] and s.info["relative_residual"] < 1e-5
    f = s.force_density
    assert np.abs(f.sum(axis=(0, 1, 2))).max() < 1e-5 * np.abs(f).sum()
    u = s.displacement
    scale = np.abs(u).max()
    # mirror z -> -z flips u_z and keeps u_y, u_x
    np.testing.assert_allclose(u[::-1, :, :, 0], -u[:, :, :, 0], atol=1e-5 * scale)
    np.testing.assert_allclose(u[::-1, :, :, 1:], u[:, :, :, 1:], atol=1e-5 * scale)
    # swapping the y and x axes swaps the components
    np.testing.assert_allclose(np.swapaxes(u, 1, 2)[..., [0, 2, 1]], u, atol=1e-5 * scale)
    # contraction: the matrix moves toward the centre
    d = g.coordinates_um() - c
    assert np.sum(u * d) < 0


# the neo-Hookean case is slow (about 17 s on 2 cores); its small-strain limit is checked by
# test_neo_hookean_small_strain_limit_and_large_strain in the default suite
@pytest.mark.parametrize("law", [tfm.LinearElastic, pytest.param(NeoHookean, marks=pytest.mark.slow)])
def test_fixed_and_free_boxes_bracket_the_infinite_medium(law):
    """Fixed faces stiffen the box and traction-free faces soften it: a contracting
    sphere's far field lies between the two (measured 0.86 and 1.03 of Eshelby's)."""
    g = tfm.Grid((25, 25, 25), 1.0)
    c = np.asarray(g.center_um())
    frac = cells.volume_fraction(lambda p: np.sum((p - c) ** 2, -1) < 16.0, g, 4)
    exact = EshelbySphere(4.0, -0.05, tuple(c), tfm.LinearElastic(1000.0, 0.45))
    d = g.coordinates_um() - c
    sel = (np.linalg.norm(d, axis=-1) > 6) & (np.linalg.norm(d, axis=-1) < 9)
    ua = np.asarray(exact.sample(g))
    ratio = {}
    for b in fem.BOUNDARIES:
        s = fem.solve(g, law(1000.0, 0.45), eigenstrain=-0.05 * frac, boundary=b)
        assert s.info["converged"]
        ratio[b] = np.sum(s.displacement[sel] * d[sel]) / np.sum(ua[sel] * d[sel])
        if b == "free":  # rigid motion removed, no net force
            assert np.abs(s.displacement.mean(axis=(0, 1, 2))).max() < 1e-4 * np.abs(s.displacement).max()
    assert 0.7 < ratio["fixed"] < 0.97 and 1.0 < ratio["free"] < 1.15, ratio


def test_free_boundary_rejects_unbalanced_loads():
    g = tfm.Grid((9, 9, 9), 1.0)
    bf = np.zeros(g.shape + (3,), np.float32)
    bf[4, 4, 4, 2] = 10.0  # a net force: no equilibrium without fixed faces
    with pytest.raises(ValueError, match="no net force or torque"):
        fem.solve(g, tfm.LinearElastic(1000.0), body_force=bf, boundary="free")
    with pytest.raises(ValueError, match="boundary must be one of"):
        fem.solve(g, tfm.LinearElastic(1000.0), body_force=bf, boundary="open")


def test_scaling_laws_and_body_force_balance():
    """Eigenstrain loads: u does not depend on E. Body-force loads: u ~ 1/E, and a uniform
    modulus_scale acts as a stiffer material. The returned force equals the applied one."""
    g = tfm.Grid((13, 13, 13), (1.0, 0.8, 0.8))
    c = np.asarray(g.center_um())
    frac = cells.volume_fraction(lambda p: np.sum((p - c) ** 2, -1) < 6.0, g, 3)
    u1 = fem.solve(g, tfm.LinearElastic(500.0, 0.4), eigenstrain=-0.05 * frac).displacement
    u2 = fem.solve(g, tfm.LinearElastic(5000.0, 0.4), eigenstrain=-0.05 * frac).displacement
    np.testing.assert_allclose(u1, u2, atol=1e-4 * np.abs(u1).max())
    bf = np.zeros(g.shape + (3,), np.float32)
    bf[6, 6, 4, 2], bf[6, 6, 8, 2] = 50.0, -50.0  # a contracting pair along x, pN/µm³
    a = fem.solve(g, tfm.LinearElastic(500.0, 0.4), body_force=bf)
    b = fem.solve(g, tfm.LinearElastic(1000.0, 0.4), body_force=bf)
    s = fem.solve(g, tfm.LinearElastic(500.0, 0.4), body_force=bf, modulus_scale=np.full(g.shape, 2.0))
    np.testing.assert_allclose(a.displacement, 2 * b.displacement, atol=1e-4 * np.abs(a.displacement).max())
    np.testing.assert_allclose(s.displacement, b.displacement, atol=1e-4 * np.abs(a.displacement).max())
    np.testing.assert_allclose(a.force_density, bf, atol=1e-4 * 50)
    assert a.displacement[6, 6, 4, 2] > 0 > a.displacement[6, 6, 8, 2]  # pulled toward each other


def test_neo_hookean_small_strain_limit_and_large_strain():
    """At 1e-4 strain neo-Hookean and linear agree to ~1e-4; at 20 % they differ by
    percent; the neo-Hookean solution is in equilibrium (Newton converged)."""
    g = tfm.Grid((17, 17, 17), 1.0)
    c = np.asarray(g.center_um())
    frac = cells.volume_fraction(lambda p: np.sum((p - c) ** 2, -1) < 9.0, g, 4)
    lin, nh = tfm.LinearElastic(1000.0, 0.45), NeoHookean(1000.0, 0.45)
    diffs = []
    for e in (-1e-4, -0.2):
        a = fem.solve(g, lin, eigenstrain=e * frac).displacement
        s = fem.solve(g, nh, eigenstrain=e * frac)
        assert s.info["converged"] and s.info["newton_iterations"] >= 1
        diffs.append(_rel(s.displacement, a))
    assert diffs[0] < 1e-3
    assert 0.01 < diffs[1] < 0.3
    # a solve that needs more Newton iterations than its budget stops with ConvergenceError
    # (tfm synth then draws another cell) instead of retrying for many minutes
    with pytest.raises(fem.ConvergenceError, match="newton_budget"):
        fem.solve(g, nh, eigenstrain=-0.2 * frac, config=fem.FEMConfig(newton_budget=1))


def test_neo_hookean_energy_reduces_to_hooke():
    import jax

    rng = np.random.default_rng(0)
    h = 1e-3 * rng.standard_normal((5, 3, 3))
    nh, lin = NeoHookean(1000.0, 0.4), tfm.LinearElastic(1000.0, 0.4)
    w_nh = np.asarray(nh.energy_density(h))
    w_lin = np.asarray(lin.energy_density(h))
    np.testing.assert_allclose(w_nh, w_lin, rtol=2e-2)  # differences are O(|H|^3)
    p = np.asarray(jax.vmap(jax.grad(lambda x: nh.energy_density(x)))(h))
    np.testing.assert_allclose(p, np.asarray(nh.first_piola_stress(h)), rtol=1e-3, atol=1e-4)


def test_interpolate_is_exact_for_trilinear_fields():
    g = tfm.Grid((6, 7, 8), (0.5, 1.0, 2.0), (1.0, -2.0, 0.0))
    x = g.coordinates_um()
    field = 0.3 * x[..., 0] - 0.1 * x[..., 1] + 0.02 * x[..., 2] + 0.01 * x[..., 0] * x[..., 2]
    pts = np.asarray(g.origin_um) + np.random.default_rng(1).random((50, 3)) * (np.asarray(g.extent_um) - np.asarray(g.spacing_um))
    want = 0.3 * pts[:, 0] - 0.1 * pts[:, 1] + 0.02 * pts[:, 2] + 0.01 * pts[:, 0] * pts[:, 2]
    np.testing.assert_allclose(np.asarray(fem.interpolate(field, g, pts)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "give a load"),
        ({"eigenstrain": np.zeros((4, 4, 4))}, "eigenstrain must have shape"),
        ({"eigenstrain": np.zeros((5, 5, 5)), "modulus_scale": np.zeros((5, 5, 5))}, "modulus_scale must be > 0"),
        ({"body_force": np.full((5, 5, 5, 3), np.nan)}, "body_force contains NaN"),
        ({"eigenstrain": np.tile(np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]], float), (5, 5, 5, 1, 1))}, "symmetric"),
    ],
)
def test_bad_input_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fem.solve(tfm.Grid((5, 5, 5), 1.0), tfm.LinearElastic(1000.0), **kwargs)
