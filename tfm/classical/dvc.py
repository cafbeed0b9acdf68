r"""3D digital volume correlation: bead volume pair -> displacement on a grid of windows.

Method (iterative window deformation, in the spirit of FIDVC; Bar-Kochba et al.,
Exp Mech 55, 261 (2015)):

1. Windows: with ``windows="auto"`` (the default) the bead density and size are measured
   on the reference and the windows chosen so that the last pass holds ``target_beads``
   beads, near-cubic in µm (:mod:`tfm.classical.texture`); explicit sizes are accepted.
2. Both volumes are normalised (zero mean, unit variance); voxels inside ``mask`` (the
   cell) are set to zero in both.
3. A rigid shift is estimated by phase correlation of the whole volumes and used as the
   first guess (:func:`tfm.classical.correlation.rigid_shift`).
4. For each pass (window sizes shrinking; the earlier passes, which only guide the next,
   with ``coarse_overlap`` = 25 % and at most ``coarse_iterations``, the last with
   ``overlap`` = 50 %) and each iteration within a pass:

   * the deformed volume is warped back by the current estimate,
     :math:`D_w(x) = D(x + u(x))` (:mod:`tfm.classical.warp`): cubic B-spline
     interpolation of ``D`` in the last pass (trilinear in earlier passes with
     ``fast_passes``), linear interpolation of ``u`` between window centres, extended
     linearly beyond the outermost centres; in z-slabs, so memory is bounded;
   * reference and warped windows are cross-correlated by FFT (zero-mean, normalised:
     the peak value is the correlation coefficient, reported as ``quality``); the
     peak is located to sub-voxel precision with a three-point Gaussian fit per axis
     (:mod:`tfm.classical.correlation`; the reference windows' spectra are computed
     once per pass);
   * the predictor that drives the warp is the current estimate low-passed by a
     binomial filter (Schrijer & Scarano, Exp Fluids 45, 927 (2008)): without it the
     iteration amplifies window-to-window noise; the new estimate is the predictor plus
     the measured residual;
   * windows with quality below ``min_quality``, inside the mask or without contrast
     are invalid; outliers of the residual-shift field are detected by the normalised
     median test (Westerweel & Scarano, Exp Fluids 39, 1096 (2005)) on the 26
     neighbours; both are replaced by the neighbours' median;
   * iterations stop when the RMS update is below ``tolerance_voxels``.

   Because the warped volume converges to the reference, the final residual shifts are
   near zero, where the Gaussian peak estimator has no bias, and the window no longer
   needs to contain a uniform displacement: strained and curved fields are followed.
5. A field resting on fewer than ``min_valid_fraction`` valid windows is refused.
6. Drift (:mod:`tfm.classical.drift`): ``"auto"`` (the default) removes the model the far
   field asks for (a rigid shift, an affine field, or a translation per z-plane, chosen by
   an information criterion); ``"rigid"``, ``"median"``, ``"affine"``, ``"slicewise"``
   force one; ``None`` keeps all.

The displacement maps the reference onto the deformed volume: a bead at ``X`` in the
reference is found at ``X + u(X)`` in the deformed volume. Output is in µm on the grid
of window centres of the last pass.
"""

from __future__ import annotations

import dataclasses
import time

import jax.numpy as jnp
import numpy as np

from ..fields import resample
from ..grid import Grid, check_spacing
from ..segment import centroid_um
from ..progress import resolve
from . import correlation, texture, warp
from . import drift as drift_models

DRIFTS = drift_models.DRIFTS


