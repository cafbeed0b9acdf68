"""The displacement noise of a measured field, estimated from the field itself.

A smooth field hardly passes a high-pass filter; white measurement noise does, by a known
factor. With ``S`` the binomial smoothing [1/4, 1/2, 1/4] along each of the ``d`` spatial
axes, ``u - S u`` of white noise of variance ``sigma²`` has variance
``sigma² (1 - 2 s_0 + sum s²) = sigma² (1 - 2 / 2^d + (3/8)^d)`` (``s_0 = 2^-d`` the
centre weight, ``sum s² = (3/8)^d``). The robust spread (1.4826 MAD) of ``u - S u`` over
interior points, divided by that factor's square root, estimates ``sigma``; the few points
where the field itself is sharp (a cell's near field) do not move the median.
"""

from __future__ import annotations

import math

import numpy as np

MIN_POINTS = 30


def _binomial(u, ndim: int):
    out = np.asarray(u)
    for axis in range(ndim):
        if out.shape[axis] < 3:
            continue
        a = np.moveaxis(out, axis, 0)
        padded = np.concatenate([a[:1], a, a[-1:]], 0)
        out = np.moveaxis(0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:], 0, axis)
    return out


def white_noise_gain(ndim: int) -> float:
    """``var(u - S u) / sigma²`` for white noise, ``S`` smoothing along ``ndim`` axes."""
    return 1.0 - 2.0 / 2**ndim + 0.375**ndim


def estimate_noise(displacement, valid=None, mask=None) -> float:
    """The noise of a displacement field, std per component (its units).

    Args:
      displacement: (*spatial, C), 2 or 3 spatial axes; those of at least 3 points are
        high-passed (a DVC grid of 2 planes along z, from a thin stack, still gives the noise
        from its y and x axes), at least one such axis.
      valid: optional bool (*spatial): only these points (e.g. the DVC's valid windows).
      mask: optional bool (*spatial), True in the cell: those points are left out.
    """
    u = np.asarray(displacement)
    u = u if u.dtype in (np.float32, np.float64) else u.astype(np.float64)  # float32 stays: half the memory, ample for a MAD
    d = u.ndim - 1
    if d not in (2, 3) or max(u.shape[:d]) < 3:
        raise ValueError(f"displacement must be (Y, X, C) or (Z, Y, X, C) with at least 3 points along one axis, "
                         f"got {u.shape}")
    smoothed = [a for a in range(d) if u.shape[a] >= 3]
    r = u - _binomial(u, d)
    keep = np.ones(r.shape[:d], bool)
    for m, want in ((valid, True), (mask, False)):
        if m is not None:
            keep &= np.asarray(m, bool) == want
    # the faces' residuals along the smoothed axes are biased low (the edge is repeated) ...
    inner = tuple(slice(1, -1) if a in smoothed else slice(None) for a in range(d))
    vals = r[inner][keep[inner]].ravel()
    if vals.size < MIN_POINTS:  # ... but on a small grid they are needed
        vals = r[keep].ravel()
    if vals.size < MIN_POINTS:
        raise ValueError(f"too few points to estimate the noise ({vals.size} values, need {MIN_POINTS} or more): "
                         "give the noise level")
    mad = 1.4826 * float(np.median(np.abs(vals - np.median(vals))))
    return mad / math.sqrt(white_noise_gain(len(smoothed)))
