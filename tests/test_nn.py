"""The learned 3D reconstruction: motion front end, network, physics layer, training, inference."""

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
from tfm.fields import resample
from tfm.learn import config as configs
from tfm.learn import store
from tfm.learn.optim import OptimConfig
from tfm.nn import features, flow, infer, physics, train
from tfm.nn.unet3d import ModelConfig, UNet3D, conv3d, normalise_pair
from tfm.synth import beads, fem
from tfm.synth.dataset import SyntheticDataset

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "synthetic" / "sample48.h5"
TINY = ModelConfig(widths=(8, 8))


def tiny_config(**kw):
    base = dict(data=(str(SAMPLE),), model=TINY, epochs=2, batch_size=2, crop=(8, 16, 16), checkpoint_every=2,
                optim=OptimConfig(learning_rate=3e-3, warmup_steps=2), val_fraction=0.2)
    base.update(kw)
    return train.TrainConfig(**base)


def nnx_params(model):
    from flax import nnx

    return nnx.state(model, nnx.Param)


def _sample(i=7):
    with SyntheticDataset(SAMPLE) as ds:
        return ds[i], ds.grid


def test_conv_implementations_agree():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 6, 5, 7, 3)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 3, 3, 4)), jnp.float32)
    a = conv3d(x, k, "native")
    b = conv3d(x, k, "stacked2d")
    assert a.shape == (2, 6, 5, 7, 4)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_space_to_depth_round_trip():
    from tfm.nn.unet3d import depth_to_space, space_to_depth

    x = jnp.arange(2 * 4 * 6 * 8 * 3, dtype=jnp.float32).reshape(2, 4, 6, 8, 3)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 2, 3, 4, 24)
    np.testing.assert_array_equal(np.asarray(y[0, 0, 0, 0, :3]), np.asarray(x[0, 0, 0, 0]))  # block's first voxel first
    np.testing.assert_array_equal(np.asarray(depth_to_space(y, 2)), np.asarray(x))


def _beads(shape, shift, density=0.03, psf=(1.2, 1.0, 1.0), seed=1):
    grid = tfm.Grid(shape, 1.0)
    pos = beads.random_positions(grid, density, np.random.default_rng(seed), margin_um=3.0 + float(np.abs(shift).max()))
    ref, dfm = beads.render_pair(grid, pos, lambda p: np.broadcast_to(np.asarray(shift, float), p.shape), psf)
    return normalise_pair(ref, dfm)


@pytest.mark.parametrize("shift", [(0.0, 0.3, -0.2), (1.0, -5.0, 3.5)])
def test_motion_front_end_recovers_imposed_shifts(shift):
    """A sub-voxel and a 5-voxel uniform shift of a bead volume (no pre-alignment: the
    pyramid starts from the phase-correlation shift and refines it) come back to 0.03 voxel
    (the half-voxel part of 3.5 is the hardest: 0.021 measured)."""
    r, d = _beads((32, 48, 48), shift)
    out = flow.pyramid_flow(r, d, flow.FlowConfig())
    inner = out["u"][3:-3, 3:-3, 3:-3].reshape(-1, 3)
    np.testing.assert_allclose(np.median(inner, 0), shift, atol=0.03)
    assert np.all(np.percentile(np.abs(inner - np.asarray(shift)), 90, axis=0) < 0.05)
    assert out["levels"] >= 2 and out["pair_correlation"] > 0.5


def test_motion_front_end_on_an_identical_pair_is_exactly_zero():
    r, _ = _beads((32, 32, 32), (0.0, 0.0, 0.0))
    out = flow.pyramid_flow(r, r.copy(), flow.FlowConfig())
    assert np.all(out["u"] == 0.0) and np.all(np.isfinite(out["texture"]))


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


