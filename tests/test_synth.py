"""Random cells, bead rendering through the FEM field, and the resumable HDF5 dataset."""

import json

import numpy as np
import pytest

import tfm
from tfm.synth import beads, cells, dataset, fem

GRID = tfm.Grid((24, 24, 24), 1.0)
# A small, fast dataset: 16³ voxels, small cells, linear matrix.
TINY = dataset.SynthConfig(size=16, material="linear", cell=cells.CellConfig(
    radius_um=(1.5, 2.5), protrusions=(0, 2), protrusion_length_um=(1.0, 2.5), protrusion_radius_um=(0.5, 0.8),
    loadings=("eigenstrain", "traction"), shell_probability=0.5))


def test_random_cells_fit_and_rasterize_to_their_volume():
    cfg = cells.CellConfig(protrusions=(0, 0), radius_um=(3.0, 5.0))
    for seed in range(5):
        cell = cells.random_cell(np.random.default_rng(seed), tfm.Grid((48, 48, 48), 1.0), cfg)
        frac, eps, _ = cells.rasterize(cell, tfm.Grid((48, 48, 48), 1.0))
        want = 4 / 3 * np.pi * np.prod(cell.semi_axes_um)
        assert frac.sum() == pytest.approx(want, rel=0.03)
        # the margin keeps the cell off the faces
        assert frac[:7].sum() == 0 and frac[-7:].sum() == 0 and frac[:, :7].sum() == 0 and frac[..., -7:].sum() == 0


def test_contractility_patterns():
    rng = np.random.default_rng(3)
    base = cells.random_cell(rng, GRID, cells.CellConfig(radius_um=(3, 4), protrusions=(2, 2), protrusion_length_um=(4, 5)))
    import dataclasses

    for pattern in cells.PATTERNS:
        cell = dataclasses.replace(base, pattern=pattern, contraction=0.1)
        frac, eps, _ = cells.rasterize(cell, GRID)
        assert np.all(np.trace(eps, axis1=-2, axis2=-1) <= 1e-7)  # contracts everywhere
        inside = frac > 0.99
        w, v = np.linalg.eigh(eps[inside].astype(np.float64))
        if pattern == "uniform":
            np.testing.assert_allclose(w, -0.1, atol=1e-6)  # isotropic
        elif pattern == "polarised":
            axis = v[:, :, 0]  # most contractile direction
            assert np.all(np.abs(axis @ cell.long_axis) > 0.999)
        else:  # tips: contraction grows toward the protrusion tips, weak in the body
            label, along = cell.regions(GRID.coordinates_um())
            part = frac > 0.3
            # strongest principal contraction, averaged over the inside of each voxel
            mag = -np.linalg.eigvalsh(eps.astype(np.float64))[..., 0] / np.maximum(frac, 1e-6)
            near_tip = part & (label >= 2) & (along > 0.6)
            assert near_tip.sum() > 0
            assert mag[near_tip].mean() > 2.5 * mag[part & (label == 1)].mean()


def test_surface_traction_pulls_inward_with_no_net_force_or_torque():
    cell = cells.random_cell(np.random.default_rng(1), GRID, cells.CellConfig(radius_um=(3, 4), patterns=("tips",)))
    frac, _, weight = cells.rasterize(cell, GRID)
    f = cells.surface_traction(frac, weight, GRID, 100.0).astype(np.float64)
    x = GRID.coordinates_um() - np.asarray(GRID.center_um())
    total = np.abs(f).sum()
    assert np.abs(f.sum(axis=(0, 1, 2))).max() < 1e-5 * total
    assert np.abs(np.cross(x, f).sum(axis=(0, 1, 2))).max() < 1e-5 * total * 24
    assert np.sum(f * (x - (np.asarray(cell.center_um) - np.asarray(GRID.center_um())))) < 0


def test_beads_are_rendered_at_the_fem_displacement():
    """Forward mapping: a single bead appears in the deformed volume displaced by the
    FEM's trilinear field at its position (centroid to 0.02 voxel)."""
    g = tfm.Grid((20, 20, 20), 1.0)
    x = g.coordinates_um()
    u = np.stack([0.05 * (x[..., 1] - 10), 0.8 + 0.02 * x[..., 0], -0.6 + 0 * x[..., 2]], -1).astype(np.float32)
    pos = np.array([[9.3, 10.6, 8.2]])
    ref, dfm = beads.render_pair(g, pos, lambda p: fem.interpolate(u, g, p), (0.9, 0.6, 0.6))

    def centroid(v):
        return np.array([np.sum(v * x[..., a]) / v.sum() for a in range(3)])

    want = pos[0] + np.asarray(fem.interpolate(u, g, pos))[0]
    np.testing.assert_allclose(centroid(ref), pos[0], atol=0.02)
    np.testing.assert_allclose(centroid(dfm), want, atol=0.02)


