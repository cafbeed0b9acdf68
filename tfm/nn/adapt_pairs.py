"""The user's pairs as self-supervised adaptation (:mod:`tfm.nn.adapt`) sees them: each pair
prepared exactly as :func:`tfm.nn.infer.predict` prepares it (the working volumes, the
measured motion, the network's inputs), named by its content, and cut into crops of the
network's LK grid for the training steps and the scores."""

from __future__ import annotations

import functools
import hashlib

import numpy as np
from scipy import ndimage

from ..classical.dvc import check_pair
from ..classical.texture import autocorrelation_sigma
from ..grid import Grid
from . import infer
from .photometric import smoothing_matrices

MARGIN = 8  # working voxels of deformed-volume context around each crop


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


def tile_origins(lk_shape, crop: int) -> list:
    """Origins (LK voxels) of the ``crop``³ tiles that cover an LK grid of ``lk_shape``: a
    regular tiling, the last tile along each axis flush with the far face."""
    starts = [sorted({*range(0, n - crop + 1, crop), n - crop}) for n in lk_shape]
    return [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]


def crop_at(p: dict, origin, crop: int, nu: float, smoothing: float = 1.0) -> dict:
    """The crop of ``crop``³ LK voxels at ``origin`` of a prepared pair ``p``, batched (N=1):
    the network's inputs there, the drift removed before them (working voxels), the
    working-grid reference, the deformed volume with ``MARGIN`` working voxels of context (0
    beyond the volume), the outside weight,
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
           "smooth": _smoothing(c2, tuple(np.minimum(smoothing * p["bead_sigma"], c2 / 4).tolist()))}
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


def crop_batch(prepared, rng: np.random.Generator, n: int, crop: int, nu: float, smoothing: float = 1.0) -> dict:
    """``n`` random crops (:func:`crop_at`; pair and origin drawn from ``rng``)."""
    out = []
    for _ in range(n):
        p = prepared[int(rng.integers(len(prepared)))]
        origin = [int(rng.integers(0, s - crop + 1)) for s in p["lk_shape"]]
        out.append(crop_at(p, origin, crop, nu, smoothing))
    return stack_batches(out)


def score_tiles(prepared, crop: int, most: int, seed: int = 0) -> list:
    """(pair index, origin) of the tiles the scores run on: every ``crop``³ tile of each
    pair's LK grid (:func:`tile_origins`), or, where a pair has more than ``most``, an even
    random subset of ``most`` of them (the same for every call with this ``seed``)."""
    out = []
    for k, p in enumerate(prepared):
        tiles = tile_origins(p["lk_shape"], crop)
        if len(tiles) > most:
            pick = np.sort(np.random.default_rng([seed, 10**6, k]).choice(len(tiles), most, replace=False))
            tiles = [tiles[i] for i in pick]
        out += [(k, o) for o in tiles]
    return out
