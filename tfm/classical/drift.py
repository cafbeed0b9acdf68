"""Drift between the two acquisitions of a bead-volume pair, and its removal from a
displacement field measured on a grid of windows (:mod:`tfm.classical.dvc`).

A cell's own field in an infinite matrix decays as 1/r² and has no uniform part, so what
is uniform, or uniform per confocal plane, far from the cell is an artefact of the
acquisition (stage drift, gel swelling, axial scaling by refractive-index mismatch, planes
recorded one after another):

* ``"rigid"``: the whole-volume phase-correlation shift;
* ``"median"``: the median displacement of the valid windows in the far half;
* ``"affine"``: a least-squares ``b + G x`` over those far windows (also uniform strain);
* ``"slicewise"``: a translation per z-plane of the window grid (the median of that
  plane's far windows; planes without 5 of them interpolated between planes);
* ``None``: nothing removed.

"Far" is measured in µm from the cell mask, or from the volume's centre without one.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

DRIFTS = ("rigid", "median", "affine", "slicewise", None)


def window_distances(centres, mask, spacing_um) -> np.ndarray:
    """Distance (µm) of each window centre (voxel indices, (..., 3)) from the mask or,
    without one, from the centres' mean."""
    h = np.asarray(spacing_um, float)
    if mask is not None and mask.any():
        dist = ndimage.distance_transform_edt(~mask, sampling=h)
        idx = np.clip(np.round(centres).astype(int), 0, np.asarray(mask.shape) - 1)
        return dist[idx[..., 0], idx[..., 1], idx[..., 2]]
    return np.linalg.norm((centres - centres.reshape(-1, 3).mean(0)) * h, axis=-1)


def far_windows(valid, dist) -> np.ndarray:
    """The valid windows in the far half (by ``dist``)."""
    if not valid.any():
        return dist >= np.median(dist)
    return valid & (dist >= np.median(dist[valid]))


def _slicewise(u, valid, dist):
    nz = u.shape[0]
    per = np.full((nz, 3), np.nan)
    for k in range(nz):  # each plane's own far half
        v = valid[k]
        far = v & (dist[k] >= np.median(dist[k][v])) if v.any() else v
        if far.sum() >= 5:
            per[k] = np.median(u[k][far], axis=0)
    ok = ~np.isnan(per[:, 0])
    if not ok.any():
        raise ValueError("drift='slicewise' found no z-plane with 5 or more valid far-field windows")
    for c in range(3):  # planes without enough far windows: interpolate between planes
        per[:, c] = np.interp(np.arange(nz), np.flatnonzero(ok), per[ok, c])
    return per


def correction(mode, u, rigid, valid, centres, dist, shape):
    """``(field to subtract, its translation at the volume centre, info)`` for drift
    ``mode``; ``u`` (nz, ny, nx, 3) and ``rigid`` in voxels, ``centres`` the window centres
    (voxel indices), ``dist`` their distances (µm), ``shape`` the volume's."""
    if mode not in DRIFTS:
        raise ValueError(f"drift must be one of {DRIFTS}, got {mode!r}")
    if mode == "rigid":
        return rigid, rigid, {}
    if mode == "median":
        m = np.median(u[far_windows(valid, dist)], axis=0)
        return m, m, {}
    if mode == "affine":
        far = far_windows(valid, dist)
        x0 = (np.asarray(shape) - 1) / 2
        design = lambda x: np.concatenate([np.ones(x.shape[:-1] + (1,)), x - x0], -1)  # noqa: E731
        coef, *_ = np.linalg.lstsq(design(centres[far]), u[far], rcond=None)
        # [i][j] = d u_i / d x_j (voxel/voxel)
        return design(centres) @ coef, coef[0], {"drift_affine_gradient": coef[1:].T.tolist()}
    if mode == "slicewise":
        per = _slicewise(u, valid, dist)
        return per[:, None, None, :], np.median(per, axis=0), {"drift_per_plane_voxels": per.tolist()}
    return 0.0, np.zeros(3), {}
