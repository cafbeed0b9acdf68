"""Self-supervised adaptation (tfm.nn.adapt, tfm adapt): the photometric loss, the field it
differentiates, a short adaptation, exact resume, the CLI and bad inputs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import ndimage

import tfm
from tfm.learn import store
from tfm.learn.optim import OptimConfig
from tfm.nn import adapt, infer
from tfm.nn.unet3d import ModelConfig, UNet3D

SHAPE = (32, 32, 32)


def _beads(shape, n, seed):
    rng = np.random.default_rng(seed)
    v = np.zeros(shape, np.float32)
    v[tuple(rng.integers(0, s, n) for s in shape)] = 1.0
    v = ndimage.gaussian_filter(v, 1.0)
    return v / v.max()


def _field(shape, amplitude):
    x = np.indices(shape).astype(np.float32)
    return amplitude * np.stack([np.sin(x[2] / 6), np.cos(x[1] / 7), np.sin(x[0] / 5)], -1).astype(np.float32)


def _pair(amplitude=1.0, seed=0):
    """(reference, deformed, u): the reference is the deformed volume pulled back by u."""
    d = _beads(SHAPE, 300, seed)
    u = _field(SHAPE, amplitude)
    r = np.asarray(adapt.warp(jnp.asarray(d)[None], jnp.asarray(u)[None])[0])
    return r, d, u


def test_photometric_loss_is_zero_for_the_true_field_and_grows_with_its_error():
    r, d, u = _pair()
    ref, dfm = jnp.asarray(r)[None], jnp.asarray(d)[None]
    exact = float(adapt.photometric_loss(ref, adapt.warp(dfm, jnp.asarray(u)[None]))[0])
    assert exact < 1e-3
    errs = [float(adapt.photometric_loss(ref, adapt.warp(dfm, jnp.asarray(u + e)[None]))[0]) for e in (0.25, 0.5, 1.0, 2.0)]
    assert exact < errs[0] < errs[1] < errs[2] < errs[3], (exact, errs)
    # bleaching and background: a gain and offset of the warped volume change nothing
    w = adapt.warp(dfm, jnp.asarray(u + 0.5)[None])
    np.testing.assert_allclose(adapt.photometric_loss(ref, 0.6 * w + 0.1), adapt.photometric_loss(ref, w), rtol=1e-2)


def _rigid_beads(shape, centres, sigma):
    """Gaussian bead images of ``sigma`` (z, y, x) voxels at ``centres`` (n, 3): each image
    whole, as a microscope shows a bead wherever the gel has carried it."""
    grid = np.indices(shape, dtype=np.float32)[..., None]
    d2 = sum(((grid[a] - centres[:, a]) / sigma[a]) ** 2 for a in range(3))
    return np.exp(-0.5 * d2).sum(-1).astype(np.float32)


def test_photometric_loss_leaves_out_what_moved_beyond_the_deformed_volume():
    """Content that left the deformed stack (drift, or a cell's pull at a face) is not
    compared with the zeros beyond it: masked, the true motion scores 0 there and wins."""
    big = _beads((40, 32, 32), 400, 3)
    ref, dfm = jnp.asarray(big[4:36])[None], jnp.asarray(big[2:34])[None]  # content moved up 2 planes
    u_true = np.zeros((1, *SHAPE, 3), np.float32)
    u_true[..., 0] = 2.0
    box = (jnp.zeros((1, 3)), jnp.full((1, 3), 31.0))
    valid = adapt.inside_data(jnp.asarray(u_true), *box)
    assert float(valid[0, -3:].max()) == 0.0 and float(valid[0, 1:-3, 1:-1, 1:-1].min()) == 1.0

    def loss(u, mask):
        return float(adapt.photometric_loss(ref, adapt.warp(dfm, jnp.asarray(u)), valid=mask)[0])

    assert loss(u_true, None) > 0.02  # the top planes against zeros
    assert loss(u_true, valid) < 1e-3
    for wrong in (1.5, 2.5):
        assert loss(u_true, valid) < loss(u_true * wrong / 2.0, valid)
    # crops at a face carry their data in the context volume, zeros beyond it
    p = {"lk_shape": (16, 16, 16), "bead_sigma": np.ones(3), "rel": np.zeros(3, np.float32),
         "to_working": np.ones(3, np.float32), "outside": np.ones((16, 16, 16), np.float32),
         "reference": np.ones((32, 32, 32), np.float32), "deformed": np.ones((32, 32, 32), np.float32)}
    p.update({k: np.zeros((16, 16, 16, 3), np.float32) for k in ("motion", "context", "drift")})
    c = adapt.crop_at(p, (0, 0, 0), 16, 0.45)
    m = adapt.MARGIN
    assert c["context_volume"][0, m:m + 32, m:m + 32, m:m + 32].min() == 1 and c["context_volume"][0].sum() == 32**3


def test_score_tiles_cover_every_lk_voxel_and_are_capped_per_pair():
    tiles = adapt.tile_origins((30, 40, 17), 16)
    covered = np.zeros((30, 40, 17), bool)
    for o in tiles:
        assert all(0 <= a and a + 16 <= n for a, n in zip(o, covered.shape)), o
        covered[tuple(slice(a, a + 16) for a in o)] = True
    assert covered.all() and len(tiles) == 2 * 3 * 2 == len(set(tiles))
    prepared = [{"lk_shape": (30, 40, 17)}, {"lk_shape": (16, 16, 16)}]
    picked = adapt.score_tiles(prepared, 16, 5, seed=0)
    assert [k for k, _ in picked] == [0] * 5 + [1] and {o for k, o in picked if k == 0} <= set(tiles)
    assert len({o for k, o in picked if k == 0}) == 5 and picked == adapt.score_tiles(prepared, 16, 5, seed=0)
    assert len(adapt.score_tiles(prepared, 16, 64)) == len(tiles) + 1
    rng = np.random.default_rng(0)
    p = {"lk_shape": (48, 48, 32), "bead_sigma": np.ones(3)}
    p.update({k: rng.random((48, 48, 32, 3), np.float32) for k in ("motion", "context", "drift")})
    p.update(outside=np.ones((48, 48, 32), np.float32), rel=np.zeros(3, np.float32), to_working=np.ones(3, np.float32))
    p.update({k: rng.random((96, 96, 64), np.float32) for k in ("reference", "deformed")})
    b = adapt.crop_batch([p], rng, 6, 16, 0.45)
    assert b["motion"].shape == (6, 16, 16, 16, 3) and b["reference"].shape == (6, 32, 32, 32)
    for m in b["motion"]:  # every crop is a block of the pair's LK grid (the values are unique: find its origin)
        (o,) = np.argwhere(p["motion"][..., 0] == m[0, 0, 0, 0])
        assert np.array_equal(m, p["motion"][o[0]:o[0] + 16, o[1]:o[1] + 16, o[2]:o[2] + 16])


def test_field_smoothing_makes_the_true_motion_of_whole_bead_images_the_photometric_optimum():
    """Beads move as whole images. Where the field varies within an image (here along the
    long z axis of the PSF), warping by the pointwise field stretches the image, and the
    unsmoothed photometric loss prefers the field blurred at the image scale to the true
    one. With the field smoothed at the apparent bead size first (AdaptConfig.field_smoothing),
    the true field scores better than the blurred one, and better than a field 20 % off."""
    from tfm.classical.texture import autocorrelation_sigma

    shape, sigma = (32, 32, 32), np.array([2.5, 1.0, 1.0], np.float32)
    rng = np.random.default_rng(5)
    p = rng.uniform(2, 30, (260, 3)).astype(np.float32)
    x = np.indices(shape, dtype=np.float32)
    field = lambda q: 0.9 * np.stack([np.sin(q[..., 1] / 3.0), np.sin(q[..., 0] / 2.5), np.cos(q[..., 0] / 3.0)], -1)  # noqa: E731
    ref = _rigid_beads(shape, p, sigma)
    dfm = _rigid_beads(shape, p + field(p), sigma)
    u = field(np.moveaxis(x, 0, -1)).astype(np.float32)
    blurred = np.stack([ndimage.gaussian_filter(u[..., c], sigma, mode="nearest") for c in range(3)], -1)
    r, d = jnp.asarray(ref)[None], jnp.asarray(dfm)[None]

    def loss(v, smooth):
        v = jnp.asarray(v)[None]
        if smooth:
            v = adapt.smooth_field(v, jnp.asarray(adapt.smoothing_matrices(32, autocorrelation_sigma(ref)))[None])
        return float(adapt.photometric_loss(r, adapt.warp(d, v))[0])

    assert loss(blurred, False) < loss(u, False)  # the bias the smoothing removes
    assert loss(u, True) < loss(blurred, True)
    assert loss(u, True) < loss(0.8 * u, True) and loss(u, True) < loss(1.2 * u, True)


def test_adaptation_differentiates_the_field_predict_returns():
    """The network on a crop of the LK grid is what predict's network pass gives there (the
    crop at the volume's corner, where both see the same faces), and the working-grid field
    it warps with is the LK field interpolated as tfm.fields.resample does."""
    from tfm.fields import resample

    r, d, _ = _pair(1.0, seed=1)
    net = UNet3D(ModelConfig(widths=(8, 8)))
    prep = adapt.prepare_pairs([(r, d)], (1.0, 1.0, 1.0), net, 0.45, crop=16)[0]
    u_full, _ = infer.run_network(net, prep["motion"], prep["context"], 0.45, prep["rel"])
    batch = adapt.crop_batch([prep], np.random.default_rng(0), 1, 16, 0.45)
    u_crop, _ = net(jnp.asarray(batch["motion"]), jnp.asarray(batch["context"]), jnp.asarray(batch["nu"]),
                    jnp.asarray(batch["rel"]))
    assert batch["reference"].shape == (1, 32, 32, 32) and batch["context_volume"].shape == (1, 48, 48, 48)
    np.testing.assert_allclose(np.asarray(u_crop[0]), u_full[:16, :16, :16], atol=1e-5 * np.abs(u_full).max() + 1e-7)
    lk = tfm.Grid((16, 16, 16), 2.0, (0.5, 0.5, 0.5))
    f = np.random.default_rng(3).standard_normal((16, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(adapt.upsample2(jnp.asarray(f)[None], (32, 32, 32))[0]),
                               resample(f, lk, tfm.Grid((32, 32, 32), 1.0)), atol=1e-5)


def test_non_affine_removes_exactly_the_affine_part_of_a_change():
    rng = np.random.default_rng(5)
    idx = np.moveaxis(np.indices((6, 8, 10)).astype(np.float32), 0, -1)
    affine = idx @ rng.normal(size=(3, 3)).astype(np.float32) + rng.normal(size=3).astype(np.float32)
    wavy = np.sin(idx[..., :1] * 1.3) * np.cos(idx[..., 1:2] * 0.9) * np.ones(3, np.float32)
    np.testing.assert_allclose(np.asarray(adapt.non_affine(jnp.asarray(affine)[None]))[0], 0.0, atol=1e-4)
    kept = np.asarray(adapt.non_affine(jnp.asarray(affine + wavy)[None]))[0]
    np.testing.assert_allclose(kept, np.asarray(adapt.non_affine(jnp.asarray(wavy)[None]))[0], atol=1e-4)
    assert np.linalg.norm(kept) > 0.8 * np.linalg.norm(wavy)


def test_navier_prior_sees_the_body_force_outside_the_cell():
    """The Navier prior: small for a cell's exact field (an Eshelby sphere: force-free outside
    it), about 1 for the same field measured with noise (the noise's implied force is what
    it counts), 0 without a cell mask."""
    grid = tfm.Grid((24, 24, 24), 1.0)
    mat = tfm.LinearElastic(1000.0, 0.45)
    c = np.asarray(grid.center_um())
    truth = np.asarray(tfm.analytic.EshelbySphere(5.0, -0.05, tuple(c), mat).sample(grid), np.float32)
    noisy = truth + np.random.default_rng(0).normal(0.0, 0.02, truth.shape).astype(np.float32)
    r = np.linalg.norm(grid.coordinates_um() - c, axis=-1)
    outside = (r > 7.0).astype(np.float32)  # the sphere dilated by 2 voxels
    from tfm.nn import physics

    @jax.jit  # one compilation for the three calls
    def prior(u, motion, outside):
        force = lambda v: physics.implied_force_batch(v, jnp.asarray([0.45]), jnp.ones((1, 3)))  # noqa: E731
        return adapt.navier_prior(force(u), force(motion), outside)

    measured_u, cell = jnp.asarray(noisy)[None], jnp.asarray(outside)[None]
    exact = float(prior(jnp.asarray(truth)[None], measured_u, cell)[0])
    measured = float(prior(measured_u, measured_u, cell)[0])
    assert measured == pytest.approx(1.0, abs=1e-3) and exact < 0.05 * measured, (exact, measured)
    assert float(prior(measured_u, measured_u, jnp.ones((1, 24, 24, 24), jnp.float32))[0]) == 0.0


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    from tfm.learn import config as configs

    model = UNet3D(ModelConfig(widths=(8, 8)))
    return store.save_model(tmp_path_factory.mktemp("base") / "model", model, "tfm.unet3d", configs.to_dict(model.config), {})


# The physics priors would dominate the tiny untrained network's first steps; the photometric
# term (with a light anchor) shows in 12 steps that the pair alone teaches motion.
CFG = adapt.AdaptConfig(steps=12, crop=16, eval_every=6, eval_crops=1, checkpoint_every=3,
                        loss=adapt.AdaptWeights(consistency=0.0, equilibrium=0.0, sparsity=0.0, anchor=0.01),
                        optim=OptimConfig(learning_rate=1e-2, warmup_steps=2, weight_decay=0.0))


def _params(model_dir):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(infer.load_model(model_dir), nnx.Param))]


@pytest.fixture(scope="module")
def adapted(base_model, tmp_path_factory):
    r, d, _ = _pair(1.0, seed=2)
    out = tmp_path_factory.mktemp("adapt") / "run"
    summary = adapt.adapt([(r, d)], (1.0, 1.0, 1.0), out, model=base_model, config=CFG, progress=False)
    return summary, out, (r, d)


def test_short_adaptation_lowers_the_photometric_loss_and_records_its_card(adapted, base_model):
    summary, out, (r, d) = adapted
    assert summary["finished"] and summary["steps"] == 12
    assert summary["photometric_after"] < summary["photometric_before"], summary
    card = store.read_description(out / "model")["card"]["adapted"]
    assert card["pairs"][0]["hash"] == adapt.content_hash(r, d) and card["pairs"][0]["shape"] == list(SHAPE)
    assert card["base_model"] == str(base_model) and card["total_steps"] == 12
    assert card["photometric_before"] == pytest.approx(summary["photometric_before"])
    text = (out / "model" / "MODEL_CARD.md").read_text()
    assert adapt.content_hash(r, d)[:16] in text and "before" in text
    # the adapted model is what predict and reconstruct take
    res = tfm.reconstruct(r, d, 1.0, tfm.LinearElastic(1000.0, 0.45), method="dl", model=str(out))
    assert res.displacement.shape == (16, 16, 16, 3) and np.isfinite(res.force).all()


def test_adaptation_resumes_exactly(adapted, base_model, tmp_path):
    summary, out, (r, d) = adapted
    b = tmp_path / "b"
    part = adapt.adapt([(r, d)], (1.0, 1.0, 1.0), b, model=base_model, config=CFG, progress=False, max_steps=4)
    assert part["steps"] == 4 and not part["finished"]
    whole = adapt.adapt([(r, d)], (1.0, 1.0, 1.0), b, model=base_model, config=CFG, progress=False)
    assert whole["steps"] == 12
    for x, y in zip(_params(out / "model"), _params(b / "model")):
        np.testing.assert_array_equal(x, y)
    la = [json.loads(s)["train"] for s in (out / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(s)["train"] for s in (b / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


def test_adaptation_ignoring_the_affine_part_of_the_change_runs(base_model, tmp_path):
    """``ignore_affine`` (a frozen base model beside the adapted one) runs through a whole
    adaptation and scores finite losses."""
    import dataclasses

    r, d, _ = _pair(1.0, seed=4)
    r, d = np.pad(r, ((0, 32), (0, 0), (0, 0)), mode="wrap"), np.pad(d, ((0, 32), (0, 0), (0, 0)), mode="wrap")
    cfg = dataclasses.replace(CFG, steps=2, eval_every=2, checkpoint_every=2, ignore_affine=True)
    summary = adapt.adapt([(r, d)], (1.0, 1.0, 1.0), tmp_path / "v", model=base_model, config=cfg, progress=False)
    assert summary["finished"] and np.isfinite(summary["photometric_before"]) and summary["model_dir"]


def test_adapt_cli_writes_a_model_reconstruct_uses(adapted, base_model, tmp_path):
    _, _, (r, d) = adapted
    from tfm import io
    from tfm.cli import main

    io.write_volume(tmp_path / "r.tif", (r * 1000).astype(np.uint16), (1.0, 1.0, 1.0))
    io.write_volume(tmp_path / "d.tif", (d * 1000).astype(np.uint16), (1.0, 1.0, 1.0))
    args = [str(tmp_path / "r.tif"), str(tmp_path / "d.tif"), "--model", str(base_model), "--steps", "6", "--crop", "16",
            "--eval-every", "6", "--quiet"]
    assert main(["adapt", *args, "-o", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "model" / "MODEL_CARD.md").is_file()
    assert main(["adapt", *args, "--ignore-affine", "-o", str(tmp_path / "affine")]) == 0
    assert store.read_description(tmp_path / "affine" / "model")["card"]["adapted"]["config"]["ignore_affine"] is True
    assert main(["reconstruct", str(tmp_path / "r.tif"), str(tmp_path / "d.tif"), "--method", "dl", "--model",
                 str(tmp_path / "run"), "--youngs-modulus-pa", "1000", "-o", str(tmp_path / "res.h5"), "--quiet"]) == 0
    assert main(["adapt", str(tmp_path / "r.tif"), "-o", str(tmp_path / "x")]) == 2  # an odd number of stacks
    assert main(["adapt", *args, "--navier", "0.1", "-o", str(tmp_path / "y")]) == 2  # the prior needs the cell
    assert main(["adapt", *args, "--field-smoothing", "-1", "-o", str(tmp_path / "z")]) == 2


def test_adapt_refuses_bad_inputs_by_name(base_model, tmp_path):
    r, d, _ = _pair()
    with pytest.raises(ValueError, match="spacing_um"):
        adapt.adapt([(r, d)], None, tmp_path / "a", model=base_model, config=CFG)
    with pytest.raises(ValueError, match="shape"):
        adapt.adapt([(r, d[:-2])], 1.0, tmp_path / "a", model=base_model, config=CFG)
    with pytest.raises(FileNotFoundError, match="not a saved tfm model"):
        adapt.adapt([(r, d)], 1.0, tmp_path / "a", model=tmp_path, config=CFG)
    with pytest.raises(ValueError, match="crop"):
        adapt.adapt([(r, d)], 1.0, tmp_path / "a", model=base_model, config=adapt.AdaptConfig(crop=32))
    with pytest.raises(ValueError, match="pairs"):
        adapt.adapt([], 1.0, tmp_path / "a", model=base_model, config=CFG)
    with pytest.raises(ValueError, match="poisson_ratio"):
        adapt.adapt([(r, d)], 1.0, tmp_path / "a", model=base_model, config=CFG, poisson_ratio=0.6)
    with pytest.raises(ValueError, match="steps"):
        adapt.AdaptConfig(steps=0)
    with pytest.raises(ValueError, match="field_smoothing"):
        adapt.AdaptConfig(field_smoothing=-1.0)
    assert not (tmp_path / "a").exists()  # nothing written before the inputs were checked
