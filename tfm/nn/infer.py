"""Inference with a trained 3D network: any volume size, any voxel size, bounded memory.

``predict(reference, deformed, grid, material)`` runs the shipped default model (or one
from ``tfm train`` / ``tfm adapt``) and returns a :class:`~tfm.result.Result`:

1. Both volumes are normalised once, globally (:func:`~tfm.nn.unet3d.normalise_pair`).
2. **Working grid** (:func:`working_grid`): the input's own voxels, binned along an axis by
   an integer factor only where they are finer than the model's working voxel
   (``ModelConfig.spacing_um``, (0.8, 0.6, 0.6) µm for the shipped model): a microscope's
   anisotropic voxels stay anisotropic. Volumes brought to coarser voxels are anti-aliased (a Gaussian prefilter in
   the same matrix products as the interpolation, :func:`tfm.fields.resample`), and every
   volume is smoothed by the motion front end's prefilter there too. The volumes are padded
   (with the background) to a multiple of the pyramid's and the network's factor.
3. **Motion** (:func:`tfm.nn.flow.pyramid_flow`): coarse-to-fine Lucas-Kanade with warping,
   from the whole-volume translation down to the working grid -- motions of many voxels
   reach each level as a voxel or less of its own. Output on the LK grid (block centres of
   2³ working voxels).
4. **Network** (:class:`~tfm.nn.unet3d.UNet3D`) on the LK grid, in overlapping tiles where
   it is large (one compiled shape for every tile, linear blending ramps): measured motion
   and image context -> displacement and force, the force through the constitutive layer.
   Linear in the measured motion, so an identical pair gives exactly zero.
   Before it, the stacks' drift (rigid, affine or slicewise, as the DVC removes it) is
   taken out of the measurement: the network sees, as in training, only the cell's motion.
5. Physical units (``u = h u'``, ``f = E g / h``), a per-voxel confidence, and the fields on
   the LK grid (``output_grid="working"``, the resolution they truly have) or interpolated
   to every input voxel (``"input"``).

Constant or structureless volumes, and pairs that do not show the same beads, are refused.
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

from ..classical import drift as drift_models
from ..classical.dvc import check_pair
from ..classical.texture import autocorrelation_sigma
from ..fields import antialias_sigma, band_filter, gaussian_band, resample
from ..grid import Grid
from ..learn import config as configs
from ..learn import store
from ..material import LinearElastic, NeoHookean
from ..segment import centroid_um
from ..progress import resolve
from ..result import Result
from . import flow
from .unet3d import ModelConfig, UNet3D, context_channels, normalise_pair, pair_normalisation

MODEL_KIND = "tfm.unet3d"
DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "default"
LEVELS = ("auto", 1, 2, 3, 4, 5)
OUTPUT_GRIDS = ("working", "input")
MAX_WORKING_UM = 4.0  # coarser voxels than this cannot show beads of a micrometre moving
# Tiling of the network on the LK grid: one tile up to this many LK voxels, else tiles of
# DEFAULT_TILE³ overlapping by DEFAULT_OVERLAP. The U-Net's receptive field reaches ~20 LK
# voxels: 48³ tiles overlapping by 24 reproduce a whole pass within 3 % (u) and 7 % (force),
# 32³ by 16 only within 14 % and 20 % (tests/test_nn.py, a 64³ LK grid).
WHOLE_TILE_VOXELS = 128**3
DEFAULT_TILE = 96
DEFAULT_OVERLAP = 24
MIN_TILE = 48
DRIFT_STEP = 4  # LK voxels between the points the drift model is fitted to
FACE_MARGIN = 1  # LK voxels at the faces the drift lattice keeps clear of (half of every window there is missing)
RESIDUAL_MADS = 3.0  # a residual translation of the network's far field is removed beyond this many of its MADs
RESIDUAL_STEP = 2  # LK voxels between the points it is measured at
BLANK_FRACTION = 0.01  # a volume pair whose confident LK voxels are fewer than this fraction shows no beads
# Two acquisitions of the same gel correlate (after the rigid shift, at the LK grid's
# resolution): a blank, another channel or another field of view gives about 0.
MIN_PAIR_CORRELATION = 0.05


def load_model(path=None) -> UNet3D:
    """A trained :class:`UNet3D` from a saved-model directory (default: the shipped one).

    ``path`` may also be a run directory of ``tfm train`` (its ``model/`` is used)."""
    path, desc = store.open_model(DEFAULT_MODEL if path is None else path, MODEL_KIND)
    try:
        config = configs.from_dict(ModelConfig, desc["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a model this tfm can run ({exc})") from None
    model = UNet3D(config)
    store.load_weights(path, model)
    return model


def check_levels(levels) -> None:
    """Refuse a ``levels`` value :func:`predict` does not take, by name."""
    if levels not in LEVELS or isinstance(levels, bool):
        raise ValueError(f"levels must be one of {LEVELS}, got {levels!r}")


def binning(grid: Grid, h_model) -> tuple:
    """The integer factor per axis by which :func:`working_grid` bins the input's voxels:
    the largest ``k >= 1`` with ``k h <= h_model + h / 4`` (a working voxel no coarser than
    the model's by more than a quarter of an input voxel)."""
    return tuple(max(1, int(math.floor(hm / h + 0.25))) for h, hm in zip(grid.spacing_um, h_model))


def working_grid(grid: Grid, h_model) -> Grid:
    """The grid the motion front end sees: ``grid``'s voxels binned by the integer factors
    of :func:`binning` (every ``k``-th voxel along an axis, after the anti-aliasing blur of
    :func:`working_pair`); ``grid`` itself where every factor is 1.

    Integer factors only: at a non-integer ratio the interpolation weights drift across the
    volume, so the working voxels see a filter that changes from voxel to voxel, which the
    motion front end reads as motion (on the 24-pair benchmark, 0.3 µm voxels brought to
    0.597 µm instead of 0.6 µm gave a median displacement error of 0.0429 µm, the integer
    factor 0.0284 µm; benchmarks/results/dl_vs_classical.notes.md)."""
    k = binning(grid, h_model)
    if all(f == 1 for f in k):
        return grid
    shape = tuple((n - 1) // f + 1 for n, f in zip(grid.shape, k))
    return Grid(shape, tuple(float(h * f) for h, f in zip(grid.spacing_um, k)), grid.origin_um)


def working_pair(ref, dfm, grid: Grid, h_model, prefilter: float = 0.0):
    """Both volumes normalised (:func:`~tfm.nn.unet3d.normalisation`), then brought to
    :func:`working_grid` and smoothed by a Gaussian of ``prefilter`` working voxels:
    ``(ref, dfm, working grid)``.

    Along an axis binned by ``k`` (:func:`binning`), the working voxel ``i`` is the input
    voxel ``k i`` after a Gaussian of ``hypot(0.5 sqrt(k² - 1), k prefilter)`` input voxels
    (the anti-aliasing blur of :func:`tfm.fields.resample`, with the prefilter in
    quadrature), normalised at the faces (the outside is missing, not zero) -- the same
    numbers as ``resample(..., antialias=True, blur=prefilter)``, computed as banded
    products (:func:`tfm.fields.band_filter`) of both volumes in one compiled call, only at
    the voxels kept (16-bit stacks, 2 CPU cores: 128³ 106 -> 60 ms; FM-Track's 176 x 512 x
    512 -> 176 x 256 x 256 0.99 -> 0.34 s, most of the rest the percentiles)."""
    h = np.asarray(grid.spacing_um)
    work = working_grid(grid, h_model)
    if max(work.spacing_um) > MAX_WORKING_UM:
        raise ValueError(f"the volumes' voxels {tuple(float(v) for v in h)} µm are too coarse for the learned path "
                         f"(over {MAX_WORKING_UM} µm along an axis: beads of a micrometre do not show their motion); "
                         "use the classical pipeline")
    if work == grid and prefilter <= 0:
        ref_n, dfm_n = normalise_pair(ref, dfm)
        return ref_n, dfm_n, grid
    if min(grid.shape) < 2:
        raise ValueError(f"volumes must have at least 2 voxels per axis, got {grid.shape}")
    k = binning(grid, h_model)
    bands = tuple(jnp.asarray(gaussian_band(n, float(np.hypot(antialias_sigma(1.0, f), prefilter * f)), f))
                  for n, f in zip(grid.shape, k))
    order = tuple(sorted(range(3), key=lambda a: -k[a]))  # the axes that shrink first: the later passes see fewer voxels
    stats = np.asarray(pair_normalisation(ref, dfm), np.float32)
    r, d = _bin_blur(_device_volume(ref), _device_volume(dfm), stats, bands, k, order)
    return np.asarray(r), np.asarray(d), work


def _device_volume(v):
    """A volume for :func:`_bin_blur`: its own dtype where that is a small integer or
    float32 (half the transfer of float32 for 16-bit stacks), float32 otherwise."""
    v = np.asarray(v)
    return v if v.dtype in (np.uint8, np.uint16, np.int16, np.float32) else v.astype(np.float32)


@partial(jax.jit, static_argnums=(4, 5))
def _bin_blur(ref, dfm, stats, bands, steps, order):
    """:func:`working_pair`'s normalisation, blur and binning of both volumes."""
    out = []
    for v, (bg, scale) in zip((ref, dfm), stats):
        v = (v.astype(jnp.float32) - bg) / scale
        for ax in order:
            v = band_filter(v, ax, bands[ax], steps[ax])
        out.append(v)
    return tuple(out)


def lk_multiple(model: UNet3D, levels: int) -> int:
    """Working volumes are padded to a multiple of this: 2 x the network's factor (the LK
    grid halves them) and 2^levels (the pyramid)."""
    return max(2 * model.config.multiple, 2**levels)


def prepare(reference, deformed, grid: Grid, model: UNet3D, levels="auto", drift: str | None = "auto", mask=None) -> dict:
    """What the network is given, from a checked pair on ``grid``: the working volumes
    (padded by mirroring), the motion front end's output, and the refusals of :func:`predict`.

    The drift of the stacks (``drift``: :mod:`tfm.classical.drift`'s models, fitted to the
    measured motion at the confident points of the far field, outside ``mask``; None: kept)
    is taken out of the measurement here, before the network, which is trained on
    drift-free measurements and never has to tell a stage's drift from a cell's field.

    Returns a dict: ``reference``, ``deformed`` (working, padded), ``work`` (the working grid,
    unpadded), ``lk`` (the LK grid of the padded volumes), ``flow`` (its output, ``u`` with
    the drift removed), ``pair_correlation``, ``drift_info`` and ``drift_voxels`` (the field
    removed, working voxels, on the LK grid), ``translation`` (:func:`translation`) and
    ``cell_lk`` (``mask`` on the LK grid, False on the padding; None without a mask)."""
    fc = model.config.flow_config
    ref_w, dfm_w, work = working_pair(reference, deformed, grid, model.config.spacing_um, fc.prefilter)
    n_lev = flow.n_levels(work.shape, fc) if levels == "auto" else int(levels)
    mult = lk_multiple(model, n_lev)
    pads = [(0, (-n) % mult) for n in work.shape]
    if any(p for _, p in pads):  # the normalised background (0): no texture, so the padding tells the motion nothing
        ref_w, dfm_w = np.pad(ref_w, pads), np.pad(dfm_w, pads)
    fc = configs.from_dict(type(fc), {**configs.to_dict(fc), "levels": n_lev, "min_edge": 1})
    out = flow.pyramid_flow(ref_w, dfm_w, fc, prefiltered=True)
    padded = Grid(ref_w.shape, work.spacing_um, work.origin_um)
    lk = flow.lk_grid(padded)
    r = out["pair_correlation"]
    if not r >= MIN_PAIR_CORRELATION:
        raise ValueError(f"the volumes do not show the same beads: correlation {r:.3f} after the rigid shift (need "
                         f"{MIN_PAIR_CORRELATION}); one may be blank, another channel or another field of view")
    keep = tuple(slice(0, max(1, n // 2)) for n in work.shape)  # the LK voxels of the data (not the padding)
    frac = float(np.mean(out["confidence"][keep] > 0.5))
    if frac < BLANK_FRACTION:
        raise ValueError(f"the volumes show no bead structure: {100 * frac:.2f} % of the windows have texture above "
                         f"the image noise (need {100 * BLANK_FRACTION:.0f} %); check the channel and the stacks "
                         "(blank, or noise only)")
    cell_lk = None
    if mask is not None:  # the cell on the LK grid (False on the padding)
        cell_lk = np.zeros(lk.shape, bool)
        inner = Grid(tuple(sl.stop for sl in keep), lk.spacing_um, lk.origin_um)
        cell_lk[keep] = resample(np.asarray(mask, np.float32), grid, inner) > 0.5
    drift_info = {"drift_model": None, "drift_removed_um": [0.0, 0.0, 0.0]}
    drift_field = np.zeros_like(out["u"])
    if drift is not None:
        h = np.asarray(work.spacing_um, np.float32)
        u_um, drift_info = _remove_drift(out["u"] * h, out["confidence"], drift, cell_lk, lk, keep,
                                         joint=model.config.drift_fit == "joint")
        drift_field = out["u"] - u_um / h
        out = {**out, "u": (u_um / h).astype(np.float32)}
    return {"reference": ref_w, "deformed": dfm_w, "work": work, "lk": lk, "flow": out, "pair_correlation": r,
            "drift_info": drift_info, "drift_voxels": drift_field.astype(np.float32),
            "translation": translation(out["u"], out["confidence"], keep), "cell_lk": cell_lk}


def translation(u, confidence, keep) -> np.ndarray:
    """The uniform part of a measured motion (working voxels): the median of each component
    over the confident LK voxels of the data (zero where none are). A translation strains
    nothing, so :func:`predict` hands the network the motion without it and adds it back to
    the displacement: the force cannot depend on it and the displacement follows it exactly,
    whatever the drift model (with drift removed it is about zero; without, a stage shift of
    many voxels stays out of the network, which never saw one)."""
    sel = confidence[keep] > 0.5
    if not sel.any():
        return np.zeros(3, np.float32)
    return np.median(u[keep][sel], axis=0).astype(np.float32)


def network_inputs(prep: dict, nu: float, law: str):
    """(motion, context, spacing_rel, h) of a prepared pair: the measured motion less its
    translation (:func:`translation`), in units of ``h`` (the geometric mean of the LK grid's voxel size, µm) and the context channels."""
    h_lk = np.asarray(prep["lk"].spacing_um)
    h = float(np.exp(np.mean(np.log(h_lk))))
    rel = (h_lk / h).astype(np.float32)
    motion = ((prep["flow"]["u"] - prep["translation"]) * (h_lk / 2 / h)).astype(np.float32)  # working voxels -> h
    context = context_channels(prep["flow"], nu, rel, 1.0 if law == "neo-hookean" else 0.0)
    return motion, context, rel, h


@partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, motion, context, nu, rel):
    """One forward pass; the architecture (``graphdef``) is static, the weights an argument,
    so a model updated in place is always run with its current weights."""
    model = nnx.merge(graphdef, state)
    return model(motion, context, nu, rel)


def _starts(n: int, tile: int, overlap: int) -> list:
    if n <= tile:
        return [0]
    step = tile - overlap
    return sorted(set(list(range(0, n - tile, step)) + [n - tile]))


def _ramp(n: int, overlap: int, lo_edge: bool, hi_edge: bool) -> np.ndarray:
    """1D blending weight of a tile: on a side shared with a neighbour the outer quarter of
    the overlap gets weight 0 (those voxels saw the tile's edge), then a linear rise to 1;
    on the volume's own faces 1."""
    w = np.ones(n, np.float32)
    if overlap > 0:
        m = overlap // 4
        r = np.clip((np.arange(overlap, dtype=np.float32) + 0.5 - m) / max(overlap - 2 * m, 1), 0.0, 1.0)
        if not lo_edge:
            w[:overlap] = np.minimum(w[:overlap], r)
        if not hi_edge:
            w[-overlap:] = np.minimum(w[-overlap:], r[::-1])
    return w


def run_network(model: UNet3D, motion, context, nu: float, rel, tile: int | None = None,
                overlap: int | None = None, progress=None):
    """The network over a whole LK grid (arrays (Z, Y, X, C), sizes a multiple of the
    network's factor), in overlapping tiles where it holds more than ``WHOLE_TILE_VOXELS``:
    ``(u, g)`` in units of ``h`` and ``E / h``."""
    mult = model.config.multiple
    shape = motion.shape[:3]
    if tile is None:
        tile = max(shape) if math.prod(shape) <= WHOLE_TILE_VOXELS else DEFAULT_TILE
    if tile % mult or tile < mult:
        raise ValueError(f"tile must be a positive multiple of {mult} for this model, got {tile}")
    overlap = min(DEFAULT_OVERLAP, tile // 2) if overlap is None else overlap
    if not 0 <= overlap <= tile // 2:
        raise ValueError(f"overlap must lie in [0, tile/2], got {overlap}")
    if tile < MIN_TILE and any(n > tile for n in shape):
        warnings.warn(f"tile {tile} is smaller than {MIN_TILE} LK voxels: the network's context reaches ~20 voxels "
                      "from a tile's face, so tiled results deviate from a whole-volume pass", stacklevel=3)
    sizes = [min(tile, n) for n in shape]
    starts = [_starts(n, s, overlap) for n, s in zip(shape, sizes)]
    graphdef, state = nnx.split(model)
    args = (jnp.asarray([nu], jnp.float32), jnp.asarray(rel, jnp.float32)[None])
    total = int(np.prod([len(s) for s in starts]))
    if total == 1:
        u, g = _forward(graphdef, state, jnp.asarray(motion)[None], jnp.asarray(context)[None], *args)
        return np.asarray(u[0]), np.asarray(g[0])
    out = np.zeros(shape + (6,), np.float32)
    wsum = np.zeros(shape, np.float32)
    with resolve(progress).task(total, "dl tiles") as bar:
        for z in starts[0]:
            for y in starts[1]:
                for x in starts[2]:
                    o = (z, y, x)
                    sl = tuple(slice(a, a + s) for a, s in zip(o, sizes))
                    u, g = _forward(graphdef, state, jnp.asarray(motion[sl])[None], jnp.asarray(context[sl])[None], *args)
                    ws = [_ramp(s, overlap, a == 0, a + s == n) for a, s, n in zip(o, sizes, shape)]
                    w = ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]
                    out[sl] += np.concatenate([np.asarray(u[0]), np.asarray(g[0])], -1) * w[..., None]
                    wsum[sl] += w
                    bar.update(1)
    out /= wsum[..., None]
    return out[..., :3], out[..., 3:]


def face_margins(reference_working, most=(64, 256, 256)) -> list:
    """LK voxels per axis within reach of the data's faces: ``FACE_MARGIN`` plus twice a
    bead image's apparent size (:func:`tfm.classical.texture.autocorrelation_sigma` of at
    most ``most`` central voxels of the working reference). A bead cut by a face (or by the
    background padding beyond it) is an edge that stays put, and pulls the motion measured
    there toward zero; under a low-NA objective (bead images 10 µm long) that reaches 5 LK
    planes into the stack."""
    sigma = autocorrelation_sigma(reference_working, most=most)  # working voxels
    return [FACE_MARGIN + int(math.ceil(s)) for s in sigma]  # twice the size, in LK voxels of 2 working voxels


def residual_translation(u_um, lk: Grid, cell=None, margins=(FACE_MARGIN,) * 3) -> np.ndarray:
    """The translation (µm, per component) left in the network's field after the drift was
    taken out of its input: the median of the far half of the field (by distance from the
    ``cell`` mask, or without one from the centre; ``margins`` LK voxels clear of the faces,
    :func:`face_margins`), kept only where it exceeds ``RESIDUAL_MADS`` median absolute
    deviations of those values, else 0. A cell's field varies over the far half, so its median
    stays within its spread; a drift fitted wrongly moves the whole far half. Why: under a
    long PSF the structure tensor's axial eigenvalue sits at the noise inside the stack, the
    only confident windows are those at the faces, and the drift fit there took a stage
    drift of -0.66 µm along z for -0.17 µm; the network, linear in the motion with no offset
    of its own, passed the rest on (a uniform -0.18 µm along z, 5.9 MADs; on the 23 other
    out-of-range synthetic pairs at most 1.6)."""
    shape = u_um.shape[:3]
    # every RESIDUAL_STEP-th LK voxel clear of the faces (a median needs no more; bounded memory on large stacks)
    sl = tuple(slice(m, n - m, RESIDUAL_STEP) if n > 2 * m + 2 else slice(0, n, RESIDUAL_STEP)
               for n, m in zip(shape, margins))
    v = u_um[sl].reshape(-1, 3)
    centres = np.stack(np.meshgrid(*[np.arange(s.start, s.stop, s.step) for s in sl], indexing="ij"), -1).reshape(-1, 3)
    dist = drift_models.window_distances(centres, cell, lk.spacing_um)
    outside = np.ones(len(v), bool) if cell is None else ~cell[tuple(centres.T)]
    far = drift_models.far_windows(outside, dist)
    if far.sum() < 8:
        return np.zeros(3)
    med = np.median(v[far], axis=0)
    mad = np.median(np.abs(v[far] - med), axis=0)
    return np.where(np.abs(med) > RESIDUAL_MADS * mad, med, 0.0)


def _remove_drift(u_um, confidence, mode, mask, lk: Grid, data=None, joint: bool = False):
    """Drift (:mod:`tfm.classical.drift`, as the DVC removes it) fitted to a measured field
    (µm, on the LK grid) at a lattice of points ``DRIFT_STEP`` voxels apart -- the confident
    ones of the region ``data`` (slices; default all), clear of its faces, outside the
    cell -- evaluated at every voxel and subtracted: ``(u, info)``. The "rigid" model is the
    median of those points (an identical pair's zero field stays exactly zero). ``joint``:
    affine and slicewise drift fitted together with the cell's dipole far field (the DVC's
    way), as a model trained with ``drift_fit="joint"`` expects; else fitted alone, as the
    shipped weights were trained (the joint fit under them, measured: 24-pair displacement
    error 0.0284 -> 0.0301 µm, the network having learnt the other convention)."""
    full = u_um.shape[:3]
    data = data or tuple(slice(0, n) for n in full)
    shape = tuple(sl.stop - sl.start for sl in data)
    h = np.asarray(lk.spacing_um)
    u_vox = u_um[data] / h.astype(np.float32)
    lo = [FACE_MARGIN if n > 2 * FACE_MARGIN + 1 else 0 for n in shape]  # not at the faces, where beads leave the field of view
    counts = [1 if n == 1 else int(math.ceil((n - 1 - 2 * m) / DRIFT_STEP)) + 1 for n, m in zip(shape, lo)]
    axes = [np.linspace(m, n - 1 - m, k) for n, k, m in zip(shape, counts, lo)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    coords = np.moveaxis(centres, -1, 0)
    lat = np.stack([ndimage.map_coordinates(u_vox[..., c], coords, order=1) for c in range(3)], -1)
    valid = ndimage.map_coordinates(confidence[data], coords, order=1) > 0.5
    if mask is not None:
        valid &= ~mask[data][tuple(np.round(coords).astype(int))]
        mask = mask[data]
    dist = drift_models.window_distances(centres, mask, h)
    info = {}
    centre = centroid_um(mask, h)
    if mode == "auto":
        mode, info["drift_evidence"] = drift_models.choose(lat, valid, centres, dist, shape, h, centre)
    rigid = np.median(lat[drift_models.far_windows(valid, dist)], axis=0) if mode == "rigid" else np.zeros(3)
    corr, removed, extra = drift_models.correction(mode, lat, rigid, valid, centres, dist, shape,
                                                   *((h, centre) if joint else ()))
    info.update(extra, drift_model=mode, drift_removed_um=(np.asarray(removed, float) * h).tolist())
    corr = np.asarray(corr, np.float32)
    if corr.ndim > 1:  # a field: from the lattice (spanning the data) to every voxel of the grid
        corr = np.broadcast_to(corr, lat.shape)
        step = [(n - 1 - 2 * m) / (k - 1) * hh if k > 1 else hh for n, k, hh, m in zip(shape, counts, h, lo)]
        origin = tuple(o + (sl.start + m) * hh for o, sl, m, hh in zip(lk.origin_um, data, lo, h))
        corr = resample(corr, Grid(tuple(counts), tuple(step), origin), lk)  # edge values held beyond the lattice
    return (u_um - corr * h.astype(np.float32)).astype(np.float32), info


def predict(reference, deformed, grid, material, model=None, tile: int | None = None, overlap: int | None = None,
            progress=None, drift: str | None = "auto", mask=None, levels="auto", output_grid: str = "working",
            support_um: float | None = 4.0) -> Result:
    """Bead volume pair -> displacement (µm) and force density (pN/µm³) with the network.

    Args:
      reference, deformed: (Z, Y, X) bead volumes (relaxed / deformed), any dtype.
      grid: the volumes' :class:`~tfm.grid.Grid`, or their voxel size (z, y, x) / one number, µm.
      material: the matrix, :class:`~tfm.material.LinearElastic` or :class:`~tfm.material.NeoHookean`.
      model: a :class:`UNet3D`, a saved-model or run directory, or None for the shipped model.
      tile, overlap: the network's tiles on the LK grid, LK voxels (default: one tile up to
        ``WHOLE_TILE_VOXELS``, else ``DEFAULT_TILE`` overlapping by ``DEFAULT_OVERLAP``).
      drift: removed from the measured motion before the network, as the DVC removes it
        (``"auto"``, ``"rigid"``, ``"median"``, ``"affine"``, ``"slicewise"`` or None;
        :mod:`tfm.classical.drift`), fitted at the confident points of the far field.
      mask: optional bool (Z, Y, X), True in the cell: where "far" is measured from, left
        out of the drift fit, and where forces may be (within ``support_um``: the matrix
        itself carries no body force). Without it the network's own support map decides.
      support_um: with a ``mask``, forces farther than this from it are set to zero (µm;
        None: kept; default 4, about three steps of the output grid of a confocal stack).
      levels: the motion front end's pyramid (:func:`tfm.nn.flow.pyramid_flow`): ``"auto"``
        (as many as keep 12 voxels on the coarsest level's smallest axis, at most the model's)
        or a number; 1 measures the motion at the working grid only (the ablation of the
        large-motion mechanism).
      output_grid: ``"working"`` (default): the fields on the LK grid, the resolution they
        have (block centres of 2³ working voxels; ``result.grid`` says where); ``"input"``:
        interpolated (trilinear) to every input voxel.

    ``info["confidence"]`` holds the per-voxel confidence of the motion measurement on the
    result's grid. A constant volume, a pair that does not show the same beads (correlation
    below 0.05 after the rigid shift) or one with no bead structure (fewer than 1 % of the
    windows confident) is refused.
    """
    t0 = time.perf_counter()
    ref, dfm, grid, mask = _check_inputs(reference, deformed, grid, material, mask, drift, levels, output_grid, support_um)
    source = "in-memory model"
    if not isinstance(model, UNet3D):
        source = str(DEFAULT_MODEL if model is None else model)
        model = load_model(model)
    law = "neo-hookean" if isinstance(material, NeoHookean) else "linear"
    prep = prepare(ref, dfm, grid, model, levels, drift, mask)
    t_flow = time.perf_counter()
    motion, context, rel, h = network_inputs(prep, material.poisson_ratio, law)
    u, g = run_network(model, motion, context, material.poisson_ratio, rel, tile, overlap, progress)
    t_net = time.perf_counter()
    work, lk_pad = prep["work"], prep["lk"]
    keep = tuple(slice(0, max(1, n // 2)) for n in work.shape)
    lk = Grid(tuple(max(1, n // 2) for n in work.shape), lk_pad.spacing_um, lk_pad.origin_um)
    u_um = u[keep] * np.float32(h) + prep["translation"] * np.asarray(work.spacing_um, np.float32)
    f = g[keep] * np.float32(material.youngs_modulus_pa / h)
    confidence = prep["flow"]["confidence"][keep]
    rigid_um = prep["flow"]["rigid_voxels"] * np.asarray(work.spacing_um)
    if mask is not None and support_um is not None:
        near = prep["cell_lk"][keep]
        near = ndimage.distance_transform_edt(~near, sampling=lk.spacing_um) <= support_um if near.any() else near
        f = f * near[..., None].astype(np.float32)
    drift_info = dict(prep["drift_info"])
    if drift is not None:
        residual = residual_translation(u_um, lk, None if prep["cell_lk"] is None else prep["cell_lk"][keep],
                                        face_margins(prep["reference"][tuple(slice(0, 2 * sl.stop) for sl in keep)]))
        u_um = u_um - residual.astype(np.float32)
        drift_info["residual_drift_um"] = residual.tolist()
    out_grid = lk
    if output_grid == "input":
        u_um, f = resample(u_um, lk, grid), resample(f, lk, grid)
        confidence = np.clip(resample(confidence, lk, grid), 0.0, 1.0)
        out_grid = grid
    info = {"method": "dl", "model": source, "output_grid": output_grid, "lk_grid_um": list(lk.spacing_um),
            "working_grid_um": list(work.spacing_um), "levels": int(prep["flow"]["levels"]),
            "youngs_modulus_pa": material.youngs_modulus_pa, "poisson_ratio": material.poisson_ratio,
            "law": law, "rigid_shift_um": np.asarray(rigid_um, float).tolist(), "drift": drift, **drift_info,
            "force_support_um": support_um if mask is not None else None,
            "pair_correlation": prep["pair_correlation"], "confident_fraction": float(np.mean(confidence > 0.5)),
            "confidence": confidence.astype(np.float32), "time_motion_s": t_flow - t0, "time_network_s": t_net - t_flow,
            "time_s": time.perf_counter() - t0}
    return Result(grid=out_grid, displacement=u_um.astype(np.float32), force=f.astype(np.float32), info=info)


def _check_inputs(reference, deformed, grid, material, mask, drift, levels="auto", output_grid="working", support_um=4.0):
    ref, dfm, grid, mask = check_pair(reference, deformed, grid, mask)
    for name, v in (("reference", ref), ("deformed", dfm)):
        if v.size == 0 or float(v.max()) == float(v.min()):
            raise ValueError(f"{name} is empty or constant (no bead contrast for the network to follow)")
    if not isinstance(material, (LinearElastic, NeoHookean)):
        raise ValueError(f"material must be tfm.LinearElastic or tfm.NeoHookean, got {type(material).__name__}")
    if drift not in drift_models.DRIFTS:
        raise ValueError(f"drift must be one of {drift_models.DRIFTS}, got {drift!r}")
    if output_grid not in OUTPUT_GRIDS:
        raise ValueError(f"output_grid must be one of {OUTPUT_GRIDS}, got {output_grid!r}")
    check_levels(levels)
    if support_um is not None and (isinstance(support_um, bool) or not np.isfinite(support_um) or support_um <= 0):
        raise ValueError(f"support_um must be a distance > 0 (µm) or None, got {support_um!r}")
    if min(grid.shape) < 4:
        raise ValueError(f"volumes must have at least 4 voxels along every axis for the learned path, got {grid.shape}")
    return ref, dfm, grid, mask
