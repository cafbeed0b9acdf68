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
  the predicted ``u`` (:func:`photometric_loss`; local normalised cross-correlation in
  Gaussian windows of ``ncc_sigma`` working voxels, weighted by the reference's local
  texture, so background, gain and photobleaching drop out and bead-free regions do not
  count), on the working grid: the network's displacement (on the LK grid) is interpolated
  to the working voxels, smoothed at the scale of a bead's image (``field_smoothing``
  apparent bead sizes, :func:`apparent_bead_size` of the
  reference), and pulls the deformed volume back. Why smoothed: each bead's image moves
  as a whole with the gel at the bead, while a warp by the pointwise field stretches it
  where the field varies within the image (near a cell, and along z under a long PSF).
  There the photometric optimum is nearer the field blurred at the bead-image scale than
  the field itself (tested on rendered whole-bead images), and adapting to it made the
  largest-motion synthetic pair 40 % worse near its cell. Smoothed first, the term leaves
  structure finer than a bead's image to the network and the priors. Voxels whose motion
  reads beyond the deformed stack's data are compared with the zeros there, which favours
  fields that move less at the faces (the true field lost 0.06 -> 0.37 on a low-NA pair's
  last planes). ``data_mask=True`` leaves them out (:func:`inside_data`, by the front
  end's measured motion, the same for every model); it stays off because it made
  adaptation worse: without those voxels' large, constant loss the relative gains of the
  selection rule grow, and on the bright and low-NA synthetic sets 7 of 8 pairs each were
  adapted, 6 and 7 of them made more than 5 % worse (benchmarks/results/adapt.notes.md);
* ``consistency``: the predicted force against the force the constitutive layer implies
  from the predicted displacement (:func:`tfm.nn.physics.implied_force`), relative;
* ``equilibrium``: net force and torque of the predicted force, relative to its L1 norm;
* ``sparsity``: with a cell mask, the share of ``|f|`` outside the (dilated) cell; without
  one, ``mean |f| / rms |f|`` (a scale-free sparsity measure);
* ``navier`` (off by default): with a cell mask, the body force the predicted ``u``
  implies outside the (dilated) cell (:func:`navier_prior`), which the matrix cannot carry;
* ``anchor``: ``|theta - theta_0|^2 / |theta_0|^2``, a pull toward the synthetic-trained
  weights, so adaptation refines the model instead of drifting into a trivial solution
  (the photometric term alone is blind where there are no beads).

The field differentiated is the network's, exactly as ``predict`` runs it: the motion front
end (:mod:`tfm.nn.flow`, no parameters) measures each pair once, and the network maps crops
of its LK grid to displacement and force. The deformed crop is read with a margin, so
warping never samples outside the data the crop sees.

``trainable`` names the parameters adapted (default all; e.g. ``"head,support"``, the output
layers only, a few thousand parameters instead of 680 000). Fewer degrees of freedom do
not stop the field leaving the truth: on the low-NA synthetic set, the output layers alone
lowered the photometric term on 7 of 8 pairs and made 5 of them more than 5 % worse
(benchmarks/results/adapt_blurry_head.md).

``ignore_affine=True`` shows the photometric term the base model's field plus the change
less its least-squares affine part per crop (:func:`non_affine`; a frozen copy of the base
model runs beside the adapted one): drift or axial scaling the stacks' drift model left in
is then no lesson for the gel's field. Measured (benchmarks/results/adapt.notes.md): with it
the dim, bright and low-NA sets keep the base on 23 of 24 pairs, and the harms and the one
gain without it go -- they were that affine motion moving between drift and field.

No labelled synthetic batches are mixed in: the anchor keeps what they taught, at none of
their cost (a labelled batch at the training size costs as much as an adaptation step), and
the adapted model then depends only on the user's pairs and the base model.

Runs use the shared epoch loop (:mod:`tfm.learn.loop`): one "epoch" is ``eval_every``
steps, after which the score tiles are scored: every ``crop``³ tile of each pair's LK grid
(at most ``eval_crops`` per pair, an even random subset beyond that; :func:`score_tiles`).
The whole volume, not a few crops: on a bright synthetic pair a step scored 4.6 % better
than the base model on 4 fixed crops and 0.3 % better over the whole volume, and its
displacement error was 1.17x the base's. The score that selects is the
photometric term alone (``select="photometric"``): the priors are what the adaptation is
told, the images are the evidence. A step replaces the base model only if it lowers that
score by ``min_gain`` (2 %) of the base model's: on the out-of-range synthetic pairs, gains
of 0.4-1.9 % came with displacement errors 10-45 % larger on 4 of 5 pairs (the field
fitting the pair's noise), the one clear gain (4.1 %) with an error 38 % smaller
(benchmarks/results/adapt.notes.md). The margin limits harm; it does not rule it out: on
a bright pair (1500-5000 photons) a whole-volume gain of 3 % came with an error 1.33x the
base's, the images being no guide at that pair's error of 0.02 µm, and under a low-NA
objective (bead images 10 µm long) a gain of 13.6 % with an error 1.12x the base's. The
selected model (the base weights where no step qualifies) is written to ``OUT/model`` with
a model card (base model, pairs by content hash, steps, the photometric loss before and
after). Checkpoints every ``checkpoint_every`` steps; the same
call resumes a killed run exactly (crops and flips of step ``s`` draw from
``rng([seed, s])``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import ndimage

from ..atomic import write_text
from ..grid import Grid
from ..learn import config as configs
from ..learn import loop, store
from ..learn.optim import OptimConfig, make_optimizer, schedule
from ..classical.dvc import check_pair
from ..classical.texture import autocorrelation_sigma
from . import infer, physics
# the differentiable field and the loss on the working grid, re-exported (adapt.warp, ...)
from .photometric import (blur, inside_data, photometric_loss, smooth_field, smoothing_matrices,  # noqa: F401
                          upsample2, warp)

MODEL_KIND = "tfm.unet3d"
MARGIN = 8  # working voxels of deformed-volume context around each crop


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
    interpolation: str = "linear"  # photometric: how the deformed volume is sampled, "linear" or "cubic" (Keys)
    data_mask: bool = False  # photometric: leave out voxels whose measured motion reads beyond the deformed data
    field_smoothing: float = 1.0  # photometric: the field is smoothed by this many apparent bead sizes before it warps (0: not)
    levels: object = "auto"  # the motion front end's pyramid, as predict's
    cell_dilate_um: float = 3.0  # sparsity: forces allowed this far from the cell mask
    eval_every: int = 25  # steps between scores on the score tiles
    holdout: bool = False  # train on one colour of a checkerboard of crop³ tiles, score on the other
    eval_crops: int = 64  # score tiles per pair, at most: all crop³ tiles of its LK grid where it has no more
    select: str = "photometric"  # the score that selects the model: the photometric term, or the whole "objective"
    min_gain: float = 0.02  # a step replaces the base model only if it lowers that score by this fraction of the base's
    checkpoint_every: int = 25
    seed: int = 0
    trainable: str = "all"  # the parameters adapted: "all", or comma-separated top-level modules (e.g. "head,support")
    ignore_affine: bool = False  # photometric: the base field plus the change less its affine part per crop

    def __post_init__(self):
        configs.check_counts(self, ("steps", "crop", "batch_size", "eval_every", "eval_crops", "checkpoint_every"))
        infer.check_levels(self.levels)
        if not float(self.ncc_sigma) > 0:
            raise ValueError(f"ncc_sigma must be > 0 (voxels), got {self.ncc_sigma}")
        if self.select not in ("photometric", "objective"):
            raise ValueError(f"select must be 'photometric' or 'objective', got {self.select!r}")
        if self.interpolation not in ("linear", "cubic"):
            raise ValueError(f"interpolation must be 'linear' or 'cubic', got {self.interpolation!r}")
        if not 0 <= float(self.min_gain) < 1:
            raise ValueError(f"min_gain must lie in [0, 1), got {self.min_gain}")
        if not float(self.field_smoothing) >= 0:
            raise ValueError(f"field_smoothing must be >= 0 (apparent bead sizes), got {self.field_smoothing}")
        if not float(self.cell_dilate_um) >= 0:
            raise ValueError(f"cell_dilate_um must be >= 0, got {self.cell_dilate_um}")
        if not isinstance(self.trainable, str) or not self.trainable.strip():
            raise ValueError(f"trainable must be 'all' or comma-separated module names, got {self.trainable!r}")


def trainable_filter(trainable: str):
    """The nnx filter of the parameters :class:`AdaptConfig` ``trainable`` names."""
    if trainable == "all":
        return nnx.Param
    return nnx.All(nnx.Param, nnx.Any(*[nnx.PathContains(n.strip()) for n in trainable.split(",")]))


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
    warped = warp(batch["context_volume"], u_w, MARGIN, cfg.interpolation == "cubic")
    valid = None
    if cfg.data_mask:  # where the measured motion (no parameters: the same for every model) reads the deformed data
        u_m = smooth_field(upsample2(batch["motion"] * batch["to_working"][:, None, None, None, :] + batch["drift"],
                                     shape), batch["smooth"])
        valid = inside_data(u_m, batch["data_lo"], batch["data_hi"], MARGIN)
    terms = {"photometric": jnp.mean(photometric_loss(batch["reference"], warped, cfg.ncc_sigma, valid=valid))}
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
        terms["anchor"] = _param_distance(nnx.state(model, trainable_filter(cfg.trainable)), anchor)
    return sum(getattr(w, k) * v for k, v in terms.items()), terms


@nnx.jit(static_argnames=("cfg",))
def adapt_step(model, optimizer, batch, anchor, cfg, base=None):
    wrt = nnx.DiffState(0, trainable_filter(cfg.trainable))
    (loss, terms), grads = nnx.value_and_grad(lambda m: adapt_losses(m, batch, anchor, cfg, base), argnums=wrt,
                                              has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, terms


@nnx.jit(static_argnames=("cfg",))
def score_step(model, batch, anchor, cfg, base=None):
    return adapt_losses(model, batch, anchor, cfg, base)


# -- the pairs ---------------------------------------------------------------------------------


def content_hash(reference, deformed) -> str:
    """SHA-256 of a pair's arrays (dtype, shape and bytes of both): names the pair in the card."""
    h = hashlib.sha256()
    for v in (reference, deformed):
        v = np.ascontiguousarray(v)
        h.update(f"{v.dtype.str}{v.shape}".encode())
        h.update(memoryview(v).cast("B"))
    return h.hexdigest()


def _grids(spacing_um, pairs) -> list:
    if spacing_um is None:
        raise ValueError("spacing_um: give the voxel size (z, y, x) in µm, one for all pairs or one per pair "
                         "(tfm never guesses a voxel size)")
    if isinstance(spacing_um, Grid) or np.ndim(spacing_um) <= 1:
        spacing_um = [spacing_um] * len(pairs)
    if len(spacing_um) != len(pairs):
        raise ValueError(f"spacing_um: {len(spacing_um)} voxel sizes for {len(pairs)} pairs")
    return [s.spacing_um if isinstance(s, Grid) else s for s in spacing_um]


def apparent_bead_size(volume, grid, max_shape=(64, 256, 256)) -> np.ndarray:
    """(z, y, x) µm: the Gaussian sigma of a bead's image (bead and PSF together) in a bead
    volume, from the autocorrelation (:func:`tfm.classical.texture.autocorrelation_sigma`)
    of its central ``max_shape`` voxels, as acquired: the camera's noise is white there (on
    the working grid the anti-aliasing blur correlates it and biases the estimate), and a
    few thousand beads suffice."""
    return autocorrelation_sigma(volume, most=max_shape) * np.asarray(grid.spacing_um)


def prepare_pairs(pairs, spacing_um, net, poisson_ratio: float, cells=None, dilate_um: float = 3.0, crop: int = 16,
                  levels="auto") -> list:
    """Each pair as the network sees it (:func:`tfm.nn.infer.prepare`: the working volumes and
    the measured motion) plus the "outside the cell" weight of the sparsity term on the LK grid."""
    if not pairs:
        raise ValueError("pairs: give at least one (reference, deformed) pair")
    cells = [None] * len(pairs) if cells is None else list(cells)
    if len(cells) != len(pairs):
        raise ValueError(f"cells: {len(cells)} cell masks for {len(pairs)} pairs (None where there is none)")
    out = []
    for k, ((ref, dfm), h, cell) in enumerate(zip(pairs, _grids(spacing_um, pairs), cells)):
        try:
            ref, dfm, grid, mask = check_pair(ref, dfm, h, cell)
        except ValueError as exc:
            raise ValueError(f"pair {k}: {exc}") from None
        prep = infer.prepare(ref, dfm, grid, net, levels, mask=mask)
        motion, context, rel, h_lk = infer.network_inputs(prep, poisson_ratio, "linear")
        lk_shape = tuple(max(1, n // 2) for n in prep["work"].shape)
        if min(lk_shape) < crop:
            raise ValueError(f"pair {k}: its LK grid {lk_shape} ({tuple(prep['lk'].spacing_um)} µm) is smaller than the "
                             f"crop {crop}; give a smaller crop (a multiple of the network's factor)")
        outside = np.ones(motion.shape[:3], np.float32)
        if mask is not None:
            m = prep["cell_lk"]
            if dilate_um > 0:
                m = ndimage.binary_dilation(m, iterations=max(1, int(round(dilate_um / min(prep["lk"].spacing_um)))))
            outside = (~m).astype(np.float32)
        to_working = (h_lk / (np.asarray(prep["lk"].spacing_um) / 2)).astype(np.float32)
        bead_sigma = apparent_bead_size(ref, grid) / np.asarray(prep["work"].spacing_um)
        out.append({"reference": prep["reference"], "deformed": prep["deformed"], "motion": motion, "context": context,
                    "drift": prep["drift_voxels"] + prep["translation"],  # what the network's u lacks
                    "rel": rel, "to_working": to_working, "lk_shape": lk_shape, "outside": outside,
                    "bead_sigma": bead_sigma,  # apparent bead size, working voxels (z, y, x)
                    "bead_sigma_um": [float(a * b) for a, b in zip(bead_sigma, prep["work"].spacing_um)],
                    "hash": content_hash(ref, dfm), "shape": list(ref.shape), "spacing_um": list(grid.spacing_um),
                    "cell": mask is not None})
    return out


def tile_origins(lk_shape, crop: int, parity: int | None = None) -> list:
    """Origins (LK voxels) of the ``crop``³ tiles that cover an LK grid of ``lk_shape``: a
    regular tiling, the last tile along each axis flush with the far face. ``parity`` 0 or 1:
    only the tiles of that colour of the checkerboard (tile indices summing to even / odd)."""
    starts = [sorted({*range(0, n - crop + 1, crop), n - crop}) for n in lk_shape]
    return [(a, b, c) for i, a in enumerate(starts[0]) for j, b in enumerate(starts[1]) for k, c in enumerate(starts[2])
            if parity is None or (i + j + k) % 2 == parity]


def split_tiles(lk_shape, crop: int, holdout: bool) -> tuple[list, list]:
    """(training tiles, score tiles) of a pair: with ``holdout``, the two colours of the
    checkerboard of :func:`tile_origins` (the scores then judge the adapted model on voxels,
    and noise, it never trained on); without, or where a pair has a single tile, ``(None,
    all tiles)``: training crops anywhere."""
    tiles = tile_origins(lk_shape, crop)
    if not holdout or len(tiles) < 2:
        return None, tiles
    return tile_origins(lk_shape, crop, 0), tile_origins(lk_shape, crop, 1)


def crop_at(p: dict, origin, crop: int, nu: float, smoothing: float = 1.0) -> dict:
    """The crop of ``crop``³ LK voxels at ``origin`` of a prepared pair ``p``, batched (N=1):
    the network's inputs there, the drift removed before them (working voxels), the
    working-grid reference, the deformed volume with ``MARGIN`` working voxels of context (0
    beyond the volume; ``data_lo``, ``data_hi``: the box of its data), the outside weight,
    the field's smoothing matrices (``smoothing`` apparent bead sizes, at most a quarter of
    the crop; built once per size). (No flips: the measured motion is tied to the volumes'
    orientation and to the model's.)"""
    c2 = 2 * crop
    sl = tuple(slice(a, a + crop) for a in origin)
    ow = [2 * a for a in origin]
    slw = tuple(slice(a, a + c2) for a in ow)
    shape = p["deformed"].shape
    ctx = np.zeros((c2 + 2 * MARGIN,) * 3, np.float32)
    src = tuple(slice(max(a - MARGIN, 0), min(a + c2 + MARGIN, s)) for a, s in zip(ow, shape))
    dst = tuple(slice(sr.start - (a - MARGIN), sr.stop - (a - MARGIN)) for sr, a in zip(src, ow))
    ctx[dst] = p["deformed"][src]
    out = {"motion": p["motion"][sl], "context": p["context"][sl], "drift": p["drift"][sl], "outside": p["outside"][sl],
           "reference": p["reference"][slw], "context_volume": ctx, "rel": p["rel"], "to_working": p["to_working"],
           "smooth": _smoothing(c2, tuple(np.minimum(smoothing * p["bead_sigma"], c2 / 4).tolist())),
           "data_lo": [d.start for d in dst], "data_hi": [d.stop - 1 for d in dst]}  # the data in the context volume
    out = {k: np.ascontiguousarray(v, np.float32)[None] for k, v in out.items()}
    out["nu"] = np.full((1,), nu, np.float32)
    return out


@functools.lru_cache(maxsize=64)
def _smoothing(n: int, sigma_voxels: tuple) -> np.ndarray:
    """:func:`smoothing_matrices`, once per crop size and bead size: every crop of a pair
    (each step's, each score tile's) shares them. Read-only."""
    m = smoothing_matrices(n, sigma_voxels)
    m.flags.writeable = False
    return m


def stack_batches(batches: list) -> dict:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def crop_batch(prepared, rng: np.random.Generator, n: int, crop: int, nu: float, smoothing: float = 1.0,
               tiles: list | None = None) -> dict:
    """``n`` random crops (:func:`crop_at`; pair and origin drawn from ``rng``); where
    ``tiles`` (one list of origins, or None, per pair) names a pair's training tiles, its
    crops are those tiles."""
    out = []
    for _ in range(n):
        k = int(rng.integers(len(prepared)))
        p = prepared[k]
        if tiles is not None and tiles[k] is not None:
            origin = tiles[k][int(rng.integers(len(tiles[k])))]
        else:
            origin = [int(rng.integers(0, s - crop + 1)) for s in p["lk_shape"]]
        out.append(crop_at(p, origin, crop, nu, smoothing))
    return stack_batches(out)


# -- the run -----------------------------------------------------------------------------------


def _to_device(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items()}


def score_tiles(prepared, crop: int, most: int, seed: int = 0, holdout: bool = False) -> list:
    """(pair index, origin) of the tiles the scores run on: every ``crop``³ tile of each
    pair's LK grid (:func:`tile_origins`; with ``holdout`` those :func:`split_tiles` keeps
    from training), or, where a pair has more than ``most``, an even random subset of
    ``most`` of them (the same for every call with this ``seed``)."""
    out = []
    for k, p in enumerate(prepared):
        tiles = split_tiles(p["lk_shape"], crop, holdout)[1]
        if len(tiles) > most:
            pick = np.sort(np.random.default_rng([seed, 10**6, k]).choice(len(tiles), most, replace=False))
            tiles = [tiles[i] for i in pick]
        out += [(k, o) for o in tiles]
    return out


def _scorer(net, prepared, anchor, cfg: AdaptConfig, poisson_ratio: float, base=None):
    """() -> the mean terms over the score tiles of every pair (:func:`score_tiles`, the same
    at every call); ``loss``, what selects the model, is the term ``cfg.select`` names, and
    ``objective`` the whole objective."""
    tiles = score_tiles(prepared, cfg.crop, cfg.eval_crops, cfg.seed, cfg.holdout)

    def score() -> dict:
        sums = {}
        for k, o in tiles:
            c = crop_at(prepared[k], o, cfg.crop, poisson_ratio, cfg.field_smoothing)
            loss, terms = score_step(net, _to_device(c), anchor, cfg, base)
            for name, v in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0.0) + float(v)
        out = {name: v / len(tiles) for name, v in sums.items()}
        out["objective"] = out["loss"]
        if cfg.select == "photometric":
            out["loss"] = out["photometric"]
        return out

    return score


def _card_markdown(card: dict) -> str:
    a = card["adapted"]
    rows = "\n".join(f"| {p['hash'][:16]} | {' x '.join(map(str, p['shape']))} | {', '.join(f'{h:g}' for h in p['spacing_um'])} "
                     f"| {', '.join(f'{h:.2f}' for h in p.get('bead_sigma_um', []))} | {'yes' if p['cell'] else 'no'} |"
                     for p in a["pairs"])
    c = a["config"]
    chosen = (f"the base weights kept: no step lowered the {c.get('select', 'objective')} score on the score tiles by "
              f"{c.get('min_gain', 0):.0%}" if a["step"] == 0 else
              f"selected: lowest {c.get('select', 'objective')} score on the score tiles")
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
    if not jax.tree.leaves(nnx.state(net, trainable_filter(cfg.trainable))):
        raise ValueError(f"trainable={cfg.trainable!r} names no parameters of this model")
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
    anchor = jax.tree.map(jnp.array, nnx.state(net, trainable_filter(cfg.trainable)))
    spe = min(cfg.eval_every, cfg.steps)
    epochs = -(-cfg.steps // spe)
    optimizer = nnx.Optimizer(net, make_optimizer(cfg.optim, epochs * spe), wrt=trainable_filter(cfg.trainable))
    base = infer.load_model(base_path) if cfg.ignore_affine else None  # a frozen copy
    score = _scorer(net, prepared, anchor, cfg, float(poisson_ratio), base)
    before_file = run / "before.json"
    if before_file.is_file():
        before = json.loads(before_file.read_text())
    else:
        before = score()
        write_text(before_file, json.dumps(before))
    base_card = {k: v for k, v in desc.get("card", {}).items() if k != "adapted"}

    train_tiles = [split_tiles(p["lk_shape"], cfg.crop, cfg.holdout)[0] for p in prepared]

    def batch_at(s):
        return crop_batch(prepared, np.random.default_rng([cfg.seed, s]), cfg.batch_size, cfg.crop, float(poisson_ratio),
                          cfg.field_smoothing, train_tiles)

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
