"""Self-supervised adaptation: fine-tune the learned model on a lab's own unlabelled stacks.

Usage (what ``tfm adapt`` runs)::

    from tfm.nn import adapt
    adapt.adapt([(ref, dfm)], spacing_um=(0.8, 0.29, 0.29), out_dir="runs/my_lab")
    tfm.reconstruct(ref, dfm, grid, material, method="dl", model="runs/my_lab")

A pair carries its own training signal, with no ground truth: the deformed volume pulled
back by the right displacement looks like the reference, and the displacement of a cell in
an elastic gel comes from forces that are in equilibrium and sit at the cell. The objective
on a batch of crops of the user's pairs (on the model's working grid, prepared exactly as
:func:`tfm.nn.infer.predict` prepares them) is

* ``photometric``: ``1 - NCC`` of the reference against the deformed volume warped back by
  the predicted ``u`` (:func:`photometric_loss`: local normalised cross-correlation in
  Gaussian windows of ``ncc_sigma`` working voxels, weighted by the reference's texture).
  The field is smoothed at the scale of a bead's image first (``field_smoothing`` apparent
  bead sizes, :func:`apparent_bead_size`): each bead's image moves as a whole, and the
  pointwise field's photometric optimum near a cell is the blurred field;
* ``consistency``: the predicted force against the force the constitutive layer implies
  from the predicted displacement (:func:`tfm.nn.physics.implied_force`), relative;
* ``equilibrium``: net force and torque of the predicted force, relative to its L1 norm;
* ``sparsity``: with a cell mask, the share of ``|f|`` outside the (dilated) cell; without
  one, ``mean |f| / rms |f|`` (a scale-free sparsity measure);
* ``navier`` (off by default): with a cell mask, the body force the predicted ``u``
  implies outside the (dilated) cell (:func:`navier_prior`), which the matrix cannot carry;
* ``anchor``: ``|theta - theta_0|^2 / |theta_0|^2``, a pull toward the synthetic-trained
  weights, so adaptation refines the model instead of drifting into a trivial solution.

``ignore_affine=True`` shows the photometric term the base model's field plus the change
less its least-squares affine part per crop (:func:`non_affine`): drift or axial scaling
the stacks' drift model left in is then no lesson for the gel's field.

The model is selected on every ``crop``³ tile of each pair's LK grid (at most
``eval_crops`` per pair; :func:`score_tiles`) by the photometric term alone, and replaces
the base model only where it lowers that score by ``min_gain`` (2 %) of the base's. The
margin limits harm; it does not rule it out. What every design choice here was measured
to do, on four synthetic sets and FM-Track, and the variants measured and dropped
(cubic warps, a face mask, a checkerboard holdout, selection by the whole objective,
adapting a subset of the parameters): docs/learned.md section 8 and
benchmarks/results/adapt_summary.md.

The selected model (the base weights where no step qualifies) is written to ``OUT/model``
with a model card. Runs use the shared epoch loop (:mod:`tfm.learn.loop`): checkpoints
every ``checkpoint_every`` steps; the same call resumes a killed run exactly (the crops of
step ``s`` draw from ``rng([seed, s])``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..atomic import write_text
from ..learn import config as configs
from ..learn import loop, store
from ..learn.optim import OptimConfig, make_optimizer, schedule
from . import infer, physics
# the pairs and their crops, and the differentiable field and loss on the working grid, re-exported (adapt.warp, ...)
from .adapt_pairs import (MARGIN, apparent_bead_size, content_hash, crop_at, crop_batch, prepare_pairs,  # noqa: F401
                          score_tiles, stack_batches, tile_origins)
from .photometric import (blur, inside_data, photometric_loss, smooth_field, smoothing_matrices,  # noqa: F401
                          upsample2, warp)

MODEL_KIND = "tfm.unet3d"


@dataclasses.dataclass(frozen=True)
class AdaptWeights:
    """Weights of the self-supervised loss terms (see the module docstring)."""

    photometric: float = 1.0
    consistency: float = 0.1
    equilibrium: float = 0.01
    sparsity: float = 0.05
    anchor: float = 1.0
    navier: float = 0.0  # with a cell mask: the body force G(u) the predicted u implies outside the (dilated) cell
    eps_g: float = 1e-3  # floor of the force normalisations, f h / E

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if not float(getattr(self, f.name)) >= 0:
                raise ValueError(f"AdaptWeights.{f.name} must be >= 0, got {getattr(self, f.name)}")


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """Everything that defines an adaptation run besides the pairs and the base model."""

    steps: int = 200
    crop: int = 16  # cubic crops of the LK grid (a multiple of the network's factor); 2x that in working voxels
    batch_size: int = 2
    optim: OptimConfig = OptimConfig(learning_rate=1e-4, warmup_steps=10, weight_decay=0.0)
    loss: AdaptWeights = AdaptWeights()
    ncc_sigma: float = 2.0  # photometric window, working voxels
    field_smoothing: float = 1.0  # photometric: the field is smoothed by this many apparent bead sizes before it warps (0: not)
    levels: object = "auto"  # the motion front end's pyramid, as predict's
    cell_dilate_um: float = 3.0  # sparsity: forces allowed this far from the cell mask
    eval_every: int = 25  # steps between scores on the score tiles
    eval_crops: int = 64  # score tiles per pair, at most: all crop³ tiles of its LK grid where it has no more
    min_gain: float = 0.02  # a step replaces the base model only if it lowers the photometric score by this fraction of the base's
    checkpoint_every: int = 25
    seed: int = 0
    ignore_affine: bool = False  # photometric: the base field plus the change less its affine part per crop

    def __post_init__(self):
        configs.check_counts(self, ("steps", "crop", "batch_size", "eval_every", "eval_crops", "checkpoint_every"))
        infer.check_levels(self.levels)
        if not float(self.ncc_sigma) > 0:
            raise ValueError(f"ncc_sigma must be > 0 (voxels), got {self.ncc_sigma}")
        if not 0 <= float(self.min_gain) < 1:
            raise ValueError(f"min_gain must lie in [0, 1), got {self.min_gain}")
        if not float(self.field_smoothing) >= 0:
            raise ValueError(f"field_smoothing must be >= 0 (apparent bead sizes), got {self.field_smoothing}")
        if not float(self.cell_dilate_um) >= 0:
            raise ValueError(f"cell_dilate_um must be >= 0, got {self.cell_dilate_um}")


def _param_distance(params, anchor):
    num = sum(jnp.sum((p - a) ** 2) for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor)))
    return num / sum(jnp.sum(a**2) for a in jax.tree.leaves(anchor))


def has_cell(outside):
    """Per sample (N,): whether its ``outside`` weight (N, Z, Y, X) comes from a cell mask
    (without one it is 1 everywhere)."""
    return jnp.sum(outside, (1, 2, 3)) < outside[0].size


def navier_prior(g_u, g_motion, outside, eps: float = 1e-3):
    """Per sample: the body force ``g_u`` (N, Z, Y, X, 3; :func:`tfm.nn.physics.implied_force_batch`
    of the predicted displacement) outside the cell (``outside`` (N, Z, Y, X): 1 there; the
    faces left out), in units of ``g_motion``, the force the measured motion implies there
    (a constant per sample, no gradient): the matrix carries no body force, so outside the
    cell ``G(u)`` is the field's error -- noise and artefacts, second-differenced. 0 for a
    sample without a cell mask, where the cell's place is unknown."""
    inner = physics.interior_mask(g_u.shape[1:4], 1, g_u.dtype)[None, ..., 0]
    w = (outside * inner)[..., None]
    num = jnp.sum(w * g_u**2, (1, 2, 3, 4))
    den = jnp.sum(w * jax.lax.stop_gradient(g_motion) ** 2, (1, 2, 3, 4)) + g_u.shape[1] * g_u.shape[2] * g_u.shape[3] * eps**2
    return jnp.where(has_cell(outside), num / den, 0.0)


