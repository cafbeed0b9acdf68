"""Inference with a trained 3D network: any volume size, any voxel size, bounded memory.

``predict(reference, deformed, spacing_um, material)`` runs the shipped default model (or
one from ``tfm train``) and returns a :class:`~tfm.result.Result` on the input grid:

1. Both volumes are normalised once, globally (:func:`~tfm.nn.unet3d.normalise_pair`).
2. If the voxel size differs from the model's training voxel size by more than 1 %, the
   volumes are resampled (trilinear) to the model's voxel size and the fields are
   interpolated back at the end: bead images look different at another scale, and the
   network works in voxel units.
3. The volume is cut into overlapping cubic tiles (``tile`` voxels, a multiple of the
   network's pooling factor; ``overlap`` voxels shared by neighbours). Each tile is
   predicted on its own -- one compiled shape for every tile -- and the tiles are blended
   with weights that ramp linearly across the overlap, so seams do not show and memory is
   bounded by one tile plus the output arrays. Volumes smaller than a tile are zero-padded
   (zero is the background after normalisation). The shipped network's output feels a cut
   face up to ~24 voxels in (measured: 8 % RMS deviation 8 voxels from the cut, 1.4 % at
   24), so tiles should be 64 voxels or more: 64³ tiles with 32 overlap reproduce a whole
   96³ pass to 2.3 % (u) and 2.6 % (f); smaller tiles raise a warning.
4. Network units become physical ones: ``u = u_voxels * h`` (µm) and ``f = g E / h``
   (pN/µm³) for the material's Young's modulus ``E``.
"""

from __future__ import annotations

import time
import warnings
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..fields import resample
from ..grid import Grid
from ..learn import config as configs
from ..learn import store
from ..material import LinearElastic, NeoHookean
from ..progress import resolve
from ..result import Result
from .unet3d import ModelConfig, UNet3D, normalise_pair

MIN_TILE = 64  # smallest tile edge whose blended result matches a whole-volume pass (see the module docs)
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


def predict_network_units(model: UNet3D, reference, deformed, poisson_ratio: float, tile: int = 64, overlap: int = 16,
                          progress=None):
    """Normalised volumes on the model's voxel grid -> (u_voxels, g) arrays (Z, Y, X, 3), tiled."""
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
                    pred = np.asarray(_forward(graphdef, state, jnp.asarray(ref[sl])[None], jnp.asarray(dfm[sl])[None], nu)[0])
                    ws = [_ramp(s, overlap, a == 0, a + s == n) for a, s, n in zip(o, sizes, full)]
                    w = ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]
                    out[sl] += pred * w[..., None]
                    wsum[sl] += w
                    bar.update(1)
    out /= wsum[..., None]
    crop = tuple(slice(0, n) for n in shape)
    return out[crop][..., :3], out[crop][..., 3:]


def predict(reference, deformed, grid, material, model=None, tile: int | None = None, overlap: int | None = None,
            progress=None) -> Result:
    """Bead volume pair -> displacement (µm) and force density (pN/µm³) with the network.

    Args:
      reference, deformed: (Z, Y, X) bead volumes (relaxed / deformed), any dtype.
      grid: the volumes' :class:`~tfm.grid.Grid`, or their voxel size (z, y, x) / one number, µm.
      material: the matrix, :class:`~tfm.material.LinearElastic` or :class:`~tfm.material.NeoHookean`.
      model: a :class:`UNet3D`, a saved-model or run directory, or None for the shipped model.
      tile: tile edge in voxels (default 128; a smaller volume is one tile).
      overlap: voxels shared by neighbouring tiles (blended; default min(32, tile / 2)).
    """
    t0 = time.perf_counter()
    ref = np.asarray(reference)
    dfm = np.asarray(deformed)
    if ref.ndim != 3:
        raise ValueError(f"reference must be a 3D volume (Z, Y, X), got shape {ref.shape}")
    if dfm.shape != ref.shape:
        raise ValueError(f"deformed must have the reference's shape {ref.shape}, got {dfm.shape}")
    for name, v in (("reference", ref), ("deformed", dfm)):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} contains NaN or infinite values")
    if not isinstance(material, (LinearElastic, NeoHookean)):
        raise ValueError(f"material must be tfm.LinearElastic or tfm.NeoHookean, got {type(material).__name__}")
    grid = Grid.of(ref.shape, grid)
    source = "in-memory model"
    if not isinstance(model, UNet3D):
        source = str(DEFAULT_MODEL if model is None else model)
        model = load_model(model)
    tile = tile or 128
    overlap = min(32, tile // 2) if overlap is None else overlap
    h_model = np.asarray(model.config.spacing_um)
    h = np.asarray(grid.spacing_um)
    other_size = bool(np.any(np.abs(h / h_model - 1) > 0.01))
    ref_n, dfm_n = normalise_pair(ref, dfm)
    if other_size and float(np.prod(h / h_model)) > 8:
        raise ValueError(f"the volumes' voxels {tuple(h)} µm are much coarser than the model's {tuple(h_model)} µm: it would "
                         f"see {float(np.prod(h / h_model)):.0f}x as many (interpolated) voxels; use a model trained at "
                         "about this voxel size, or the classical pipeline")
    if other_size:  # the model's voxel size, over the same extent
        work = Grid(tuple(max(1, int(round(n * hh / hm))) for n, hh, hm in zip(ref.shape, h, h_model)), tuple(h_model),
                    grid.origin_um)
        ref_n, dfm_n = resample(ref_n, grid, work), resample(dfm_n, grid, work)
    u_vox, g = predict_network_units(model, ref_n, dfm_n, material.poisson_ratio, tile=tile, overlap=overlap,
                                     progress=progress)
    u = u_vox * h_model.astype(np.float32)
    f = g * np.float32(material.youngs_modulus_pa / float(np.exp(np.mean(np.log(h_model)))))
    if other_size:
        u, f = resample(u, work, grid), resample(f, work, grid)
    info = {"method": "dl", "model": source, "tile": tile, "overlap": overlap,
            "resampled_to_um": list(h_model) if other_size else None, "youngs_modulus_pa": material.youngs_modulus_pa,
            "poisson_ratio": material.poisson_ratio, "time_s": time.perf_counter() - t0}
    return Result(grid=grid, displacement=u.astype(np.float32), force=f.astype(np.float32), info=info)
