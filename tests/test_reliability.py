"""Nothing silently wrong, nothing lost: refusals, clear errors and file safety across the
API and every command (one test per defect found by a demanding new user)."""

import json
import os
import subprocess
import sys
import warnings

import h5py
import numpy as np
import pytest
import tifffile

import tfm
from tfm import atomic, cli, io
from tfm.synth import beads

GRID = tfm.Grid((24, 48, 48), (0.8, 0.3, 0.3))
PSF = (1.0, 0.3, 0.3)


def _beads(seed):
    rng = np.random.default_rng(seed)
    return beads.random_positions(GRID, 0.02 / GRID.voxel_volume_um3, rng, margin_um=2)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    """Small bead stacks (with their voxel size) and bad inputs made for the purpose."""
    d = tmp_path_factory.mktemp("f")
    shift = np.array([0.3, 0.1, -0.2])
    ref, dfm = beads.render_pair(GRID, _beads(0), lambda q: np.broadcast_to(shift, q.shape), psf_sigma_um=PSF)
    io.write_volume(d / "ref.tif", ref, GRID)
    io.write_volume(d / "dfm.tif", dfm, GRID)
    io.write_volume(d / "unrelated.tif", beads.render(GRID, _beads(5), PSF), GRID)
    io.write_volume(d / "zero.tif", np.zeros(GRID.shape, np.uint8), GRID)
    cell = np.zeros(GRID.shape, np.float32)
    cell[10:14, 20:28, 20:28] = 100
    io.write_volume(d / "cell.tif", cell, GRID)
    return d, ref, dfm


def _run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_line_error(err: str, command: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith(f"tfm {command}")]
    assert lines and "Traceback" not in err, err
    return lines[-1]


# 2 --------------------------------------------------------------------------------------
def test_a_pair_that_does_not_correlate_is_refused(stacks, capsys):
    d, ref, _ = stacks
    unrelated = io.read_volume(d / "unrelated.tif")[0]
    noise = np.random.default_rng(1).random(GRID.shape).astype(np.float32)
    for other in (unrelated, noise):
        with pytest.raises(ValueError, match="do not correlate"):
            tfm.measure_displacement(ref, other, GRID, windows=16)
    rc, _, err = _run(capsys, "reconstruct", d / "ref.tif", d / "unrelated.tif", "--windows", 16, "--youngs-modulus-pa",
                      1000, "-o", d / "u.h5", "--quiet")
    assert rc == 2 and "do not correlate" in _one_line_error(err, "reconstruct") and not (d / "u.h5").exists()


# 3 --------------------------------------------------------------------------------------
def test_outputs_never_destroy_inputs(stacks, capsys, tmp_path):
    d, _, _ = stacks
    before = (d / "ref.tif").read_bytes()
    rc, _, err = _run(capsys, "displacement", d / "ref.tif", d / "dfm.tif", "-o", d / "ref.tif")
    assert rc == 2 and ".h5" in _one_line_error(err, "displacement")
    np.save(tmp_path / "x.npy", np.zeros((8, 8, 8, 3), np.float32))
    rc, _, err = _run(capsys, "forces", tmp_path / "x.npy", "--spacing-um", 1, 1, 1, "--youngs-modulus-pa", 1000,
                      "-o", tmp_path / "x.npy")
    assert rc == 2 and (tmp_path / "x.npy").stat().st_size > 0
    assert _run(capsys, "forces", tmp_path / "x.npy", "--spacing-um", 1, 1, 1, "--youngs-modulus-pa", 1000, "-o",
                tmp_path / "r.h5", "--quiet")[0] == 0
    rc, _, err = _run(capsys, "forces", tmp_path / "r.h5", "--youngs-modulus-pa", 500, "-o", tmp_path / "r.h5")
    assert rc == 2 and "also an input" in _one_line_error(err, "forces")
    rc, _, err = _run(capsys, "view", tmp_path / "r.h5", "--png", d / "ref.tif")
    assert rc == 2 and ".png" in _one_line_error(err, "view")
    assert (d / "ref.tif").read_bytes() == before


