r"""3D digital volume correlation: bead volume pair -> displacement on a grid of windows.

Method (iterative window deformation, in the spirit of FIDVC; Bar-Kochba et al.,
Exp Mech 55, 261 (2015)):

1. Both volumes are normalised (zero mean, unit variance); voxels inside ``mask`` (the
   cell) are set to zero in both.
2. A rigid shift is estimated by phase correlation of the whole volumes and used as the
   first guess (it is also the drift removed with ``drift="rigid"``).
3. For each pass (window sizes shrinking, e.g. 32 -> 24 -> 16 voxels, 50 % overlap) and
   each iteration within a pass:

   * the deformed volume is warped back by the current estimate,
     :math:`D_w(x) = D(x + u(x))`, with cubic B-spline interpolation of ``D`` in the
     last pass (trilinear in earlier passes with ``fast_passes``, 3-4x cheaper) and
     trilinear interpolation of ``u`` between window centres, extended linearly beyond
     the outermost centres (in z-slabs, so memory is bounded);
   * reference and warped windows are cross-correlated by FFT (zero-mean, normalised:
     the peak value is the correlation coefficient, reported as ``quality``); the
     peak is located to sub-voxel precision with a three-point Gaussian fit per axis;
   * the predictor that drives the warp is the current estimate low-passed by a
     binomial filter (Schrijer & Scarano, Exp Fluids 45, 927 (2008)): without it the
     iteration amplifies window-to-window noise; the new estimate is the predictor plus
     the measured residual;
   * windows with quality below ``min_quality``, inside the mask or without contrast
     are invalid; outliers of the residual-shift field are detected by the normalised
     median test (Westerweel & Scarano, Exp Fluids 39, 1096 (2005)) on the 26
     neighbours; both are replaced by the neighbours' median; the residual is added to
     ``u``;
   * iterations stop when the RMS update is below ``tolerance_voxels``.

   Because the warped volume converges to the reference, the final residual shifts are
   near zero, where the Gaussian peak estimator has no bias, and the window no longer
   needs to contain a uniform displacement: strained and curved fields are followed.
4. Drift: ``"rigid"`` subtracts the phase-correlation shift; ``"median"`` the median
   displacement of the valid windows in the far half (by distance from the mask, or
   from the volume's centre); ``"affine"`` a least-squares affine field ``b + G x``
   fitted to those far windows, which also removes uniform strains between the two
   acquisitions (gel swelling, axial scaling by refractive-index mismatch: 6.7 % along
   z in the FM-Track stacks). A cell's own field in an infinite matrix decays as 1/r²
   and has no uniform strain, so only the artefact is removed. ``"slicewise"`` removes
   a translation per z-plane of the window grid (the median of that plane's far
   windows): confocal planes are recorded one after another, so stage drift during
   the acquisition and non-uniform z steps displace whole planes; this also covers a
   uniform axial compression and z-shears. ``None`` keeps all.

The displacement maps the reference onto the deformed volume: a bead at ``X`` in the
reference is found at ``X + u(X)`` in the deformed volume. Output is in µm on the grid
of window centres of the last pass.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from ..fields import resample, trilinear
from ..grid import Grid
from ..progress import resolve
from . import drift as drift_models

DRIFTS = drift_models.DRIFTS


@dataclasses.dataclass(frozen=True)
class DVCConfig:
    """Settings of :func:`correlate`. Defaults suit beads ~2-4 voxels across at ~1 % of voxels."""

    windows: tuple = (32, 24, 16)  # window edge per pass, voxels: ints (cubic) or (z, y, x) triples
    overlap: float = 0.5  # fraction by which neighbouring windows overlap; sets the output spacing
    iterations: int = 5  # maximum window-deformation iterations per pass
    tolerance_voxels: float = 0.02  # stop a pass when the RMS update over valid windows is below this
    min_quality: float = 0.2  # windows whose correlation peak is lower are invalid
    median_threshold: float = 2.0  # normalised median test threshold (2 is the usual choice)
    median_epsilon_voxels: float = 0.1  # noise floor of the median test, voxels
    max_shift_fraction: float = 0.3  # largest residual shift searched, as a fraction of the window
    drift: str | None = "rigid"  # "rigid", "median", "affine", "slicewise" or None (see module docstring)
    fast_passes: bool = True  # warp with trilinear interpolation in all passes but the last (3-4x faster)
    smooth_predictor: bool = True  # low-pass the field that drives the warp (stabilises the iteration)
    batch_windows: int = 512  # windows correlated per JAX call (bounds memory)
    slab_voxels: int = 1 << 20  # voxels warped per JAX call (bounds memory)

    min_valid_fraction: float = 0.2  # fewer valid windows (of those outside the mask) than this is an error

    def __post_init__(self):
        object.__setattr__(self, "windows", _check_windows(self.windows))
        _check_number(self, "overlap", 0.0, 1.0, upper_open=True)
        _check_number(self, "tolerance_voxels", 0.0, None)
        _check_number(self, "min_quality", -1.0, 1.0)
        _check_number(self, "median_threshold", 0.0, None, lower_open=True)
        _check_number(self, "median_epsilon_voxels", 0.0, None)
        _check_number(self, "max_shift_fraction", 0.0, 0.5, lower_open=True)
        _check_number(self, "min_valid_fraction", 0.0, 1.0)
        if self.drift not in DRIFTS:
            raise ValueError(f"drift must be one of {DRIFTS}, got {self.drift!r}")
        for name in ("iterations", "batch_windows", "slab_voxels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")


def _check_number(cfg, name, lo, hi, lower_open=False, upper_open=False) -> None:
    v = getattr(cfg, name)
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)
    ok = ok and (v > lo if lower_open else v >= lo) and (hi is None or (v < hi if upper_open else v <= hi))
    if not ok:
        span = f"{'(' if lower_open else '['}{lo}, {'inf' if hi is None else hi}{')' if upper_open or hi is None else ']'}"
        raise ValueError(f"{name} must be a finite number in {span}, got {v!r}")


def _check_windows(windows) -> tuple:
    """Per pass a window edge (cubic) or (z, y, x) edges, voxels; one int is one pass."""
    if isinstance(windows, (int, np.integer)) and not isinstance(windows, bool):
        windows = (windows,)
    try:
        windows = tuple(windows)
    except TypeError:
        raise ValueError(f"windows must list window sizes per pass (an int or (z, y, x) each), got {windows!r}") from None
    if not windows:
        raise ValueError("windows must list at least one window size")
    out = []
    for w in windows:
        sizes = (w,) * 3 if np.ndim(w) == 0 else tuple(w)
        if len(sizes) != 3 or any(isinstance(v, (bool, str)) or not isinstance(v, (int, float, np.number))
                                  or not float(v).is_integer() for v in sizes):
            raise ValueError(f"each window must be a whole number of voxels or three of them (z, y, x), got {w!r}")
        sizes = tuple(int(v) for v in sizes)
        if any(v < 4 and v != 1 for v in sizes):
            raise ValueError(f"each window must be >= 4 voxels along each of (z, y, x) (1 along a flat axis), got {sizes}")
        out.append(sizes)
    return tuple(out)


# ------------------------------------------------------------------ validation, set-up
def _spline_coefficients(volume):
    """Cubic B-spline coefficients (mirror boundary), padded by :data:`SPLINE_PAD`."""
    c = ndimage.spline_filter(volume, order=3, mode="mirror", output=np.float32)
    return jnp.asarray(np.pad(c, SPLINE_PAD, mode="reflect"))


def _check(reference, deformed, grid, mask):
    ref, dfm = np.asarray(reference), np.asarray(deformed)
    for name, v in (("reference", ref), ("deformed", dfm)):
        if v.ndim != 3:
            raise ValueError(f"{name} must be a 3D volume (Z, Y, X), got shape {v.shape}")
        if not (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating) or v.dtype == bool):
            raise ValueError(f"{name} must hold real numbers, got dtype {v.dtype}")
        if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
            raise ValueError(f"{name} contains NaN or infinite values")
    if ref.shape != dfm.shape:
        raise ValueError(f"reference and deformed must have the same shape, got {ref.shape} and {dfm.shape}")
    grid = Grid.of(ref.shape, grid)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != ref.shape:
            raise ValueError(f"mask must have the volumes' shape {ref.shape}, got {mask.shape}")
    return ref, dfm, grid, mask


def _normalise(v, mask, name):
    v = v.astype(np.float32)
    keep = ~mask if mask is not None else np.ones(v.shape, bool)
    sd = float(v[keep].std()) if keep.any() else 0.0
    if not sd > 0:
        raise ValueError(f"{name} is empty or constant (no bead contrast to correlate)")
    v = (v - float(v[keep].mean())) / sd
    if mask is not None:
        v[mask] = 0.0
    return v


@dataclasses.dataclass(frozen=True)
class _Layout:
    """A regular grid of windows of one pass: per axis, ``counts`` windows of size
    ``window`` whose starts are ``offset + i * step`` (voxels)."""

    window: tuple
    step: tuple
    offset: tuple
    counts: tuple

    @classmethod
    def make(cls, shape, window, step):
        """As many windows as fit at ``step``, the run centred in the volume (under half
        a step left uncovered at each edge), so the centres lie on an exact regular grid."""
        offset, counts = [], []
        for n, w, s in zip(shape, window, step):
            if w > n:
                raise ValueError(f"window {window} does not fit in the volume {shape}: use windows no larger than the "
                                 "volume along each axis (windows=((1, wy, wx), ...) for a single plane)")
            k = (n - w) // s + 1
            counts.append(k)
            offset.append(((n - w) - (k - 1) * s) // 2)
        return cls(tuple(window), tuple(step), tuple(offset), tuple(counts))

    @property
    def shape(self):
        return self.counts

    @property
    def starts(self):
        return tuple(o + s * np.arange(k) for o, s, k in zip(self.offset, self.step, self.counts))

    @property
    def origin(self):
        """Centre of the first window per axis (voxel units; half-integer for even windows)."""
        return tuple(o + (w - 1) / 2 for o, w in zip(self.offset, self.window))

    def centres(self):
        """Window centres per axis (voxel index units)."""
        return tuple(c + s * np.arange(k) for c, s, k in zip(self.origin, self.step, self.counts))

    def voxel_grid(self) -> Grid:
        """The window centres as a :class:`Grid` in voxel units of the volume."""
        return Grid(self.counts, self.step, self.origin)

    def all_starts(self):
        g = np.meshgrid(*self.starts, indexing="ij")
        return np.stack([a.ravel() for a in g], -1).astype(np.int32)


# ---------------------------------------------------------------- rigid shift (drift)
def _gauss_peak(cm, c0, cp):
    """Sub-sample offset of a peak from three samples (Gaussian fit; parabolic fallback)."""
    ok = (cm > 0) & (c0 > 0) & (cp > 0)
    lm, l0, lp = (jnp.log(jnp.where(ok, v, 1.0)) for v in (cm, c0, cp))
    den_g = lm - 2 * l0 + lp
    gauss = jnp.where(den_g < 0, 0.5 * (lm - lp) / jnp.where(den_g < 0, den_g, -1.0), 0.0)
    den_p = cm - 2 * c0 + cp
    parab = jnp.where(den_p < 0, 0.5 * (cm - cp) / jnp.where(den_p < 0, den_p, -1.0), 0.0)
    return jnp.clip(jnp.where(ok, gauss, parab), -0.5, 0.5)


def _subpixel_peak(corr, flat_index):
    """Peak position (signed shifts, sub-voxel) of periodic correlation volumes (B, Z, Y, X)."""
    shape = corr.shape[1:]
    idx = jnp.stack(jnp.unravel_index(flat_index, shape), -1)  # (B, 3)
    b = jnp.arange(corr.shape[0])
    shifts = []
    for a in range(3):
        n = shape[a]
        at = [idx[:, 0], idx[:, 1], idx[:, 2]]
        vals = []
        for d in (-1, 0, 1):
            q = list(at)
            q[a] = (at[a] + d) % n
            vals.append(corr[b, q[0], q[1], q[2]])
        off = _gauss_peak(*vals)
        i = idx[:, a]
        signed = jnp.where(i > n // 2, i - n, i)
        shifts.append(signed + off)
    return jnp.stack(shifts, -1)


def rigid_shift(reference, deformed, coeffs=None, refinements: int = 2, slab_voxels: int = 1 << 20) -> np.ndarray:
    """Global translation (voxels, (z, y, x)) of ``deformed`` relative to ``reference``.

    Phase correlation of the whole volumes gives a first estimate; it is refined by
    warping ``deformed`` back by the estimate (cubic B-spline, as in the DVC passes) and
    correlating a central crop that excludes the margins the shift moved, where the
    (now near-zero) peak has no estimator bias. ``coeffs`` are the B-spline
    coefficients of ``deformed`` if already computed.
    """
    r = jnp.asarray(reference, jnp.float32)
    d = jnp.asarray(deformed, jnp.float32)
    cross = jnp.conj(jnp.fft.rfftn(r)) * jnp.fft.rfftn(d)
    corr = jnp.fft.irfftn(cross / jnp.maximum(jnp.abs(cross), 1e-12), s=r.shape)
    # Smooth the sharp phase-correlation peak slightly so the 3-point fit is well posed.
    corr = jnp.fft.irfftn(jnp.fft.rfftn(corr) * _gauss_kernel_ft(r.shape, 0.7), s=r.shape)
    shift = np.asarray(_subpixel_peak(corr[None], jnp.argmax(corr.ravel())[None])[0], dtype=np.float64)
    del corr, cross
    if coeffs is None:
        coeffs = _spline_coefficients(np.asarray(deformed, np.float32))
    whole = _Layout(tuple(r.shape), (1, 1, 1), (0, 0, 0), (1, 1, 1))
    for _ in range(refinements):
        margin = tuple(0 if n == 1 else max(0, min(int(np.ceil(abs(s))) + 4, (n - 8) // 2)) for s, n in zip(shift, r.shape))
        window = tuple(n - 2 * m for n, m in zip(r.shape, margin))
        if min(w for w, n in zip(window, r.shape) if n > 1) < 8:
            break
        warped = _warp(coeffs, np.broadcast_to(shift, (1, 1, 1, 3)), whole, slab_voxels)
        res, _, _ = _correlate_batch(r, warped, jnp.asarray([margin], jnp.int32), window, (2, 2, 2))
        shift = shift + np.asarray(res[0], dtype=np.float64)
    return shift


def _gauss_kernel_ft(shape, sigma):
    ks = [2 * np.pi * np.fft.fftfreq(n) for n in shape[:-1]] + [2 * np.pi * np.fft.rfftfreq(shape[-1])]
    kz, ky, kx = np.meshgrid(*ks, indexing="ij")
    return jnp.asarray(np.exp(-0.5 * sigma**2 * (kz**2 + ky**2 + kx**2)), jnp.float32)


# ------------------------------------------------------------------------- warping
SPLINE_PAD = 2  # mirror padding of the B-spline coefficients (voxels per side)


def _bspline_weights(t):
    t2, t3 = t * t, t * t * t
    return jnp.stack([(1 - t) ** 3 / 6, (3 * t3 - 6 * t2 + 4) / 6, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6, t3 / 6], -1)


def _bspline_sample(coeffs_padded, pts):
    """Cubic B-spline interpolation at points (P, 3) (voxel units of the unpadded volume)
    from coefficients mirror-padded by :data:`SPLINE_PAD`; one 4x4x4 block gather per
    point (much faster in XLA than 64 scalar gathers)."""
    f = jnp.floor(pts)
    t = pts - f
    base = jnp.clip(f.astype(jnp.int32) - 1 + SPLINE_PAD, 0, jnp.asarray(coeffs_padded.shape) - 4)
    blocks = jax.vmap(lambda s: jax.lax.dynamic_slice(coeffs_padded, s, (4, 4, 4)))(base)
    w = [_bspline_weights(t[:, a]) for a in range(3)]
    return jnp.einsum("pijk,pi,pj,pk->p", blocks, w[0], w[1], w[2])


def _linear_source(volume):
    """The volume edge-padded by one voxel per side (for :func:`_linear_sample`)."""
    return jnp.pad(jnp.asarray(volume), 1, mode="edge")


def _linear_sample(padded, pts):
    """Trilinear interpolation from an edge-padded volume (edge values beyond the faces);
    3-4x cheaper than cubic. Works on flat (single-plane) volumes too."""
    n = jnp.asarray(padded.shape) - 2
    p = jnp.clip(pts, -1.0, n.astype(pts.dtype))
    base = jnp.clip(jnp.floor(p).astype(jnp.int32) + 1, 0, n)
    t = p - (base - 1)
    blocks = jax.vmap(lambda s: jax.lax.dynamic_slice(padded, s, (2, 2, 2)))(base)
    w = [jnp.stack([1 - t[:, a], t[:, a]], -1) for a in range(3)]
    return jnp.einsum("pijk,pi,pj,pk->p", blocks, w[0], w[1], w[2])


@partial(jax.jit, static_argnums=(4, 5))
def _warp_slab(source, u_grid, z0, grid_geom, slab_shape, cubic):
    """Warped values D(x + u(x)) for the voxels of one z-slab starting at plane ``z0``;
    ``source`` is the padded B-spline coefficient volume (``cubic``) or the volume."""
    c0, step = grid_geom  # (3,), (3,) window-grid origin and step in voxels
    nz, ny, nx = slab_shape
    z = z0 + jnp.arange(nz, dtype=jnp.float32)
    zz, yy, xx = jnp.meshgrid(z, jnp.arange(ny, dtype=jnp.float32), jnp.arange(nx, dtype=jnp.float32), indexing="ij")
    pts = jnp.stack([zz.ravel(), yy.ravel(), xx.ravel()], -1)
    g = (pts - c0) / step  # fractional window-grid indices
    # Linear extrapolation beyond the outermost window centres: they lie half a window
    # inside the volume, and clamping there would warp the outer half of every edge
    # window with the wrong displacement and bias it.
    u = trilinear(u_grid, g)
    sample = _bspline_sample if cubic else _linear_sample
    return sample(source, pts + u).reshape(slab_shape)


def _warp(source, u_grid, layout: _Layout, slab_voxels: int, cubic: bool = True):
    """The deformed volume warped back by ``u_grid`` (given on the window centres)."""
    nz_all, ny, nx = (n - 2 * (SPLINE_PAD if cubic else 1) for n in source.shape)
    nz = max(1, min(nz_all, slab_voxels // (ny * nx)))
    c0 = jnp.asarray(layout.origin, jnp.float32)
    step = jnp.asarray(layout.step, jnp.float32)
    ug = jnp.asarray(u_grid, jnp.float32)
    out = []
    for z0 in range(0, nz_all, nz):
        out.append(_warp_slab(source, ug, jnp.float32(z0), (c0, step), (nz, ny, nx), cubic))
    return jnp.concatenate(out, 0)[:nz_all]


# ---------------------------------------------------------------------- correlation
@partial(jax.jit, static_argnums=(3, 4))
def _correlate_batch(ref, warped, starts, window, max_shift):
    """Shift (B, 3), correlation peak (B,) and contrast (B,) of windows at ``starts``."""
    cut = lambda v, s: jax.lax.dynamic_slice(v, s, window)  # noqa: E731
    r = jax.vmap(cut, (None, 0))(ref, starts)
    d = jax.vmap(cut, (None, 0))(warped, starts)
    r = r - r.mean(axis=(1, 2, 3), keepdims=True)
    d = d - d.mean(axis=(1, 2, 3), keepdims=True)
    er = jnp.sqrt(jnp.sum(r * r, axis=(1, 2, 3)))
    ed = jnp.sqrt(jnp.sum(d * d, axis=(1, 2, 3)))
    corr = jnp.fft.irfftn(jnp.conj(jnp.fft.rfftn(r, axes=(1, 2, 3))) * jnp.fft.rfftn(d, axes=(1, 2, 3)), s=window, axes=(1, 2, 3))
    corr = corr / jnp.maximum(er * ed, 1e-12)[:, None, None, None]
    # Search only shifts up to max_shift along each axis (periodic indices).
    lim = []
    for a, n in enumerate(window):
        i = jnp.arange(n)
        s = jnp.minimum(i, n - i)
        shape = [1, 1, 1]
        shape[a] = n
        lim.append((s <= max_shift[a]).reshape(shape))
    allowed = lim[0] & lim[1] & lim[2]
    masked = jnp.where(allowed[None], corr, -2.0)
    peak = jnp.argmax(masked.reshape(masked.shape[0], -1), axis=1)
    shift = _subpixel_peak(corr, peak)
    quality = jnp.take_along_axis(masked.reshape(masked.shape[0], -1), peak[:, None], 1)[:, 0]
    contrast = jnp.minimum(er, ed)
    return shift, quality, contrast


def _correlate_all(ref, warped, layout: _Layout, cfg: DVCConfig):
    starts = layout.all_starts()
    n = len(starts)
    bsz = min(cfg.batch_windows, n)
    max_shift = tuple(max(1, int(cfg.max_shift_fraction * w)) for w in layout.window)
    shifts, quals, contr = [], [], []
    for s in range(0, n, bsz):
        chunk = starts[s : s + bsz]
        pad = bsz - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
        sh, q, c = _correlate_batch(ref, warped, jnp.asarray(chunk), layout.window, max_shift)
        k = bsz - pad
        shifts.append(np.asarray(sh)[:k])
        quals.append(np.asarray(q)[:k])
        contr.append(np.asarray(c)[:k])
    shp = layout.shape
    return (np.concatenate(shifts).reshape(*shp, 3), np.concatenate(quals).reshape(shp), np.concatenate(contr).reshape(shp))


# ------------------------------------------------------------------ outlier handling
def _neighbours(u):
    """Values of the 26 neighbours of every grid point, NaN beyond the edges: (26, *shape, C)."""
    p = np.pad(u, [(1, 1)] * 3 + [(0, 0)], constant_values=np.nan)
    nz, ny, nx = u.shape[:3]
    out = []
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dz == dy == dx == 0:
                    continue
                out.append(p[1 + dz : 1 + dz + nz, 1 + dy : 1 + dy + ny, 1 + dx : 1 + dx + nx])
    return np.stack(out)


def median_test(u, valid, threshold=2.0, epsilon=0.1):
    """Normalised median test (Westerweel & Scarano 2005) on a (Z, Y, X, 3) field.

    Returns ``(cleaned, outlier)``: invalid points and outliers are replaced by the
    median of their valid neighbours (repeated so that clusters fill from their edges).
    """
    u = np.where(valid[..., None], u, np.nan).astype(np.float64)
    nb = _neighbours(u)
    with np.errstate(all="ignore"), _quiet_nan():
        med = np.nanmedian(nb, axis=0)
        rm = np.nanmedian(np.abs(nb - med[None]), axis=0)
        r = np.abs(u - med) / (rm + epsilon)
    outlier = valid & np.any(r > threshold, axis=-1)
    u[outlier] = np.nan
    for _ in range(max(u.shape[:3])):
        bad = np.isnan(u[..., 0])
        if not bad.any():
            break
        with _quiet_nan():
            fill = np.nanmedian(_neighbours(u), axis=0)
        u[bad] = fill[bad]
    if np.isnan(u).any():  # nothing valid at all
        u = np.nan_to_num(u)
    return u, outlier


class _quiet_nan:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *a):
        self._w.__exit__(*a)


def smooth_predictor(u):
    """Binomial [1, 2, 1]/4 filter along each grid axis, edges padded by linear
    extrapolation (so linear fields pass unchanged, edges included).

    Iterative window deformation amplifies window-to-window noise unless the predictor
    that drives the warp is low-pass filtered (Schrijer & Scarano, Exp Fluids 45, 927
    (2008)); this filter removes the grid's Nyquist mode and halves modes of four steps.
    """
    out = np.asarray(u, dtype=np.float64)
    for axis in range(3):
        n = out.shape[axis]
        if n < 3:
            continue
        a = np.moveaxis(out, axis, 0)
        padded = np.concatenate([2 * a[:1] - a[1:2], a, 2 * a[-1:] - a[-2:-1]], 0)
        out = np.moveaxis(0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:], 0, axis)
    return out


# ---------------------------------------------------------------------------- driver
def correlate(reference, deformed, grid, mask=None, config: DVCConfig = DVCConfig(), progress=None):
    """Measure the displacement between two bead volumes.

    Args:
      reference: relaxed volume (Z, Y, X), any real dtype.
      deformed: loaded volume, same shape.
      grid: the volumes' :class:`~tfm.grid.Grid`, or their voxel size (z, y, x) in µm.
      mask: optional boolean (Z, Y, X), True where there is no gel (the cell): excluded.
      config: :class:`DVCConfig`.
      progress: a :class:`tfm.progress.Progress` (or True) for a progress bar.

    Returns:
      ``(displacement_um, grid, info)``: displacement (nz, ny, nx, 3) in µm at the
      window centres of the last pass, the :class:`~tfm.grid.Grid` of those centres (in
      the volumes' coordinates), and info (window sizes, passes, iterations, quality and
      validity maps, drift, timings).
    """
    t_start = time.perf_counter()
    ref, dfm, image_grid, mask = _check(reference, deformed, grid, mask)
    ref = _normalise(ref, mask, "reference")
    dfm = _normalise(dfm, mask, "deformed")
    vol = {"ref": jnp.asarray(ref), "coeffs": _spline_coefficients(dfm), "linear": _linear_source(dfm)}
    drift = rigid_shift(ref, dfm, vol["coeffs"], slab_voxels=config.slab_voxels)
    info = {"windows_voxels": [list(w) for w in config.windows], "overlap": config.overlap, "passes": [],
            "rigid_shift_voxels": drift.tolist(), "drift": config.drift}
    u, layout = None, None
    with resolve(progress).task(len(config.windows) * config.iterations, "DVC") as bar:
        for p, window in enumerate(config.windows):
            step = tuple(max(1, int(round(w * (1 - config.overlap)))) for w in window)
            new = _Layout.make(ref.shape, window, step)
            u = np.broadcast_to(drift, (*new.shape, 3)).copy() if u is None else resample(u, layout.voxel_grid(), new.voxel_grid())
            layout = new
            cubic = p == len(config.windows) - 1 or not config.fast_passes
            u, maps, rec = _run_pass(vol, u, layout, _masked_windows(mask, layout), cubic, config, bar,
                                     f"pass {p + 1}/{len(config.windows)}")
            info["passes"].append(rec)
    _check_valid(maps, config)
    centres = np.stack(np.meshgrid(*layout.centres(), indexing="ij"), -1)
    dist = drift_models.window_distances(centres, mask, image_grid.spacing_um)
    correction, removed, extra = drift_models.correction(config.drift, u, drift, maps["valid"], centres, dist, ref.shape)
    info.update(extra)
    u = u - correction
    info.update(quality=maps["quality"].astype(np.float32), valid=maps["valid"], masked=maps["masked"],
                drift_removed_voxels=np.asarray(removed, dtype=float).tolist(), time_s=time.perf_counter() - t_start)
    h = np.asarray(image_grid.spacing_um)
    out_grid = Grid(layout.shape, tuple(np.asarray(layout.step) * h),
                    tuple(np.asarray(image_grid.origin_um) + np.asarray(layout.origin) * h))
    return (u * h).astype(np.float32), out_grid, info


def _run_pass(vol, u, layout: _Layout, masked, cubic: bool, config: DVCConfig, bar, label: str):
    """The window-deformation iterations of one pass: ``(u, maps, record)``."""
    rec = {"window": list(layout.window), "step": list(layout.step), "grid_shape": list(layout.shape), "iterations": 0}
    for it in range(config.iterations):
        predictor = smooth_predictor(u) if config.smooth_predictor else u
        warped = _warp(vol["coeffs"] if cubic else vol["linear"], predictor, layout, config.slab_voxels, cubic)
        res, quality, contrast = _correlate_all(vol["ref"], warped, layout, config)
        valid = (quality >= config.min_quality) & (contrast > 1e-3 * np.median(contrast)) & ~masked
        # The test runs on this iteration's update, not on u: the update is nearly uniform
        # once the warp follows the field, so a window at an edge (all neighbours on one
        # side) is not mistaken for an outlier because of a legitimate gradient of u.
        res, outlier = median_test(res, valid, config.median_threshold, config.median_epsilon_voxels)
        u_new = predictor + res
        good = valid & ~outlier
        update = float(np.sqrt(np.mean(np.sum((u_new - u)[good] ** 2, -1)))) if good.any() else 0.0
        u = u_new
        rec["iterations"] = it + 1
        rec["rms_update_voxels"] = update
        bar.update(1, f"{label} it {it + 1} rms update {update:.3f} vox")
        if update < config.tolerance_voxels:
            bar.update(config.iterations - it - 1)
            break
    rec.update(valid_fraction=float(good.mean()), outlier_fraction=float(outlier.mean()))
    return u, {"quality": quality, "valid": good, "masked": masked}, rec


def _check_valid(maps, config: DVCConfig) -> None:
    """Refuse a field that rests on too few valid windows (it would be the neighbours'
    median of almost nothing: zero displacement, zero force)."""
    outside = ~maps["masked"]
    n = int(outside.sum())
    frac = float(maps["valid"][outside].mean()) if n else 0.0
    if frac < config.min_valid_fraction or not maps["valid"].any():
        q = maps["quality"][outside]
        raise ValueError(
            f"only {100 * frac:.1f} % of the {n} correlation windows outside the mask are valid (min_valid_fraction "
            f"{config.min_valid_fraction:g}; median correlation peak {float(np.median(q)) if q.size else float('nan'):.2f}, "
            f"min_quality {config.min_quality:g}): the reference and deformed volumes do not correlate. Check that they show "
            "the same beads (same field of view, channel and orientation), or use larger windows")


def _masked_windows(mask, layout: _Layout):
    if mask is None:
        return np.zeros(layout.shape, bool)
    idx = np.meshgrid(*[np.round(c).astype(int) for c in layout.centres()], indexing="ij")
    return mask[idx[0], idx[1], idx[2]]
