r"""What a bead volume offers a correlation: bead density, bead size, and the windows that
follow from them.

Beads (:func:`bead_statistics`): the reference is smoothed by a one-voxel Gaussian (noise),
its background (median) and noise level (the one-sided spread of the lower half of the
intensities, which beads only brighten) are estimated, and beads are the local maxima (3x3x3)
higher than ``background + 4 noise`` and than a fifth of the beads' typical peak (the
brighter of the two classes Otsu's rule finds in the maxima's log heights, when it is
clearly brighter -- faint background maxima of 8-bit stacks below, beads above -- else
the 90th percentile of all maxima): what a correlation window can lock onto.
The decay of the volume's autocorrelation gives the bead's apparent size (the PSF and the
bead together; a Gaussian's autocorrelation is a Gaussian of twice its variance), per
axis, in µm, at any density. Beads closer than about two sizes merge
into one maximum; the density (beads per µm³) corrects the count of maxima for that
(Poisson thinning) and flags volumes too crowded to count.

Windows (:func:`choose_windows`): the last pass's window must hold ``target_beads`` beads
(default 8: enough for a clear correlation peak; 4 is the usual floor), so its volume
is ``target / density`` µm³, and at least 16³ voxels (dense beads: the classic window;
a correlation peak needs the samples). It is made near-cubic *in µm*, not in voxels
(confocal voxels are 2-3x longer along z), at least 6 bead sizes and 8 voxels along each
axis, and no larger than the volume (an axis that is clipped hands its share to the others). Earlier passes use
windows 2x and 1.5x as large (in µm): they catch large motion, the last pass resolves it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage
from scipy.fft import next_fast_len

from ..grid import Grid

TARGET_BEADS = 8  # beads in a last-pass window
PASS_SCALES = (2.0, 1.5, 1.0)  # window size per pass, relative to the last pass (in µm)
MIN_WINDOW_VOXELS = 4096  # a last-pass window holds at least this many voxels (16³: a correlation peak needs them)
MIN_EDGE_VOXELS = 8  # and at least this many along each axis


@dataclasses.dataclass(frozen=True)
class BeadStatistics:
    """What the reference volume shows of its beads."""

    n_beads: int  # local maxima counted as beads
    density_per_um3: float  # beads per µm³ of the volume's extent
    sigma_um: tuple  # apparent bead size (Gaussian sigma of bead * PSF), (z, y, x), µm
    background: float  # median intensity
    noise: float  # robust noise level of the intensity
    threshold: float  # the height a local maximum needed to count
    crowded: bool = False  # beads overlap so much that the density is a lower bound

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def autocorrelation_sigma(v, most=None) -> np.ndarray:
    """Apparent bead size per axis (voxels) from the volume's autocorrelation: for beads
    of Gaussian profile sigma it falls as ``exp(-l² / (4 sigma²))`` with the lag ``l``,
    whatever their density; lags 1 and 2 are used (white noise only adds to lag 0).
    ``most``: use at most this many central voxels per axis (taken as float32; a few
    thousand beads suffice, and the FFT stays small on large stacks)."""
    if most is not None:
        v = np.asarray(v)
        v = v[tuple(slice(max(0, (n - m) // 2), max(0, (n - m) // 2) + m) for n, m in zip(v.shape, most))]
        v = v.astype(np.float32)
    x = v - v.mean()
    ac = np.fft.irfftn(np.abs(np.fft.rfftn(x)) ** 2, s=x.shape, axes=tuple(range(x.ndim)))
    out = []
    for a, n in enumerate(x.shape):
        if n < 5:
            out.append(0.0)
            continue
        lag = [float(np.take(ac, i, axis=a).sum()) for i in (1, 2)]
        ratio = lag[0] / lag[1] if lag[1] > 0 and lag[0] > 0 else np.inf
        out.append(math.sqrt(3.0 / (4.0 * math.log(ratio))) if ratio > 1 else float(n))
    # A voxel-integrated Gaussian has 1/12 voxel² more variance than the point-sampled one.
    return np.sqrt(np.clip(np.square(out) - 1.0 / 12.0, 0.0, None))


def bead_statistics(volume, grid, mask=None) -> BeadStatistics:
    """Bead density and apparent size of a bead volume (see the module docs).

    ``grid`` is the volume's :class:`~tfm.grid.Grid` or voxel size; ``mask`` (True where
    there is no gel, e.g. the cell) is left out of the count and of the volume. Raises
    ValueError when the volume shows no beads (no local maximum above the noise)."""
    v = np.asarray(volume, np.float32)
    grid = Grid.of(v.shape, grid)
    gel = np.ones(v.shape, bool) if mask is None else ~np.asarray(mask, bool)
    h = np.asarray(grid.spacing_um)
    s = ndimage.gaussian_filter(v, [1.0 if n > 1 else 0.0 for n in v.shape])
    background = float(np.median(s))
    # The lower half of the intensities is background and noise (beads only add light):
    # its one-sided spread is the noise of the smoothed volume.
    noise = background - float(np.percentile(s, 15.87)) or float(np.std(s)) or 1.0
    is_max = (s == ndimage.maximum_filter(s, size=[3 if n > 1 else 1 for n in v.shape])) & (s > background + 4 * noise) & gel
    cand = np.argwhere(is_max)
    heights = s[is_max] - background
    if len(cand) == 0:
        raise ValueError("the reference volume shows no beads (no local maximum stands above its noise): "
                         "is it the bead channel?")
    threshold = max(4 * noise, 0.2 * _bead_height(heights))
    keep = heights >= threshold
    n = int(keep.sum())
    sigma_vox = np.maximum(autocorrelation_sigma(v), np.where(np.asarray(v.shape) > 1, 0.3, 0.0))
    volume_um3 = float(gel.sum()) * grid.voxel_volume_um3
    density, crowded = _unmerged(n / volume_um3, np.sqrt(sigma_vox**2 + 1.0) * h)
    return BeadStatistics(n, density, tuple(float(x) for x in sigma_vox * h), background, noise,
                          threshold + background, crowded)


def _bead_height(heights) -> float:
    """The typical peak height of the beads among local maxima: the maxima's log heights
    split in two by Otsu's rule; where the upper class is clearly brighter (4x the lower
    one's median: beads above faint background maxima, as in 8-bit confocal stacks) its
    median, else (every maximum is a bead) the 90th percentile of all."""
    from ..segment import threshold_otsu

    logh = np.log(np.maximum(heights, 1e-12))
    if len(logh) >= 10 and np.ptp(logh) > 0:
        t = threshold_otsu(logh)
        upper, lower = heights[logh > t], heights[logh <= t]
        if len(upper) and len(lower) and np.median(upper) > 4 * np.median(lower):
            return float(np.median(upper))
    return float(np.percentile(heights, 90))


def _unmerged(observed: float, sigma_eff_um) -> tuple[float, bool]:
    """The bead density from the density of distinct maxima: beads closer than about two
    (smoothed) bead sizes merge into one maximum, so a Poisson process of density rho
    shows ``rho exp(-rho V)`` maxima, ``V`` the ellipsoid of semi-axes ``2 sigma``.
    Inverted by Newton's method; beyond ``rho V = 1`` the beads are too crowded to count
    (flagged, the estimate capped there)."""
    v = 4.0 / 3.0 * math.pi * float(np.prod(2.0 * np.asarray(sigma_eff_um)))
    y = observed * v
    if y >= 1.0 / math.e:
        return 1.0 / v, True
    x = y
    for _ in range(50):  # solve x exp(-x) = y on the principal branch (x < 1)
        x -= (x * math.exp(-x) - y) / ((1 - x) * math.exp(-x))
    return x / v, x > 0.8


def _nice(n: float) -> int:
    """An even window edge with small prime factors (fast FFTs), at least 4."""
    k = max(4, int(round(n)))
    k += k % 2
    while next_fast_len(k) != k:
        k += 2
    return k


def _edges_um(volume_um3: float, floor_um, extent_um) -> np.ndarray:
    """Per-axis edges (µm) of a near-cubic box of ``volume_um3``: at least ``floor_um``,
    at most the ``extent_um``; a clipped axis hands its share to the others."""
    fixed = np.zeros(len(extent_um), bool)
    edges = np.zeros(len(extent_um))
    for _ in range(len(extent_um)):
        free = ~fixed
        rest = volume_um3 / np.prod(edges[fixed]) if fixed.any() else volume_um3
        side = rest ** (1.0 / free.sum())
        edges[free] = side
        low, high = free & (edges < floor_um), free & (edges > extent_um)
        if not (low.any() or high.any()):
            break
        edges[low], edges[high] = np.asarray(floor_um)[low], np.asarray(extent_um)[high]
        fixed |= low | high
        if fixed.all():
            break
    return np.clip(edges, floor_um, extent_um)


def choose_windows(stats: BeadStatistics, grid: Grid, target_beads: float = TARGET_BEADS,
                   scales=PASS_SCALES) -> tuple[tuple, dict]:
    """Window edges in voxels per pass, ``((wz, wy, wx), ...)``, for a volume on ``grid``
    with bead statistics ``stats``, and a report of the choice (see the module docs)."""
    if not (math.isfinite(target_beads) and target_beads > 0):
        raise ValueError(f"target_beads must be > 0, got {target_beads}")
    h = np.asarray(grid.spacing_um)
    shape = np.asarray(grid.shape)
    flat = shape == 1
    extent = np.where(flat, h, shape * h)
    floor = np.where(flat, h, np.maximum(6 * np.asarray(stats.sigma_um), MIN_EDGE_VOXELS * h))
    density = max(stats.density_per_um3, 1e-12)
    volume = max(target_beads / density, MIN_WINDOW_VOXELS * float(np.prod(h[~flat])) * float(np.prod(h[flat])))
    passes = []
    for scale in sorted(scales, reverse=True):
        edges = _edges_um(scale**3 * volume / np.prod(h[flat]), floor[~flat], extent[~flat])
        w = np.ones(len(shape), int)
        w[~flat] = [min(_nice(e / hh), n) for e, hh, n in zip(edges, h[~flat], shape[~flat])]
        if not passes or tuple(w) != passes[-1]:
            passes.append(tuple(int(x) for x in w))
    last = np.asarray(passes[-1])
    report = {"target_beads": float(target_beads), "bead_density_per_um3": stats.density_per_um3,
              "beads_detected": stats.n_beads, "bead_sigma_um": list(stats.sigma_um),
              "window_um": [list(np.asarray(p) * h) for p in passes],
              "beads_per_last_window": float(density * np.prod(last * h))}
    return tuple(passes), report