def non_affine(change):
    """``change`` (N, Z, Y, X, 3) less its least-squares affine part per sample (a
    translation and a linear function of the voxel index, per component)."""
    axes = [jnp.arange(n, dtype=change.dtype) - (n - 1) / 2 for n in change.shape[1:4]]
    out = change - jnp.mean(change, (1, 2, 3), keepdims=True)
    for a, x in enumerate(axes):
        shape = [1, 1, 1, 1, 1]
        shape[a + 1] = x.shape[0]
        xa = x.reshape(shape)
        slope = jnp.sum(xa * out, (1, 2, 3), keepdims=True) / (jnp.sum(x * x) * change[0, ..., 0].size / x.shape[0])
        out = out - slope * xa
    return out


def adapt_losses(model, batch, anchor, cfg: AdaptConfig, base=None):
    """``(total, terms)`` of the self-supervised objective on a batch (module docstring);
    ``base``: the base model, for ``cfg.ignore_affine``."""
    w = cfg.loss
    u, g, g_phys, _ = model.forward(batch["motion"], batch["context"], batch["nu"], batch["rel"],
                                    need_physics=w.consistency > 0 or w.navier > 0)
    shape = batch["reference"].shape[1:4]
    u_seen = u
    if cfg.ignore_affine:  # the acquisition's own motion (drift, axial scaling) is no lesson for the gel's field
        u_base = jax.lax.stop_gradient(base(batch["motion"], batch["context"], batch["nu"], batch["rel"])[0])
        u_seen = u_base + non_affine(u - u_base)
    # units of h -> working voxels, with the stacks' drift (removed before the network) put back: the images show it
    u_w = smooth_field(upsample2(u_seen * batch["to_working"][:, None, None, None, :] + batch["drift"], shape),
                       batch["smooth"])
    warped = warp(batch["context_volume"], u_w, MARGIN)
    terms = {"photometric": jnp.mean(photometric_loss(batch["reference"], warped, cfg.ncc_sigma))}
    n_vox = u.shape[1] * u.shape[2] * u.shape[3]
    sq = lambda x: jnp.sum(x * x, (1, 2, 3, 4))  # noqa: E731
    if w.consistency > 0:
        mask = physics.interior_mask(u.shape[1:4], 1, u.dtype)
        den = jax.lax.stop_gradient(sq(mask * g) + sq(mask * g_phys)) + n_vox * w.eps_g**2
        terms["consistency"] = jnp.mean(sq(mask * (g - g_phys)) / den)
    mag = jnp.linalg.norm(g, axis=-1)
    if w.equilibrium > 0:
        scale = jax.lax.stop_gradient(jnp.sum(mag, (1, 2, 3))) ** 2 + (n_vox * w.eps_g) ** 2
        terms["equilibrium"] = jnp.mean(physics.net_force_and_torque(g, batch["rel"]) / scale)
    if w.sparsity > 0:
        outside = batch["outside"]
        share = jnp.sum(mag * outside, (1, 2, 3)) / (jnp.sum(mag, (1, 2, 3)) + n_vox * w.eps_g)
        ratio = jnp.mean(mag, (1, 2, 3)) / (jnp.sqrt(jnp.mean(mag**2, (1, 2, 3))) + w.eps_g)
        terms["sparsity"] = jnp.mean(jnp.where(has_cell(outside), share, ratio))
    if w.navier > 0:
        g_m = physics.implied_force_batch(batch["motion"], batch["nu"], batch["rel"])
        terms["navier"] = jnp.mean(navier_prior(g_phys, g_m, batch["outside"], w.eps_g))  # g_phys: G(u), from the forward pass
    if w.anchor > 0:
        terms["anchor"] = _param_distance(nnx.state(model, nnx.Param), anchor)
    return sum(getattr(w, k) * v for k, v in terms.items()), terms


