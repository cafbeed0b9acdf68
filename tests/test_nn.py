"""The learned 3D reconstruction: layers, physics layer, training machinery, inference."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfm
from tfm.learn import store
from tfm.learn.optim import OptimConfig
from tfm.nn import infer, physics, train
from tfm.nn.unet3d import ModelConfig, UNet3D, conv3d, normalise_pair, optical_flow_features
from tfm.synth import fem
from tfm.synth.dataset import SyntheticDataset

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "synthetic" / "sample48.h5"
TINY = ModelConfig(widths=(8, 16))


def tiny_config(**kw):
    base = dict(data=(str(SAMPLE),), model=TINY, epochs=2, batch_size=2, crop=16, checkpoint_every=2,
                optim=OptimConfig(learning_rate=3e-3, warmup_steps=2), val_fraction=0.2)
    base.update(kw)
    return train.TrainConfig(**base)


def test_conv_implementations_agree():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 6, 5, 7, 3)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 3, 3, 4)), jnp.float32)
    a = conv3d(x, k, "native")
    b = conv3d(x, k, "stacked2d")
    assert a.shape == (2, 6, 5, 7, 4)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_space_to_depth_round_trip_and_full_resolution_stem():
    from tfm.nn.unet3d import depth_to_space, space_to_depth

    x = jnp.arange(2 * 4 * 6 * 8 * 3, dtype=jnp.float32).reshape(2, 4, 6, 8, 3)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 2, 3, 4, 24)
    np.testing.assert_array_equal(np.asarray(y[0, 0, 0, 0, :3]), np.asarray(x[0, 0, 0, 0]))  # block's first voxel first
    np.testing.assert_array_equal(np.asarray(depth_to_space(y, 2)), np.asarray(x))
    full = UNet3D(ModelConfig(widths=(4, 8), stem=1))
    assert full(jnp.zeros((1, 6, 6, 6, 14))).shape == (1, 6, 6, 6, 6)


def test_flow_features_recover_a_subvoxel_shift():
    """The Lucas-Kanade channels see an imposed 0.3-voxel shift of a smooth bead volume."""
    grid = tfm.Grid((24, 24, 24), 1.0)
    from tfm.synth import beads

    pos = beads.random_positions(grid, 0.05, np.random.default_rng(1), margin_um=2.0)
    shift = np.array([0.0, 0.3, -0.2])
    ref, dfm = beads.render_pair(grid, pos, lambda p: np.broadcast_to(shift, p.shape), (1.2, 1.2, 1.2))
    r, d = normalise_pair(ref, dfm)
    f = np.asarray(optical_flow_features(jnp.asarray(r)[None], jnp.asarray(d)[None], jnp.asarray([0.4]))[0])
    u_lk = np.median(f[6:-6, 6:-6, 6:-6, 8:11], axis=(0, 1, 2)) * 0.1  # sigma 4 window, voxels
    np.testing.assert_allclose(u_lk, shift, atol=0.05)


def _sample(i=7):
    with SyntheticDataset(SAMPLE) as ds:
        return ds[i], ds.grid


def test_physics_layer_reproduces_the_fem_force_neo_hookean():
    s, grid = _sample(7)
    h, e = grid.spacing_um[0], float(s["youngs_modulus_pa"])
    g = np.asarray(physics.implied_force(jnp.asarray(s["displacement"] / h), float(s["poisson_ratio"]), "neo-hookean"))
    f = g * e / h
    inner = (slice(1, -1),) * 3
    err = np.linalg.norm(f[inner] - s["force"][inner]) / np.linalg.norm(s["force"][inner])
    assert err < 1e-3
    # The linear layer misses the neo-Hookean truth by a term second order in the strain
    # (11.5 % here: the contracting cell strains its surroundings by up to ~10 %).
    g_lin = np.asarray(physics.implied_force(jnp.asarray(s["displacement"] / h), float(s["poisson_ratio"]), "linear"))
    assert 0.01 < np.linalg.norm(g_lin[inner] * e / h - s["force"][inner]) / np.linalg.norm(s["force"][inner]) < 0.25


def test_physics_layer_linear_against_fem_and_units():
    grid = tfm.Grid((16, 16, 16), 0.5)
    mat = tfm.LinearElastic(2000.0, 0.3)
    eps = np.zeros(grid.shape)
    eps[6:10, 6:10, 5:11] = -0.05
    sol = fem.solve(grid, mat, eigenstrain=eps)
    g = np.asarray(physics.implied_force(jnp.asarray(sol.displacement / 0.5, jnp.float32), 0.3, "linear"))
    f = g * 2000.0 / 0.5
    np.testing.assert_allclose(f[1:-1, 1:-1, 1:-1], sol.force_density[1:-1, 1:-1, 1:-1], atol=1e-3 * np.abs(sol.force_density).max())
    with pytest.raises(ValueError, match="law"):
        physics.implied_force(jnp.zeros((4, 4, 4, 3)), 0.3, "hookean")


def test_gradients_flow_through_the_physics_layer():
    s, grid = _sample(7)
    sl = (slice(16, 32),) * 3
    u_true = jnp.asarray(s["displacement"][sl])[None]
    g_true = jnp.asarray(s["force"][sl] / float(s["youngs_modulus_pa"]))[None]
    nu = jnp.asarray([float(s["poisson_ratio"])])
    w = physics.LossWeights(displacement=0.0, force=0.0, consistency=1.0, equilibrium=0.0)

    def loss(u):
        return physics.losses(u, g_true, u_true, g_true, nu, w, "neo-hookean")[0]

    # At the truth the consistency loss vanishes (the layer reproduces the labels)...
    assert float(loss(u_true)) < 1e-5
    # ...away from it, its gradient is finite, non-zero and matches a finite difference.
    u0 = u_true + 0.01 * jax.random.normal(jax.random.key(0), u_true.shape)
    grad = jax.grad(loss)(u0)
    assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).max()) > 0
    v = jax.random.normal(jax.random.key(1), u0.shape)
    eps = 1e-3
    fd = (loss(u0 + eps * v) - loss(u0 - eps * v)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.sum(grad * v)), float(fd), rtol=2e-2)


def test_augmentation_preserves_the_physics():
    """A flipped / y-x swapped sample is still an equilibrium: the physics layer commutes with it."""
    s, grid = _sample(7)
    sl = (slice(12, 36),) * 3
    u = s["displacement"][sl]
    g = np.asarray(physics.implied_force(jnp.asarray(u), float(s["poisson_ratio"]), "neo-hookean"))
    ref = s["reference"][sl].astype(np.float32)
    for seed in range(4):
        r2, d2, u2, g2 = train.augment_sample(np.random.default_rng(seed), ref, ref, u, g)
        g_of_u2 = np.asarray(physics.implied_force(jnp.asarray(np.ascontiguousarray(u2)), float(s["poisson_ratio"]), "neo-hookean"))
        inner = (slice(1, -1),) * 3
        np.testing.assert_allclose(g_of_u2[inner], g2[inner], atol=1e-5 * np.abs(g).max())
        assert r2.shape == ref.shape


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="optimizer"):
        OptimConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="crop"):
        train.TrainConfig(model=ModelConfig(widths=(8, 16, 32)), crop=18)
    with pytest.raises(ValueError, match="impl"):
        ModelConfig(impl="fast")
    with pytest.raises(ValueError, match="multiple of 4"):
        UNet3D(TINY)(jnp.zeros((1, 10, 8, 8, 14)))
    with pytest.raises(ValueError, match="stem"):
        ModelConfig(stem=3)


def test_store_round_trip(tmp_path, monkeypatch):
    model = UNet3D(TINY)
    monkeypatch.chdir(tmp_path)  # relative paths, as users type them (orbax itself needs absolute ones)
    store.save_model(Path("runs") / "m", model, "tfm.unet3d", json.loads(TINY.to_json()), {"note": "test"})
    loaded = infer.load_model(Path("runs") / "m")
    for a, b in zip(jax.tree.leaves(nnx_params(model)), jax.tree.leaves(nnx_params(loaded))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError, match="not a saved tfm model"):
        infer.load_model(tmp_path)
    with pytest.raises(ValueError, match="not a tfm.stiffness model"):
        store.open_model(Path("runs") / "m", "tfm.stiffness")


def nnx_params(model):
    from flax import nnx

    return nnx.state(model, nnx.Param)


def test_tiny_model_overfits_a_tiny_dataset():
    """Two fixed 16³ crops of the strongest samples, no augmentation: 150 AdamW steps must
    cut the loss (all four terms) at least 5x."""
    import optax
    from flax import nnx

    data = train.Samples([str(SAMPLE)])
    batch = data.load([7, 8], None, 16, False)
    model = UNet3D(TINY)
    optimizer = nnx.Optimizer(model, optax.adam(5e-3), wrt=nnx.Param)
    weights = physics.LossWeights()
    losses = [float(train.train_step(model, optimizer, batch, weights, "neo-hookean")[0]) for _ in range(150)]
    assert min(losses[-10:]) < losses[0] / 5, (losses[0], min(losses[-10:]))


def test_resume_continues_exactly(tmp_path):
    cfg = tiny_config(epochs=2)
    a = train.train(cfg, tmp_path / "a", progress=False)
    train.train(cfg, tmp_path / "b", progress=False, max_steps=3)  # "killed" after step 3
    b = train.train(cfg, tmp_path / "b", progress=False)  # resumed
    assert a["steps"] == b["steps"] == 8
    ma, mb = infer.load_model(tmp_path / "a"), infer.load_model(tmp_path / "b")
    for x, y in zip(jax.tree.leaves(nnx_params(ma)), jax.tree.leaves(nnx_params(mb))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    la = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["train"] for r in la] == [json.loads(r)["train"] for r in lb]
    with pytest.raises(ValueError, match="another configuration"):
        train.train(tiny_config(optim=OptimConfig(learning_rate=1e-2, warmup_steps=2)), tmp_path / "b", progress=False)


SHARDED = """
import json, sys
import jax
from tfm.learn.optim import OptimConfig
from tfm.nn import train
from tfm.nn.unet3d import ModelConfig
cfg = train.TrainConfig(data=(sys.argv[1],), model=ModelConfig(widths=(8, 16)), epochs=1, batch_size=2, crop=16,
                        optim=OptimConfig(learning_rate=2e-3, warmup_steps=2), checkpoint_every=100, val_fraction=0.2,
                        augment=False)
