"""Inference with a trained 3D network: any volume size, any voxel size, bounded memory.

``predict(reference, deformed, spacing_um, material)`` runs the shipped default model (or
one from ``tfm train``) and returns a :class:`~tfm.result.Result` on the input grid:

1. Both volumes are normalised once, globally (:func:`~tfm.nn.unet3d.normalise_pair`).
2. If the voxel size differs from the model's training voxel size by more than 1 %, the
   volumes are resampled to the model's voxel size (:func:`working_pair`: a Gaussian
   anti-alias prefilter along each axis that shrinks, then trilinear) and the fields are
   interpolated back at the end: bead images look different at another scale, and the
   network works in voxel units. Without the prefilter a bead smaller than a working voxel
   is point-sampled and flickers as it moves; on the FM-Track pair (0.29 µm in-plane voxels
   to 1 µm) the shipped network's agreement with the DVC rose from r = -0.08 / 0.31 / 0.36
   (z / y / x) to 0.34 / 0.90 / 0.86 with it, nothing else changed.
3. The volume is cut into overlapping cubic tiles (``tile`` voxels, a multiple of the
   network's pooling factor; ``overlap`` voxels shared by neighbours; by default one tile
   where the volume holds at most ``WHOLE_TILE_VOXELS``). Each tile is
   predicted on its own -- one compiled shape for every tile -- and the tiles are blended
   with weights that ramp linearly across the overlap, so seams do not show and memory is
   bounded by one tile plus the output arrays. Volumes smaller than a tile are zero-padded
   (zero is the background after normalisation). The shipped network's output feels a cut
   face up to ~24 voxels in (measured: 8 % RMS deviation 8 voxels from the cut, 1.4 % at
   24), so tiles should be 64 voxels or more: 64³ tiles with 32 overlap reproduce a whole
   96³ pass to 2.3 % (u) and 2.6 % (f); smaller tiles raise a warning.
4. Network units become physical ones: ``u = u_voxels * h`` (µm) and ``f = g E / h``
   (pN/µm³) for the material's Young's modulus ``E``.

Around the pass (see :func:`predict` and docs/learned.md): constant or structureless
volumes are refused; the whole-volume shift, rounded to voxels, is taken out before the
network and added back; the network's answer to no motion is subtracted
(``zero_motion``); drift is removed as the DVC removes it; a per-voxel confidence
(:mod:`tfm.nn.confidence`) is returned in ``info``.
"""

from __future__ import annotations

import math
import time
import warnings
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import ndimage

from ..classical import correlation
from ..classical import drift as drift_models
from ..classical.dvc import check_pair
from ..fields import resample
from ..grid import Grid
from ..learn import config as configs
from ..learn import store
from ..material import LinearElastic, NeoHookean
from ..progress import resolve
from ..result import Result
from .confidence import confidence_map
from .unet3d import ModelConfig, UNet3D, normalise_pair

ZERO_MOTION = ("baseline", "odd", None)
MIN_TILE = 64  # smallest tile edge whose blended result matches a whole-volume pass (see the module docs)
# Default tiling: a volume of up to this many voxels (on the working grid, rounded up to the
# network's multiple) is one tile -- no seams, and on the FM-Track pair (144 x 152 x 152
# working voxels) 19.6 s against 32.6 s in 128³ tiles at about the same peak (3.4 / 3.3 GB:
# the full-resolution fields dominate); larger volumes are cut into 128³ tiles.
WHOLE_TILE_VOXELS = 160**3
DEFAULT_TILE = 128
DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "default"


def load_model(path=None) -> UNet3D:
    """A trained :class:`UNet3D` from a saved-model directory (default: the shipped one).

    ``path`` may also be a run directory of ``tfm train`` (its ``model/`` is used)."""
    path, desc = store.open_model(DEFAULT_MODEL if path is None else path, "tfm.unet3d")
    model = UNet3D(configs.from_dict(ModelConfig, desc["config"]))
    store.load_weights(path, model)
    return model


def _starts(n: int, tile: int, overlap: int) -> list:
    if n <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(starts))


