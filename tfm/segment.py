"""Cell masks from a fluorescence channel, and distances from the cell surface.

A cell mask excludes the cell from correlation (no gel there) and measures how the
displacement decays with distance from the cell.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .grid import Grid


def threshold_otsu(volume, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) of the intensity histogram."""
    v = np.asarray(volume, dtype=np.float64).ravel()
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError("volume must be non-empty and finite")
    hist, edges = np.histogram(v, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def cell_mask(volume, grid, threshold: float | None = None, smooth_um: float = 1.0, dilate_um: float = 0.0) -> np.ndarray:
    """Boolean mask of the cell: Gaussian smoothing, threshold (Otsu if not given),
    the largest connected component, holes filled, optionally dilated by ``dilate_um``.

    ``grid`` is the volume's :class:`~tfm.grid.Grid` or its voxel size (z, y, x) in µm. A
    cell channel without contrast (empty, constant), or one whose threshold selects
    (nearly) the whole volume, is an error: no cell can be found in it."""
    v = np.asarray(volume)
    if not (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating) or v.dtype == bool):
        raise ValueError(f"cell volume must hold real numbers, got dtype {v.dtype}")
    v = v.astype(np.float32)
    if v.ndim != 3:
        raise ValueError(f"cell volume must be 3D (Z, Y, X), got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("cell volume contains NaN or infinite values")
    sp = np.asarray(Grid.of(v.shape, grid).spacing_um)
    if not float(v.max()) > float(v.min()):
        raise ValueError(f"the cell volume is constant ({float(v.min()):g} everywhere): no cell to segment "
                         "(is it the right channel?)")
    for name, val in (("smooth_um", smooth_um), ("dilate_um", dilate_um)):
        if not (np.isfinite(val) and val >= 0):
            raise ValueError(f"{name} must be a finite distance >= 0 µm, got {val}")
    if smooth_um > 0:
        v = ndimage.gaussian_filter(v, sigma=np.minimum(smooth_um / sp, v.shape))  # no wider than the volume
    t = threshold_otsu(v) if threshold is None else float(threshold)
    m = v > t
    labels, n = ndimage.label(m)
    if n == 0:
        raise ValueError(f"no voxel is above the threshold {t:.4g}: no cell found")
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    m = labels == (1 + int(np.argmax(sizes)))
    m = ndimage.binary_fill_holes(m)
    if dilate_um > 0:
        m = distance_from_mask_um(m, sp) <= dilate_um
    if m.mean() > 0.9:
        raise ValueError(f"the cell mask (threshold {t:.4g}, dilate_um {dilate_um:g}) covers {100 * m.mean():.0f} % of "
                         "the volume: the cell channel shows no distinct cell (wrong channel? pass a threshold)")
    return m


def centroid_um(mask, spacing_um, origin_um=(0.0, 0.0, 0.0)):
    """(z, y, x) µm: the mean position of a mask's voxels, ``origin_um + index *
    spacing_um`` (the default origin: the volume's first voxel); None for no mask or an
    empty one."""
    if mask is None or not np.any(mask):
        return None
    return np.argwhere(np.asarray(mask, bool)).mean(0) * np.asarray(spacing_um) + np.asarray(origin_um)


def crop_around(mask, size) -> tuple:
    """Slices of ``size`` voxels (per axis) centred on the mask's centroid, shifted to stay
    inside the volume and clipped to it: ``volume[crop_around(mask, (96, 256, 256))]``."""
    m = np.asarray(mask, bool)
    if len(size) != m.ndim or min(int(w) for w in size) < 1:
        raise ValueError(f"size must give {m.ndim} positive voxel counts, got {size}")
    if not m.any():
        raise ValueError("mask is empty: no centroid to crop around")
    c = np.round(np.argwhere(m).mean(0)).astype(int)
    out = []
    for ci, n, w in zip(c, m.shape, size):
        w = min(int(w), n)
        lo = int(np.clip(ci - w // 2, 0, n - w))
        out.append(slice(lo, lo + w))
    return tuple(out)


def distance_from_mask_um(mask, grid) -> np.ndarray:
    """Euclidean distance (µm) of every voxel from the nearest voxel of ``mask`` (0 inside);
    ``grid`` is the mask's Grid or voxel size."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("mask is empty")
    return ndimage.distance_transform_edt(~mask, sampling=Grid.of(mask.shape, grid).spacing_um)


def distance_at_voxels_um(mask, spacing_um, index_points) -> np.ndarray:
    """Euclidean distance (µm) from the voxels ``index_points`` (``(..., 3)`` integer
    indices) to the nearest voxel of ``mask`` (0 inside): :func:`distance_from_mask_um`'s
    values at those voxels only, from a KD-tree of the mask's boundary voxels (those with a
    neighbour outside it: the nearest mask voxel to a point outside is always one of them).
    On a 176 x 512 x 512 stack the whole-volume transform takes seconds; this, milliseconds."""
    from scipy.spatial import cKDTree

    m = np.asarray(mask, dtype=bool)
    if not m.any():
        raise ValueError("mask is empty")
    idx = np.asarray(index_points, dtype=int)
    flat = idx.reshape(-1, m.ndim)
    if np.any(flat < 0) or np.any(flat >= np.asarray(m.shape)):
        raise ValueError("index_points must lie inside the mask's volume")
    span = [np.flatnonzero(np.any(m, axis=tuple(j for j in range(m.ndim) if j != a))) for a in range(m.ndim)]
    lo = np.maximum([s[0] - 1 for s in span], 0)
    hi = np.minimum([s[-1] + 2 for s in span], m.shape)
    box = m[tuple(slice(a, b) for a, b in zip(lo, hi))]
    edge = box & ~ndimage.binary_erosion(box, structure=np.ones((3,) * m.ndim, bool), border_value=0)
    h = np.asarray(spacing_um, float)
    dist, _ = cKDTree((np.argwhere(edge) + lo) * h).query(flat * h)
    dist[m[tuple(flat.T)]] = 0.0
    return dist.reshape(idx.shape[:-1])


def nearest_voxels(points: Grid, image: Grid) -> tuple:
    """Index arrays (one per axis, ``points.shape``) of the ``image`` voxel nearest to each
    point of the grid ``points`` (e.g. a result's grid, in the image's coordinates): index a
    per-voxel map of the image with them. Points outside the image are refused."""
    sp = np.asarray(image.spacing_um)
    pos = (points.coordinates_um() - np.asarray(image.origin_um)) / sp  # in the image's voxel indices
    if np.any(pos < -0.5) or np.any(pos > np.asarray(image.shape) - 0.5):
        raise ValueError(f"the result's grid reaches outside the mask's image ({image.shape} voxels of {tuple(sp)} µm): "
                         "mask and spacing_um must describe the image the result was measured on")
    vox = np.clip(np.round(pos).astype(int), 0, np.asarray(image.shape) - 1)
    return tuple(vox[..., i] for i in range(image.ndim))


DECAY_BINS_UM = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 100.0)


def displacement_decay(result, mask, grid, bins_um=DECAY_BINS_UM, valid=None, min_count: int = 3) -> dict:
    """How the displacement decays with distance from the cell surface.

    Args:
      result: a :class:`tfm.Result` with a displacement, on a grid in the image's
        coordinates (as every tfm reconstruction of an image pair is).
      mask: the cell mask on the image's voxels (e.g. :func:`cell_mask`).
      grid: the image's :class:`~tfm.grid.Grid`, or its voxel size (``spacing_um``; origin 0).
      bins_um: distance bin edges, µm.
      valid: optional boolean array on the result's grid (default: the DVC's valid windows
        when the result has them, else all points).

    Returns a dict: per result grid point ``distance_um``, ``magnitude_um`` (|u|),
    ``toward_cell`` (cosine between u and the direction to the nearest cell surface) and
    ``valid`` (outside the cell and trusted); and ``bins``, one row per distance bin with
    at least ``min_count`` points: ``distance_um`` [lo, hi), ``n``, ``median_u_um``,
    ``p90_u_um``, ``fraction_toward_cell``.
    """
    if result.displacement is None:
        raise ValueError("result holds no displacement field")
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != result.grid.ndim:
        raise ValueError(f"mask must be {result.grid.ndim}D like the result, got shape {mask.shape}")
    image = Grid.of(mask.shape, grid, name="spacing_um (the image's voxel size)")
    sp = np.asarray(image.spacing_um)
    edges = np.asarray(bins_um, float)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ValueError(f"bins_um must be at least two increasing distances, got {bins_um}")
    idx = nearest_voxels(result.grid, image)
    dist = distance_from_mask_um(mask, sp)
    grad = np.stack(np.gradient(dist, *sp), -1)  # points away from the cell
    d, g = dist[idx], grad[idx]
    u = np.asarray(result.displacement)
    mag = np.linalg.norm(u, axis=-1)
    if valid is None:  # the DVC's valid windows where the result is on them (not on a finer force grid)
        valid = result.info.get("dvc", result.info).get("valid")
        valid = valid if valid is not None and np.shape(valid) == mag.shape else np.ones(mag.shape, bool)
    valid = np.asarray(valid, bool) & (d > 0)
    toward = -np.sum(u * g, -1) / np.maximum(mag * np.linalg.norm(g, axis=-1), 1e-12)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = valid & (d >= lo) & (d < hi)
        if sel.sum() >= min_count:
            rows.append({"distance_um": [float(lo), float(hi)], "n": int(sel.sum()), "median_u_um": float(np.median(mag[sel])),
                         "p90_u_um": float(np.percentile(mag[sel], 90)),
                         "fraction_toward_cell": float(np.mean(toward[sel] > 0))})
    return {"distance_um": d, "magnitude_um": mag, "toward_cell": toward, "valid": valid, "bins": rows}
