"""Digital volume correlation recovers imposed displacements from rendered bead pairs.

Beads are drawn at X (reference) and X + u(X) (deformed) with a Gaussian PSF wider in
z, plus shot and read noise; no image is ever warped to make the data. All tests share
one window configuration (24 -> 16 voxels) to keep JIT compilations few."""

import numpy as np
import pytest

import tfm
from tfm.classical import dvc
from tfm.synth import beads

SHAPE = (48, 48, 48)
WINDOWS = (24, 16)
PSF = (1.2, 0.8, 0.8)


def pair(displacement_fn, seed=0, spacing=(1.0, 1.0, 1.0), shape=SHAPE, density=0.012, noise=True):
    grid = tfm.Grid(shape, spacing)
    rng = np.random.default_rng(seed)
    pos = beads.random_positions(grid, density / np.prod(spacing), rng, margin_um=5 * max(spacing))
    psf = tuple(p * h for p, h in zip(PSF, spacing))
    ref, dfm = beads.render_pair(grid, pos, displacement_fn, psf_sigma_um=psf)
    if noise:
        ref, dfm = beads.add_noise(ref, rng), beads.add_noise(dfm, rng)
    return ref, dfm


def run(ref, dfm, spacing=1.0, **kw):
    kw.setdefault("windows", WINDOWS)
    return tfm.measure_displacement(ref, dfm, spacing, progress=False, **kw)


def uniform(shift):
    return lambda q: np.broadcast_to(np.asarray(shift, float), q.shape)


@pytest.mark.parametrize("shift", [(0.37, 0.0, 0.0), (0.0, -0.61, 0.0), (0.0, 0.0, 0.23)])
def test_uniform_subvoxel_shifts_along_each_axis(shift):
    ref, dfm = pair(uniform(shift), seed=1)
    res = run(ref, dfm, drift=None)
    err = res.displacement - np.asarray(shift)
    assert np.all(np.abs(err.reshape(-1, 3).mean(0)) < 0.01)  # no bias (measured <= 0.009)
    inner = err[1:-1, 1:-1, 1:-1]  # per-window scatter, 16^3 windows with ~50 beads each
    assert np.sqrt(np.mean(np.sum(inner**2, -1))) < 0.02  # measured 0.011-0.013
    assert res.info["valid"].mean() > 0.95


def test_large_oblique_shift():
    """A 2.3-voxel shift carries beads across the faces: edge windows lose content, so
    the bounds are stated on the interior windows (all windows: mean error 0.022)."""
    shift = np.array((1.45, -0.8, 2.3))
    ref, dfm = pair(uniform(shift), seed=1)
    inner = (run(ref, dfm, drift=None).displacement - shift)[1:-1, 1:-1, 1:-1]
    assert np.all(np.abs(inner.reshape(-1, 3).mean(0)) < 0.015)  # measured <= 0.011
    assert np.sqrt(np.mean(np.sum(inner**2, -1))) < 0.03  # measured 0.018


def test_integer_shift_is_drift_and_is_removed():
    shift = (2.0, 0.0, -3.0)
    ref, dfm = pair(uniform(shift), seed=2)
    res = run(ref, dfm)  # drift="rigid" by default
    assert np.allclose(res.info["rigid_shift_voxels"], shift, atol=0.01)
    assert np.allclose(res.info["drift_removed_voxels"], shift, atol=0.01)
    assert np.abs(np.median(res.displacement.reshape(-1, 3), axis=0)).max() < 0.01


def test_affine_field_and_physical_units():
    spacing = (0.8, 0.3, 0.3)
    c = np.array(SHAPE) * np.array(spacing) / 2
    grad = np.array([[0.02, 0.0, 0.01], [0.0, -0.03, 0.0], [0.015, 0.0, 0.03]])  # strains up to 3 %
    fn = lambda q: (q - c) @ grad.T + np.array([0.3, 0.1, -0.2])  # noqa: E731, µm
    ref, dfm = pair(fn, seed=3, spacing=spacing)
    res = run(ref, dfm, spacing=spacing, drift=None)
    g = res.grid
    assert np.allclose(g.spacing_um, np.array([8, 8, 8]) * spacing)  # 50 % overlap of 16-voxel windows
    truth = fn(g.coordinates_um().reshape(-1, 3)).reshape(res.displacement.shape)
    err_vox = (res.displacement - truth) / np.asarray(spacing)
    assert np.sqrt(np.mean(np.sum(err_vox[1:-1, 1:-1, 1:-1] ** 2, -1))) < 0.05
    assert np.sqrt(np.mean(np.sum(err_vox**2, -1))) < 0.1