def _ramp(n: int, overlap: int, lo_edge: bool, hi_edge: bool) -> np.ndarray:
    """1D blending weight of a tile. On a side shared with a neighbour the outer quarter of
    the overlap gets weight 0 (those voxels saw the tile's edge, not their whole
    neighbourhood) and the weight then rises linearly to 1 at ``overlap - overlap // 4``;
    on the volume's own faces it is 1."""
    w = np.ones(n, np.float32)
    if overlap > 0:
        m = overlap // 4
        r = np.clip((np.arange(overlap, dtype=np.float32) + 0.5 - m) / max(overlap - 2 * m, 1), 0.0, 1.0)
        if not lo_edge:
            w[:overlap] = np.minimum(w[:overlap], r)
        if not hi_edge:
            w[-overlap:] = np.minimum(w[-overlap:], r[::-1])
    return w


@partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, ref, dfm, nu):
    """One forward pass; the architecture (``graphdef``) is static, the weights an argument,
    so a model updated in place is always run with its current weights."""
    model = nnx.merge(graphdef, state)
    return model(model.features(ref, dfm, nu))


def _tile_pass(graphdef, state, ref, dfm, nu, zero_motion):
    """One tile through the network, with the ``zero_motion`` correction of :func:`predict`
    (its second pass run after the first, the same compiled shape: memory as one pass)."""
    r, d = jnp.asarray(ref)[None], jnp.asarray(dfm)[None]
    out = np.asarray(_forward(graphdef, state, r, d, nu)[0])
    if zero_motion == "baseline":
        out = out - np.asarray(_forward(graphdef, state, r, r, nu)[0])
    elif zero_motion == "odd":
        out = 0.5 * (out - np.asarray(_forward(graphdef, state, d, r, nu)[0]))
    return out