out = train.train(cfg, sys.argv[2], progress=False)
print(json.dumps({"devices": jax.device_count(), "steps": out["steps"]}))
"""


def test_data_parallel_training_on_two_cpu_devices(tmp_path):
    """The batch is sharded over 2 (virtual) devices; the trained weights equal the 1-device run's."""
    procs = {}
    for n in (1, 2):  # both at once: each spends most of its time compiling, on one core
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        procs[n] = subprocess.Popen([sys.executable, "-c", SHARDED, str(SAMPLE), str(tmp_path / f"run{n}")],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    models = {}
    for n, p in procs.items():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1]) == {"devices": n, "steps": 4}
        models[n] = infer.load_model(tmp_path / f"run{n}")
    for x, y in zip(jax.tree.leaves(nnx_params(models[1])), jax.tree.leaves(nnx_params(models[2]))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_predict_units_and_errors():
    s, grid = _sample(7)
    model = UNet3D(TINY)
    sl = (slice(0, 24),) * 3
    ref, dfm = s["reference"][sl], s["deformed"][sl]
    a = infer.predict(ref, dfm, 1.0, tfm.LinearElastic(1000.0, 0.45), model=model, tile=24, progress=False)
    b = infer.predict(ref, dfm, 1.0, tfm.LinearElastic(3000.0, 0.45), model=model, tile=24, progress=False)
    assert a.displacement.shape == a.force.shape == (24, 24, 24, 3)
    np.testing.assert_allclose(b.force, 3 * a.force, rtol=1e-5)  # f scales with E at fixed images
    np.testing.assert_array_equal(a.displacement, b.displacement)
    c = infer.predict(ref, dfm, (1.0, 0.5, 0.5), tfm.LinearElastic(1000.0, 0.45), model=model, tile=24, progress=False)
    assert c.displacement.shape == (24, 24, 24, 3) and c.info["resampled_to_um"] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="deformed must have"):
        infer.predict(ref, dfm[:-1], 1.0, tfm.LinearElastic(1000.0, 0.45), model=model)
    with pytest.raises(ValueError, match="tile must be"):
        infer.predict(ref, dfm, 1.0, tfm.LinearElastic(1000.0, 0.45), model=model, tile=9)
    with pytest.raises(ValueError, match="method must be"):
        tfm.reconstruct(ref, dfm, 1.0, tfm.LinearElastic(1000.0, 0.45), method="cnn")


