"""Closed-form solutions prove themselves: Navier residual = 0, traction flux through an
enclosing surface = applied force, free surfaces traction-free, interface conditions."""

import numpy as np
import pytest
from scipy.integrate import quad

import tfm
from tfm import analytic as A

MAT = tfm.LinearElastic(1000.0, 0.3)


def sphere_quadrature(radius, center, n_theta=24, n_phi=48, hemisphere=False):
    """Points, outward normals and weights of a Gauss-Legendre x trapezoid rule on a
    sphere (or on its lower half z <= center_z)."""
    lo, hi = -1.0, (0.0 if hemisphere else 1.0)
    t, wt = np.polynomial.legendre.leggauss(n_theta)
    cos_t = 0.5 * (hi - lo) * t + 0.5 * (hi + lo)
    wt = wt * 0.5 * (hi - lo)
    phi = np.arange(n_phi) * 2 * np.pi / n_phi
    ct, ph = np.meshgrid(cos_t, phi, indexing="ij")
    st = np.sqrt(1 - ct**2)
    n = np.stack([ct, st * np.sin(ph), st * np.cos(ph)], axis=-1).reshape(-1, 3)  # (z, y, x)
    w = (np.repeat(wt, n_phi) * 2 * np.pi / n_phi) * radius**2
    return np.asarray(center) + radius * n, n, w


def traction_flux(sol, radius, center, hemisphere=False):
    pts, n, w = sphere_quadrature(radius, center, hemisphere=hemisphere)
    sig = np.asarray(sol.stress(pts))
    return np.einsum("nij,nj,n->i", sig, n, w)


SOLUTIONS = {
    "kelvin": A.KelvinPointForce((1.0, 2.0, -3.0), (0.5, 0.0, -0.2), MAT),
    "kelvinlet": A.KelvinPointForce((1.0, 2.0, -3.0), (0.5, 0.0, -0.2), MAT, core_radius_um=1.0),
    "dipole": A.KelvinForceDipole(10.0, 4.0, (1, 1, 0), (0, 0, 0), MAT, core_radius_um=0.5),
    "boussinesq": A.boussinesq(5.0, (0, 0, 0), MAT),
    "cerruti": A.cerruti((2.0, 3.0), (0, 0, 0), MAT),
    "eshelby": A.EshelbySphere(2.0, -0.05, (0, 0, 0), MAT),
    "cavity": A.SphericalCavity(1.0, -100.0, (0, 0, 0), MAT),
}


def _points(name, rng):
    p = rng.uniform(-6, 6, (60, 3))
    if name in ("boussinesq", "cerruti"):
        p[:, 0] = -np.abs(p[:, 0]) - 0.2  # inside the medium z < 0
    r = np.linalg.norm(p, axis=1)
    if name in ("kelvin", "cavity", "boussinesq", "cerruti"):
        p = p[r > 1.5]
    if name == "eshelby":  # both phases, away from the interface
        p = np.concatenate([p[np.abs(r - 2.0) > 0.2], rng.uniform(-1, 1, (20, 3))])
    return p


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_navier_residual_vanishes(name, x64):
    sol = SOLUTIONS[name]
    pts = _points(name, np.random.default_rng(1))
    res = np.asarray(sol.navier_residual(pts))
    scale = np.max(np.abs(np.asarray(sol.stress(pts))))  # stress / 1 µm: the size of each term
    assert np.max(np.abs(res)) < 1e-9 * scale


def test_kelvinlet_body_force_balances_stress_in_the_core(x64):
    sol = SOLUTIONS["kelvinlet"]
    pts = np.asarray(sol.position_um) + np.random.default_rng(2).uniform(-1, 1, (30, 3))
    f = np.asarray(sol.body_force(pts))
    assert np.max(np.abs(f)) > 0.01  # the core really is loaded
    assert np.max(np.abs(np.asarray(sol.navier_residual(pts)))) < 1e-9 * np.max(np.abs(f))


def test_kelvinlet_tends_to_kelvin_far_from_core(x64):
    far = np.array([[5.0, 4.0, -6.0], [-8.0, 1.0, 2.0]])
    k0 = np.asarray(SOLUTIONS["kelvin"].displacement(far))
    k1 = np.asarray(SOLUTIONS["kelvinlet"].displacement(far))
    assert np.allclose(k1, k0, rtol=2e-2)