# 4 --------------------------------------------------------------------------------------
def _truncated_copy(src, dst):
    b = src.read_bytes()
    dst.write_bytes(b[: len(b) // 2])
    return dst


def test_corrupt_inputs_and_unwritable_outputs_exit_2_before_any_work(stacks, capsys, tmp_path, monkeypatch):
    d, _, _ = stacks
    np.save(tmp_path / "x.npy", np.zeros((8, 8, 8, 3), np.float32))
    assert _run(capsys, "forces", tmp_path / "x.npy", "--spacing-um", 1, 1, 1, "--youngs-modulus-pa", 1000, "-o",
                tmp_path / "r.h5", "--quiet")[0] == 0
    cut = _truncated_copy(tmp_path / "r.h5", tmp_path / "cut.h5")
    for argv in (("forces", cut, "--youngs-modulus-pa", 1000, "-o", tmp_path / "o.h5"), ("view", cut),
                 ("train", "--data", cut, "--out", tmp_path / "run")):
        rc, _, err = _run(capsys, *argv)
        assert rc == 2 and str(cut.name) in _one_line_error(err, argv[0]), argv
    assert not (tmp_path / "run").exists()
    with h5py.File(tmp_path / "r.h5", "r+") as h:
        del h["grid"]
    rc, _, err = _run(capsys, "view", tmp_path / "r.h5")
    assert rc == 2 and "incomplete" in _one_line_error(err, "view")
    # Unwritable outputs are refused before the correlation starts.
    monkeypatch.setattr(tfm.api, "measure_displacement", lambda *a, **k: pytest.fail("computed before checking -o"))
    (tmp_path / "dir.h5").mkdir()
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "dir.h5", tmp_path / "file" / "u.h5", "/proc/u.h5"):
        rc, _, err = _run(capsys, "displacement", d / "ref.tif", d / "dfm.tif", "-o", out)
        assert rc == 2 and "-o" in _one_line_error(err, "displacement"), out


def test_a_damaged_interrupted_dataset_names_itself(tmp_path, capsys):
    (tmp_path / "s.h5.partial").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    rc, _, err = _run(capsys, "synth", "--n", 2, "--size", 16, "-o", tmp_path / "s.h5")
    assert rc == 2 and "damaged" in _one_line_error(err, "synth")


# 5 --------------------------------------------------------------------------------------
def test_correlation_on_axes_of_a_few_voxels():
    r = np.random.default_rng(0).random((5, 5, 5)).astype(np.float32)
    res = tfm.measure_displacement(r, r, 1.0, windows=(4,), drift=None, min_valid_fraction=0.0)
    assert res.displacement.shape == (1, 1, 1, 3) and np.abs(res.displacement).max() < 1e-3
    g = tfm.Grid((3, 48, 48), (1.0, 0.3, 0.3))
    pos = beads.random_positions(g, 0.05 / g.voxel_volume_um3, np.random.default_rng(2), margin_um=1)
    ref, dfm = beads.render_pair(g, pos, lambda q: np.broadcast_to([0.0, 0.15, -0.09], q.shape), psf_sigma_um=(1.0, 0.3, 0.3))
    res = tfm.measure_displacement(ref, dfm, g, windows=((1, 16, 16),), drift=None)
    assert np.allclose(np.median(res.displacement.reshape(-1, 3), 0)[1:], [0.15, -0.09], atol=0.02)


# 6 --------------------------------------------------------------------------------------
def test_a_failed_run_does_not_block_its_corrected_rerun(tmp_path, capsys):
    rc, _, err = _run(capsys, "synth", "--n", 1, "--size", 16, "--spacing-um", -1, "-o", tmp_path / "s.h5")
    assert rc == 2 and "spacing_um" in _one_line_error(err, "synth")
    assert list(tmp_path.iterdir()) == []
    assert _run(capsys, "synth", "--n", 1, "--size", 16, "-o", tmp_path / "s.h5", "--quiet")[0] == 0
    rc, _, err = _run(capsys, "train", "--data", tmp_path / "s.h5", "--out", tmp_path / "run", "--batch-size", 4)
    assert rc == 2 and not (tmp_path / "run").exists()


# 7 --------------------------------------------------------------------------------------
def test_diverged_training_stops_with_an_error_and_keeps_the_last_good_state(tmp_path):
    from tfm.learn.loop import TrainingDiverged
    from tfm.learn.optim import OptimConfig
    from tfm.nn import train
    from tfm.nn.unet3d import ModelConfig

    import shutil

    sample = tmp_path / "sample48.h5"  # a copy: training writes its feature cache beside the data
    shutil.copy(tfm.__file__.replace("tfm/__init__.py", "data/synthetic/sample48.h5"), sample)
    cfg = train.TrainConfig(data=(str(sample),), model=ModelConfig(widths=(8, 16)), epochs=2, batch_size=2, crop=16,
                            optim=OptimConfig(learning_rate=1e9, warmup_steps=0, grad_clip=1e12), checkpoint_every=1,
                            val_fraction=0.2)
    with pytest.raises(TrainingDiverged, match="diverged"):
        train.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if (tmp_path / "run" / "metrics.jsonl").exists() else []:
        json.loads(line)  # strict JSON: no NaN / Infinity


# 8 --------------------------------------------------------------------------------------
def test_an_empty_cell_channel_is_not_a_cell(stacks, capsys, tmp_path):
    d, _, _ = stacks
    for vol in (np.zeros(GRID.shape), np.full(GRID.shape, 7.0)):
        with pytest.raises(ValueError, match="constant"):
            tfm.segment.cell_mask(vol, GRID)
    np.save(tmp_path / "x.npy", np.zeros((8, 8, 8, 3), np.float32))
    rc, _, err = _run(capsys, "displacement", d / "ref.tif", d / "dfm.tif", "--cell", d / "zero.tif", "-o", tmp_path / "u.h5")
    assert rc == 2 and "cell volume is constant" in _one_line_error(err, "displacement")
    assert _run(capsys, "forces", tmp_path / "x.npy", "--spacing-um", 1, 1, 1, "--youngs-modulus-pa", 1000, "-o",
                tmp_path / "r.h5", "--quiet")[0] == 0
    rc, _, err = _run(capsys, "view", tmp_path / "r.h5", "--cell", d / "zero.tif", "--cell-spacing-um", 1, 1, 1)
    assert rc == 2 and "constant" in _one_line_error(err, "view")


# 9 --------------------------------------------------------------------------------------
def test_tiff_truncation_singleton_axes_colour_and_units(tmp_path):
    vol = (np.random.default_rng(0).random((20, 32, 32)) * 200).astype(np.uint8)
    io.write_volume(tmp_path / "v.tif", vol, (1.0, 0.5, 0.5))
    _truncated_copy(tmp_path / "v.tif", tmp_path / "cut.tif")
    with pytest.raises(ValueError, match="truncated"):
        io.read_volume(tmp_path / "cut.tif")
    tifffile.imwrite(tmp_path / "o.ome.tif", vol, ome=True, metadata={"axes": "ZYX"})
    _truncated_copy(tmp_path / "o.ome.tif", tmp_path / "ocut.ome.tif")
    with pytest.raises(ValueError, match="truncated|damaged"):
        io.read_volume(tmp_path / "ocut.ome.tif", spacing_um=1.0)
    io.write_volume(tmp_path / "one.tif", vol[:1], (1.0, 0.5, 0.5))
    back, grid = io.read_volume(tmp_path / "one.tif")
    assert back.shape == (1, 32, 32) and np.array_equal(back, vol[:1]) and grid.shape == (1, 32, 32)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="colour"):
        io.read_image(tmp_path / "rgb.tif", spacing_um=1.0)
    assert io.read_image(tmp_path / "rgb.tif", spacing_um=1.0, channel=1)[0].shape == (32, 32)
    tifffile.imwrite(tmp_path / "cm.tif", vol, imagej=True, resolution=(1e4, 2e4), metadata={"spacing": 1e-4, "unit": "cm", "axes": "ZYX"})
    assert np.allclose(io.read_volume(tmp_path / "cm.tif")[1].spacing_um, (1.0, 0.5, 1.0))