@dataclasses.dataclass(frozen=True)
class DVCConfig:
    """Settings of :func:`correlate`. Defaults suit beads ~2-4 voxels across at ~1 % of voxels."""

    windows: tuple | str = "auto"  # "auto" (from the beads: tfm.classical.texture) or per pass an int (cubic) or (z, y, x)
    target_beads: float = texture.TARGET_BEADS  # windows="auto": beads in a last-pass window
    overlap: float = 0.5  # fraction by which neighbouring windows of the last pass overlap; sets the output spacing
    iterations: int = 5  # maximum window-deformation iterations of the last pass
    coarse_overlap: float = 0.25  # overlap of the earlier passes (they only guide the next: 8x -> 2.4x the volume)
    coarse_iterations: int = 3  # maximum iterations of the earlier passes
    tolerance_voxels: float = 0.02  # stop a pass when the RMS update over valid windows is below this
    min_quality: float = 0.2  # windows whose correlation peak is lower are invalid
    median_threshold: float = 2.0  # normalised median test threshold (2 is the usual choice)
    median_epsilon_voxels: float = 0.1  # noise floor of the median test, voxels
    max_shift_fraction: float = 0.3  # largest residual shift searched, as a fraction of the window
    drift: str | None = "auto"  # "auto", "rigid", "median", "affine", "slicewise" or None (tfm.classical.drift)
    fast_passes: bool = True  # warp with trilinear interpolation in all passes but the last (3-4x faster)
    smooth_predictor: bool = True  # low-pass the field that drives the warp (stabilises the iteration)
    batch_windows: int = 2048  # windows correlated per JAX call (bounds memory)
    slab_voxels: int = 1 << 22  # voxels warped per JAX call (bounds memory)

    min_valid_fraction: float = 0.2  # fewer valid windows (of those outside the mask) than this is an error
    output_spacing_um: float | tuple | None = None  # also return the field at this finer spacing (cubic spline through the windows)

    def __post_init__(self):
        if not (isinstance(self.windows, str) and self.windows == "auto"):
            object.__setattr__(self, "windows", _check_windows(self.windows))
        _check_number(self, "target_beads", 0.0, None, lower_open=True)
        _check_number(self, "overlap", 0.0, 1.0, upper_open=True)
        _check_number(self, "coarse_overlap", 0.0, 1.0, upper_open=True)
        _check_number(self, "tolerance_voxels", 0.0, None)
        _check_number(self, "min_quality", -1.0, 1.0)
        _check_number(self, "median_threshold", 0.0, None, lower_open=True)
        _check_number(self, "median_epsilon_voxels", 0.0, None)
        _check_number(self, "max_shift_fraction", 0.0, 0.5, lower_open=True)
        _check_number(self, "min_valid_fraction", 0.0, 1.0)
        if self.drift not in DRIFTS:
            raise ValueError(f"drift must be one of {DRIFTS}, got {self.drift!r}")
        if self.output_spacing_um is not None:
            object.__setattr__(self, "output_spacing_um", check_spacing(self.output_spacing_um, 3, "output_spacing_um"))
        for name in ("iterations", "coarse_iterations", "batch_windows", "slab_voxels"):
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
    if isinstance(windows, str):
        raise ValueError(f"windows must be 'auto' or window sizes per pass, got {windows!r}")
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
def check_pair(reference, deformed, grid, mask=None):
    """A bead volume pair as arrays, with its Grid and bool mask (or None), or a ValueError
    naming the argument: each a 3D volume of real, finite numbers, both of one shape, the
    mask of that shape. Every method that takes a pair (DVC, the network) checks it here."""
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
def correlate(reference, deformed, grid, mask=None, config: DVCConfig = DVCConfig(), progress=None, initial_um=None):
    """Measure the displacement between two bead volumes.

    Args:
      reference: relaxed volume (Z, Y, X), any real dtype.
      deformed: loaded volume, same shape.
      grid: the volumes' :class:`~tfm.grid.Grid`, or their voxel size (z, y, x) in µm.
      mask: optional boolean (Z, Y, X), True where there is no gel (the cell): excluded.
      config: :class:`DVCConfig`.
      progress: a :class:`tfm.progress.Progress` (or True) for a progress bar.
      initial_um: optional (nz, ny, nx, 3) µm on the last pass's window centres (a
        previous result with the same windows, e.g. the last frame of a time series): the
        coarse passes are skipped and the last pass starts from it plus this pair's rigid
        shift (its iterations correct up to ``max_shift_fraction`` of a window); where
        fewer windows than ``min_valid_fraction`` then correlate, the full coarse-to-fine
        run follows. ``info["initial"]`` says which ran.

    Returns:
      ``(displacement_um, grid, info)``: displacement (nz, ny, nx, 3) in µm at the
      window centres of the last pass, the :class:`~tfm.grid.Grid` of those centres (in
      the volumes' coordinates), and info (window sizes, passes, iterations, quality and
      validity maps, drift, timings).
    """
    t_start = time.perf_counter()
    ref, dfm, image_grid, mask = check_pair(reference, deformed, grid, mask)
    ref = _normalise(ref, mask, "reference")
    dfm = _normalise(dfm, mask, "deformed")
    config, auto = _resolve_windows(ref, image_grid, mask, config)
    vol = {"ref": jnp.asarray(ref), "coeffs": warp.spline_coefficients(dfm), "linear": warp.linear_source(dfm)}
    drift = correlation.rigid_shift(ref, dfm)
    info = {"windows_voxels": [list(w) for w in config.windows], "windows_auto": auto, "overlap": config.overlap,
            "passes": [], "rigid_shift_voxels": drift.tolist(), "drift": config.drift}
    u, layout, maps = None, None, None
    passes = list(enumerate(config.windows))
    if initial_um is not None:
        u, layout, maps = _from_initial(vol, initial_um, drift, ref.shape, image_grid, mask, config, info, progress)
    if maps is None:
        info["passes"] = []
        with resolve(progress).task((len(passes) - 1) * config.coarse_iterations + config.iterations, "DVC") as bar:
            for p, window in passes:
                u, layout, maps = _pass(vol, u, layout, p, window, drift, ref.shape, mask, config, bar, info)
    _check_valid(maps, config)
    centres = np.stack(np.meshgrid(*layout.centres(), indexing="ij"), -1)
    dist = drift_models.window_distances(centres, mask, image_grid.spacing_um)
    mode = config.drift
    centre = centroid_um(mask, image_grid.spacing_um)
    if mode == "auto":
        mode, info["drift_evidence"] = drift_models.choose(u, maps["valid"], centres, dist, ref.shape,
                                                           image_grid.spacing_um, centre)
    correction, removed, extra = drift_models.correction(mode, u, drift, maps["valid"], centres, dist, ref.shape,
                                                         image_grid.spacing_um, centre)
    info.update(extra, drift_model=mode)
    u = u - correction
    info.update(quality=maps["quality"].astype(np.float32), valid=maps["valid"], masked=maps["masked"],
                drift_removed_voxels=np.asarray(removed, dtype=float).tolist(), time_s=time.perf_counter() - t_start)
    h = np.asarray(image_grid.spacing_um)
    out_grid = Grid(layout.shape, tuple(np.asarray(layout.step) * h),
                    tuple(np.asarray(image_grid.origin_um) + np.asarray(layout.origin) * h))
    u_um = (u * h).astype(np.float32)
    if config.output_spacing_um is not None:
        return _dense(u_um, out_grid, config.output_spacing_um, info)
    return u_um, out_grid, info