def test_physics_layer_on_anisotropic_voxels_against_the_fem():
    """The layer on (0.8, 0.5, 0.4) µm voxels, in units of their geometric mean h, returns
    the FEM's own force density."""
    spacing = np.array([0.8, 0.5, 0.4])
    grid = tfm.Grid((14, 18, 20), tuple(spacing))
    mat = tfm.LinearElastic(2000.0, 0.3)
    eps = np.zeros(grid.shape)
    eps[5:9, 6:12, 7:13] = -0.05
    sol = fem.solve(grid, mat, eigenstrain=eps)
    h = float(np.exp(np.mean(np.log(spacing))))
    g = np.asarray(physics.implied_force(jnp.asarray(sol.displacement / h, jnp.float32), 0.3, "linear", spacing / h))
    f = g * 2000.0 / h
    inner = (slice(1, -1),) * 3
    np.testing.assert_allclose(f[inner], sol.force_density[inner], atol=1e-3 * np.abs(sol.force_density).max())
    with pytest.raises(ValueError, match="law"):
        physics.implied_force(jnp.zeros((4, 4, 4, 3)), 0.3, "hookean")


def test_linear_layer_is_the_energy_gradient_on_every_voxel():
    """The linear law's element-by-element assembly (one 24 x 24 element stiffness) is the
    gradient of the FEM energy itself, faces and edges included, on anisotropic voxels."""
    from tfm.material import lame_parameters

    rng = np.random.default_rng(3)
    spacing = jnp.asarray([1.3, 0.9, 0.85], jnp.float32)
    moduli = jnp.stack(lame_parameters(1.0, jnp.float32(0.42))).astype(jnp.float32)
    for shape in ((5, 6, 7), (2, 5, 4)):  # inside, faces and edges; an axis of 2 nodes
        u = jnp.asarray(rng.standard_normal(shape + (3,)), jnp.float32)
        scale = jnp.ones(tuple(n - 1 for n in shape), jnp.float32)
        want = jax.jit(jax.grad(fem.energy), static_argnums=5)(u, scale, None, None, moduli, "linear", spacing) / jnp.prod(spacing)
        got = physics.implied_force(u, 0.42, "linear", spacing)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_separable_warp_measures_the_motion_as_the_exact_one():
    """The three-pass warp (12 taps per point, first order in the field's gradient) against
    the 64-tap one, in the front end on an Eshelby sphere reaching 3 voxels on top of a
    5-voxel drift: the motion's RMS error against the truth, 1-3 radii out, is the same
    within 3 % (measured 0.348 vs 0.346 voxel: the warp's approximation is far below the
    front end's own error); a zero field reads the volume exactly in both."""
    from tfm.nn.unet3d import normalise_pair

    grid = tfm.Grid((48, 48, 48), 1.0)
    mat = tfm.LinearElastic(1000.0, 0.45)
    c = np.asarray(grid.center_um())
    s0 = tfm.analytic.EshelbySphere(8.0, -0.05, tuple(c), mat)
    sph = tfm.analytic.EshelbySphere(8.0, -0.05 * 3.0 / np.linalg.norm(np.asarray(s0.sample(grid)), axis=-1).max(),
                                     tuple(c), mat)
    drift = np.array([0.0, 4.0, -3.0])
    pos = beads.random_positions(grid, 0.025, np.random.default_rng(64), margin_um=6.0)
    r, d = normalise_pair(*beads.render_pair(grid, pos, lambda p: np.asarray(sph.displacement(p)) + drift, (1.0, 0.45, 0.45)))
    lk = flow.lk_grid(grid)
    truth = np.asarray(sph.sample(lk)) + drift
    dist = np.linalg.norm(lk.coordinates_um() - c, axis=-1)
    near = (dist > 8.0) & (dist < 24.0)
    err = {}
    for warp in flow.WARPS:
        e = flow.pyramid_flow(r, d, flow.FlowConfig(warp=warp))["u"] - truth
        err[warp] = float(np.sqrt(np.mean(np.sum(e[near] ** 2, -1))))
    assert err["separable"] < 1.03 * err["exact"] + 0.005, err
    zero = np.zeros(lk.shape + (3,), np.float32)
    for interpolation in flow.INTERPOLATIONS:
        np.testing.assert_allclose(np.asarray(flow.PyramidLevel(r, d, interpolation, "separable").products(zero)),
                                   np.asarray(flow.PyramidLevel(r, d, interpolation, "exact").products(zero)),
                                   rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="warp"):
        flow.FlowConfig(warp="fast")