def test_shipped_model_finds_the_cell():
    """The default weights on a held-out shipped sample (not in its training data): the
    displacement correlates with the FEM truth."""
    s, grid = _sample(7)
    mat = tfm.NeoHookean(float(s["youngs_modulus_pa"]), float(s["poisson_ratio"]))
    whole = tfm.reconstruct(s["reference"], s["deformed"], grid.spacing_um, mat, method="dl", progress=False)
    u = s["displacement"]
    corr = np.sum(whole.displacement * u) / np.sqrt(np.sum(whole.displacement**2) * np.sum(u**2))
    assert corr > SHIPPED_MIN_CORRELATION
    one_tile = max(-(-n // 8) * 8 for n in grid.shape)  # the volume, rounded up to the shipped network's multiple
    assert whole.info["method"] == "dl" and whole.info["tile"] == one_tile


def test_shipped_model_tiled_equals_untiled():
    """A 96³ pair (contracting Gaussian inclusion at the centre, so the cell straddles every
    seam): 64³ tiles with 32 overlap, blended, reproduce one whole-volume pass; tiles below
    the network's context size warn."""
    from tfm.analytic import GaussianDilatation
    from tfm.synth import beads

    grid = tfm.Grid((96, 96, 96), 1.0)
    mat = tfm.LinearElastic(1000.0, 0.45)
    sol = GaussianDilatation(4.0, -0.1, grid.center_um(), mat)
    pos = beads.random_positions(grid, 0.025, np.random.default_rng(96), margin_um=3.0)
    ref, dfm = beads.render_pair(grid, pos, lambda p: np.asarray(sol.displacement(p)), (1.0, 0.45, 0.45))
    model = infer.load_model()
    whole = infer.predict(ref, dfm, 1.0, mat, model=model, tile=96, progress=False)
    tiled = infer.predict(ref, dfm, 1.0, mat, model=model, tile=64, overlap=32, progress=False)
    for name in ("displacement", "force"):
        x, y = getattr(whole, name), getattr(tiled, name)
        assert np.linalg.norm(x - y) / np.linalg.norm(x) < TILE_TOLERANCE[name], name
    with pytest.warns(UserWarning, match="smaller than 64"):
        infer.predict_network_units(model, np.zeros((40, 40, 40), np.float32), np.zeros((40, 40, 40), np.float32), 0.45,
                                    tile=32, overlap=8, progress=False)


# Measured with the shipped weights: tiled vs whole 0.023 (u) and 0.026 (f); sample 7
# correlation 0.981.
TILE_TOLERANCE = {"displacement": 0.05, "force": 0.05}
SHIPPED_MIN_CORRELATION = 0.9


@pytest.mark.filterwarnings("ignore:tile 32 is smaller")
def test_cli_train_then_reconstruct_with_the_trained_model(tmp_path, capsys):
    from tfm import cli, io

    run = tmp_path / "run"
    rc = cli.main(["train", "--data", str(SAMPLE), "--out", str(run), "--widths", "8", "16", "--crop", "16", "--epochs", "1",
                   "--warmup-steps", "2", "--val-fraction", "0.2", "--quiet"])
    assert rc == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1 and (run / "model" / "model.json").is_file()
    s, grid = _sample(7)
    io.write_volume(tmp_path / "ref.tif", s["reference"], grid.spacing_um)
    io.write_volume(tmp_path / "def.tif", s["deformed"], grid.spacing_um)
    e = f"{float(s['youngs_modulus_pa']):.1f}"
    rc = cli.main(["reconstruct", str(tmp_path / "ref.tif"), str(tmp_path / "def.tif"), "--method", "dl", "--model", str(run),
                   "--material", "neo-hookean", "--youngs-modulus-pa", e, "--tile", "32", "-o", str(tmp_path / "r.h5"), "--quiet"])
    assert rc == 0
    res = io.read_result(tmp_path / "r.h5")
    assert res.force.shape == (48, 48, 48, 3) and res.info["method"] == "dl"
    rc = cli.main(["reconstruct", str(tmp_path / "ref.tif"), str(tmp_path / "def.tif"), "--material", "neo-hookean",
                   "--youngs-modulus-pa", e, "-o", str(tmp_path / "x.h5")])
    assert rc == 2 and "needs --method dl" in capsys.readouterr().err
    rc = cli.main(["train", "--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "r2"), "--quiet"])
    assert rc == 2 and "dataset not found" in capsys.readouterr().err


def test_training_on_anisotropic_voxels_sees_what_predict_sees(tmp_path):
    """A dataset on a microscope's anisotropic voxels is brought to the model's 1 µm voxels
    sample by sample exactly as predict brings a user's stacks (normalised, anti-aliased),
    with the labels resampled beside it (u in working voxels, g = f h / E)."""
    from tfm.fields import resample
    from tfm.synth import cells, dataset

    cfg = dataset.SynthConfig(
        size=(20, 40, 40), spacing_um=(0.8, 0.4, 0.4), material="linear", fem_spacing_um=1.0,
        cell=cells.CellConfig(radius_um=(2.0, 2.5), protrusions=(0, 0), contraction=(0.05, 0.06)),
        beads=dataset.BeadConfig(numerical_aperture=0.7, bead_radius_um=0.3, density_per_um3=(0.2, 0.2)))
    path = dataset.generate(tmp_path / "aniso.h5", 2, seed=5, config=cfg, progress=False)
    data = train.Samples([str(path)])
    assert data.spacing_um == (1.0, 1.0, 1.0) and data.shapes == {(16, 16, 16)}
    batch = data.load([0, 1], None, None, False)
    ds = SyntheticDataset(path)
    s = ds[1]
    ref, dfm, work = infer.working_pair(s["reference"], s["deformed"], ds.grid, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(batch["reference"][1], ref)
    np.testing.assert_array_equal(batch["deformed"][1], dfm)
    np.testing.assert_allclose(batch["u"][1], resample(s["displacement"], ds.grid, work), rtol=1e-6)
    g = resample(s["force"], ds.grid, work) / s["youngs_modulus_pa"]
    np.testing.assert_allclose(batch["g"][1], g, rtol=1e-5, atol=1e-5 * np.abs(g).max())
    assert np.abs(batch["u"]).max() > 0.05  # the cell's motion survived the resampling
    assert len(data.cache) == 2  # resampled once, then served from memory
    with pytest.raises(ValueError, match="isotropic"):
        train.Samples([str(path)], spacing_um=(1.0, 0.5, 0.5))