def _pass(vol, u, layout, p: int, window, drift, shape, mask, config: DVCConfig, bar, info):
    """Pass ``p`` of the coarse-to-fine run, from the previous pass's ``u`` on ``layout``
    (None: the rigid ``drift``); appends its record to ``info["passes"]``."""
    n_pass = len(config.windows)
    last = p == n_pass - 1
    overlap = config.overlap if last else config.coarse_overlap
    step = tuple(max(1, int(round(w * (1 - overlap)))) for w in window)
    new = _Layout.make(shape, window, step)
    u = np.broadcast_to(drift, (*new.shape, 3)).copy() if u is None else resample(u, layout.voxel_grid(), new.voxel_grid())
    cubic = last or not config.fast_passes
    # The last pass runs at least twice: its first iteration moves to the cubic warp;
    # the second measures the (then near-zero) residual where the peak fit has no bias.
    u, maps, rec = _run_pass(vol, u, new, _masked_windows(mask, new), cubic, config, bar, f"pass {p + 1}/{n_pass}",
                             config.iterations if last else config.coarse_iterations, min(2, config.iterations) if last else 1)
    info["passes"].append(rec)
    return u, new, maps


def _from_initial(vol, initial_um, drift, shape, image_grid: Grid, mask, config: DVCConfig, info, progress):
    """The last pass alone, started from ``initial_um`` (µm, its window centres) plus the
    rigid ``drift``: ``(u, layout, maps)``, or ``(None, None, None)`` where too few windows
    then correlate (the caller runs every pass)."""
    window = config.windows[-1]
    layout = _Layout.make(shape, window, tuple(max(1, int(round(w * (1 - config.overlap)))) for w in window))
    start = np.asarray(initial_um, np.float64)
    if start.shape != (*layout.shape, 3) or not np.all(np.isfinite(start)):
        raise ValueError(f"initial_um must be a finite field on the last pass's {layout.shape} window centres "
                         f"(shape {(*layout.shape, 3)}), got shape {start.shape}")
    u0 = start / np.asarray(image_grid.spacing_um) + drift
    with resolve(progress).task(config.iterations, "DVC (from the initial field)") as bar:
        u, maps, rec = _run_pass(vol, u0, layout, _masked_windows(mask, layout), True, config, bar, "last pass",
                                 config.iterations, min(2, config.iterations))
    outside = ~maps["masked"]
    frac = float(maps["valid"][outside].mean()) if outside.any() else 0.0
    info["initial"] = {"used": bool(frac >= config.min_valid_fraction), "valid_fraction": frac}
    if not info["initial"]["used"]:
        return None, None, None
    info["passes"] = [rec]
    return u, layout, maps


