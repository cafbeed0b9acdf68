"""The DVC windows as measurements (tfm.classical.windows, inverse.box_transfer): the
window-mean operator against its definition, its adjoint, and the fine grid's alignment
with the DVC grid."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfm
from tfm.classical import inverse, windows


def _apply(field, bk):
    return np.asarray(jnp.fft.irfftn(bk * jnp.fft.rfftn(jnp.asarray(field)), s=field.shape))


def test_window_mean_of_a_fourier_mode_is_the_closed_form_box_average():
    """(1/L) int_{x-L/2}^{x+L/2} sin(k s + p) ds = sinc(k L / 2) sin(k x + p), per axis."""
    grid = tfm.Grid((24, 32, 40), (0.8, 0.5, 0.4))
    window = (6.0, 7.0, 5.0)
    bk = inverse.box_transfer(grid.shape, grid.spacing_um, window)
    z, y, x = np.moveaxis(grid.coordinates_um(), -1, 0)
    k = [2 * np.pi * m / (n * h) for m, n, h in zip((3, 2, 5), grid.shape, grid.spacing_um)]
    field = np.sin(k[0] * z + 0.3) * np.cos(k[1] * y) * np.sin(k[2] * x - 1.0)
    want = field * np.prod([np.sin(kk * w / 2) / (kk * w / 2) for kk, w in zip(k, window)])
    np.testing.assert_allclose(_apply(field, bk), want, atol=1e-5)
    assert float(bk[0, 0, 0]) == 1.0  # a uniform field is its own window mean


def test_window_mean_operator_is_self_adjoint_and_its_misfit_gradient_matches_finite_differences():
    grid = tfm.Grid((12, 14, 16), (1.0, 0.7, 0.5))
    bk = inverse.box_transfer(grid.shape, grid.spacing_um, (4.0, 3.5, 2.5))
    rng = np.random.default_rng(0)
    u, v, d = (rng.standard_normal(grid.shape).astype(np.float32) for _ in range(3))
    w = (rng.random(grid.shape) < 0.2).astype(np.float32)  # measured at a few points only
    assert abs(np.sum(_apply(u, bk) * v) - np.sum(u * _apply(v, bk))) < 1e-4 * np.sum(np.abs(u * v))

    def misfit(x):
        bx = jnp.fft.irfftn(bk * jnp.fft.rfftn(x), s=x.shape)
        return 0.5 * jnp.sum(w * (bx - d) ** 2)

    g = np.asarray(jax.grad(misfit)(jnp.asarray(u)))
    np.testing.assert_allclose(g, _apply(w * (_apply(u, bk) - d), bk), atol=1e-4)  # B^T W (B u - d)
    b64 = np.asarray(bk, np.float64)

    def misfit64(x):  # the same objective in float64, for the finite difference
        return 0.5 * np.sum(w * (np.fft.irfftn(b64 * np.fft.rfftn(x), s=x.shape, axes=(0, 1, 2)) - d) ** 2)

    step = rng.standard_normal(grid.shape)
    eps = 1e-3
    fd = (misfit64(u + eps * step) - misfit64(u - eps * step)) / (2 * eps)
    assert fd == pytest.approx(float(np.sum(g * step)), rel=1e-4)


def test_fine_grid_holds_every_window_centre_and_every_window():
    dvc = tfm.Grid((5, 7, 6), (7.2, 7.03, 7.03), (4.0, 3.5, 3.5))
    window = (14.4, 14.06, 14.06)
    fine, factor, margin = windows.fine_grid(dvc, window, 1.5)
    assert factor == (5, 5, 5) and np.allclose(fine.spacing_um, np.asarray(dvc.spacing_um) / 5)
    values = 1.0 + np.arange(np.prod(dvc.shape), dtype=np.float32).reshape(dvc.shape)
    placed = windows.place(values, fine.shape, factor, margin)
    idx = np.argwhere(placed > 0)  # C order, as the DVC grid's points
    assert len(idx) == values.size and np.array_equal(placed[tuple(idx.T)], values.ravel())
    np.testing.assert_allclose(fine.coordinates_um()[tuple(idx.T)], dvc.coordinates_um().reshape(-1, 3), atol=1e-4)
    lo, hi = np.asarray(fine.origin_um), np.asarray(fine.origin_um) + (np.asarray(fine.shape) - 1) * fine.spacing_um
    first, last = np.asarray(dvc.origin_um), np.asarray(dvc.origin_um) + (np.asarray(dvc.shape) - 1) * dvc.spacing_um
    assert np.all(first - np.asarray(window) / 2 >= lo - 1e-6) and np.all(last + np.asarray(window) / 2 <= hi + 1e-6)
    with pytest.raises(ValueError, match="target_um"):
        windows.fine_grid(dvc, window, 0.0)
    with pytest.raises(ValueError, match="window_um"):
        windows.solve(np.zeros(dvc.shape + (3,)), dvc, tfm.LinearElastic(1000.0, 0.45), (0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="NaN"):
        windows.solve(np.full(dvc.shape + (3,), np.nan), dvc, tfm.LinearElastic(1000.0, 0.45), window)
    with pytest.raises(ValueError, match="weights"):
        windows.solve(np.zeros(dvc.shape + (3,)), dvc, tfm.LinearElastic(1000.0, 0.45), window, weights=-np.ones(dvc.shape))
    with pytest.raises(ValueError, match="displacement must have shape"):
        windows.solve(np.zeros((2, 2, 2, 3)), dvc, tfm.LinearElastic(1000.0, 0.45), window)
    with pytest.raises(ValueError, match="window-mean"):
        inverse.solve(np.ones((8, 8, 8, 3)), tfm.Grid((8, 8, 8), 1.0), tfm.LinearElastic(1000.0, 0.45),
                      config=inverse.InverseConfig(operator="fem"), window_um=(2.0, 2.0, 2.0))


def test_closed_form_force_recovered_from_exact_window_means_on_the_fine_grid():
    """An Eshelby sphere (radius 7 µm) seen only through 8 µm window means on a 4 µm DVC
    grid: the window-mean model on a fine grid puts the whole inward force at the cell
    (solving on the DVC grid's own nodes would leave it 4-8 µm apart)."""
    gel = tfm.LinearElastic(1000.0, 0.45)
    c = np.array([32.0, 32.0, 32.0])
    cell = tfm.analytic.EshelbySphere(7.0, -0.05, tuple(c), gel)
    dvc = tfm.Grid((13, 13, 13), 4.0, tuple(c - 24.0))
    sub = np.arange(-3.75, 4.0, 0.5)  # the 8 µm box, sampled every 0.5 µm
    offs = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3)
    pts = dvc.coordinates_um().reshape(-1, 3)
    means = np.concatenate([np.asarray(cell.displacement((p[:, None, :] + offs).reshape(-1, 3))).reshape(len(p), -1, 3).mean(1)
                            for p in np.array_split(pts, 16)])
    total, sums = cell.total_radial_force_pn, []
    for target, factor in ((1.33, 3), (2.0, 2)):  # two resolutions of the force grid: the same force
        fine, _, _ = windows.fine_grid(dvc, (8.0, 8.0, 8.0), target)
        x = fine.coordinates_um() - c
        r = np.linalg.norm(x, axis=-1)
        force, _, grid, info = windows.solve(means.reshape(dvc.shape + (3,)), dvc, gel, 8.0, mask=r <= 7.0, target_um=target,
                                             config=inverse.InverseConfig(noise_um=1e-3))
        assert grid == fine and info["force_grid_factor"] == [factor] * 3
        inward = np.sum(force * (-x / np.maximum(r, 1e-9)[..., None]), -1) * grid.voxel_volume_um3
        assert inward.sum() == pytest.approx(total, rel=0.10)
        assert inward[r <= 14.0].sum() >= 0.95 * inward.sum()
        assert np.linalg.norm(force.reshape(-1, 3).sum(0)) * grid.voxel_volume_um3 < 0.01 * total
        sums.append(inward.sum())
    assert sums[0] == pytest.approx(sums[1], rel=0.10)  # resolution independence (measured: 1.04 and 0.98 of the truth)