def test_camera_counts():
    v = np.zeros((8, 8, 8), np.float32)
    v[4, 4, 4] = 1.0
    c = beads.camera(v, np.random.default_rng(0), photons=200.0, read_noise=0.0, background=0.1, offset=100)
    assert c.dtype == np.uint16
    assert np.mean(np.delete(c.ravel(), 4 * 64 + 4 * 8 + 4)) == pytest.approx(100 + 20, rel=0.05)  # offset + background
    with pytest.raises(ValueError, match="photons"):
        beads.camera(v, np.random.default_rng(0), photons=0)


def test_sample_ground_truth_is_consistent():
    s = dataset.generate_sample(TINY, seed=0, index=0)
    u, f = s["displacement"], s["force"]
    assert u.shape == (16, 16, 16, 3) and s["reference"].dtype == np.uint16
    assert np.all(u[0] == 0) and np.all(u[:, :, -1] == 0)  # fixed faces
    assert np.abs(f.sum(axis=(0, 1, 2))).max() < 1e-4 * np.abs(f).sum()  # cells exert no net force
    assert s["params"]["fem"]["converged"]
    # the force is the FEM's: recompute K u / h^3 from the stored u
    mat = tfm.LinearElastic(s["youngs_modulus_pa"], s["poisson_ratio"])
    g = tfm.Grid((16,) * 3, 1.0)
    scale_e = fem.nodes_to_elements(s["modulus_scale"])
    free = fem._boundary_arrays(g, g.spacing_um, mat, "fixed", np.float32)[2]
    again = np.asarray(fem._passive_force(u, scale_e, free, fem._moduli(mat, np.float32), "linear", g.spacing_um))
    np.testing.assert_allclose(again, f, atol=1e-3 * np.abs(f).max())