# 10 -------------------------------------------------------------------------------------
def test_late_options_are_checked_first(stacks, capsys, tmp_path):
    d, _, _ = stacks
    rc, _, err = _run(capsys, "reconstruct", d / "ref.tif", d / "dfm.tif", "--youngs-modulus-pa", 1000, "-o",
                      tmp_path / "r.h5", "--vtk", tmp_path / "out.txt")
    assert rc == 2 and "--vtk" in _one_line_error(err, "reconstruct") and not (tmp_path / "r.h5").exists()
    rc, _, err = _run(capsys, "reconstruct", d / "ref.tif", d / "dfm.tif", "--method", "dl", "--cell", d / "cell.tif",
                      "--windows", 16, "--youngs-modulus-pa", 1000, "-o", tmp_path / "r.h5")
    assert rc == 2 and "--windows" in _one_line_error(err, "reconstruct")
    coarse = np.zeros((8, 16, 16), np.float32)
    coarse[4, 8, 8] = 1
    with pytest.raises(ValueError, match="too coarse for the learned path"):
        tfm.reconstruct(coarse, coarse, 5.0, tfm.LinearElastic(1000.0), method="dl")


# 11 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda u, g, m: tfm.reconstruct_forces(u, g, m, regularization=True), "regularization"),
    (lambda u, g, m: tfm.Grid((8.7, 8, 8), 1.0), "shape"),
    (lambda u, g, m: tfm.Grid((8, 8, 8), None), "spacing_um"),
    (lambda u, g, m: tfm.segment.cell_mask(np.arange(512.0).reshape(8, 8, 8), 0), "spacing_um"),
    (lambda u, g, m: tfm.reconstruct_forces(u * 1e35, g, m), "displacement"),
    (lambda u, g, m: tfm.reconstruct_forces(u, g, tfm.LinearElastic(1e36)), "youngs_modulus_pa"),
    (lambda u, g, m: tfm.measure_displacement(np.ones((8, 8, 8)), np.ones((8, 8, 8)), 1.0, iterations=2.5), "iterations"),
    (lambda u, g, m: tfm.measure_displacement(np.ones((8, 8, 8)), np.ones((8, 8, 8)), 1.0, batch_windows=0), "batch_windows"),
    (lambda u, g, m: tfm.measure_displacement(np.ones((8, 8, 8)), np.ones((8, 8, 8)), 1.0, min_quality=float("nan")),
     "min_quality"),
])
def test_small_checks_name_the_argument(call, match):
    g = tfm.Grid((16, 16, 16), 1.0)
    u = np.random.default_rng(0).standard_normal((16, 16, 16, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        call(u, g, tfm.LinearElastic(1000.0))


def test_one_window_size_and_zero_fields():
    ref, dfm = beads.render_pair(GRID, _beads(0), lambda q: np.broadcast_to([0.3, 0.1, -0.2], q.shape), psf_sigma_um=PSF)
    one = tfm.measure_displacement(ref, dfm, GRID, windows=16)  # one pass of 16³, not "'int' is not iterable"
    assert one.info["windows_voxels"] == [[16, 16, 16]]
    g2 = tfm.Grid((32, 32), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = tfm.reconstruct_tractions(np.zeros((32, 32, 2)), g2, tfm.LinearElastic(1000.0), regularization="bayesian")
        f = tfm.reconstruct_forces(np.zeros((16, 16, 16, 3), np.float32), tfm.Grid((16, 16, 16), 1.0), tfm.LinearElastic(1e3))
    assert not np.any(t.force) and not np.any(f.force)


def test_view_refuses_a_result_holding_nan(tmp_path, capsys):
    g = tfm.Grid((8, 8, 8), 1.0)
    u = np.zeros((8, 8, 8, 3), np.float32)
    u[2, 2, 2] = np.nan
    io.write_result(tmp_path / "nan.h5", tfm.Result(g, displacement=u))
    rc, _, err = _run(capsys, "view", tmp_path / "nan.h5")
    assert rc == 2 and "NaN" in _one_line_error(err, "view") and not (tmp_path / "nan.png").exists()


# 12 -------------------------------------------------------------------------------------
def test_killed_writers_leave_no_litter_and_writes_are_flushed(tmp_path, monkeypatch):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".out.h5.{pid}.abc123.part.h5"
    stale.write_bytes(b"half")  # what a SIGKILL during a write leaves
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    atomic.write_text(tmp_path / "out.h5", "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"] and len(synced) >= 2  # the file and its directory
    alive = tmp_path / f".out.h5.{os.getppid()}.abc123.part.h5"
    alive.write_bytes(b"in progress")  # a running writer's temporary is left alone
    atomic.write_text(tmp_path / "out.h5", "again")
    assert alive.exists()


def test_mask_centroid_is_the_mean_voxel_position_in_um():
    mask = np.zeros((4, 6, 8), bool)
    mask[1, 2, 3] = mask[3, 4, 7] = True
    np.testing.assert_allclose(tfm.segment.centroid_um(mask, (2.0, 0.5, 0.25), (1.0, 0.0, -1.0)), [5.0, 1.5, 0.25])
    np.testing.assert_allclose(tfm.segment.centroid_um(mask, (2.0, 0.5, 0.25)), [4.0, 1.5, 1.25])
    assert tfm.segment.centroid_um(np.zeros((2, 2, 2), bool), 1.0) is None and tfm.segment.centroid_um(None, 1.0) is None


def test_distance_at_voxels_is_the_distance_transform_there():
    """The KD-tree of the mask's boundary gives the exact Euclidean distance transform at
    the voxels asked for (anisotropic voxels, a non-convex mask touching a face, points
    inside and outside), and refuses what it cannot answer."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    mask = ndimage.binary_dilation(rng.random((20, 30, 25)) > 0.995, iterations=2)
    mask[:, 0, :3] = True  # at a face
    h = (0.8, 0.3, 0.45)
    idx = np.stack(np.meshgrid(*[np.arange(0, n, 3) for n in mask.shape], indexing="ij"), -1)
    want = ndimage.distance_transform_edt(~mask, sampling=h)[tuple(np.moveaxis(idx, -1, 0))]
    got = tfm.segment.distance_at_voxels_um(mask, h, idx)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-9 and (got == 0).any()
    with pytest.raises(ValueError, match="empty"):
        tfm.segment.distance_at_voxels_um(np.zeros((4, 4, 4), bool), h, np.zeros((1, 3), int))
    with pytest.raises(ValueError, match="inside the mask's volume"):
        tfm.segment.distance_at_voxels_um(mask, h, np.array([[20, 0, 0]]))
