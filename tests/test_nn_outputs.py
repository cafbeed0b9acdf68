"""What the learned path reports when there is nothing to see, or a large motion: zero for
an identical pair, a clear refusal for blank stacks, a rigid shift of many voxels recovered
and removed as drift like the DVC does, an Eshelby sphere reaching 3 voxels, a confidence
map where the beads are."""

import numpy as np
import pytest

import tfm
from tfm.fields import resample
from tfm.nn import confidence, flow, infer
from tfm.synth import beads

GRID = tfm.Grid((48, 48, 48), 1.0)
MAT = tfm.LinearElastic(1000.0, 0.45)
PSF = (1.0, 0.45, 0.45)


@pytest.fixture(scope="module")
def model():
    return infer.load_model()


@pytest.fixture(scope="module")
def positions():
    return beads.random_positions(GRID, 0.025, np.random.default_rng(48), margin_um=6.0)


def _pair(positions, shift):
    return beads.render_pair(GRID, positions, lambda p: np.broadcast_to(np.asarray(shift, float), p.shape), PSF)


def test_identical_pair_gives_exactly_zero(model, positions):
    """In one pass: the measured motion of an identical pair is exactly zero and the
    network is linear in it, so displacement and force are exactly zero."""
    ref, _ = _pair(positions, (0, 0, 0))
    for drift in ("auto", None):
        res = infer.predict(ref, ref.copy(), GRID, MAT, model=model, progress=False, drift=drift)
        assert np.all(res.force == 0) and np.all(res.displacement == 0)
        assert res.contractility() == 0.0


def test_uniform_five_voxel_shift_is_recovered_and_removed_as_drift(model, positions):
    """5 voxels along y, -3 along x, far beyond a voxel: the pyramid starts from the
    whole-volume phase correlation and refines it; drift removal then takes it all."""
    ref, dfm = _pair(positions, (0.0, 5.0, -3.0))
    kept = infer.predict(ref, dfm, GRID, MAT, model=model, progress=False, drift=None)
    inner = kept.displacement[4:-4, 4:-4, 4:-4].reshape(-1, 3)
    np.testing.assert_allclose(np.median(inner, 0), (0.0, 5.0, -3.0), atol=SHIFT_TOLERANCE)
    assert np.percentile(np.abs(inner - (0.0, 5.0, -3.0)), 90, axis=0).max() < 3 * SHIFT_TOLERANCE
    removed = infer.predict(ref, dfm, GRID, MAT, model=model, progress=False)  # drift "auto"
    assert removed.info["drift_model"] in ("rigid", "affine", "slicewise")
    left = removed.displacement[4:-4, 4:-4, 4:-4]
    assert np.sqrt(np.mean(left**2)) < SHIFT_TOLERANCE
    # a uniform motion carries no force: what the network reports is small against a cell's
    cell = infer.predict(*_sphere(positions, 3.0)[:2], GRID, MAT, model=model, progress=False, drift=None)
    assert np.abs(kept.force).max() < 0.2 * np.abs(cell.force).max()


SHIFT_TOLERANCE = 0.03  # µm (= voxels here)


def _sphere(positions, reach, grid=GRID, radius=6.0):
    """An Eshelby sphere (radius in voxels) whose surface moves ``reach`` voxels inward."""
    c = np.asarray(grid.center_um())
    s0 = tfm.analytic.EshelbySphere(radius, -0.05, tuple(c), MAT)
    peak = np.linalg.norm(np.asarray(s0.sample(grid)), axis=-1).max()
    sph = tfm.analytic.EshelbySphere(radius, -0.05 * reach / peak, tuple(c), MAT)
    ref, dfm = beads.render_pair(grid, positions, sph.displacement, PSF)
    return ref, dfm, sph