def test_generate_resumes_identically_and_streams(tmp_path, monkeypatch):
    full = dataset.generate(tmp_path / "full.h5", 3, seed=5, config=TINY, progress=False)

    real = dataset.generate_sample
    calls = []

    def dies_on_second(config, seed, index):
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(config, seed, index)

    target = tmp_path / "resumed.h5"
    monkeypatch.setattr(dataset, "generate_sample", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        dataset.generate(target, 3, seed=5, config=TINY, progress=False)
    assert not target.exists() and (tmp_path / "resumed.h5.partial").exists()
    monkeypatch.setattr(dataset, "generate_sample", real)
    with pytest.raises(ValueError, match="other settings"):
        dataset.generate(target, 3, seed=6, config=TINY, progress=False)
    dataset.generate(target, 3, seed=5, config=TINY, progress=False)
    assert not (tmp_path / "resumed.h5.partial").exists()

    with dataset.SyntheticDataset(full) as a, dataset.SyntheticDataset(target) as b:
        assert len(a) == len(b) == 3 and a.grid == b.grid == tfm.Grid((16,) * 3, 1.0)
        for i in range(3):
            for name in ("reference", "deformed", "displacement", "force"):
                np.testing.assert_array_equal(a[i][name], b[i][name])
        train, val, test = a.split((0.34, 0.33, 0.33), seed=1)
        assert sorted(np.concatenate([train, val, test]).tolist()) == [0, 1, 2]
        batches = list(a.batches(2, shuffle=True, seed=0, epochs=2))
        assert [len(x["reference"]) for x in batches] == [2, 1, 2, 1]
        assert batches[0]["displacement"].shape == (2, 16, 16, 16, 3)
        with pytest.raises(ValueError, match="unknown fields"):
            next(a.batches(2, fields=("nope",)))
    with pytest.raises(FileExistsError):
        dataset.generate(full, 3, seed=5, config=TINY, progress=False)


def test_reader_rejects_other_files(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as h:
        h["a"] = 1
    with pytest.raises(ValueError, match="not a tfm synthetic dataset"):
        dataset.SyntheticDataset(tmp_path / "x.h5")
    with pytest.raises(FileNotFoundError):
        dataset.SyntheticDataset(tmp_path / "missing.h5")


def test_cli_synth_errors_are_named(tmp_path, capsys):
    from tfm import cli

    assert cli.main(["synth", "--n", "2", "--size", "8", "-o", str(tmp_path / "a.h5")]) == 2
    assert "size must be >= 16" in capsys.readouterr().err
    assert cli.main(["synth", "--n", "2", "--size", "16", "16", "-o", str(tmp_path / "a.h5")]) == 2
    assert "--size takes 1 or 3 values" in capsys.readouterr().err
    assert json.loads(TINY.to_json())["size"] == 16


def test_shipped_dataset_is_complete_and_physical():
    from conftest import ROOT

    path = ROOT / "data" / "synthetic" / "sample48.h5"
    with dataset.SyntheticDataset(path) as ds:
        assert len(ds) == 10 and ds.grid.shape == (48, 48, 48) and ds.material == "neo-hookean"
        batch = next(ds.batches(2, seed=0, fields=("displacement", "force", "reference")))
        f = batch["force"].astype(np.float64)
        assert np.all(np.abs(f.sum(axis=(1, 2, 3))) < 1e-3 * np.abs(f).sum(axis=(1, 2, 3))[:, None])
        assert np.all(batch["displacement"][:, 0] == 0) and batch["reference"].dtype == np.uint16
        s = ds[3]
        assert s["params"]["fem"]["converged"] and s["params"]["seed"] == [2026, 3]


def test_acquisition_like_sample_coarse_mesh_drift_and_optical_psf():
    """Native anisotropic voxels with the FEM on a coarser mesh: labels on the image's
    voxels, still force-free in sum; the deformed stack carries the drift (measured back
    by phase correlation), the labels do not; the PSF follows the optics."""
    from tfm.classical import correlation

    cfg = dataset.SynthConfig(
        size=(24, 48, 48), spacing_um=(0.8, 0.3, 0.3), material="linear", fem_spacing_um=1.0, drift_um=(1.2, 1.2),
        cell=cells.CellConfig(radius_um=(2.0, 2.5), protrusions=(0, 0), contraction=(0.02, 0.03)),
        beads=dataset.BeadConfig(numerical_aperture=0.7, bead_radius_um=0.3, density_per_um3=(0.3, 0.3)))
    mesh = cfg.fem_grid
    assert mesh.shape == (19, 15, 15) and mesh.origin_um == cfg.grid.origin_um
    np.testing.assert_allclose(np.asarray(mesh.shape) - 1, np.round((np.asarray(cfg.grid.shape) - 1)
                                                                    * np.asarray(cfg.grid.spacing_um) / np.asarray(mesh.spacing_um)))
    s = dataset.generate_sample(cfg, seed=3, index=0)
    assert s["reference"].shape == (24, 48, 48) and s["displacement"].shape == (24, 48, 48, 3)
    assert s["params"]["fem_grid"]["shape"] == [19, 15, 15]
    f = s["force"].astype(np.float64)
    assert np.abs(f.sum(axis=(0, 1, 2))).max() < 1e-3 * np.abs(f).sum()
    drift = np.asarray(s["params"]["acquisition"]["drift_um"])
    assert np.linalg.norm(drift) == pytest.approx(1.2)
    assert np.abs(s["displacement"]).max() < 0.3 * np.linalg.norm(drift)  # the labels are the cell's field only
    shift = correlation.rigid_shift(s["reference"].astype(np.float32), s["deformed"].astype(np.float32))
    np.testing.assert_allclose(shift * np.asarray(cfg.grid.spacing_um), drift, atol=0.12)
    psf = dataset.BeadConfig(numerical_aperture=0.7, bead_radius_um=0.3).psf
    np.testing.assert_allclose(psf, np.sqrt(np.array([0.66 * 0.52 * 1.33 / 0.49, 0.156, 0.156]) ** 2 + 0.018), rtol=1e-3)
    with pytest.raises(ValueError, match="numerical_aperture"):
        dataset.BeadConfig(numerical_aperture=1.5)
    with pytest.raises(ValueError, match="drift_um"):
        dataset.SynthConfig(drift_um=(2.0, 1.0))


def test_synth_preset_sets_the_acquisition_and_options_override_it():
    from tfm.cli import build_parser
    from tfm.cli.synth import config_from_args

    args = build_parser().parse_args(["synth", "--preset", "acquisition", "--n", "1", "--spacing-um", "1.0",
                                      "--contraction", "0.1", "0.2", "-o", "x.h5"])
    cfg = config_from_args(args)
    assert cfg.grid.spacing_um == (1.0, 1.0, 1.0) and cfg.fem_spacing_um == 1.2  # given spacing wins over the preset's
    assert cfg.beads.numerical_aperture == 0.7 and cfg.cell.contraction == (0.1, 0.2) and cfg.drift_um == (0.0, 1.5)
    plain = config_from_args(build_parser().parse_args(["synth", "--n", "1", "-o", "x.h5"]))
    assert plain == dataset.SynthConfig()  # no option: the defaults as before