def test_pyramid_level_in_slabs_equals_one_slab(monkeypatch):
    """The LK products of a level taken in z-slabs (each with its own window of LK planes)
    equal those of one slab, for both warps."""
    rng = np.random.default_rng(5)
    r, d = (rng.random((20, 12, 14)).astype(np.float32) for _ in range(2))
    u = jnp.asarray(rng.normal(0.0, 1.5, (10, 6, 7, 3)), jnp.float32)
    for warp in flow.WARPS:
        whole = np.asarray(flow.PyramidLevel(r, d, "keys", warp).products(u))
        with monkeypatch.context() as m:
            m.setattr(flow, "SLAB_VOXELS", 6 * 12 * 14)  # slabs of 6 planes: 4 of them, the last one short
            level = flow.PyramidLevel(r, d, "keys", warp)
            assert level.nz == 6
            np.testing.assert_allclose(np.asarray(level.products(u)), whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


def test_flow_helpers_match_their_definitions():
    from tfm.classical import warp as warps

    v = np.random.default_rng(1).random((6, 8, 10, 2)).astype(np.float32)
    np.testing.assert_allclose(flow.block_mean(v), v.reshape(3, 2, 4, 2, 5, 2, 2).mean((1, 3, 5)), rtol=1e-6)
    for n_out, n_in, start in ((12, 6, 0), (16, 6, -2), (7, 1, 0), (9, 4, 5)):
        i0, i1, f = flow.linear_taps(n_out, n_in, start)
        m = np.zeros((n_out, n_in), np.float32)
        np.add.at(m, (np.arange(n_out), i0), 1 - f)
        np.add.at(m, (np.arange(n_out), i1), f)
        np.testing.assert_allclose(m, warps.interpolation_matrix(n_out, 0.5, 2.0, n_in, start=start), atol=1e-6)


def test_gradients_flow_through_the_physics_layer():
    s, grid = _sample(7)
    sl = (slice(16, 32),) * 3
    u_true = jnp.asarray(s["displacement"][sl])[None]
    g_true = jnp.asarray(s["force"][sl] / float(s["youngs_modulus_pa"]))[None]
    nu = jnp.asarray([float(s["poisson_ratio"])])
    rel = jnp.ones((1, 3))
    w = physics.LossWeights(displacement=0.0, force=0.0, consistency=1.0, moments=0.0)
    g_lin = physics.implied_force_batch(u_true, nu, rel)

    def loss(u):
        return physics.losses(u, g_lin, u_true, g_true, nu, rel, w)[0]

    # At the truth the consistency loss vanishes (the predicted force is what u implies)...
    assert float(loss(u_true)) < 1e-8
    # ...away from it, its gradient is finite, non-zero and matches a finite difference.
    u0 = u_true + 0.01 * jax.random.normal(jax.random.key(0), u_true.shape)
    grad = jax.grad(loss)(u0)
    assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).max()) > 0
    v = jax.random.normal(jax.random.key(1), u0.shape)
    eps = 1e-3
    fd = (loss(u0 + eps * v) - loss(u0 - eps * v)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.sum(grad * v)), float(fd), rtol=2e-2)


def test_force_moments_see_a_contractile_dipole():
    """The moments term: zero for an error with no net force and no first moment, and it
    sees a contractility error (a symmetric dipole) that net force and torque do not."""
    g = np.zeros((1, 9, 9, 9, 3), np.float32)
    g[0, 4, 4, 2, 2], g[0, 4, 4, 6, 2] = 1.0, -1.0  # a contractile pair along x: no net force, no torque
    assert float(physics.net_force_and_torque(jnp.asarray(g))[0]) < 1e-10
    # first moment: x = -2 and +2 voxels from the centre, g_x = +1 and -1 -> sum x g_x = -4;
    # over R² = 3 (9/2)² the term is 16 / 60.75
    assert float(physics.force_moments(jnp.asarray(g))[0]) == pytest.approx(16 / 60.75, rel=1e-5)
    assert float(physics.force_moments(jnp.zeros_like(jnp.asarray(g)))[0]) == 0.0


