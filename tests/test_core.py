"""Grid, material and field operators: conventions, exactness, convergence order, errors."""

import numpy as np
import pytest

import tfm
from tfm import analytic as A
from tfm import fields


# ----------------------------------------------------------------------------- Grid
def test_grid_coordinates_follow_zyx_convention():
    g = tfm.Grid((4, 5, 6), spacing_um=(2.0, 0.5, 0.25), origin_um=(1.0, -1.0, 3.0))
    x = g.coordinates_um()
    assert x.shape == (4, 5, 6, 3)
    assert np.allclose(x[2, 3, 4], (1.0 + 2 * 2.0, -1.0 + 3 * 0.5, 3.0 + 4 * 0.25))
    assert g.extent_um == (8.0, 2.5, 1.5) and g.voxel_volume_um3 == 0.25


def test_wavevectors_are_radians_per_um():
    g = tfm.Grid((8, 16, 32), spacing_um=0.5)
    k = g.wavevectors()
    assert k.shape == (8, 16, 32, 3)
    # The first non-zero mode along x completes one cycle over the box: k = 2 pi / L.
    assert k[0, 0, 1, 2] == pytest.approx(2 * np.pi / (32 * 0.5))
    assert g.wavevectors(rfft=True).shape == (8, 16, 17, 3)
    # exp(i k x) sampled on the grid is periodic and differentiates to i k exp(i k x).
    f = np.sin(k[0, 0, 3, 2] * g.coordinates_um()[..., 2])
    df = np.asarray(fields.derivative(f, 2, 0.5, method="spectral"))
    assert np.allclose(df, k[0, 0, 3, 2] * np.cos(k[0, 0, 3, 2] * g.coordinates_um()[..., 2]), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=(4, 4, 4), spacing_um=0.0), "spacing_um"),
        (dict(shape=(4, 4, 4), spacing_um=(1.0, -1.0, 1.0)), "spacing_um"),
        (dict(shape=(4, 4, 4), spacing_um=(1.0, 1.0)), "spacing_um"),
        (dict(shape=(4, 0, 4), spacing_um=1.0), "shape"),
        (dict(shape=(4,), spacing_um=1.0), "shape"),
        (dict(shape=(4, 4, 4), spacing_um=float("nan")), "spacing_um"),
    ],
)
def test_grid_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfm.Grid(**kwargs)


# ------------------------------------------------------------------------- Material
def test_lame_parameters_and_hooke_law():
    m = tfm.LinearElastic(youngs_modulus_pa=2600.0, poisson_ratio=0.3)
    assert m.shear_modulus_pa == pytest.approx(1000.0)
    assert m.lame_lambda_pa == pytest.approx(1500.0)
    assert m.bulk_modulus_pa == pytest.approx(m.lame_lambda_pa + 2 / 3 * m.shear_modulus_pa)
    # Uniaxial stress: sigma_xx = E eps_xx with lateral strains -nu eps_xx.
    eps = np.diag([-0.3e-2, -0.3e-2, 1e-2])
    sig = np.asarray(m.stress(eps))
    assert sig[2, 2] == pytest.approx(2600.0 * 1e-2, rel=1e-6)
    assert np.allclose(sig[:2, :2], 0.0, atol=1e-6)
    assert float(m.strain_energy_density(eps)) == pytest.approx(0.5 * np.sum(sig * eps), rel=1e-6)


@pytest.mark.parametrize("E, nu, match", [(0.0, 0.3, "youngs_modulus_pa"), (-5.0, 0.3, "youngs_modulus_pa"),
                                          (1e3, 0.5, "poisson_ratio"), (1e3, -1.0, "poisson_ratio"),
                                          (float("nan"), 0.3, "youngs_modulus_pa"), ("soft", 0.3, "numbers")])
def test_material_rejects_bad_input(E, nu, match):
    with pytest.raises(ValueError, match=match):
        tfm.LinearElastic(E, nu)


# --------------------------------------------------------------------------- fields
MAT = tfm.LinearElastic(1000.0, 0.45)


def periodic_field(g):
    z, y, x = np.moveaxis(g.coordinates_um(), -1, 0)
    L = g.extent_um
    a, b, c = (2 * np.pi / l for l in L)
    return np.stack([np.sin(a * z) * np.cos(c * x), np.cos(b * y + a * z), np.sin(2 * c * x) * np.sin(b * y)], -1)


