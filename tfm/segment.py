"""Cell masks from a fluorescence channel, and distances from the cell surface.

A cell mask excludes the cell from correlation (no gel there) and measures how the
displacement decays with distance from the cell.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


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


def cell_mask(volume, spacing_um, threshold: float | None = None, smooth_um: float = 1.0, dilate_um: float = 0.0) -> np.ndarray:
    """Boolean mask of the cell: Gaussian smoothing, threshold (Otsu if not given),
    the largest connected component, holes filled, optionally dilated by ``dilate_um``."""
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"volume must be 3D (Z, Y, X), got shape {v.shape}")
    sp = np.broadcast_to(np.asarray(spacing_um, dtype=float), (3,))
    if smooth_um > 0:
        v = ndimage.gaussian_filter(v, sigma=smooth_um / sp)
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
    return m


def distance_from_mask_um(mask, spacing_um) -> np.ndarray:
    """Euclidean distance (µm) of every voxel from the nearest voxel of ``mask`` (0 inside)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("mask is empty")
    return ndimage.distance_transform_edt(~mask, sampling=np.broadcast_to(np.asarray(spacing_um, float), (3,)))