def test_augmentation_preserves_the_physics():
    """A flipped / y-x swapped crop is still an equilibrium: the physics layer commutes with
    it, on anisotropic voxels too (the voxel sizes swap with the axes)."""
    s, grid = _sample(7)
    sl = (slice(12, 36),) * 3
    u = s["displacement"][sl]
    rel = np.array([1.3, 1.0, 1 / 1.3], np.float32)  # a geometric mean of 1, as the LK grid's over h
    g = np.asarray(physics.implied_force(jnp.asarray(u), float(s["poisson_ratio"]), "linear", rel))
    ctx = np.zeros(u.shape[:3] + (8,), np.float32)
    ctx[..., 5], ctx[..., 6] = np.log(rel[0]), np.log(rel[1])
    for seed in range(4):
        f, mask, rel2 = features.augment_sample(np.random.default_rng(seed), {"motion": u, "u": u, "g": g, "context": ctx},
                                                np.ones(u.shape[:3], np.float32), rel)
        g_of_u2 = np.asarray(physics.implied_force(jnp.asarray(np.ascontiguousarray(f["u"])), float(s["poisson_ratio"]),
                                                   "linear", rel2))
        inner = (slice(1, -1),) * 3
        np.testing.assert_allclose(g_of_u2[inner], f["g"][inner], atol=1e-5 * np.abs(g).max())
        np.testing.assert_allclose(np.exp(f["context"][0, 0, 0, 5:7]), rel2[:2], rtol=1e-5)


def test_network_is_odd_in_the_measured_motion():
    """Zero motion gives exactly zero displacement and force, whatever the images; the
    opposite motion gives exactly the opposite fields (swapping the stacks reverses the
    motion, to first order); a multiple of it is not reported in proportion (the gates see
    where the strain concentrates), but finitely."""
    model = UNet3D(TINY)
    rng = np.random.default_rng(0)
    motion = jnp.asarray(0.3 * rng.standard_normal((1, 8, 16, 16, 3)), jnp.float32)
    context = jnp.asarray(rng.standard_normal((1, 8, 16, 16, 8)), jnp.float32)
    nu, rel = jnp.asarray([0.45]), jnp.asarray([[1.3, 0.9, 0.9]])
    u0, g0 = model(jnp.zeros_like(motion), context, nu, rel)
    assert float(jnp.abs(u0).max()) == 0.0 and float(jnp.abs(g0).max()) == 0.0
    u1, g1 = model(motion, context, nu, rel)
    u2, g2 = model(-motion, context, nu, rel)
    np.testing.assert_allclose(np.asarray(u2), -np.asarray(u1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g2), -np.asarray(g1), rtol=1e-4, atol=1e-6 * float(jnp.abs(g1).max()))
    assert float(jnp.abs(g1).max()) > 0 and np.all(np.isfinite(np.asarray(model(10 * motion, context, nu, rel)[1])))


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="optimizer"):
        OptimConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="crop"):
        train.TrainConfig(model=ModelConfig(widths=(8, 16, 32)), crop=18)
    with pytest.raises(ValueError, match="impl"):
        ModelConfig(impl="fast")
    with pytest.raises(ValueError, match="architecture version 1"):
        ModelConfig(architecture=1)
    with pytest.raises(ValueError, match="multiple of 4"):
        UNet3D(TINY)(jnp.zeros((1, 10, 8, 8, 3)), jnp.zeros((1, 10, 8, 8, 8)), jnp.ones(1), jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="FlowConfig.window"):
        flow.FlowConfig(window=0)
    with pytest.raises(ValueError, match="drift_fit"):
        ModelConfig(drift_fit="both")


def test_drift_convention_of_a_model_is_the_one_it_is_given_at_inference():
    """Models saved before the choice existed (their JSON has no drift_fit) fitted drift
    alone, and keep doing so; a joint model's features have a cache of their own."""
    old = {k: v for k, v in json.loads(TINY.to_json()).items() if k != "drift_fit"}
    assert configs.from_dict(ModelConfig, old).drift_fit == "alone"
    joint = UNet3D(ModelConfig(widths=(8, 8), drift_fit="joint"))
    assert features.cache_key(joint) != features.cache_key(UNet3D(TINY))


