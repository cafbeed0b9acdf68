"""2D particle image velocimetry (PIV): the DVC correlator on single-plane images.

A pair of 2D bead images ``(Y, X)`` is correlated as a one-plane volume with flat
``(1, wy, wx)`` windows (:mod:`tfm.classical.dvc`: iterative window deformation, Gaussian
sub-pixel peaks, median test, drift); the in-plane components are returned on the 2D
grid of window centres.
"""

from __future__ import annotations

import numpy as np

from ..grid import Grid
from . import dvc

DEFAULT_WINDOWS = (32, 24, 16)


def correlate_2d(reference, deformed, grid, mask=None, windows=DEFAULT_WINDOWS, progress=None, **options):
    """Displacement (µm) between two 2D images ``(Y, X)``.

    Args:
      reference, deformed: images of one shape.
      grid: their 2D :class:`~tfm.grid.Grid`, or the pixel size ``(y, x)`` in µm.
      mask: optional boolean ``(Y, X)``, True where there is no gel signal (excluded).
      windows: per pass, a window edge in pixels or ``(wy, wx)``.
      **options: the other fields of :class:`~tfm.classical.dvc.DVCConfig`.

    Returns ``(displacement (ny, nx, 2) µm, grid of window centres, info)``.
    """
    ref, dfm = np.asarray(reference), np.asarray(deformed)
    if ref.ndim != 2:
        raise ValueError(f"reference must be a 2D image (Y, X), got shape {ref.shape}")
    if dfm.ndim != 2:
        raise ValueError(f"reference is 2D but deformed has shape {dfm.shape}")
    grid = Grid.of(ref.shape, grid)
    if np.ndim(windows) == 0:  # one pass
        windows = (windows,)
    flat = tuple((1, int(w), int(w)) if np.ndim(w) == 0 else (1, *(int(v) for v in w)) for w in windows)
    config = dvc.DVCConfig(windows=flat, **options)
    m = None if mask is None else np.asarray(mask)[None]
    grid3 = Grid((1, *grid.shape), (1.0, *grid.spacing_um), (0.0, *grid.origin_um))
    u, out3, info = dvc.correlate(ref[None], dfm[None], grid3, mask=m, config=config, progress=progress)
    out = Grid(out3.shape[1:], out3.spacing_um[1:], out3.origin_um[1:])
    for key in ("quality", "valid", "masked"):
        info[key] = info[key][0]
    info["drift_removed_voxels"] = info["drift_removed_voxels"][1:]
    info["rigid_shift_voxels"] = info["rigid_shift_voxels"][1:]
    return u[0, ..., 1:], out, info