def test_smooth_field_with_curvature():
    k = 2 * np.pi / 100.0  # half a wavelength across the box; strains up to 6 %

    def fn(q):
        z, y, x = q.T
        return np.stack([1.0 * np.sin(k * x + 0.3), 0.8 * np.sin(k * z + 1.1), 0.9 * np.cos(k * y + 2.0)], -1)

    ref, dfm = pair(fn, seed=4)
    res = run(ref, dfm, drift=None)
    truth = fn(res.grid.coordinates_um().reshape(-1, 3)).reshape(res.displacement.shape)
    rms_err = np.sqrt(np.mean(np.sum((res.displacement - truth) ** 2, -1)))
    assert rms_err < 0.08, rms_err
    gain = np.sum(res.displacement * truth) / np.sum(truth * truth)
    assert abs(gain - 1) < 0.02  # no shrinkage of the field


def test_mask_excludes_the_cell_and_outliers_are_replaced():
    ref, dfm = pair(uniform((0.4, 0.2, -0.3)), seed=5)
    mask = np.zeros(SHAPE, bool)
    mask[16:32, 16:32, 16:32] = True
    res = run(ref, dfm, mask=mask, drift=None)
    masked = res.info["masked"]
    assert masked.any() and not res.info["valid"][masked].any()
    # Masked windows are filled from their neighbours: the field stays continuous.
    assert np.allclose(res.displacement[masked], (0.4, 0.2, -0.3), atol=0.05)


def test_predictor_filter_keeps_linear_fields_and_damps_checkerboards():
    z, y, x = np.meshgrid(*(np.arange(5.0),) * 3, indexing="ij")
    lin = np.stack([0.1 * x - 0.2 * z, 0.05 * y, 0.3 + 0 * z], -1)
    assert np.allclose(dvc.smooth_predictor(lin), lin)
    checker = ((-1.0) ** (x + y + z))[..., None] * np.ones(3)
    assert np.abs(dvc.smooth_predictor(checker)[1:-1, 1:-1, 1:-1]).max() < 1e-12


def test_median_test_flags_and_replaces_a_single_outlier():
    z, y, x = np.meshgrid(*(np.arange(6.0),) * 3, indexing="ij")
    u = np.stack([0.1 * x, 0.05 * y, 0.02 * z], -1)
    bad = u.copy()
    bad[3, 2, 4] += (2.0, -1.5, 0.5)
    cleaned, outlier = dvc.median_test(bad, np.ones(u.shape[:3], bool))
    assert outlier.sum() == 1 and outlier[3, 2, 4]
    assert np.allclose(cleaned[3, 2, 4], u[3, 2, 4], atol=0.1)


def test_drift_median_mode():
    shift = (0.5, 0.0, 1.0)
    ref, dfm = pair(uniform(shift), seed=6)
    res = run(ref, dfm, drift="median")
    assert np.allclose(res.info["drift_removed_voxels"], shift, atol=0.02)


