"""What the learned path reports when there is nothing to see, or a large rigid motion:
zero for an identical pair, a clear refusal for blank stacks, the global shift recovered
and removed as drift like the DVC does, a confidence map where the beads are."""

import numpy as np
import pytest

import tfm
from tfm.nn import confidence, infer
from tfm.synth import beads

GRID = tfm.Grid((48, 48, 48), 1.0)
MAT = tfm.LinearElastic(1000.0, 0.45)
PSF = (1.0, 0.45, 0.45)


@pytest.fixture(scope="module")
def model():
    return infer.load_model()


@pytest.fixture(scope="module")
def positions():
    return beads.random_positions(GRID, 0.025, np.random.default_rng(48))


def _pair(positions, shift):
    return beads.render_pair(GRID, positions, lambda p: np.broadcast_to(np.asarray(shift, float), p.shape), PSF)


def test_identical_pair_gives_exactly_zero(model, positions):
    ref, _ = _pair(positions, (0, 0, 0))
    res = infer.predict(ref, ref.copy(), GRID, MAT, model=model, progress=False)
    single = infer.predict(ref, ref.copy(), GRID, MAT, model=model, progress=False, zero_motion=None, drift=None)
    # what the baseline removes: the network's answer to no motion
    assert np.abs(single.displacement).max() > 1e-3 and abs(single.contractility()) > 100.0
    # the network's part is exactly zero; the drift removed is the pair's phase-correlation
    # shift, zero to float32 rounding
    assert res.info["zero_motion"] == "baseline" and np.all(res.force == 0) and np.abs(res.displacement).max() < 1e-6
    odd = infer.predict(ref, ref.copy(), GRID, MAT, model=model, progress=False, zero_motion="odd", drift=None)
    assert np.all(odd.force == 0) and np.all(odd.displacement == 0)


def test_uniform_five_voxel_shift_is_recovered_and_removed_as_drift(model, positions):
    """5 voxels along y, -3 along x: far beyond what the network sees per tile; the rounded
    whole-volume shift is taken out first, and drift removal then takes it all."""
    ref, dfm = _pair(positions, (0.0, 5.0, -3.0))
    kept = infer.predict(ref, dfm, GRID, MAT, model=model, progress=False, drift=None)
    inner = kept.displacement[8:-8, 8:-8, 8:-8].reshape(-1, 3)
    assert kept.info["prealigned_voxels"] == [0, 5, -3]
    np.testing.assert_allclose(inner.mean(0), (0.0, 5.0, -3.0), atol=0.02)
    assert inner.std(0).max() < 0.02
    removed = infer.predict(ref, dfm, GRID, MAT, model=model, progress=False)  # drift "auto"
    assert removed.info["drift_model"] in ("rigid", "affine")  # a uniform field: either model holds it
    left = removed.displacement[8:-8, 8:-8, 8:-8]
    assert np.sqrt(np.mean(left**2)) < 0.02 and np.abs(left).max() < 0.2  # measured 0.008 and 0.15 voxel


def test_blank_and_constant_volumes_are_refused(model, positions):
    rng = np.random.default_rng(0)
    ref, _ = _pair(positions, (0, 0, 0))
    with pytest.raises(ValueError, match="deformed is empty or constant"):
        infer.predict(ref, np.full(ref.shape, 7.0), GRID, MAT, model=model, progress=False)
    # two blank acquisitions: camera noise only, independent in each
    with pytest.raises(ValueError, match="do not show the same beads"):
        infer.predict(rng.normal(100.0, 5.0, GRID.shape), rng.normal(100.0, 5.0, GRID.shape), GRID, MAT, model=model,
                      progress=False)
    with pytest.raises(ValueError, match="do not show the same beads"):  # beads in one, the other blank
        infer.predict(ref, rng.normal(float(ref.mean()), 0.05, GRID.shape), GRID, MAT, model=model, progress=False)
    with pytest.raises(ValueError, match="drift must be one of"):
        infer.predict(ref, ref, GRID, MAT, model=model, progress=False, drift="sideways")
    with pytest.raises(ValueError, match="zero_motion must be one of"):
        infer.predict(ref, ref, GRID, MAT, model=model, progress=False, zero_motion=True)


def test_confidence_follows_the_beads():
    """Beads in the lower half of z only, two acquisitions with their own noise: confident
    there, not in the empty, noisy half; dense beads of a voxel's size are confident too
    (the noise comes from the pair's difference, which a high-pass of the beads is not)."""
    rng = np.random.default_rng(1)
    pos = beads.random_positions(GRID, 0.025, rng)
    pos = pos[pos[:, 0] < 20.0]
    clean = beads.render(GRID, pos, PSF)
    c = confidence.confidence_map(clean + rng.normal(0.0, 0.02, GRID.shape), clean + rng.normal(0.0, 0.02, GRID.shape))
    assert c.dtype == np.float32 and c.shape == GRID.shape and 0.0 <= c.min() and c.max() <= 1.0
    assert np.median(c[4:16]) > 0.9 and np.median(c[32:]) < 0.1
    dense = beads.render(GRID, beads.random_positions(GRID, 0.3, rng), (0.6, 0.3, 0.3))
    c = confidence.confidence_map(dense + rng.normal(0.0, 0.02, GRID.shape), dense + rng.normal(0.0, 0.02, GRID.shape))
    assert np.mean(c > 0.5) > 0.9