def test_store_round_trip(tmp_path, monkeypatch):
    model = UNet3D(TINY)
    monkeypatch.chdir(tmp_path)  # relative paths, as users type them (orbax itself needs absolute ones)
    store.save_model(Path("runs") / "m", model, "tfm.unet3d", json.loads(TINY.to_json()), {"note": "test"})
    loaded = infer.load_model(Path("runs") / "m")
    assert loaded.config == TINY
    for a, b in zip(jax.tree.leaves(nnx_params(model)), jax.tree.leaves(nnx_params(loaded))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError, match="not a saved tfm model"):
        infer.load_model(tmp_path)
    with pytest.raises(ValueError, match="not a tfm.stiffness model"):
        store.open_model(Path("runs") / "m", "tfm.stiffness")
    old = json.loads((Path("runs") / "m" / "model.json").read_text())
    old["config"] = {"widths": [8, 16], "stem": 2, "lk_sigmas": [2.0, 4.0]}  # a model of the first architecture
    (Path("runs") / "m" / "model.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="not a model this tfm can run"):
        infer.load_model(Path("runs") / "m")


@pytest.fixture(scope="module")
def sample_features(tmp_path_factory):
    """The shipped samples' feature cache (computed once into a copy of the dataset)."""
    import shutil

    d = tmp_path_factory.mktemp("features")
    data = d / "sample48.h5"
    shutil.copy(SAMPLE, data)
    return data, features.FeatureSet([features.ensure(data, UNet3D(TINY))])


def test_features_are_what_predict_sees(sample_features):
    """The cache holds exactly what predict feeds the network for that pair, and the truth
    on the same LK grid (the FEM's u in units of h; g = f h / E)."""
    data, fs = sample_features
    s, grid = _sample(7)
    model = UNet3D(TINY)
    prep = infer.prepare(s["reference"], s["deformed"], grid, model)
    motion, context, rel, h = infer.network_inputs(prep, float(s["poisson_ratio"]), "neo-hookean")
    it = fs.items[7]
    np.testing.assert_array_equal(it["motion"], motion)
    np.testing.assert_array_equal(it["context"], context)
    np.testing.assert_allclose(it["rel"], rel)
    assert it["h"] == pytest.approx(h) and it["law"] == 1.0 and tuple(it["shape"]) == (24, 24, 24)
    lk = prep["lk"]
    # LK voxel (5, 6, 7) lies at (10.5, 12.5, 14.5) µm: midway between 2³ voxels (trilinear: their mean)
    # (less the measured translation, which predict adds back after the network)
    t = prep["translation"] * np.asarray(lk.spacing_um) / 2 / h
    np.testing.assert_allclose(it["u"][5, 6, 7], s["displacement"][10:12, 12:14, 14:16].mean((0, 1, 2)) / h - t,
                               rtol=1e-4, atol=1e-6)
    # the measured motion follows the truth where the beads are (0.76 measured: a weak field,
    # max |u| 0.1 voxel, in camera noise)
    conf = it["context"][..., 0] > 0.5
    a, b = it["motion"][conf], it["u"][conf]
    assert np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)) > 0.6
    assert lk.spacing_um == (2.0, 2.0, 2.0)
    cache = features.cache_path(data, model)
    before = cache.stat().st_mtime_ns
    assert features.ensure(data, model) == cache and cache.stat().st_mtime_ns == before  # found, not recomputed


def test_tiny_model_overfits_a_tiny_dataset(sample_features):
    """Two fixed crops of the strongest samples, no augmentation: 150 AdamW steps must cut
    the loss (all four terms) at least 3x."""
    import optax
    from flax import nnx

    _, fs = sample_features
    batch = fs.load([7, 8], (8, 16, 16), None, False)
    model = UNet3D(TINY)
    optimizer = nnx.Optimizer(model, optax.adam(5e-3), wrt=nnx.Param)
    weights = physics.LossWeights()
    losses = [float(train.train_step(model, optimizer, batch, weights)[0]) for _ in range(150)]
    assert min(losses[-10:]) < losses[0] / 3, (losses[0], min(losses[-10:]))