def predict_network_units(model: UNet3D, reference, deformed, poisson_ratio: float, tile: int = 64, overlap: int = 16,
                          progress=None, zero_motion=None):
    """Normalised volumes on the model's voxel grid -> (u_voxels, g) arrays (Z, Y, X, 3), tiled;
    ``zero_motion``: see :func:`predict`."""
    if zero_motion not in ZERO_MOTION:
        raise ValueError(f"zero_motion must be one of {ZERO_MOTION}, got {zero_motion!r}")
    mult = model.config.multiple
    if tile % mult or tile < mult:
        raise ValueError(f"tile must be a positive multiple of {mult} for this model, got {tile}")
    if not 0 <= overlap < tile // 2 + 1:
        raise ValueError(f"overlap must lie in [0, tile/2], got {overlap}")
    shape = reference.shape
    if tile < MIN_TILE and any(n > tile for n in shape):
        warnings.warn(f"tile {tile} is smaller than {MIN_TILE} voxels: the network's context reaches ~24 voxels "
                      "from a tile's face, so tiled results deviate from a whole-volume pass; use tile >= 64",
                      stacklevel=3)
    # Per axis: the tile length actually used (volumes smaller than a tile: one padded tile).
    sizes = [min(tile, -(-n // mult) * mult) for n in shape]
    pads = [max(s - n, 0) for s, n in zip(sizes, shape)]
    ref = np.pad(reference, [(0, p) for p in pads])
    dfm = np.pad(deformed, [(0, p) for p in pads])
    full = ref.shape
    starts = [_starts(n, s, overlap) for n, s in zip(full, sizes)]
    out = np.zeros(full + (6,), np.float32)
    wsum = np.zeros(full, np.float32)
    graphdef, state = nnx.split(model)
    nu = jnp.asarray([poisson_ratio], jnp.float32)
    total = int(np.prod([len(s) for s in starts]))
    with resolve(progress).task(total if total > 1 else 0, "dl tiles") as bar:
        for z in starts[0]:
            for y in starts[1]:
                for x in starts[2]:
                    o = (z, y, x)
                    sl = tuple(slice(a, a + s) for a, s in zip(o, sizes))
                    pred = _tile_pass(graphdef, state, ref[sl], dfm[sl], nu, zero_motion)
                    ws = [_ramp(s, overlap, a == 0, a + s == n) for a, s, n in zip(o, sizes, full)]
                    w = ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]
                    out[sl] += pred * w[..., None]
                    wsum[sl] += w
                    bar.update(1)
    out /= wsum[..., None]
    crop = tuple(slice(0, n) for n in shape)
    return out[crop][..., :3], out[crop][..., 3:]


MIN_LEVEL_EDGE = 24  # a pyramid level is used only while its smallest axis keeps this many voxels
LEVELS = ("auto", 1, 2, 3, 4)


def _downsample(v, factor: int):
    """Block mean over ``factor``³ voxels of a (Z, Y, X, ...) array (cropped to a multiple of it)."""
    if factor == 1:
        return v
    n = [k // factor for k in v.shape[:3]]
    c = v[: n[0] * factor, : n[1] * factor, : n[2] * factor]
    return c.reshape(n[0], factor, n[1], factor, n[2], factor, *v.shape[3:]).mean((1, 3, 5))


def _upsample(field, shape, factor: int):
    """A (z, y, x, C) field of a level ``factor`` coarser, trilinear at the voxel centres of
    ``shape`` (edge values held beyond the coarse centres)."""
    coords = [(np.arange(n) + 0.5) / factor - 0.5 for n in shape]
    grid = np.stack(np.meshgrid(*coords, indexing="ij"), 0)
    return np.stack([ndimage.map_coordinates(field[..., c], grid, order=1, mode="nearest") for c in range(field.shape[-1])], -1)


def warp(volume, u_vox):
    """``volume(x + u(x))`` (trilinear; the normalised background, 0, outside): the deformed
    volume pulled back by ``u``, which then looks like the reference where ``u`` is right."""
    coords = np.indices(volume.shape, dtype=np.float32) + np.moveaxis(u_vox, -1, 0)
    return ndimage.map_coordinates(volume, coords, order=1, mode="grid-constant", cval=0.0).astype(np.float32)


def check_levels(levels) -> None:
    """Refuse a ``levels`` value :func:`predict` does not take, by name."""
    if levels not in LEVELS or isinstance(levels, bool):
        raise ValueError(f"levels must be one of {LEVELS}, got {levels!r}")


def pyramid_levels(shape, levels) -> int:
    """The levels :func:`predict_pyramid` uses: ``levels`` (or 2 for ``"auto"``), but no
    more than keep the coarsest level's smallest axis at ``MIN_LEVEL_EDGE`` voxels. (A third
    level was measured to add nothing: on a 64³ Eshelby sphere reaching 1, 3 and 5 voxels,
    relative RMS error 0.25 / 0.53 / 0.73 with one level, 0.19 / 0.32 / 0.60 with two, and
    the same to 0.01 with three or four.)"""
    check_levels(levels)
    fit = 1 + max(0, int(math.floor(math.log2(max(min(shape), 1) / MIN_LEVEL_EDGE))))
    return min(2 if levels == "auto" else int(levels), fit)


def predict_pyramid(model: UNet3D, reference, deformed, poisson_ratio: float, levels: int, progress=None, **tile_options):
    """Coarse-to-fine: the same network at each level of a pyramid of block means (factor 2
    per level), the deformed volume of each finer level pulled back by the field found so far
    (:func:`warp`), so each level sees only a residual motion of about a voxel of its own --
    the regime the network was trained in -- however large the motion at full resolution.
    The displacement is the sum of the levels' residuals (in full-resolution voxels); the
    force too, each level's ``g`` rescaled to full-resolution units (``g = f h / E`` scales
    with the voxel size, and the residuals add for a linear law). Returns (u_voxels, g)."""
    shape = reference.shape
    u = g = None
    for level in range(levels - 1, -1, -1):
        factor = 2**level
        r, d = _downsample(reference, factor), _downsample(deformed, factor)
        if u is not None:
            d = warp(d, _downsample(u, factor) / factor if factor > 1 else u)
        du, dg = predict_network_units(model, r, d, poisson_ratio, progress=progress, **tile_options)
        if factor > 1:  # both fields in one pass: one set of sample coordinates
            both = _upsample(np.concatenate([du * factor, dg / factor], -1), shape, factor)
            du, dg = both[..., :3], both[..., 3:]
        u, g = (du, dg) if u is None else (u + du, g + dg)
    return u.astype(np.float32), g.astype(np.float32)


DRIFT_STEP = 8  # voxels of the working grid between the points the drift model is fitted to
BLANK_FRACTION = 0.01  # a volume pair whose confident voxels are fewer than this fraction shows no beads
# Two acquisitions of the same gel correlate (after the rigid shift, both smoothed by one
# voxel): 0.35 for the FM-Track pairs, 0.8-0.99 for synthetic ones; a blank, another
# channel or another field of view gives about 0 (|r| ~ 0.001 measured).
MIN_PAIR_CORRELATION = 0.05


def _shift(v, s):
    """``v`` moved by the integer shift ``s`` (voxels): ``out[x] = v[x + s]``, zero (the
    normalised background) where ``x + s`` leaves the volume."""
    out = np.zeros_like(v)
    src = tuple(slice(max(k, 0), n + min(k, 0)) for k, n in zip(s, v.shape))
    dst = tuple(slice(max(-k, 0), n - max(k, 0)) for k, n in zip(s, v.shape))
    out[dst] = v[src]
    return out


def _remove_drift(u_vox, confidence, mode, rigid, mask, work: Grid):
    """Drift (:mod:`tfm.classical.drift`, as the DVC removes it) fitted to the predicted
    field at a lattice of points ``DRIFT_STEP`` voxels apart (the confident ones,
    outside the cell), evaluated at every voxel and subtracted: ``(u, info)``."""
    shape = u_vox.shape[:3]
    counts = [1 if n == 1 else int(math.ceil((n - 1) / DRIFT_STEP)) + 1 for n in shape]
    axes = [np.linspace(0, n - 1, k) for n, k in zip(shape, counts)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    coords = np.moveaxis(centres, -1, 0)
    lat = np.stack([ndimage.map_coordinates(u_vox[..., c], coords, order=1) for c in range(3)], -1)
    valid = ndimage.map_coordinates(confidence, coords, order=1) > 0.5
    idx = tuple(np.round(coords).astype(int))
    if mask is not None:
        valid &= ~mask[idx]
    h = np.asarray(work.spacing_um)
    dist = drift_models.window_distances(centres, mask, h)
    info = {}
    if mode == "auto":
        centre = None if mask is None or not mask.any() else np.argwhere(mask).mean(0) * h
        mode, info["drift_evidence"] = drift_models.choose(lat, valid, centres, dist, shape, h, centre)
    corr, removed, extra = drift_models.correction(mode, lat, rigid, valid, centres, dist, shape)
    info.update(extra, drift_model=mode, drift_removed_voxels=np.asarray(removed, float).tolist())
    corr = np.asarray(corr, np.float32)
    if corr.ndim > 1:  # a field: from the lattice (spanning the volume) to every voxel
        corr = np.broadcast_to(corr, lat.shape)
        step = [(n - 1) / (k - 1) * hh if k > 1 else hh for n, k, hh in zip(shape, counts, h)]
        corr = resample(corr, Grid(tuple(counts), tuple(step), work.origin_um), work)
    return (u_vox - corr).astype(np.float32), info


def predict(reference, deformed, grid, material, model=None, tile: int | None = None, overlap: int | None = None,
            progress=None, drift: str | None = "auto", mask=None, zero_motion: str | None = "baseline",
            levels="auto") -> Result:
    """Bead volume pair -> displacement (µm) and force density (pN/µm³) with the network.

    Args:
      reference, deformed: (Z, Y, X) bead volumes (relaxed / deformed), any dtype.
      grid: the volumes' :class:`~tfm.grid.Grid`, or their voxel size (z, y, x) / one number, µm.
      material: the matrix, :class:`~tfm.material.LinearElastic` or :class:`~tfm.material.NeoHookean`.
      model: a :class:`UNet3D`, a saved-model or run directory, or None for the shipped model.
      tile: tile edge in voxels (default: the whole volume as one tile where it holds at most
        ``WHOLE_TILE_VOXELS`` working voxels, else 128).
      overlap: voxels shared by neighbouring tiles (blended; default min(32, tile / 2)).
      drift: removed from the predicted field as the DVC removes it (``"auto"``, ``"rigid"``,
        ``"median"``, ``"affine"``, ``"slicewise"`` or None; :mod:`tfm.classical.drift`),
        fitted at the confident points of the far field.
      mask: optional bool (Z, Y, X), True in the cell: where "far" is measured from, and left
        out of the drift fit (the network itself sees the cell as the bead-free region).
      zero_motion: what makes "no motion" read as zero. ``"baseline"`` (default): subtract
        the network's answer for the reference paired with itself, ``N(r, d) - N(r, r)``,
        so an identical pair gives zero and the texture alone reads as no force.
        ``"odd"``: ``(N(r, d) - N(d, r)) / 2``, the part that changes sign when the stacks
        are swapped (as the field does, to first order in the strain); right for a network
        trained with that symmetry -- the shipped one answers the swapped, expanding pair
        with almost no force, so "odd" halves its forces. None: one pass (half the cost).
      levels: coarse-to-fine pyramid (:func:`predict_pyramid`): ``"auto"`` (default: 2
        levels where the coarse one keeps ``MIN_LEVEL_EDGE`` voxels on its smallest axis) or
        a number; 1 runs the network once at full resolution.

    Before the network, the whole-volume phase-correlation shift (rounded to whole voxels)
    is taken out of the deformed volume and added back to the prediction, so a global drift
    of many voxels reaches the network as sub-voxel motion. ``info["confidence"]`` holds the
    per-voxel confidence (:mod:`tfm.nn.confidence`) on the result's grid. A constant volume,
    a pair that does not show the same beads (correlation below 0.05 after the rigid shift)
    or one with no bead structure (fewer than 1 % of the voxels confident) is refused.
    """
    t0 = time.perf_counter()
    ref, dfm, grid, mask = _check_inputs(reference, deformed, grid, material, mask, drift, zero_motion, levels)
    source = "in-memory model"
    if not isinstance(model, UNet3D):
        source = str(DEFAULT_MODEL if model is None else model)
        model = load_model(model)
    h_model = np.asarray(model.config.spacing_um)
    prep = prepare_pair(ref, dfm, grid, h_model)
    ref_n, work, rigid, step, dfm_a = prep["reference"], prep["grid"], prep["rigid"], prep["step"], prep["deformed"]
    pair_r, confidence = prep["pair_correlation"], prep["confidence"]
    if not tile:
        whole = [-(-n // model.config.multiple) * model.config.multiple for n in work.shape]
        tile = max(whole) if math.prod(whole) <= WHOLE_TILE_VOXELS else DEFAULT_TILE
    overlap = min(32, tile // 2) if overlap is None else overlap
    mask_w = None
    if mask is not None:
        mask_w = mask if work == grid else resample(mask.astype(np.float32), grid, work) > 0.5
    n_levels = pyramid_levels(ref_n.shape, levels)
    u_vox, g = predict_pyramid(model, ref_n, dfm_a, material.poisson_ratio, n_levels, progress=progress, tile=tile,
                               overlap=overlap, zero_motion=zero_motion)
    u_vox = u_vox + step.astype(np.float32)
    drift_info = {"drift_model": None, "drift_removed_voxels": [0.0, 0.0, 0.0]}
    if drift is not None:
        u_vox, drift_info = _remove_drift(u_vox, confidence, drift, rigid, mask_w, work)
    u = u_vox * h_model.astype(np.float32)
    f = g * np.float32(material.youngs_modulus_pa / float(np.exp(np.mean(np.log(h_model)))))
    if work != grid:
        u, f = resample(u, work, grid), resample(f, work, grid)
        confidence = np.clip(resample(confidence, work, grid), 0.0, 1.0)
    info = {"method": "dl", "model": source, "tile": tile, "overlap": overlap, "zero_motion": zero_motion, "levels": n_levels,
            "resampled_to_um": list(h_model) if work != grid else None, "youngs_modulus_pa": material.youngs_modulus_pa,
            "poisson_ratio": material.poisson_ratio, "rigid_shift_voxels": np.asarray(rigid, float).tolist(),
            "prealigned_voxels": step.tolist(), "drift": drift, **drift_info, "pair_correlation": pair_r,
            "confident_fraction": float(np.mean(confidence > 0.5)), "confidence": confidence.astype(np.float32),
            "time_s": time.perf_counter() - t0}
    return Result(grid=grid, displacement=u.astype(np.float32), force=f.astype(np.float32), info=info)


def _check_inputs(reference, deformed, grid, material, mask, drift, zero_motion, levels="auto"):
    ref, dfm, grid, mask = check_pair(reference, deformed, grid, mask)
    for name, v in (("reference", ref), ("deformed", dfm)):
        if v.size == 0 or float(v.max()) == float(v.min()):
            raise ValueError(f"{name} is empty or constant (no bead contrast for the network to follow)")
    if not isinstance(material, (LinearElastic, NeoHookean)):
        raise ValueError(f"material must be tfm.LinearElastic or tfm.NeoHookean, got {type(material).__name__}")
    if zero_motion not in ZERO_MOTION:
        raise ValueError(f"zero_motion must be one of {ZERO_MOTION}, got {zero_motion!r}")
    if drift not in drift_models.DRIFTS:
        raise ValueError(f"drift must be one of {drift_models.DRIFTS}, got {drift!r}")
    check_levels(levels)
    return ref, dfm, grid, mask


def working_grid(grid: Grid, h_model) -> Grid:
    """The grid the network sees: the model's voxel size over ``grid``'s extent (``grid``
    itself when its voxels are within 1 % of the model's)."""
    h = np.asarray(grid.spacing_um)
    if not np.any(np.abs(h / np.asarray(h_model) - 1) > 0.01):
        return grid
    return Grid(tuple(max(1, int(round(n * hh / hm))) for n, hh, hm in zip(grid.shape, h, h_model)),
                tuple(float(v) for v in h_model), grid.origin_um)


def working_pair(ref, dfm, grid: Grid, h_model):
    """Both volumes normalised, then resampled to :func:`working_grid`: ``(ref, dfm, working
    grid)`` -- what the network sees, in inference and in training on other voxel sizes."""
    h = np.asarray(grid.spacing_um)
    work = working_grid(grid, h_model)
    if work != grid and float(np.prod(h / h_model)) > 8:
        raise ValueError(f"the volumes' voxels {tuple(h)} µm are much coarser than the model's {tuple(h_model)} µm: it would "
                         f"see {float(np.prod(h / h_model)):.0f}x as many (interpolated) voxels; use a model trained at "
                         "about this voxel size, or the classical pipeline")
    ref_n, dfm_n = normalise_pair(ref, dfm)
    if work == grid:
        return ref_n, dfm_n, grid
    return resample(ref_n, grid, work, antialias=True), resample(dfm_n, grid, work, antialias=True), work


def prepare_pair(reference, deformed, grid: Grid, h_model) -> dict:
    """What the network is given, from a checked pair on ``grid``: both volumes normalised on
    the working grid (:func:`working_pair`), the deformed one moved back by the whole-voxel
    part of the whole-volume shift, and the refusals of :func:`predict`. Returns a dict:
    ``reference``, ``deformed`` (aligned), ``grid`` (working), ``rigid`` (the shift, working
    voxels), ``step`` (its whole voxels, taken out), ``pair_correlation``, ``confidence``."""
    ref_n, dfm_n, work = working_pair(reference, deformed, grid, h_model)
    rigid, step, dfm_a, pair_r, confidence = _align_and_check(ref_n, dfm_n)
    return {"reference": ref_n, "deformed": dfm_a, "grid": work, "rigid": rigid, "step": step, "pair_correlation": pair_r,
            "confidence": confidence}


def _align_and_check(ref_n, dfm_n):
    """The whole-volume shift, the deformed volume moved back by it (whole voxels), and the
    refusals of :func:`predict`: ``(shift, whole voxels, aligned deformed, r, confidence)``."""
    rigid = correlation.rigid_shift(ref_n, dfm_n) if min(ref_n.shape) >= 8 else np.zeros(3)
    step = np.round(rigid).astype(int)
    dfm_a = _shift(dfm_n, step) if np.any(step) else dfm_n
    pair_r = float(np.corrcoef(ndimage.gaussian_filter(ref_n, 1.0).ravel(), ndimage.gaussian_filter(dfm_a, 1.0).ravel())[0, 1])
    if not pair_r >= MIN_PAIR_CORRELATION:
        raise ValueError(f"the volumes do not show the same beads: correlation {pair_r:.3f} after the rigid shift (need "
                         f"{MIN_PAIR_CORRELATION}); one may be blank, another channel or another field of view")
    confidence = confidence_map(ref_n, dfm_a, shift=rigid - step)
    if float(np.mean(confidence > 0.5)) < BLANK_FRACTION:
        raise ValueError(f"the volumes show no bead structure: {100 * float(np.mean(confidence > 0.5)):.2f} % of the voxels "
                         f"have local texture above the image noise (need {100 * BLANK_FRACTION:.0f} %); check the channel "
                         "and the stacks (blank, or noise only)")
    return rigid, step, dfm_a, pair_r, confidence