@nnx.jit(static_argnames=("cfg",))
def adapt_step(model, optimizer, batch, anchor, cfg, base=None):
    (loss, terms), grads = nnx.value_and_grad(lambda m: adapt_losses(m, batch, anchor, cfg, base), has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, terms


@nnx.jit(static_argnames=("cfg",))
def score_step(model, batch, anchor, cfg, base=None):
    return adapt_losses(model, batch, anchor, cfg, base)


# -- the run -----------------------------------------------------------------------------------


def _to_device(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _scorer(net, prepared, anchor, cfg: AdaptConfig, poisson_ratio: float, base=None):
    """() -> the mean terms over the score tiles of every pair (:func:`score_tiles`, the same
    at every call); ``loss``, what selects the model, is the photometric term, and
    ``objective`` the whole objective."""
    tiles = score_tiles(prepared, cfg.crop, cfg.eval_crops, cfg.seed)

    def score() -> dict:
        sums = {}
        for k, o in tiles:
            c = crop_at(prepared[k], o, cfg.crop, poisson_ratio, cfg.field_smoothing)
            loss, terms = score_step(net, _to_device(c), anchor, cfg, base)
            for name, v in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0.0) + float(v)
        out = {name: v / len(tiles) for name, v in sums.items()}
        out["objective"], out["loss"] = out["loss"], out["photometric"]
        return out

    return score


def _card_markdown(card: dict) -> str:
    a = card["adapted"]
    rows = "\n".join(f"| {p['hash'][:16]} | {' x '.join(map(str, p['shape']))} | {', '.join(f'{h:g}' for h in p['spacing_um'])} "
                     f"| {', '.join(f'{h:.2f}' for h in p.get('bead_sigma_um', []))} | {'yes' if p['cell'] else 'no'} |"
                     for p in a["pairs"])
    c = a["config"]
    chosen = (f"the base weights kept: no step lowered the photometric score on the score tiles by "
              f"{c.get('min_gain', 0):.0%}" if a["step"] == 0 else "selected: lowest photometric score on the score tiles")
    return (f"# Model card: tfm 3D force network, adapted\n\nFine-tuned without labels on the pairs below by "
            f"`tfm adapt` (docs/learned.md, \"Self-supervised adaptation\"), from the base model `{a['base_model']}`.\n\n"
            f"| pair (SHA-256, first 16) | voxels | voxel size (µm) | apparent bead size (µm) | cell mask |\n"
            f"|---|---|---|---|---|\n{rows}\n\n"
            f"- Steps: {a['step']} of {a['total_steps']} ({chosen}), batch {c['batch_size']}, crops of {c['crop']}³ LK "
            f"voxels, peak learning rate {c['optim']['learning_rate']:g}.\n"
            f"- Photometric loss (1 - NCC, the score tiles, the field smoothed by {c.get('field_smoothing', 0):g} apparent bead "
            f"sizes): {a['photometric_before']:.4f} before, {a['photometric_after']:.4f} after.\n"
            f"- Poisson ratio {a['poisson_ratio']:g}; loss weights {c['loss']}.\n"
            "- Use it on stacks like these (same microscope, beads and gel); the base model's card states the rest.\n"
            + ("" if a["step"] == 0 else
               "- Check it before trusting it: on synthetic pairs with known truth, steps that passed this selection "
               "made some pairs worse as well as one better (docs/learned.md, section 8); compare its field with the "
               "base model's and the classical one on these stacks.\n"))


def _open_base(model, poisson_ratio, cfg: AdaptConfig):
    """The base model: (path, model.json, net)."""
    base_path, desc = store.open_model(infer.DEFAULT_MODEL if model is None else model, MODEL_KIND)
    net = infer.load_model(base_path)
    if not 0 < float(poisson_ratio) < 0.5:
        raise ValueError(f"poisson_ratio must lie in (0, 0.5), got {poisson_ratio}")
    if cfg.crop % net.config.multiple:
        raise ValueError(f"crop must be a multiple of {net.config.multiple} for this model (LK voxels), got {cfg.crop}")
    return base_path, desc, net


def adapt(pairs, spacing_um, out_dir, model=None, poisson_ratio: float = 0.45, cells=None,
          config: AdaptConfig = AdaptConfig(), progress=None, max_steps: int | None = None) -> dict:
    """Fine-tune a model on unlabelled pairs; writes ``out_dir/model`` (a saved model that
    :func:`tfm.nn.infer.predict`, ``tfm.reconstruct(..., method="dl", model=out_dir)`` and
    ``tfm reconstruct --model`` take). Calling again with the same arguments resumes.

    Args:
      pairs: list of ``(reference, deformed)`` (Z, Y, X) bead volumes.
      spacing_um: the voxel size (z, y, x) in µm (or a Grid), one for all pairs or a list.
      out_dir: run directory (created; checkpoints, metrics.jsonl, model/).
      model: the base model (a saved model or run directory; None: the shipped one).
      poisson_ratio: of the gel (the network's Poisson channel).
      cells: optional list (one per pair) of bool cell masks or None: where forces may be.
      config: :class:`AdaptConfig`.
      max_steps: stop after this many steps in total (a later call resumes).

    Returns a summary dict: steps, photometric loss before and after, model_dir, seconds.
    """
    import time

    t0 = time.perf_counter()
    cfg = config
    base_path, desc, net = _open_base(model, poisson_ratio, cfg)
    prepared = prepare_pairs(pairs, spacing_um, net, float(poisson_ratio), cells, cfg.cell_dilate_um, cfg.crop, cfg.levels)
    run = Path(out_dir)
    store.claim_run(run, {"adapt": configs.to_dict(cfg), "base_model": str(Path(base_path).resolve()),
                          "pairs": [p["hash"] for p in prepared], "poisson_ratio": float(poisson_ratio),
                          "cells": [p["cell"] for p in prepared]})
    anchor = jax.tree.map(jnp.array, nnx.state(net, nnx.Param))
    spe = min(cfg.eval_every, cfg.steps)
    epochs = -(-cfg.steps // spe)
    optimizer = nnx.Optimizer(net, make_optimizer(cfg.optim, epochs * spe), wrt=nnx.Param)
    base = infer.load_model(base_path) if cfg.ignore_affine else None  # a frozen copy
    score = _scorer(net, prepared, anchor, cfg, float(poisson_ratio), base)
    before_file = run / "before.json"
    if before_file.is_file():
        before = json.loads(before_file.read_text())
    else:
        before = score()
        write_text(before_file, json.dumps(before))
    base_card = {k: v for k, v in desc.get("card", {}).items() if k != "adapted"}

    def batch_at(s):
        return crop_batch(prepared, np.random.default_rng([cfg.seed, s]), cfg.batch_size, cfg.crop, float(poisson_ratio),
                          cfg.field_smoothing)

    def save_best(row, base: bool = False):
        if not base and not row["val"]["loss"] < before["loss"] * (1 - cfg.min_gain):
            return  # only a clear gain over the base model on the score tiles replaces it
        card = {**base_card, "spacing_um": list(net.config.spacing_um),
                "adapted": {"base_model": str(base_path), "base_card": base_card,
                            "pairs": [{k: p[k] for k in ("hash", "shape", "spacing_um", "cell", "bead_sigma_um")}
                                      for p in prepared],
                            "step": row["step"], "total_steps": epochs * spe, "photometric_before": before["photometric"],
                            "photometric_after": row["val"]["photometric"], "score_before": before, "score_after": row["val"],
                            "poisson_ratio": float(poisson_ratio), "config": configs.to_dict(cfg)}}
        path = store.save_model(run / "model", net, MODEL_KIND, configs.to_dict(net.config), card)
        write_text(path / "MODEL_CARD.md", _card_markdown(card))

    names = ["loss", "photometric"] + [k for k in ("consistency", "equilibrium", "sparsity", "navier", "anchor")
                                       if getattr(cfg.loss, k) > 0]
    out = loop.fit(run, net, optimizer, epochs=epochs, steps_per_epoch=spe, checkpoint_every=cfg.checkpoint_every,
                   names=names, batch_at=batch_at,
                   step=lambda batch, s: adapt_step(net, optimizer, _to_device(batch), anchor, cfg, base),
                   evaluate=score, learning_rate=schedule(cfg.optim, epochs * spe), save_best=save_best, progress=progress,
                   max_steps=max_steps,
                   epoch_message=lambda r: f"photometric {r['val']['photometric']:.4f} (before {before['photometric']:.4f})")
    model_dir = run / "model"
    if out["finished"] and not (model_dir / "model.json").is_file():  # no step scored better: keep the base weights
        nnx.update(net, anchor)
        save_best({"step": 0, "val": before}, base=True)
    after = None
    if (model_dir / "model.json").is_file():
        after = store.read_description(model_dir)["card"]["adapted"]["photometric_after"]
    return {**out, "photometric_before": before["photometric"], "photometric_after": after,
            "model_dir": str(model_dir) if after is not None else None,
            "seconds_total": time.perf_counter() - t0}