def test_gradient_layout_and_spectral_exactness():
    g = tfm.Grid((16, 12, 20), spacing_um=(0.8, 0.5, 0.3))
    u = periodic_field(g)
    z, y, x = np.moveaxis(g.coordinates_um(), -1, 0)
    a, b, c = (2 * np.pi / l for l in g.extent_um)
    grad = np.asarray(fields.gradient(u, g, method="spectral"))
    assert grad.shape == (16, 12, 20, 3, 3)
    assert np.allclose(grad[..., 0, 0], a * np.cos(a * z) * np.cos(c * x), atol=1e-4)  # d u_z / d z
    assert np.allclose(grad[..., 0, 2], -c * np.sin(a * z) * np.sin(c * x), atol=1e-4)  # d u_z / d x
    assert np.allclose(grad[..., 1, 1], -b * np.sin(b * y + a * z), atol=1e-4)  # d u_y / d y
    div = np.asarray(fields.divergence(u, g, method="spectral"))
    assert np.allclose(div, np.trace(grad, axis1=-2, axis2=-1), atol=1e-4)


def test_navier_equals_divergence_of_stress_spectrally_and_batches():
    g = tfm.Grid((16, 16, 16), spacing_um=0.7)
    u = periodic_field(g)
    nav = np.asarray(fields.navier(u, g, MAT, method="spectral"))
    div_sig = np.asarray(fields.stress_divergence(u, g, MAT, method="spectral"))
    assert np.allclose(nav, div_sig, atol=1e-3 * np.abs(nav).max())
    batch = np.asarray(fields.navier(np.stack([u, 2 * u]), g, MAT, method="spectral"))
    assert np.allclose(batch[1], 2 * nav, atol=1e-3 * np.abs(nav).max())


def test_fd_navier_converges_at_second_order_to_kelvinlet_force(x64):
    """-navier(u) of the regularised Kelvinlet -> its exact body force, error ~ h^2."""
    L = 8.0
    errors, hs = [], []
    for n in (17, 33, 65):
        g = tfm.Grid((n, n, n), spacing_um=L / (n - 1), origin_um=(-L / 2,) * 3)
        sol = A.KelvinPointForce((30.0, -10.0, 20.0), (0.1, -0.2, 0.15), MAT, core_radius_um=1.2)
        x = g.coordinates_um()
        f_fd = np.asarray(fields.force_density(np.asarray(sol.displacement(x)), g, MAT, method="fd"))
        f_true = np.asarray(sol.body_force(x))
        errors.append(np.linalg.norm(f_fd - f_true) / np.linalg.norm(f_true))
        hs.append(g.spacing_um[0])
    order = np.polyfit(np.log(hs), np.log(errors), 1)[0]  # 1.81 measured: pre-asymptotic
    finest = np.log(errors[-2] / errors[-1]) / np.log(hs[-2] / hs[-1])  # 1.92 measured
    assert errors[-1] < 0.03
    assert abs(order - 2) < 0.3 and abs(finest - 2) < 0.15, f"orders {order:.2f} / {finest:.2f}, errors {errors}"


def test_field_shape_errors_name_the_problem():
    g = tfm.Grid((8, 8, 8), 1.0)
    with pytest.raises(ValueError, match="grid shape"):
        fields.gradient(np.zeros((8, 8, 7, 3)), g)
    with pytest.raises(ValueError, match="method"):
        fields.gradient(np.zeros((8, 8, 8, 3)), g, method="fem")
    with pytest.raises(ValueError, match="3 components"):
        fields.navier(np.zeros((8, 8, 8, 2)), g, MAT)


def test_nearest_indices_map_a_coarse_grid_onto_a_fine_one():
    fine = tfm.Grid((20, 30, 40), (0.5, 1.0, 1.0), origin_um=(1.0, 0.0, -2.0))
    coarse = tfm.Grid((4, 5, 6), (2.0, 4.0, 3.0), origin_um=(2.0, 4.0, 1.0))
    idx = fine.nearest_indices(coarse)
    x = fine.coordinates_um()[np.ix_(*idx)]
    np.testing.assert_allclose(x, coarse.coordinates_um())
    with pytest.raises(ValueError, match="outside"):
        fine.nearest_indices(tfm.Grid((4, 5, 6), 10.0))


def _bead_image(grid, centre_um, sigma_um=0.25):
    x = grid.coordinates_um()
    return np.exp(-0.5 * np.sum((x - np.asarray(centre_um)) ** 2, -1) / sigma_um**2).astype(np.float32)


