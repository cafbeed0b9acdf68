"""3D FTTC recovers known forces from closed-form displacement fields (64^3 grids).

Noise: zero-mean Gaussian, standard deviation 5 % of the RMS displacement component
over the box (the noise model of benchmarks/fttc.py)."""

import functools

import numpy as np
import pytest

import tfm
from tfm import analytic as A

GRID = tfm.Grid((64, 64, 64), spacing_um=1.0)
fttc = functools.partial(tfm.reconstruct_forces, method="fttc")  # the FTTC path (the default is the inverse)
MAT = tfm.LinearElastic(1000.0, 0.45)
C = np.array(GRID.center_um())
X = GRID.coordinates_um()
R = np.linalg.norm(X - C, axis=-1)


def noisy(u, level, seed):
    rng = np.random.default_rng(seed)
    return (u + level * np.sqrt(np.mean(u**2)) * rng.standard_normal(u.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def sphere():
    sol = A.EshelbySphere(6.0, -0.05, tuple(C), MAT)
    return sol, np.asarray(sol.sample(GRID), dtype=np.float32)


@pytest.fixture(scope="module")
def dipole():
    sol = A.KelvinForceDipole(1000.0, 16.0, (1, 0, 0), tuple(C), MAT, core_radius_um=1.5)
    return sol, np.asarray(sol.sample(GRID), dtype=np.float32)


def radial_force(res, radius):
    e = (X - C) / np.maximum(R, 1e-9)[..., None]
    return -np.sum(np.sum(res.force * e, -1) * (R < radius)) * GRID.voxel_volume_um3


def half_dipole_force(res):
    """Force along +z summed over the upper half within 20 µm: -F for a contractile dipole."""
    return -np.sum(res.force[..., 0] * (X[..., 0] > C[0]) * (R < 20)) * GRID.voxel_volume_um3


@pytest.mark.parametrize("noise, tol", [(0.0, 0.01), (0.05, 0.05)])
def test_contracting_sphere_total_radial_force(sphere, noise, tol):
    sol, u = sphere
    res = fttc(noisy(u, noise, 0) if noise else u, GRID, MAT)
    assert radial_force(res, 12.0) == pytest.approx(sol.total_radial_force_pn, rel=tol)
    # Contractility about the force centroid, within the cell's neighbourhood, is the same number.
    assert res.contractility(mask=R < 12) == pytest.approx(sol.total_radial_force_pn, rel=tol)
    assert np.linalg.norm(res.net_force()) < 0.01 * res.total_force()
    assert res.info["regularization_rule"] == "gcv" and res.info["alpha"] > 0
    # With noise GCV has an interior minimum; noise-free data want alpha -> 0 (the lower edge).
    assert res.info["regularization_at_search_edge"] == (noise == 0)


@pytest.mark.parametrize("noise, tol", [(0.0, 0.01), (0.05, 0.05)])
def test_kelvin_dipole_force(dipole, noise, tol):
    sol, u = dipole
    res = fttc(noisy(u, noise, 1) if noise else u, GRID, MAT)
    assert half_dipole_force(res) == pytest.approx(1000.0, rel=tol)
    # The dipole moment M_zz = -F d about the centre.
    assert -res.dipole_moment(mask=R < 20, center_um=C)[0, 0] / 16.0 == pytest.approx(1000.0, rel=tol)
    assert np.linalg.norm(res.net_force()) < 0.01 * res.total_force()


def test_noise_raises_the_chosen_regularisation(sphere):
    _, u = sphere
    alphas = [fttc(noisy(u, lvl, 2), GRID, MAT).info["alpha"] for lvl in (0.01, 0.1)]
    assert alphas[1] > 10 * alphas[0]


def test_lcurve_rule_also_recovers_the_sphere(sphere):
    sol, u = sphere
    res = fttc(noisy(u, 0.05, 3), GRID, MAT, regularization="lcurve")
    assert res.info["regularization_rule"] == "lcurve"
    assert radial_force(res, 12.0) == pytest.approx(sol.total_radial_force_pn, rel=0.05)


def test_unregularised_fttc_is_the_spectral_navier_operator():
    g = tfm.Grid((16, 16, 16), spacing_um=0.5)
    z, y, x = np.moveaxis(g.coordinates_um(), -1, 0)
    k = 2 * np.pi / 8.0
    u = np.stack([np.sin(k * x), np.cos(k * z) * np.sin(k * y), np.sin(k * (x + y))], -1).astype(np.float32) * 0.1
    res = fttc(u, g, MAT, regularization=0.0, pad="none")
    expected = np.asarray(tfm.fields.force_density(u, g, MAT, method="spectral"))
    assert np.allclose(res.force, expected, atol=1e-3 * np.abs(expected).max())


def test_strain_energy_of_contracting_sphere(sphere):
    sol, u = sphere
    res = fttc(u, GRID, MAT)
    # W = 1/2 * area * u_r(a) * f_s for the radial force layer on the sphere.
    a = sol.radius_um
    exact = 0.5 * 4 * np.pi * a**2 * (sol.interior_strain * a) * sol.surface_traction_pa
    assert res.strain_energy(mask=R < 12) == pytest.approx(exact, rel=0.05)


@pytest.mark.parametrize(
    "u, grid, material, kw, match",
    [
        (np.zeros((8, 8, 8)), tfm.Grid((8, 8, 8), 1.0), MAT, {}, "shape"),
        (np.zeros((8, 8, 8, 3)), tfm.Grid((8, 8, 9), 1.0), MAT, {}, "shape"),
        (np.full((8, 8, 8, 3), np.nan), tfm.Grid((8, 8, 8), 1.0), MAT, {}, "NaN"),
        (np.zeros((8, 8, 8, 3), int), tfm.Grid((8, 8, 8), 1.0), MAT, {}, "floating"),
        (np.zeros((8, 8, 8, 3)), tfm.Grid((8, 8, 8), 1.0), MAT, {"regularization": -1.0}, "regularization"),
        (np.zeros((8, 8, 8, 3)), tfm.Grid((8, 8, 8), 1.0), MAT, {"regularization": "magic"}, "regularization"),
        (np.zeros((8, 8, 8, 3)), tfm.Grid((8, 8, 8), 1.0), MAT, {"pad": "mirror"}, "pad"),
        (np.zeros((8, 8, 8, 3)), tfm.Grid((8, 8, 8), 1.0), MAT, {"method": "fem"}, "method"),
    ],
)
def test_bad_input_raises_clear_errors(u, grid, material, kw, match):
    with pytest.raises(ValueError, match=match):
        fttc(u, grid, material, **kw)


def test_wrong_argument_types():
    with pytest.raises(TypeError, match="grid"):
        fttc(np.zeros((8, 8, 8, 3)), (8, 8, 8), MAT)
    with pytest.raises(TypeError, match="material"):
        fttc(np.zeros((8, 8, 8, 3)), tfm.Grid((8, 8, 8), 1.0), 1000.0)