def test_resume_continues_exactly(tmp_path, sample_features):
    data, _ = sample_features
    cfg = tiny_config(data=(str(data),), epochs=2)
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
        train.train(tiny_config(data=(str(data),), optim=OptimConfig(learning_rate=1e-2, warmup_steps=2)), tmp_path / "b",
                    progress=False)


SHARDED = """
import json, sys
import jax
from tfm.learn.optim import OptimConfig
from tfm.nn import train
from tfm.nn.unet3d import ModelConfig
cfg = train.TrainConfig(data=(sys.argv[1],), model=ModelConfig(widths=(8, 8)), epochs=1, batch_size=2, crop=(8, 16, 16),
                        optim=OptimConfig(learning_rate=2e-3, warmup_steps=2), checkpoint_every=100, val_fraction=0.2,
                        augment=False)
out = train.train(cfg, sys.argv[2], progress=False)
print(json.dumps({"devices": jax.device_count(), "steps": out["steps"]}))
"""


def test_data_parallel_training_on_two_cpu_devices(tmp_path, sample_features):
    """The batch is sharded over 2 (virtual) devices; the trained weights equal the 1-device run's."""
    data, _ = sample_features
    procs = {}
    for n in (1, 2):  # both at once: each spends most of its time compiling, on one core
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        procs[n] = subprocess.Popen([sys.executable, "-c", SHARDED, str(data), str(tmp_path / f"run{n}")],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    models = {}
    for n, p in procs.items():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1]) == {"devices": n, "steps": 4}
        models[n] = infer.load_model(tmp_path / f"run{n}")
    for x, y in zip(jax.tree.leaves(nnx_params(models[1])), jax.tree.leaves(nnx_params(models[2]))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_predict_units_grids_and_errors():
    s, grid = _sample(7)
    model = UNet3D(TINY)
    sl = (slice(0, 32),) * 3
    ref, dfm = s["reference"][sl], s["deformed"][sl]
    a = infer.predict(ref, dfm, 1.0, tfm.LinearElastic(1000.0, 0.45), model=model, progress=False)
    b = infer.predict(ref, dfm, 1.0, tfm.LinearElastic(3000.0, 0.45), model=model, progress=False)
    assert a.grid.shape == (16, 16, 16) and a.grid.spacing_um == (2.0, 2.0, 2.0) and a.grid.origin_um == (0.5, 0.5, 0.5)
    assert a.displacement.shape == a.force.shape == (16, 16, 16, 3)
    np.testing.assert_allclose(b.force, 3 * a.force, rtol=1e-5)  # f scales with E at fixed images
    np.testing.assert_array_equal(a.displacement, b.displacement)
    full = infer.predict(ref, dfm, 1.0, tfm.LinearElastic(1000.0, 0.45), model=model, output_grid="input", progress=False)
    assert full.grid.shape == (32, 32, 32) and full.info["confidence"].shape == (32, 32, 32)
    # 0.3 µm in-plane voxels are binned by 2 to the model's 0.6 µm; z keeps its own 1 µm;
    # 0.4 µm (a factor of 1.5) stays: only integer factors
    c = infer.predict(ref, dfm, (1.0, 0.3, 0.3), tfm.LinearElastic(1000.0, 0.45), model=model, progress=False)
    assert c.info["working_grid_um"] == [1.0, 0.6, 0.6] and c.grid.shape == (16, 8, 8)
    assert infer.working_grid(tfm.Grid((8, 9, 10), (1.0, 0.4, 0.25)), (0.8, 0.6, 0.6)) == tfm.Grid((8, 9, 5), (1.0, 0.4, 0.5))
    assert infer.binning(tfm.Grid((8, 8, 8), (0.5, 0.29, 0.2)), (0.8, 0.6, 0.6)) == (1, 2, 3)
    # the working pair's banded blur and binning are resample's anti-aliasing and prefilter
    g = tfm.Grid((32, 31, 30), (0.5, 0.29, 0.2))
    raw = (ref[:, :31, :30] * 4000).astype(np.uint16), (dfm[:, :31, :30] * 4000).astype(np.uint16)
    r_w, d_w, work = infer.working_pair(*raw, g, (0.8, 0.6, 0.6), 0.7)
    for got, v in zip((r_w, d_w), normalise_pair(*raw)):
        np.testing.assert_allclose(got, resample(v, g, work, antialias=True, blur=0.7), atol=1e-5)
    with pytest.raises(ValueError, match="deformed must have"):
        infer.predict(ref, dfm[:-1], 1.0, tfm.LinearElastic(1000.0, 0.45), model=model)
    with pytest.raises(ValueError, match="tile must be"):
        infer.predict(ref, dfm, 1.0, tfm.LinearElastic(1000.0, 0.45), model=model, tile=9)
    with pytest.raises(ValueError, match="output_grid"):
        infer.predict(ref, dfm, 1.0, tfm.LinearElastic(1000.0, 0.45), model=model, output_grid="native")
    with pytest.raises(ValueError, match="too coarse"):
        infer.predict(ref, dfm, 5.0, tfm.LinearElastic(1000.0, 0.45), model=model)
    with pytest.raises(ValueError, match="method must be"):
        tfm.reconstruct(ref, dfm, 1.0, tfm.LinearElastic(1000.0, 0.45), method="cnn")


def test_shipped_model_finds_the_cell():
    """The default weights on a held-out shipped sample (not in its training data): the
    displacement correlates with the FEM truth on the network's grid."""
    from tfm.fields import resample

    s, grid = _sample(7)
    mat = tfm.NeoHookean(float(s["youngs_modulus_pa"]), float(s["poisson_ratio"]))
    res = tfm.reconstruct(s["reference"], s["deformed"], grid.spacing_um, mat, method="dl", progress=False)
    u = resample(s["displacement"], grid, res.grid)
    corr = np.sum(res.displacement * u) / np.sqrt(np.sum(res.displacement**2) * np.sum(u**2))
    assert corr > SHIPPED_MIN_CORRELATION
    assert res.info["method"] == "dl"


def test_shipped_model_tiled_equals_untiled():
    """A 128³ pair (contracting Gaussian inclusion at the centre, so the cell straddles every
    seam): the network's grid (64³ LK voxels) in 48³ tiles with 24 overlap, blended,
    reproduces one whole-volume pass; tiles below the network's context size warn."""
    from tfm.analytic import GaussianDilatation

    grid = tfm.Grid((128, 128, 128), 1.0)
    mat = tfm.LinearElastic(1000.0, 0.45)
    sol = GaussianDilatation(5.0, -0.1, grid.center_um(), mat)
    pos = beads.random_positions(grid, 0.025, np.random.default_rng(96), margin_um=3.0)
    ref, dfm = beads.render_pair(grid, pos, lambda p: np.asarray(sol.displacement(p)), (1.0, 0.45, 0.45))
    model = infer.load_model()
    whole = infer.predict(ref, dfm, 1.0, mat, model=model, progress=False)
    tiled = infer.predict(ref, dfm, 1.0, mat, model=model, tile=48, overlap=24, progress=False)
    for name in ("displacement", "force"):
        x, y = getattr(whole, name), getattr(tiled, name)
        assert np.linalg.norm(x - y) / np.linalg.norm(x) < TILE_TOLERANCE[name], name
    with pytest.warns(UserWarning, match="smaller than 48"):
        infer.predict(ref, dfm, 1.0, mat, model=model, tile=32, overlap=16, progress=False)


TILE_TOLERANCE = {"displacement": 0.05, "force": 0.1}
SHIPPED_MIN_CORRELATION = 0.9


def test_cli_train_then_reconstruct_with_the_trained_model(tmp_path, capsys, sample_features):
    from tfm import cli, io

    data, _ = sample_features
    run = tmp_path / "run"
    rc = cli.main(["train", "--data", str(data), "--out", str(run), "--widths", "8", "8", "--crop", "8", "16", "16",
                   "--epochs", "1", "--batch-size", "2", "--warmup-steps", "2", "--val-fraction", "0.2", "--quiet"])
    assert rc == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1 and (run / "model" / "model.json").is_file()
    s, grid = _sample(7)
    io.write_volume(tmp_path / "ref.tif", s["reference"], grid.spacing_um)
    io.write_volume(tmp_path / "def.tif", s["deformed"], grid.spacing_um)
    e = f"{float(s['youngs_modulus_pa']):.1f}"
    rc = cli.main(["reconstruct", str(tmp_path / "ref.tif"), str(tmp_path / "def.tif"), "--method", "dl", "--model", str(run),
                   "--material", "neo-hookean", "--youngs-modulus-pa", e, "-o", str(tmp_path / "r.h5"), "--quiet"])
    assert rc == 0
    res = io.read_result(tmp_path / "r.h5")
    assert res.force.shape == (24, 24, 24, 3) and res.info["method"] == "dl" and res.grid.spacing_um == (2.0, 2.0, 2.0)
    rc = cli.main(["reconstruct", str(tmp_path / "ref.tif"), str(tmp_path / "def.tif"), "--material", "fiber",
                   "--method", "dl", "--youngs-modulus-pa", e, "-o", str(tmp_path / "x.h5")])
    assert rc == 2 and "needs --method classical" in capsys.readouterr().err
    rc = cli.main(["train", "--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "r2"), "--quiet"])
    assert rc == 2 and "dataset not found" in capsys.readouterr().err


def test_features_on_anisotropic_voxels_with_the_stacks_drift_removed(tmp_path):
    """A dataset on a microscope's anisotropic voxels, with drift and axial scaling between
    the stacks: on the LK grid of the (0.8, 0.6, 0.6) µm working grid, the features hold the
    measured motion with the drift taken out (as predict takes it out, before the network)
    and the FEM's own displacement as the target."""
    from tfm.synth import cells, dataset

    cfg = dataset.SynthConfig(
        size=(24, 48, 48), spacing_um=(0.8, 0.3, 0.3), material="linear", fem_spacing_um=1.0, drift_um=(0.5, 0.5),
        axial_scale=(1.02, 1.02), cell=cells.CellConfig(radius_um=(2.0, 2.5), protrusions=(0, 0), contraction=(0.1, 0.1)),
        beads=dataset.BeadConfig(numerical_aperture=0.7, bead_radius_um=0.3, density_per_um3=(0.3, 0.3)))
    path = dataset.generate(tmp_path / "aniso.h5", 1, seed=5, config=cfg, progress=False)
    model = UNet3D(TINY)
    fs = features.FeatureSet([features.ensure(path, model)])
    it = fs.items[0]
    with SyntheticDataset(path) as ds:
        s, grid = ds[0], ds.grid
    drift = np.asarray(s["params"]["acquisition"]["drift_um"])
    assert tuple(it["shape"]) == (12, 12, 12)  # 24 x 24 x 24 working voxels of (0.8, 0.6, 0.6) µm
    h = it["h"]
    np.testing.assert_allclose(it["rel"] * h, (1.6, 1.2, 1.2), rtol=1e-6)  # in-plane voxels binned by 2, exactly
    prep = infer.prepare(s["reference"], s["deformed"], grid, model)
    removed = np.asarray(prep["drift_info"]["drift_removed_um"])
    np.testing.assert_allclose(removed[1:], drift[1:], atol=0.1)  # the lateral drift (z also carries the axial scaling)
    inner = (slice(2, 10),) * 3
    far = it["cell"][inner] < 0.01
    np.testing.assert_allclose(np.median(it["motion"][inner][far], 0) * h, np.median(it["u"][inner][far], 0) * h, atol=0.05)
    t_um = prep["translation"] * np.asarray(prep["lk"].spacing_um) / 2  # added back after the network
    np.testing.assert_allclose(it["u"][inner] * h + t_um, resample(s["displacement"], grid, tfm.Grid((12, 12, 12), (1.6, 1.2, 1.2),
                                                                                           prep["lk"].origin_um))[inner],
                               rtol=0.05, atol=1e-3)