def test_antialiased_resampling_keeps_a_small_bead_moving_smoothly():
    """A bead much smaller than the target voxel (sigma 0.25 µm, sampled at 0.3 µm, brought to
    1 µm voxels): with the anti-alias prefilter its image's centroid follows sub-voxel shifts
    to 0.05 µm and its total brightness stays within 5 %; plain trilinear point sampling
    misses both (the bead flickers in and out between target voxels)."""
    src = tfm.Grid((40, 40, 40), (0.3, 0.3, 0.3))
    dst = tfm.Grid((12, 12, 12), (1.0, 1.0, 1.0))
    xs = dst.coordinates_um()
    err = {True: [], False: []}
    mass = {True: [], False: []}
    for shift in np.linspace(0.0, 1.0, 6):
        centre = (5.5, 5.5, 5.5 + shift)
        for aa in (True, False):
            img = fields.resample(_bead_image(src, centre), src, dst, antialias=aa)
            err[aa].append(abs(float(np.sum(img * xs[..., 2]) / np.sum(img)) - centre[2]))
            mass[aa].append(float(img.sum()))
    assert max(err[True]) < 0.05, err[True]
    assert max(err[False]) > 0.15, err[False]
    assert np.ptp(mass[True]) < 0.05 * np.mean(mass[True]), mass[True]
    assert np.ptp(mass[False]) > 0.3 * np.mean(mass[False]), mass[False]


def test_gaussian_band_is_the_gaussian_matrix_without_its_zeros():
    import jax.numpy as jnp

    v = np.random.default_rng(4).random((9, 23, 4)).astype(np.float32)
    for sigma, step in ((2.0, 1), (0.7, 1), (1.65, 2), (0.9, 3), (0.0, 2)):
        m = fields.gaussian_matrix(23, sigma) if sigma > 0 else np.eye(23, dtype=np.float32)
        want = np.einsum("ij,zjc->zic", m[::step], v)
        got = fields.band_filter(jnp.asarray(v), 1, jnp.asarray(fields.gaussian_band(23, sigma, step)), step)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_antialiased_resampling_is_linear_interpolation_where_it_does_not_shrink():
    rng = np.random.default_rng(0)
    src = tfm.Grid((10, 12, 14), (1.0, 1.0, 1.0))
    dst = tfm.Grid((19, 23, 27), (0.5, 0.5, 0.5))
    v = rng.random((10, 12, 14, 3), dtype=np.float32)
    np.testing.assert_allclose(fields.resample(v, src, dst, antialias=True), fields.resample(v, src, dst), atol=1e-6)
    const = fields.resample(np.full((10, 12, 14), 2.5, np.float32), src, tfm.Grid((4, 4, 5), 3.0), antialias=True)
    np.testing.assert_allclose(const, 2.5, rtol=1e-6)  # the blur is normalised at the faces
    with pytest.raises(ValueError, match="antialias"):
        fields.resample(v, src, dst, order=3, antialias=True)


def test_equilibrium_measures_net_force_and_torque_of_point_forces():
    g = tfm.Grid((9, 9, 9), 1.0)
    c = (4, 4, 4)

    def field(*forces):
        f = np.zeros(g.shape + (3,))
        for idx, vec in forces:
            f[idx] = vec
        return tfm.Result(g, force=f)

    dipole = field(((4, 4, 2), (0, 0, 5.0)), ((4, 4, 6), (0, 0, -5.0)))  # contractile pair along x
    couple = field(((4, 4, 2), (0, 5.0, 0)), ((4, 4, 6), (0, -5.0, 0)))  # opposite forces along y, 4 µm apart
    single = field((c, (1.0, 2.0, 2.0)),)
    e = dipole.equilibrium()
    assert e["net_force_over_total"] == 0 and e["net_torque_over_moment"] == 0
    e = couple.equilibrium()
    assert e["net_force_over_total"] == 0 and e["net_torque_over_moment"] == pytest.approx(1.0)
    np.testing.assert_allclose(e["net_torque_pn_um"], [-20.0, 0.0, 0.0])  # (x - c) x f, z y x components
    assert single.equilibrium()["net_force_over_total"] == pytest.approx(1.0)
    assert tfm.Result(g, force=np.zeros(g.shape + (3,))).equilibrium()["net_force_over_total"] == 0.0


def test_every_force_reconstruction_reports_its_equilibrium():
    g = tfm.Grid((24, 24, 24), 1.0)
    gel = tfm.LinearElastic(1000.0, 0.45)
    u = np.asarray(A.EshelbySphere(5.0, -0.05, g.center_um(), gel).sample(g))
    for method in ("fttc", "inverse"):
        res = tfm.reconstruct_forces(u, g, gel, method=method)
        eq = res.info["equilibrium"]
        assert eq == res.equilibrium() and eq["net_force_over_total"] < 0.02 and eq["net_torque_over_moment"] < 0.02
        assert res.summary()["net_torque_over_moment"] == eq["net_torque_over_moment"]