def test_smallest_eigenvalue_closed_form():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((500, 3, 3))
    a = a @ np.swapaxes(a, 1, 2)
    a[:3] = np.diag([2.0, 2.0, 2.0])  # a repeated eigenvalue (p = 0)
    got = confidence.smallest_eigenvalue(a[:, 0, 0], a[:, 1, 1], a[:, 2, 2], a[:, 0, 1], a[:, 0, 2], a[:, 1, 2])
    np.testing.assert_allclose(got, np.linalg.eigvalsh(a)[:, 0], rtol=1e-6, atol=1e-9)


def test_cli_dl_writes_confidence_and_preview(tmp_path, positions):
    import h5py

    from tfm import io
    from tfm.cli import main

    ref, dfm = _pair(positions, (0.0, 0.0, 2.0))
    io.write_volume(tmp_path / "r.tif", ref, GRID.spacing_um)
    io.write_volume(tmp_path / "d.tif", dfm, GRID.spacing_um)
    rc = main(["reconstruct", str(tmp_path / "r.tif"), str(tmp_path / "d.tif"), "--method", "dl", "--drift", "none",
               "--youngs-modulus-pa", "1000", "--preview-factor", "4", "--levels", "2", "-o", str(tmp_path / "u.h5"), "--quiet"])
    assert rc == 0
    res = io.read_result(tmp_path / "u.h5")
    assert res.info["confidence"].shape == GRID.shape and res.info["drift_model"] is None and res.info["levels"] == 2
    assert np.median(res.displacement[8:-8, 8:-8, 8:-8, 2]) == pytest.approx(2.0, abs=0.05)
    assert io.read_result(tmp_path / "u.h5", preview=True).grid.shape == (12, 12, 12)
    with h5py.File(tmp_path / "u.h5") as h:
        assert h["preview/displacement"].shape == (12, 12, 12, 3)
    for option in (["--zero-motion", "odd"], ["--levels", "1"]):  # options of the learned path, without it
        assert main(["reconstruct", str(tmp_path / "r.tif"), str(tmp_path / "d.tif"), *option,
                     "--youngs-modulus-pa", "1000", "-o", str(tmp_path / "c.h5")]) == 2
    assert not (tmp_path / "c.h5").exists()


def test_warp_pulls_the_deformed_volume_back_onto_the_reference(positions):
    """A uniform shift of (0, 2.4, -1.3) voxels: the deformed volume warped by it matches the
    reference (to the trilinear interpolation's smoothing of the beads); unwarped, or warped
    the wrong way, it does not."""
    ref, dfm = _pair(positions, (0.0, 2.4, -1.3))
    inner = (slice(6, -6),) * 3
    u = np.broadcast_to(np.float32([0.0, 2.4, -1.3]), (*GRID.shape, 3))
    corr = lambda a, b: np.corrcoef(a[inner].ravel(), b[inner].ravel())[0, 1]  # noqa: E731
    assert corr(infer.warp(dfm, u), ref) > 0.9  # measured 0.93
    assert corr(dfm, ref) < 0.5 and corr(infer.warp(dfm, -u), ref) < 0.5


def test_pyramid_recovers_motion_beyond_a_voxel(model, positions):
    """An Eshelby sphere (a = 6 voxels) whose surface moves 3 voxels inward: with the
    coarse-to-fine pyramid (2 levels here) the RMS error 1 to 3 radii from the centre is
    0.36 of the RMS |u| there, with the network alone at full resolution 0.42 (measured with
    the weights trained on acquisition-like motion; the earlier sub-voxel weights: 0.43
    against 0.57)."""
    c = np.asarray(GRID.center_um())
    r = np.linalg.norm(GRID.coordinates_um() - c, axis=-1)
    s0 = tfm.analytic.EshelbySphere(6.0, -0.05, tuple(c), MAT)
    sph = tfm.analytic.EshelbySphere(6.0, -0.05 * 3.0 / np.linalg.norm(np.asarray(s0.sample(GRID)), axis=-1).max(), tuple(c), MAT)
    truth = np.asarray(sph.sample(GRID))
    ref, dfm = beads.render_pair(GRID, positions, sph.displacement, PSF)
    near = (r > 6.0) & (r < 18.0)
    scale = np.sqrt(np.mean(np.sum(truth**2, -1)[near]))
    err = {}
    for levels in ("auto", 1):
        res = infer.predict(ref, dfm, GRID, MAT, model=model, progress=False, drift=None, levels=levels)
        err[levels] = np.sqrt(np.mean(np.sum((res.displacement - truth) ** 2, -1)[near])) / scale
    assert res.info["levels"] == 1
    assert err["auto"] < 0.4 and err["auto"] < 0.9 * err[1]
    with pytest.raises(ValueError, match="levels must be one of"):
        infer.predict(ref, dfm, GRID, MAT, model=model, progress=False, levels=0)
