"""Drift between the two acquisitions of a bead-volume pair, and its removal from a
displacement field measured on a grid of windows (:mod:`tfm.classical.dvc`).

A cell's own field in an infinite matrix decays as 1/r² and has no uniform part, so what
is uniform, or uniform per confocal plane, far from the cell is an artefact of the
acquisition (stage drift, gel swelling, axial scaling by refractive-index mismatch, planes
recorded one after another):

* ``"rigid"``: the whole-volume phase-correlation shift;
* ``"median"``: the median displacement of the valid windows in the far half;
* ``"affine"``: a least-squares ``b + G x`` over those far windows (also uniform strain);
* ``"slicewise"``: a translation per z-plane of the window grid (fitted to that plane's
  far windows; planes without 5 of them interpolated between planes);
* ``None``: nothing removed;
* ``"auto"`` (the default of :mod:`tfm.classical.dvc`): the model the far field asks for
  (:func:`choose`): a translation (applied as ``"rigid"``), an affine field or a
  translation per plane, by the Bayesian information criterion on the far windows'
  residuals. Each is fitted together with the far field of a force dipole at the cell
  (1/r², no uniform part: Kelvin's solution), which absorbs the cell's own field, and a
  richer model must also lower the RMS residual by at least :data:`MIN_GAIN` (15 %): a
  contracting cell is not taken for a uniform strain.

Affine and slicewise drift (chosen or asked for) are fitted together with that dipole
field too, and only their drift part is subtracted (:func:`correction` given the voxel
size), so the cell's own far field -- 1/r², not yet zero where a stack ends -- stays in
the measurement; fitted alone, a plane's median takes a share of it.

"Far" is measured in µm from the cell mask, or from the volume's centre without one.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg

from ..segment import distance_at_voxels_um

DRIFTS = ("auto", "rigid", "median", "affine", "slicewise", None)
MIN_GAIN = 0.15  # "auto": a richer model must lower the far field's RMS residual by this fraction


def window_distances(centres, mask, spacing_um) -> np.ndarray:
    """Distance (µm) of each window centre (voxel indices, (..., 3)) from the mask or,
    without one, from the centres' mean."""
    h = np.asarray(spacing_um, float)
    if mask is not None and mask.any():
        idx = np.clip(np.round(centres).astype(int), 0, np.asarray(mask.shape) - 1)
        return distance_at_voxels_um(mask, h, idx)
    return np.linalg.norm((centres - centres.reshape(-1, 3).mean(0)) * h, axis=-1)


def far_windows(valid, dist) -> np.ndarray:
    """The valid windows in the far half (by ``dist``)."""
    if not valid.any():
        return dist >= np.median(dist)
    return valid & (dist >= np.median(dist[valid]))


def plane_far_halves(valid, dist) -> np.ndarray:
    """Each z-plane's own far half of its valid windows (none in a plane without one)."""
    return np.stack([far_windows(valid[k], dist[k]) if valid[k].any() else valid[k] for k in range(len(valid))])


def _slicewise(u, valid, dist):
    far = plane_far_halves(valid, dist)
    per = np.full((u.shape[0], 3), np.nan)
    for k in range(u.shape[0]):
        if far[k].sum() >= 5:
            per[k] = np.median(u[k][far[k]], axis=0)
    if np.isnan(per[:, 0]).all():
        raise ValueError("drift='slicewise' found no z-plane with 5 or more valid far-field windows")
    return _fill_planes(per)


def _fill_planes(per):
    """Per-plane translations (nz, 3) with the planes left NaN (too few far windows)
    interpolated between the planes that have one."""
    ok = ~np.isnan(per[:, 0])
    for c in range(per.shape[1]):
        per[:, c] = np.interp(np.arange(len(per)), np.flatnonzero(ok), per[ok, c])
    return per


POISSON = 0.45  # of the dipole basis (hydrogels; the shape depends little on it)
_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


def dipole_basis(x_um, poisson: float = POISSON) -> np.ndarray:
    """The far field of a force dipole in an infinite matrix, per symmetric dipole
    component (jk): ``(N, 3, 6)``, from the derivatives of Kelvin's solution (up to a
    constant): ``[-(2 - 4 nu)(d_ij x_k + d_ik x_j) + 2 d_jk x_i] / r³ - 6 x_i x_j x_k / r^5``.
    It is how a cell's own displacement decays (1/r²), and it has no uniform part."""
    x = np.asarray(x_um, float)
    r = np.maximum(np.linalg.norm(x, axis=-1), 1.0)[:, None]  # µm: a point on the centre carries no dipole information
    out = np.zeros((len(x), 3, 6))
    eye = np.eye(3)
    for m, (j, k) in enumerate(_PAIRS):
        for i in range(3):
            lin = -(2 - 4 * poisson) * (eye[i, j] * x[:, k] + eye[i, k] * x[:, j]) + 2 * eye[j, k] * x[:, i]
            out[:, i, m] = lin / r[:, 0] ** 3 - 6 * x[:, i] * x[:, j] * x[:, k] / r[:, 0] ** 5
    return out