def _dense(u_um, window_grid: Grid, spacing_um, info):
    """The field on a grid of ``spacing_um`` spanning the window centres: the cubic spline
    through the window values (it honours every measurement); the window grid and its
    maps stay in ``info["window_grid"]``; the maps move to the dense grid (quality linear,
    valid / masked where the nearest windows were)."""
    extent = (np.asarray(window_grid.shape) - 1) * np.asarray(window_grid.spacing_um)
    spacing = tuple(float(min(s, w)) if n > 1 else w for s, w, n in zip(spacing_um, window_grid.spacing_um, window_grid.shape))
    shape = tuple(int(np.floor(e / s + 1e-9)) + 1 if n > 1 else 1 for e, s, n in zip(extent, spacing, window_grid.shape))
    dense = Grid(shape, spacing, window_grid.origin_um)
    info["window_grid"] = {"shape": list(window_grid.shape), "spacing_um": list(window_grid.spacing_um),
                           "origin_um": list(window_grid.origin_um), "quality": info["quality"], "valid": info["valid"],
                           "masked": info["masked"]}
    info["quality"] = resample(info["quality"], window_grid, dense).astype(np.float32)
    for key in ("valid", "masked"):
        info[key] = resample(info[key].astype(np.float32), window_grid, dense) > 0.5
    info["output_spacing_um"] = list(spacing)
    return resample(u_um, window_grid, dense, order=3).astype(np.float32), dense, info


def _resolve_windows(ref, grid: Grid, mask, config: DVCConfig):
    """``(config with windows in voxels, the report of the automatic choice or None)``."""
    if not isinstance(config.windows, str):
        return config, None
    stats = texture.bead_statistics(ref, grid, mask)
    windows, report = texture.choose_windows(stats, grid, config.target_beads)
    return dataclasses.replace(config, windows=windows), {**report, "crowded": stats.crowded}


def _run_pass(vol, u, layout: _Layout, masked, cubic: bool, config: DVCConfig, bar, label: str, iterations: int,
              min_iterations: int = 1):
    """The window-deformation iterations of one pass: ``(u, maps, record)``."""
    rec = {"window": list(layout.window), "step": list(layout.step), "grid_shape": list(layout.shape), "iterations": 0}
    max_shift = tuple(max(1, int(config.max_shift_fraction * w)) for w in layout.window)
    windows = correlation.WindowPass(vol["ref"], layout.all_starts(), layout.window, max_shift, config.batch_windows)
    for it in range(iterations):
        predictor = smooth_predictor(u) if config.smooth_predictor else u
        warped = warp.warp(vol["coeffs"] if cubic else vol["linear"], predictor, layout.origin, layout.step,
                           config.slab_voxels, cubic)
        shift, quality, contrast = windows.correlate(warped)
        res, quality, contrast = shift.reshape(*layout.shape, 3), quality.reshape(layout.shape), contrast.reshape(layout.shape)
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
        if update < config.tolerance_voxels and it + 1 >= min_iterations:
            bar.update(iterations - it - 1)
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