def _sphere_pair(eps, radius=4.0, shift_um=None):
    """A bead pair around a contracting sphere (or, with ``shift_um``, moved by that
    translation instead), 40 x 96 x 96 voxels of 0.8 x 0.3 x 0.3 µm, camera noise."""
    from tfm.synth import beads

    grid = tfm.Grid((40, 96, 96), (0.8, 0.3, 0.3))
    gel = tfm.LinearElastic(1000.0, 0.45)
    c = np.asarray(grid.center_um())
    cell = tfm.analytic.EshelbySphere(radius, eps, tuple(c), gel)
    rng = np.random.default_rng(0)
    pos = beads.random_positions(grid, 0.02 / grid.voxel_volume_um3, rng, margin_um=2)
    pos = pos[np.linalg.norm(pos - c, axis=1) > radius]
    motion = (lambda q: np.asarray(cell.displacement(q))) if shift_um is None else \
        (lambda q: np.broadcast_to(np.asarray(shift_um, float), np.shape(q)))
    ref, dfm = beads.render_pair(grid, pos, motion, psf_sigma_um=(1.0, 0.3, 0.3))
    ref, dfm = beads.camera(ref, rng, 300, 0.02, 0.05), beads.camera(dfm, rng, 300, 0.02, 0.05)
    return ref, dfm, grid, gel, cell, np.linalg.norm(grid.coordinates_um() - c, axis=-1) <= radius, c