@pytest.mark.parametrize("name", ["kelvin", "kelvinlet"])
@pytest.mark.parametrize("radius", [2.0, 5.0])
def test_kelvin_traction_flux_equals_minus_enclosed_force(name, radius, x64):
    sol = SOLUTIONS[name]
    enclosed = 1.0
    if sol.core_radius_um > 0:  # the Kelvinlet's blob has tails: integrate it over the ball
        e = sol.core_radius_um
        enclosed = quad(lambda r: 4 * np.pi * r**2 * 15 * e**4 / (8 * np.pi * (r**2 + e**2) ** 3.5), 0, radius)[0]
        assert 0.5 < enclosed < 0.999
    flux = traction_flux(sol, radius, sol.position_um)
    # Equilibrium of the ball: surface traction + enclosed force = 0.
    assert np.allclose(flux, -enclosed * np.asarray(sol.force_pn), atol=1e-6 * np.linalg.norm(sol.force_pn))


def test_dipole_has_zero_net_force_and_opposite_forces(x64):
    dip = SOLUTIONS["dipole"]
    assert np.allclose(traction_flux(dip, 8.0, (0, 0, 0)), 0.0, atol=1e-5)
    f1, f2 = (np.asarray(p.force_pn) for p in dip.parts)
    x1, x2 = (np.asarray(p.position_um) for p in dip.parts)
    assert np.allclose(f1, -f2)
    assert np.dot(f1, x2 - x1) > 0  # contractile: each force points at the other one


@pytest.mark.parametrize("name", ["boussinesq", "cerruti"])
def test_half_space_surface_is_traction_free(name, x64):
    sol = SOLUTIONS[name]
    pts = np.random.default_rng(3).uniform(-5, 5, (40, 3))
    pts[:, 0] = 0.0
    pts = pts[np.linalg.norm(pts, axis=1) > 0.5]
    sig = np.asarray(sol.stress(pts))
    assert np.max(np.abs(sig[:, 0, :])) < 1e-10 * np.max(np.abs(sig))
    assert np.max(np.abs(sig)) > 1e-3


@pytest.mark.parametrize("name", ["boussinesq", "cerruti"])
def test_half_space_flux_through_hemisphere_equals_minus_applied_force(name, x64):
    sol = SOLUTIONS[name]
    flux = traction_flux(sol, 3.0, sol.position_um, hemisphere=True)
    assert np.allclose(flux, -np.asarray(sol.force_pn), atol=1e-6 * np.linalg.norm(sol.force_pn))


def test_boussinesq_surface_settlement_matches_textbook(x64):
    # Johnson (1985) eq. 3.22: u_z(r, 0) = P (1 - nu^2) / (pi E r) on the surface.
    P, r = 5.0, 2.0
    u = np.asarray(SOLUTIONS["boussinesq"].displacement(np.array([[0.0, 0.0, r]])))[0]
    expected = P * (1 - MAT.poisson_ratio**2) / (np.pi * MAT.youngs_modulus_pa * r)
    assert u[0] == pytest.approx(-expected, rel=1e-10)  # pushed down, into the gel


def test_eshelby_interface_continuity_and_radial_force(x64):
    sol = SOLUTIONS["eshelby"]
    e = np.array([0.6, -0.48, 0.64])
    inside, outside = ((sol.radius_um + d) * e[None] for d in (-1e-7, 1e-7))
    assert np.allclose(np.asarray(sol.displacement(inside)), np.asarray(sol.displacement(outside)), atol=1e-9)
    # The true traction (with the eigenstress) is continuous across the sphere ...
    t_in = np.asarray(sol.stress(inside))[0] @ e
    t_out = np.asarray(sol.stress(outside))[0] @ e
    assert np.allclose(t_out, t_in, rtol=1e-6)
    # ... while C:eps, the stress of the equivalent body-force problem that FTTC solves,
    # jumps by the surface force layer 3 K eps*: [C:eps . e] + f_s = 0.
    c_in, c_out = (np.asarray(MAT.stress(sol.strain(p)))[0] @ e for p in (inside, outside))
    assert np.allclose(c_out - c_in, -sol.surface_traction_pa * e, rtol=1e-6)
    assert sol.surface_traction_pa < 0  # contracting: the layer pulls inward
    assert np.allclose(traction_flux(sol, 4.0, sol.center_um), 0.0, atol=1e-6)


def test_cavity_wall_carries_the_pressure(x64):
    sol = SOLUTIONS["cavity"]
    e = np.array([0.0, 0.6, 0.8])
    sig = np.asarray(sol.stress(sol.radius_um * e[None] * (1 + 1e-9)))[0]
    assert np.allclose(sig @ e, -sol.pressure_pa * e, rtol=1e-5)
    assert np.all(np.isnan(np.asarray(sol.displacement(np.zeros((1, 3))))))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="force_pn"):
        A.KelvinPointForce((1.0, 2.0), (0, 0, 0), MAT)
    with pytest.raises(ValueError, match="radius_um"):
        A.EshelbySphere(-1.0, 0.01, (0, 0, 0), MAT)
    with pytest.raises(ValueError, match="points"):
        SOLUTIONS["kelvin"].displacement(np.zeros((4, 2)))