@pytest.mark.parametrize(
    "ref, dfm, spacing, kw, match",
    [
        (np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), 1.0, {}, "same shape"),
        (np.zeros((4, 4, 4, 4)), np.zeros((4, 4, 4, 4)), 1.0, {}, "3D"),
        (np.random.rand(32, 32), np.random.rand(4, 32, 32), (1.0, 1.0), {}, "deformed has shape"),
        (np.zeros((32, 32, 32)), np.zeros((32, 32, 32)), 1.0, {}, "constant"),
        (np.full((32, 32, 32), np.nan), np.zeros((32, 32, 32)), 1.0, {}, "NaN"),
        (np.random.rand(32, 32, 32), np.random.rand(32, 32, 32), 0.0, {}, "spacing_um"),
        (np.random.rand(32, 32, 32), np.random.rand(32, 32, 32), (1.0, -1.0, 1.0), {}, "spacing_um"),
        (np.random.rand(32, 32, 32), np.random.rand(32, 32, 32), 1.0, {"windows": (2,)}, "window"),
        (np.random.rand(16, 16, 16), np.random.rand(16, 16, 16), 1.0, {"windows": (32,)}, "does not fit"),
        (np.random.rand(32, 32, 32), np.random.rand(32, 32, 32), 1.0, {"drift": "linear"}, "drift"),
        (np.random.rand(32, 32, 32), np.random.rand(32, 32, 32), 1.0, {"mask": np.zeros((4, 4, 4), bool)}, "mask"),
    ],
)
def test_bad_input_raises_clear_errors(ref, dfm, spacing, kw, match):
    with pytest.raises(ValueError, match=match):
        tfm.measure_displacement(ref, dfm, spacing, progress=False, **kw)


def test_classical_pipeline_recovers_contraction():
    """Beads around a contracting sphere -> DVC -> the force inverse: inward forces of the right size."""
    grid = tfm.Grid((64, 64, 64), 1.0)
    gel = tfm.LinearElastic(1000.0, 0.45)
    cell = tfm.analytic.EshelbySphere(9.0, -0.08, grid.center_um(), gel)
    ref, dfm = pair(cell.displacement, seed=7, shape=grid.shape)
    res = tfm.reconstruct(ref, dfm, 1.0, gel, progress=False, dvc_options={"windows": WINDOWS})
    truth = np.asarray(cell.displacement(res.grid.coordinates_um().reshape(-1, 3))).reshape(res.displacement.shape)
    assert np.sqrt(np.mean(np.sum((res.displacement - truth) ** 2, -1))) < 0.1
    c = np.array(grid.center_um())
    near = np.linalg.norm(res.grid.coordinates_um() - c, axis=-1) < 20
    contractility = res.contractility(mask=near, center_um=c)
    assert contractility > 0
    assert contractility == pytest.approx(cell.total_radial_force_pn, rel=0.35)
    assert "dvc" in res.info and res.info["force_method"] == "inverse" and res.info["alpha_rule"] == "discrepancy"


def test_affine_drift_removes_uniform_strain_but_keeps_a_local_field():
    """A uniform axial strain between acquisitions (as in the FM-Track stacks) plus a
    local bump: drift="affine" removes the strain and keeps the bump."""
    c = np.array(SHAPE) / 2

    def local(q):
        r2 = np.sum((q - c) ** 2, -1)
        return 1.0 * np.exp(-r2 / (2 * 6.0**2))[:, None] * np.array([0.0, 0.0, 1.0])

    def fn(q):
        g = np.zeros_like(q)
        g[:, 0] = -0.05 * (q[:, 0] - c[0]) + 0.4  # 5 % axial compression and a shift
        return g + local(q)

    ref, dfm = pair(fn, seed=8)
    res = run(ref, dfm, drift="affine")
    assert res.info["drift_affine_gradient"][0][0] == pytest.approx(-0.05, abs=0.005)
    truth = local(res.grid.coordinates_um().reshape(-1, 3)).reshape(res.displacement.shape)
    assert np.sqrt(np.mean(np.sum((res.displacement - truth) ** 2, -1))) < 0.08


def test_slicewise_drift_removes_plane_shifts_but_keeps_a_local_field():
    """Planes displaced as a function of z (stage drift during a confocal scan) plus a
    local bump: drift="slicewise" removes the plane shifts and keeps the bump."""
    shape = (64, 64, 64)  # 7 x 7 windows per plane: enough far windows for a median
    c = np.array(shape) / 2

    def local(q):
        r2 = np.sum((q - c) ** 2, -1)
        return 1.0 * np.exp(-r2 / (2 * 6.0**2))[:, None] * np.array([0.0, 0.7, 0.7])

    def fn(q):
        z = q[:, :1]
        plane = np.concatenate([0.5 * np.sin(z / 10.0), 0.4 * np.cos(z / 9.0), 0.02 * z], 1)  # strains <= 5 %
        return plane + local(q)

    ref, dfm = pair(fn, seed=9, shape=shape)
    res = run(ref, dfm, drift="slicewise")
    truth = local(res.grid.coordinates_um().reshape(-1, 3)).reshape(res.displacement.shape)
    assert np.sqrt(np.mean(np.sum((res.displacement - truth) ** 2, -1))) < 0.1
    assert len(res.info["drift_per_plane_voxels"]) == res.grid.shape[0]