def _inward(res, c):
    x = res.grid.coordinates_um() - c
    r = np.linalg.norm(x, axis=-1)
    return float(np.sum(np.asarray(res.force) * -x / np.maximum(r, 1e-9)[..., None]) * res.grid.voxel_volume_um3)


@pytest.mark.filterwarnings("ignore:the displacement")
def test_reconstruct_with_a_mask_gets_a_small_cells_whole_force_from_rendered_beads_linear_in_the_load():
    """A 4 µm sphere seen by a DVC of 5 x 5 x 5 windows (4.8 µm apart): on the DVC grid the
    inward force is 0.41 of the closed form at both loads; on the fine grid with the
    windows as window means, within 15 % of it, and proportional to the load."""
    ratios = {}
    for eps in (-0.05, -0.15):
        ref, dfm, grid, gel, cell, mask, c = _sphere_pair(eps)
        fine = tfm.reconstruct(ref, dfm, grid, gel, mask=mask, progress=False, force_grid="auto")  # fine with a mask
        coarse = tfm.reconstruct(ref, dfm, grid, gel, mask=mask, progress=False)  # the default: the DVC grid
        assert fine.info["force_grid"] == "fine" and fine.grid.shape[0] > 2 * coarse.grid.shape[0]
        assert fine.info["dvc"]["grid"]["shape"] == list(coarse.grid.shape)
        np.testing.assert_array_equal(fine.measured().displacement, coarse.displacement)  # the same DVC field
        assert fine.measured().grid == coarse.grid and coarse.measured() is coarse
        ratios[eps] = _inward(fine, c) / cell.total_radial_force_pn
        assert ratios[eps] == pytest.approx(1.0, abs=0.15)
        assert abs(_inward(coarse, c) / cell.total_radial_force_pn - 1.0) > abs(ratios[eps] - 1.0)
        assert np.linalg.norm(fine.net_force()) < 0.02 * fine.total_force()
    assert ratios[-0.05] == pytest.approx(ratios[-0.15], rel=0.05)
    with pytest.raises(ValueError, match="force_grid"):
        tfm.reconstruct(ref, dfm, grid, gel, mask=mask, progress=False, force_grid="voxels")
    # an identical pair gives no force; a pure translation goes to the fit's translation, not to force
    still = tfm.reconstruct(ref, ref, grid, gel, mask=mask, progress=False, force_grid="fine")
    assert still.total_force() < 1e-4 * fine.total_force()  # the DVC's field of an identical pair: ~3e-7 µm
    r_t, d_t, *_ = _sphere_pair(-0.15, shift_um=(0.3, -0.4, 0.6))
    shifted = tfm.reconstruct(r_t, d_t, grid, gel, mask=mask, progress=False, force_grid="fine", dvc_options={"drift": None})
    # what remains is the DVC's noise fitted at the cell (measured: inward -0.03, summed |f| 0.09 of the loaded cell's;
    # the DVC grid's L1 inverse: -0.004 and 0.01)
    assert abs(_inward(shifted, c)) < 0.05 * cell.total_radial_force_pn
    assert shifted.total_force() < 0.15 * fine.total_force()
    with pytest.raises(ValueError, match="regularised by stopping"):
        tfm.reconstruct(ref, dfm, grid, gel, mask=mask, progress=False, force_grid="fine", regularization=0.1)
    with pytest.raises(ValueError, match="force_grid='fine' needs force_method='inverse'"):
        tfm.reconstruct(ref, dfm, grid, gel, mask=mask, progress=False, force_grid="fine", force_method="fttc")