def _design(mode, x_um, plane, planes):
    """Drift columns (N, 3, P) of ``mode`` at points ``x_um`` (centred), z-plane indices ``plane``."""
    n = len(x_um)
    if mode == "translation":
        cols = [np.broadcast_to(np.eye(3)[c], (n, 3)) for c in range(3)]
    elif mode == "affine":
        cols = [np.broadcast_to(np.eye(3)[c], (n, 3)) for c in range(3)]
        cols += [np.eye(3)[c][None, :] * x_um[:, j : j + 1] for c in range(3) for j in range(3)]
    else:  # slicewise: a translation per z-plane of the window grid
        cols = [np.eye(3)[c][None, :] * (plane == k)[:, None] for k in planes for c in range(3)]
    return np.stack(cols, -1).astype(float)


def _least_squares(a, b):
    """A least-squares solution of ``a x = b`` (``b`` one or more columns) for a tall ``a``,
    from the normal equations of its column-scaled form (scaling keeps their conditioning
    that of the basis' shape, not of its units), solved by LAPACK's complete orthogonal
    factorisation (a rank-deficient system gets the solution of least scaled norm): a
    slicewise drift with ~60 parameters on ~8000 rows in about 1 ms instead of 13 ms for a
    factorisation of ``a`` itself."""
    scale = np.linalg.norm(a, axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    a = a / scale
    coef, *_ = linalg.lstsq(a.T @ a, a.T @ b, lapack_driver="gelsy")
    return coef / scale.reshape((-1,) + (1,) * (coef.ndim - 1))


def _fit(y, a):
    """Least squares with two rounds of trimming (residuals beyond 3 robust sigmas)."""
    keep = np.ones(len(y), bool)
    for _ in range(3):
        coef = _least_squares(a[keep].reshape(-1, a.shape[-1]), y[keep].ravel())
        r = np.linalg.norm(y - (a @ coef), axis=-1)
        sigma = 1.4826 * np.median(r[keep]) + 1e-12
        trimmed = r < 3 * sigma + 1e-9
        if trimmed.sum() < max(a.shape[-1], len(y) // 2):  # a fit this exact leaves nothing to trim by
            break
        keep = trimmed
    return coef, keep


def choose(u, valid, centres, dist, shape, spacing_um=(1.0, 1.0, 1.0), centre_um=None) -> tuple[str, dict]:
    """The drift model the far field supports (see the module docs): ``(mode, evidence)``
    with mode ``"rigid"``, ``"affine"`` or ``"slicewise"``; evidence holds each model's
    far-field RMS residual (voxels), parameter count and BIC. Every model is fitted
    together with the far field of a force dipole at the cell (:func:`dipole_basis`), so
    that the cell's own decaying field is not taken for drift."""
    h = np.asarray(spacing_um, float)
    far = far_windows(valid, dist)
    n = 3 * int(far.sum())
    if n < 60:  # too few far windows to tell models apart
        return "rigid", {"far_windows": n // 3, "reason": "too few far-field windows to compare models"}
    x = centres[far] * h
    c = cell_centre(u, far, centres, h, centre_um)
    y = u[far] * h
    plane = np.nonzero(far)[0]
    planes = [k for k in np.unique(plane) if np.sum(plane == k) >= 5]
    dip = dipole_basis(x - c)
    evidence = {}
    for mode in ("translation", "affine", "slicewise"):
        rows = np.isin(plane, planes) if mode == "slicewise" else np.ones(len(plane), bool)  # planes with their column
        a = np.concatenate([_design(mode, x[rows] - c, plane[rows], planes), dip[rows]], -1)
        coef, keep = _fit(y[rows], a)
        rms = float(np.sqrt(np.mean(np.sum(((y[rows] - a @ coef) / h)[keep] ** 2, -1))))
        k = a.shape[-1]
        evidence[mode] = {"rms_voxels": rms, "parameters": k, "bic": n * math.log(max(rms, 1e-12) ** 2) + k * math.log(n)}
    best = "translation"
    for mode in ("affine", "slicewise"):
        e = evidence[mode]
        if e["bic"] < evidence[best]["bic"] and e["rms_voxels"] < (1 - MIN_GAIN) * evidence[best]["rms_voxels"]:
            best = mode
    chosen = {"translation": "rigid"}.get(best, best)
    return chosen, {"far_windows": n // 3, "models": evidence, "chosen": chosen, "cell_centre_um": c.tolist()}


def cell_centre(u, far, centres, h, centre_um=None) -> np.ndarray:
    """Where the dipole basis is centred (µm): ``centre_um`` (the mask's centroid), else
    the windows' mean weighted by how far each moves from the far field's median."""
    if centre_um is not None:
        return np.asarray(centre_um, float)
    weights = np.linalg.norm(u - np.median(u[far], 0), axis=-1).ravel() + 1e-12
    return np.average(centres.reshape(-1, 3) * h, axis=0, weights=weights)


def _joint(mode, u, valid, centres, dist, shape, spacing_um, centre_um):
    """The drift of ``mode`` (``"affine"`` or ``"slicewise"``) fitted to the far windows
    together with a force dipole's far field at the cell (as :func:`choose` fits it), and
    only the drift part of that fit evaluated at every window, in voxels: the cell's own
    decaying field stays in ``u``. ``(field, translation at the volume centre, info)``;
    None where too few far windows support the joint fit (the caller fits drift alone)."""
    h = np.asarray(spacing_um, float)
    far = far_windows(valid, dist)
    c = cell_centre(u, far, centres, h, centre_um)
    plane_all = np.broadcast_to(np.arange(u.shape[0])[:, None, None], u.shape[:3])
    if mode == "slicewise":  # each plane's own far half, as the drift-alone fit takes it
        far = plane_far_halves(valid, dist)
    planes = [k for k in np.unique(plane_all[far]) if np.sum(plane_all[far] == k) >= 5]
    if mode == "slicewise":  # a plane's windows enter where the plane has its translation
        far = far & np.isin(plane_all, planes)
    plane = plane_all[far]
    x = centres[far] * h - c
    drift_cols = _design(mode, x, plane, planes)
    a = np.concatenate([drift_cols, dipole_basis(x)], -1)
    if 3 * len(x) < 2 * a.shape[-1] + 30 or not planes:
        return None
    coef, _ = _fit(u[far] * h, a)
    p = drift_cols.shape[-1]
    x_all = centres.reshape(-1, 3) * h - c
    if mode == "affine":
        field = (_design(mode, x_all, None, None) @ coef[:p]).reshape(u.shape) / h
        grad = coef[3:p].reshape(3, 3)  # [i][j] = d u_i / d x_j, µm / µm
        x0 = (np.asarray(shape, float) - 1) / 2  # the volume's centre, voxel indices
        removed = (coef[:3] + grad @ (x0 * h - c)) / h
        return field, removed, {"drift_affine_gradient": (grad * h[None, :] / h[:, None]).tolist(), "drift_fit": "joint"}
    per = np.full((u.shape[0], 3), np.nan)
    for i, k in enumerate(planes):
        per[k] = coef[3 * i:3 * i + 3] / h
    per = _fill_planes(per)  # planes without 5 far windows: interpolated between planes
    return per[:, None, None, :], np.median(per, axis=0), {"drift_per_plane_voxels": per.tolist(), "drift_fit": "joint"}


def correction(mode, u, rigid, valid, centres, dist, shape, spacing_um=None, centre_um=None):
    """``(field to subtract, its translation at the volume centre, info)`` for drift
    ``mode``; ``u`` (nz, ny, nx, 3) and ``rigid`` in voxels, ``centres`` the window centres
    (voxel indices), ``dist`` their distances (µm), ``shape`` the volume's. With
    ``spacing_um`` (and the cell's centre ``centre_um``, µm, where known), ``"affine"`` and
    ``"slicewise"`` are fitted jointly with a force dipole's far field and only their drift
    part is subtracted (:func:`_joint`), so a cell's own far field is not taken out with the
    drift; without it, drift alone is fitted to the far windows."""
    if mode not in DRIFTS:
        raise ValueError(f"drift must be one of {DRIFTS}, got {mode!r}")
    if mode == "auto":
        raise ValueError("drift='auto' is resolved by choose() before a correction is computed")
    if mode == "rigid":
        return rigid, rigid, {}
    if mode == "median":
        m = np.median(u[far_windows(valid, dist)], axis=0)
        return m, m, {}
    if mode in ("affine", "slicewise") and spacing_um is not None:
        joint = _joint(mode, u, valid, centres, dist, shape, spacing_um, centre_um)
        if joint is not None:
            return joint
    if mode == "affine":
        far = far_windows(valid, dist)
        x0 = (np.asarray(shape) - 1) / 2
        design = lambda x: np.concatenate([np.ones(x.shape[:-1] + (1,)), x - x0], -1)  # noqa: E731
        coef = _least_squares(design(centres[far]), u[far])
        # [i][j] = d u_i / d x_j (voxel/voxel)
        return design(centres) @ coef, coef[0], {"drift_affine_gradient": coef[1:].T.tolist()}
    if mode == "slicewise":
        per = _slicewise(u, valid, dist)
        return per[:, None, None, :], np.median(per, axis=0), {"drift_per_plane_voxels": per.tolist()}
    return 0.0, np.zeros(3), {}