def test_window_grid_is_exactly_regular_when_the_step_does_not_divide_the_volume():
    """512 - 40 = 472 is not a multiple of 20: the centres must still lie on the grid
    the Result reports (an earlier layout spread the starts unevenly)."""
    lay = dvc._Layout.make((176, 512, 512), (16, 40, 40), (8, 20, 20))
    for c, o, st in zip(lay.centres(), lay.origin, lay.step):
        assert np.allclose(np.diff(c), st) and c[0] == o
    assert lay.offset[1] == (472 - 23 * 20) // 2 and lay.counts[1] == 24
    shift = (0.3, -0.2, 0.25)
    ref, dfm = pair(uniform(shift), seed=11, shape=(40, 52, 52))  # 52 - 16 = 36: not a multiple of 8
    res = run(ref, dfm, drift=None)
    ctr = res.grid.coordinates_um()
    starts = np.stack(np.meshgrid(*dvc._Layout.make((40, 52, 52), (16, 16, 16), (8, 8, 8)).starts, indexing="ij"), -1)
    assert np.allclose(ctr, starts + 7.5)


@pytest.mark.parametrize("mode", ["affine", "slicewise"])
def test_drift_step_keeps_a_cells_far_field_and_removes_the_drift(mode):
    """The drift fitted jointly with a force dipole's far field, only its drift part taken
    out: a contracting sphere's own 1/r² field (window centres of a 64 x 256 x 256 stack of
    0.8 x 0.3 x 0.3 µm voxels) survives the drift step, drift-free or under a drift of the
    mode's kind; fitted alone, the drift takes a share of the cell's field with it."""
    from tfm.classical import drift as drift_models

    h = np.array([0.8, 0.3, 0.3])
    shape = (64, 256, 256)
    centres = np.stack(np.meshgrid(*[np.arange(8, n - 7, 8.0 if n < 100 else 16.0) for n in shape], indexing="ij"), -1)
    centre_um = (np.asarray(shape) - 1) / 2 * h
    cell = tfm.analytic.EshelbySphere(6.0, -0.05, tuple(centre_um), tfm.LinearElastic(1000.0, 0.45))
    x = centres * h
    u_cell = np.asarray(cell.displacement(x.reshape(-1, 3))).reshape(x.shape) / h  # voxels
    z = x[..., :1]
    drift = (np.concatenate([0.3 * np.sin(z / 9.0), 0.2 * np.cos(z / 7.0), 0.01 * z], -1) if mode == "slicewise" else
             0.2 + (x - centre_um) @ np.array([[-0.03, 0, 0], [0, 0.01, 0], [0.005, 0, 0]]).T) / h
    dist = np.linalg.norm(x - centre_um, axis=-1) - 6.0
    valid = dist > 0
    far = dist > 12.0
    scale = np.sqrt(np.mean(np.sum(u_cell[far] ** 2, -1)))
    for u in (u_cell, u_cell + drift):
        corr, _, info = drift_models.correction(mode, u, np.zeros(3), valid, centres, dist, shape, h, centre_um)
        err = np.sqrt(np.mean(np.sum((u - corr - u_cell)[far] ** 2, -1)))
        assert err < 0.01 * scale and info["drift_fit"] == "joint", (mode, err / scale)
    corr, _, _ = drift_models.correction(mode, u_cell, np.zeros(3), valid, centres, dist, shape)  # drift alone
    assert np.sqrt(np.mean(np.sum((u_cell - corr - u_cell)[far] ** 2, -1))) > 0.05 * scale