@pytest.mark.filterwarnings("ignore:the displacement")
def test_reconstruct_command_takes_the_force_grid(tmp_path):
    from tfm import cli, io

    ref, dfm, grid, gel, cell, mask, c = _sphere_pair(-0.05)
    for name, v in (("r.tif", ref), ("d.tif", dfm), ("cell.tif", 200.0 * mask)):
        io.write_volume(tmp_path / name, v.astype(np.float32), grid)
    args = ["reconstruct", str(tmp_path / "r.tif"), str(tmp_path / "d.tif"), "--cell", str(tmp_path / "cell.tif"),
            "--youngs-modulus-pa", "1000", "--quiet"]
    assert cli.main([*args, "--force-grid", "auto", "-o", str(tmp_path / "fine.h5")]) == 0  # auto: fine with --cell
    res = io.read_result(tmp_path / "fine.h5")
    assert res.info["force_grid"] == "fine" and res.grid.spacing_um[0] < res.info["dvc"]["grid"]["spacing_um"][0]
    assert cli.main([*args, "--force-grid", "fine", "--force-method", "fttc", "-o", str(tmp_path / "x.h5")]) == 2
    assert cli.main([*args, "--force-spacing-um", "0", "-o", str(tmp_path / "y.h5")]) == 2
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()


def test_a_translation_within_the_noise_gives_exactly_no_force():
    dvc = tfm.Grid((6, 6, 6), 4.0)
    u = np.broadcast_to(np.array([0.2, -0.1, 0.3], np.float32), dvc.shape + (3,))
    u = u + 1e-4 * np.random.default_rng(0).standard_normal(u.shape).astype(np.float32)
    fine, _, _ = windows.fine_grid(dvc, (8.0,) * 3, 2.0)
    cell = np.linalg.norm(fine.coordinates_um() - np.asarray(fine.center_um()), axis=-1) < 4.0
    force, fitted, _, info = windows.solve(u, dvc, tfm.LinearElastic(1000.0, 0.45), 8.0, mask=cell, target_um=2.0,
                                           config=inverse.InverseConfig(noise_um=1e-3))
    assert info["stop_rule"] == "translation_fits" and not np.any(force)
    np.testing.assert_allclose(fitted[0, 0, 0], [0.2, -0.1, 0.3], atol=1e-4)