def test_eshelby_sphere_reaching_three_voxels(model):
    """An Eshelby sphere (a = 10 voxels, 64³ voxels of 1 µm) whose surface moves 3 voxels
    inward: 1 to 3 radii from the centre the RMS displacement error is below
    ESHELBY_TOLERANCE of the RMS |u| there with the motion front end's pyramid, and clearly
    worse with the working grid alone (levels=1, the ablation). (A sphere of 6 voxels
    reaching 3 -- a strain of 100 % at its surface -- is not resolved by the 2 µm LK grid of
    1 µm input voxels: 0.61 with the pyramid.)"""
    grid = tfm.Grid((64, 64, 64), 1.0)
    positions = beads.random_positions(grid, 0.025, np.random.default_rng(64), margin_um=6.0)
    ref, dfm, sph = _sphere(positions, 3.0, grid, 10.0)
    err = {}
    for levels in ("auto", 1):
        res = infer.predict(ref, dfm, grid, MAT, model=model, progress=False, drift=None, levels=levels)
        truth = np.asarray(sph.sample(res.grid))
        r = np.linalg.norm(res.grid.coordinates_um() - np.asarray(grid.center_um()), axis=-1)
        near = (r > 10.0) & (r < 30.0)
        scale = np.sqrt(np.mean(np.sum(truth**2, -1)[near]))
        err[levels] = np.sqrt(np.mean(np.sum((res.displacement - truth) ** 2, -1)[near])) / scale
    assert res.info["levels"] == 1
    assert err["auto"] < ESHELBY_TOLERANCE and err["auto"] < 0.7 * err[1], err
    with pytest.raises(ValueError, match="levels must be one of"):
        infer.predict(ref, dfm, grid, MAT, model=model, progress=False, levels=0)


ESHELBY_TOLERANCE = 0.25  # measured 0.18 with the shipped model (0.37 at levels=1)


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


def test_confidence_follows_the_beads():
    """Beads in the lower half of z only, two acquisitions with their own noise: the front
    end is confident there, not in the empty, noisy half."""
    rng = np.random.default_rng(1)
    pos = beads.random_positions(GRID, 0.025, rng)
    pos = pos[pos[:, 0] < 20.0]
    clean = beads.render(GRID, pos, PSF)
    clean = clean / clean.max()
    out = flow.pyramid_flow(clean + rng.normal(0.0, 0.02, GRID.shape).astype(np.float32),
                            clean + rng.normal(0.0, 0.02, GRID.shape).astype(np.float32))
    c = out["confidence"]  # on the LK grid: z planes 0-23 hold voxels 0-47
    assert c.dtype == np.float32 and c.shape == (24, 24, 24) and 0.0 <= c.min() and c.max() <= 1.0
    assert np.median(c[2:8]) > 0.9 and np.median(c[16:]) < 0.1


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
    assert res.grid.shape == (24, 24, 24) and res.info["confidence"].shape == (24, 24, 24)
    assert res.info["drift_model"] is None and res.info["levels"] == 2
    assert np.median(res.displacement[4:-4, 4:-4, 4:-4, 2]) == pytest.approx(2.0, abs=0.05)
    assert io.read_result(tmp_path / "u.h5", preview=True).grid.shape == (6, 6, 6)
    with h5py.File(tmp_path / "u.h5") as h:
        assert h["preview/displacement"].shape == (6, 6, 6, 3)
    rc = main(["reconstruct", str(tmp_path / "r.tif"), str(tmp_path / "d.tif"), "--method", "dl", "--output-grid", "input",
               "--youngs-modulus-pa", "1000", "-o", str(tmp_path / "full.h5"), "--quiet"])
    assert rc == 0 and io.read_result(tmp_path / "full.h5").grid == GRID
    for option in (["--output-grid", "input"], ["--levels", "1"]):  # options of the learned path, without it
        assert main(["reconstruct", str(tmp_path / "r.tif"), str(tmp_path / "d.tif"), *option,
                     "--youngs-modulus-pa", "1000", "-o", str(tmp_path / "c.h5")]) == 2
    assert not (tmp_path / "c.h5").exists()


def test_output_on_the_input_grid_interpolates_the_working_one(model, positions):
    ref, dfm = _pair(positions, (0.0, 1.0, 0.5))
    a = infer.predict(ref, dfm, GRID, MAT, model=model, progress=False, drift=None)
    b = infer.predict(ref, dfm, GRID, MAT, model=model, progress=False, drift=None, output_grid="input")
    np.testing.assert_allclose(b.displacement, resample(a.displacement, a.grid, GRID), rtol=1e-6, atol=1e-7)
