r"""The motion front end of the learned path: coarse-to-fine Lucas-Kanade with warping.

The network (:mod:`tfm.nn.unet3d`) does not look for the beads' motion itself: this
parameter-free front end measures it, densely and at the working grid's resolution, and
the network turns that measurement into the displacement and force fields, supplying what
a regularisation cannot (where the cell is, how a matrix deforms around it, what to trust).

Per pyramid level (block means 2\ :sup:`k` of the working volumes, coarsest first, the
field of the coarser level as the start; at the coarsest the whole-volume translation
found by phase correlation), a few Gauss-Newton iterations of windowed least squares on
the brightness-constancy residual:

1. the deformed volume is pulled back by the current field, ``D(x + u(x))``, by cubic
   interpolation (Keys' cubic convolution of the voxels, or cubic B-splines as the DVC's
   warp; trilinear warping biases sub-voxel motion: on an acquisition-like pair the error
   at the DVC points was 0.078 µm with trilinear, 0.055 µm with cubic warps) -- by default
   in three 1D passes (z, y, x; 12 taps per point instead of 64, the field's path through
   the passes corrected to first order in its gradient: :func:`_slab_warp_separable`),
   which measures the same motion (tests/test_nn.py) at 0.5x the cost of the LK products;
2. with ``m`` the mean and ``e`` the difference of the reference and the warped volume and
   ``g = grad m`` (central differences of volumes prefiltered by a Gaussian of ``prefilter``
   voxels, so that the derivative of a bead a voxel wide is not biased), the products
   ``g g^T`` and ``g e`` are averaged in Gaussian windows of ``window`` voxels -- on a grid
   half as fine as the level's images (block means of the products, then the window): the
   field is smooth on the window's scale, and this "LK grid" is what the network sees;
3. ``du = -(S[g g^T] + a I)^{-1} S[g e]`` with ``a`` a Tikhonov floor: ``tikhonov`` of the
   window's gradient energy plus ``noise_floor`` times what image noise alone gives it
   (measured from the pair: :func:`tfm.nn.confidence.pair_noise`, propagated through the
   prefilter and the derivative), so windows without beads move little;
4. ``du`` is clipped to a voxel and smoothed by a normalised convolution weighted by each
   window's share of gradient energy above the noise (windows with beads speak for those
   without), then added to ``u``.

Voxels whose warped position leaves the volume carry no weight. For an identical pair every
residual is exactly zero, hence so is the field.

Measured on an acquisition-like synthetic pair (72 x 192 x 192 voxels of 0.8 x 0.3 x 0.3 µm,
0.064 beads/µm³, max |u| 0.78 µm, drift and axial scaling), RMS error at the DVC's window
centres after the drift is removed: 0.030 µm on a (0.8, 0.6, 0.6) µm working grid, 0.041 µm
on 1 µm voxels, against 0.031 µm for the DVC (docs/learned.md).
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from ..classical import correlation
from ..classical import warp as warps
from ..fields import band_filter, gaussian_band
from ..grid import Grid
from ..classical.noise import estimate_noise
from .confidence import pair_noise, smallest_eigenvalue

_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
INTERPOLATIONS = ("keys", "bspline")
WARPS = ("exact", "separable")


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Settings of :func:`pyramid_flow` (saved with a model: the network was trained on them)."""

    prefilter: float = 0.7  # Gaussian prefilter of both volumes, working voxels
    window: float = 4.0  # Gaussian LK window, voxels of each level's images
    iterations: int = 3  # Gauss-Newton iterations per coarser level
    fine_iterations: int = 1  # at the finest level (each a pass over every working voxel)
    levels: int = 4  # at most this many levels (fewer where the coarsest would fall below min_edge voxels)
    min_edge: int = 12  # voxels on the smallest axis of the coarsest level's images
    tikhonov: float = 0.01  # share of the window's gradient energy added to its diagonal
    noise_floor: float = 1.0  # times the gradient energy of image noise, added to the diagonal
    smooth: float = 0.75  # normalised-convolution smoothing of each update, LK-grid voxels
    interpolation: str = "keys"  # the warp: "keys" (cubic convolution of the voxels) or "bspline" (cubic B-spline)
    warp: str = "separable"  # "separable" (three 1D passes, 12 taps per point) or "exact" (64 taps): _slab_warp_separable

    def __post_init__(self):
        for name in ("prefilter", "tikhonov", "noise_floor", "smooth"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"FlowConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not float(self.window) > 0:
            raise ValueError(f"FlowConfig.window must be > 0 (voxels), got {self.window}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"FlowConfig.interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.warp not in WARPS:
            raise ValueError(f"FlowConfig.warp must be one of {WARPS}, got {self.warp!r}")
        for name in ("iterations", "fine_iterations", "levels", "min_edge"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"FlowConfig.{name} must be a positive integer, got {getattr(self, name)}")


def block_mean(v, factor: int = 2):
    """Mean over ``factor``³ blocks of a (Z, Y, X, ...) array (sizes divisible by ``factor``)."""
    if factor == 1:
        return v
    if factor == 2:  # strided adds: 14x faster than the mean over a 6D view (128³: 1.4 vs 21 ms)
        return _block_sum2(v) * np.asarray(0.125, v.dtype)
    z, y, x = (n // factor for n in v.shape[:3])
    return v.reshape(z, factor, y, factor, x, factor, *v.shape[3:]).mean((1, 3, 5))


def n_levels(shape, config: FlowConfig) -> int:
    """Pyramid levels for working volumes of ``shape`` (padded to a multiple of 2^levels)."""
    fit = 1 + max(0, int(math.floor(math.log2(max(min(shape), 1) / config.min_edge))))
    return max(1, min(config.levels, fit))


def gradient_noise_gain(prefilter: float) -> float:
    """Variance of a central-difference derivative of white noise after the Gaussian
    prefilter, over the variance of the prefiltered noise itself (measured on a seeded noise
    volume: a property of the two filters)."""
    v = np.random.default_rng(0).standard_normal((40, 40, 40)).astype(np.float32)
    if prefilter > 0:
        v = ndimage.gaussian_filter(v, prefilter)
    core = (slice(8, -8),) * 3
    return float(np.var(np.gradient(v, axis=1)[core]) / np.var(v[core]))


def _upsample2(field, shape):
    """A field on a grid twice as coarse (block centres) -> trilinear at the voxel centres of
    ``shape`` (edge values held)."""
    out = field
    for a, n in enumerate(shape):
        x = np.clip((np.arange(n) + 0.5) / 2 - 0.5, 0, field.shape[a] - 1)
        i0 = np.minimum(np.floor(x).astype(int), field.shape[a] - 2) if field.shape[a] > 1 else np.zeros(n, int)
        w = (x - i0).astype(np.float32).reshape((-1,) + (1,) * (out.ndim - a - 1))
        lo = np.take(out, i0, axis=a)
        hi = np.take(out, np.minimum(i0 + 1, field.shape[a] - 1), axis=a)
        out = lo + w * (hi - lo)
    return out.astype(np.float32)


SLAB_VOXELS = 1 << 20  # voxels of one z-slab of the per-voxel work (bounded memory for any volume)


def _block_sum2(v):
    """Sum over 2³ blocks of (Z, Y, X, ...) (sizes even), by strided adds (a slab's 11
    products: 6 ms instead of 25 ms for sums over a 6D view)."""
    v = v[0::2] + v[1::2]
    v = v[:, 0::2] + v[:, 1::2]
    return v[:, :, 0::2] + v[:, :, 1::2]


def linear_taps(n_out: int, n_in: int, start: int = 0, origin: float = 0.5, step: float = 2.0):
    """Linear interpolation from ``n_in`` samples at ``origin + i step`` to the points
    ``start, start + 1, ...`` (extended linearly beyond the outermost samples), as index
    and weight arrays ``(i0, i1, f)``: ``out = (1 - f) v[i0] + f v[i1]`` -- the rows of
    :func:`tfm.classical.warp.interpolation_matrix` without its zeros (a matrix product
    with them cost 6x more on the LK -> voxel upsampling)."""
    x = (start + np.arange(n_out) - origin) / step
    i0 = np.clip(np.floor(x), 0, max(n_in - 2, 0)).astype(np.int32)
    f = (x - i0).astype(np.float32) if n_in > 1 else np.zeros(n_out, np.float32)
    return i0, np.minimum(i0 + 1, n_in - 1).astype(np.int32), f


def _slab_field(v, taps, z_start=0):
    """A field on the LK grid (Z', Y', X', C) interpolated (trilinear) to a slab's voxels by
    the :func:`linear_taps` of each axis. The slab's z taps index the LK planes from
    ``z_start`` on (as many as the slab reaches: :class:`PyramidLevel`); those planes are
    taken first, brought to the slab's rows and columns, and only then to its planes (the
    in-plane passes on the LK grid's planes, half as many as the slab's)."""
    (z0, z1, fz), *taps_yx = taps
    reach = min(v.shape[0], (z0.shape[0] - 2) // 2 + 2)
    v = jax.lax.dynamic_slice_in_dim(v, z_start, reach, axis=0)
    for ax, (i0, i1, f) in enumerate(taps_yx, start=1):
        w = f.reshape([-1 if a == ax else 1 for a in range(v.ndim)])
        # each pass kept whole (fused into its consumers XLA would recompute it per read)
        v = jax.lax.optimization_barrier(jnp.take(v, i0, axis=ax) * (1 - w) + jnp.take(v, i1, axis=ax) * w)
    w = fz.reshape((-1,) + (1,) * (v.ndim - 1))
    return jax.lax.optimization_barrier(jnp.take(v, z0, axis=0) * (1 - w) + jnp.take(v, z1, axis=0) * w)


@partial(jax.jit, static_argnums=5)
def _slab_warp(coeffs, u_lk, z0, taps, z_start, bspline: bool = False):
    """The deformed volume pulled back on the planes ``z0 - 1 .. z0 + nz`` and whether each
    sample point stays inside the volume (a warp of its own: XLA would otherwise recompute
    the 64-tap spline sample inside every product that uses it)."""
    shape = tuple(n - 2 * warps.SPLINE_PAD for n in coeffs.shape)
    u = _slab_field(u_lk, taps, z_start)  # (nz + 2, Y, X, 3) voxels
    p, inside = _sample_points(u, z0, shape)
    return warps._sample_cubic(coeffs, p, warps.bspline_weights if bspline else warps.keys_weights), inside


def _sample_points(u, z0, shape):
    """The points ``x + u(x)`` of a slab's planes ``z0 - 1 ...`` (voxel indices) and whether
    each stays inside the volume of ``shape`` (:func:`_inside`)."""
    nz2, ny, nx = u.shape[:3]
    zz, yy, xx = jnp.meshgrid(z0 - 1 + jnp.arange(nz2, dtype=jnp.float32), jnp.arange(ny, dtype=jnp.float32),
                              jnp.arange(nx, dtype=jnp.float32), indexing="ij")
    return jnp.stack([zz, yy, xx], -1) + u, _inside([u[..., a] for a in range(3)], z0, shape)


def _inside(u, z0, shape):
    """Whether the points ``x + u(x)`` of a slab's planes ``z0 - 1 ...`` (``u``: its three
    components, each (nz + 2, Y, X), voxels) stay inside the volume of ``shape`` with a
    voxel to spare for the central differences (the first and last planes have none):
    one comparison per axis on the components, no array of points (3x faster)."""
    nz2, ny, nx = u[0].shape
    z = z0 - 1 + jnp.arange(nz2, dtype=jnp.float32)
    axes = (z[:, None, None], jnp.arange(ny, dtype=jnp.float32)[None, :, None], jnp.arange(nx, dtype=jnp.float32))
    inside = ((z >= 1) & (z <= shape[0] - 2))[:, None, None]
    for x, ua, n in zip(axes, u, shape):
        inside = inside & (x + ua >= 1) & (x + ua <= n - 2)
    return inside


def _axis_take(src, axis: int, pos, weights):
    """4-tap cubic interpolation of ``src`` (3D) along ``axis`` at the per-point positions
    ``pos`` (index units of ``src`` along that axis; the other two indices are the points'
    own, ``pos`` having ``src``'s extent there): one flat gather per tap."""
    f = jnp.floor(pos)
    w = weights(pos - f)
    base = jnp.clip(f.astype(jnp.int32) - 1, 0, src.shape[axis] - 4)
    idx = [jnp.arange(n, dtype=jnp.int32).reshape([-1 if a == b else 1 for b in range(3)]) for a, n in enumerate(pos.shape)]
    strides = (src.shape[1] * src.shape[2], src.shape[2], 1)
    flat_base = sum((base if a == axis else idx[a]) * strides[a] for a in range(3))
    flat = src.ravel()
    return sum(w[..., k] * jnp.take(flat, flat_base + k * strides[axis]) for k in range(4))


def _lk_derivative(u_lk, axis: int):
    """Central differences of a field on the LK grid along ``axis``, per working voxel
    (one-sided at the faces; zero along an axis of one voxel)."""
    if u_lk.shape[axis] < 2:
        return jnp.zeros_like(u_lk)
    return jnp.gradient(u_lk, axis=axis) / 2.0


@partial(jax.jit, static_argnums=5)
def _slab_warp_separable(coeffs, u_lk, z0, taps, z_start, bspline: bool = False):
    """:func:`_slab_warp` in three 1D passes -- along z from the stored volume, then along y,
    then along x (12 taps per point instead of 64): ``A(q) = D(q + a e_z)``,
    ``B(r) = A(r + b e_y)``, ``W(p) = B(p + c e_x)``, so ``W(p) = D(p + (a, b, c))`` with
    ``a`` taken at ``p + (0, b, c)`` and ``b`` at ``p + (0, 0, c)``. For ``W(p) = D(p + u(p))``:
    ``c = u_x``, ``b = u_y - c d_x u_y``, ``a = u_z - b d_y u_z - c d_x u_z`` (first order in
    the field's gradient: the error is of order ``|u|^2`` times its second derivatives, which
    a field smooth on the LK grid keeps far below the noise). ``taps`` (:func:`linear_taps`
    per axis) interpolate the LK grid to the slab's planes and to the volume's rows and
    columns with a margin of :data:`tfm.classical.warp.SPLINE_PAD` each side. An identical
    pair (u = 0) reads the voxels themselves, exactly."""
    pad = warps.SPLINE_PAD
    shape = tuple(n - 2 * pad for n in coeffs.shape)
    weights = warps.bspline_weights if bspline else warps.keys_weights

    # u and the three derivatives the passes need (d_y u_z, d_x u_z, d_x u_y), on the slab's
    # voxels with a margin of rows and columns: one interpolation of 6 channels
    dy, dx = _lk_derivative(u_lk, 1), _lk_derivative(u_lk, 2)
    f = _slab_field(jnp.concatenate([u_lk, dy[..., :1], dx[..., :2]], -1), taps, z_start)
    u = f[..., :3]
    c = u[..., 2]
    b = u[..., 1] - c * f[..., 5]
    a = u[..., 0] - b * f[..., 3] - c * f[..., 4]
    nz2, ny, nx = u.shape[0], shape[1], shape[2]
    z = z0 - 1 + jnp.arange(nz2, dtype=jnp.float32)
    # pass 1, along z, on the volume's rows and columns with their margins
    A = jax.lax.optimization_barrier(_axis_take(coeffs, 0, z[:, None, None] + a + pad, weights))
    # pass 2, along y: rows of the volume, columns with their margins
    ypos = jnp.arange(ny, dtype=jnp.float32)[None, :, None] + b[:, pad : pad + ny] + pad
    B = jax.lax.optimization_barrier(_axis_take(A, 1, ypos, weights))  # kept: pass 3 reads each value 4 times
    # pass 3, along x
    xpos = jnp.arange(nx, dtype=jnp.float32)[None, None, :] + c[:, pad : pad + ny, pad : pad + nx] + pad
    W = _axis_take(B, 2, xpos, weights)
    return W, _inside([u[:, pad : pad + ny, pad : pad + nx, k] for k in range(3)], z0, shape)


@jax.jit
def _slab_products(ref_halo, dw, inside):
    """Per-voxel LK products of a slab (``ref_halo``, ``dw``: its planes with one plane of
    halo each side; ``nz`` even), block-summed to the LK grid: (nz/2, Y/2, X/2, 11) = six
    ``g g^T`` entries, three ``g e``, ``e²`` and the count of valid voxels."""
    m = 0.5 * (ref_halo + dw)
    w = inside[1:-1].astype(jnp.float32)
    gz = 0.5 * (m[2:] - m[:-2]) * w
    gy = jnp.gradient(m[1:-1], axis=1) * w
    gx = jnp.gradient(m[1:-1], axis=2) * w
    e = (dw - ref_halo)[1:-1] * w
    # the gradients and residual kept whole: each is read by several products
    gz, gy, gx, e = jax.lax.optimization_barrier((gz, gy, gx, e))
    g = (gz, gy, gx)
    chans = [g[i] * g[j] for i, j in _PAIRS] + [gz * e, gy * e, gx * e, e * e, w]
    return jnp.stack([_block_sum2(c) for c in chans], -1)


def _blur(x, bands):
    """Separable window of (Z, Y, X, C) by one :func:`tfm.fields.gaussian_band` per axis."""
    for ax, band in enumerate(bands):
        x = band_filter(x, ax, band)
    return x


def _solve3j(s, b):
    a11, a22, a33, a12, a13, a23 = (s[..., k] for k in range(6))
    c11 = a22 * a33 - a23 * a23
    c12 = a13 * a23 - a12 * a33
    c13 = a12 * a23 - a13 * a22
    c22 = a11 * a33 - a13 * a13
    c23 = a12 * a13 - a11 * a23
    c33 = a11 * a22 - a12 * a12
    det = a11 * c11 + a12 * c12 + a13 * c13
    det = jnp.where(jnp.abs(det) > 0, det, 1.0)
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return jnp.stack([c11 * b0 + c12 * b1 + c13 * b2, c12 * b0 + c22 * b1 + c23 * b2,
                      c13 * b0 + c23 * b1 + c33 * b2], -1) / det[..., None]


@jax.jit
def _lk_update(sums, u, n2, tikhonov, noise_floor, window_bands, smooth_bands):
    """One Gauss-Newton update on the LK grid from the block sums of :func:`_slab_products`:
    ``(u + du, windowed products)``."""
    count = jnp.maximum(sums[..., 10:11], 1.0)
    win = _blur(sums[..., :10] / count, window_bands)  # window means of the per-voxel products
    s, b = win[..., :6], win[..., 6:9]
    tr = s[..., 0] + s[..., 1] + s[..., 2]
    floor = tikhonov * tr / 3 + noise_floor * n2
    reg = s.at[..., 0].add(floor).at[..., 1].add(floor).at[..., 2].add(floor)
    du = jnp.clip(-_solve3j(reg, b), -1.0, 1.0)
    w = (jnp.maximum(tr - 3 * n2, 0) / (tr + 3 * n2 + 1e-30))[..., None] ** 2
    du = _blur(du * w, smooth_bands) / jnp.maximum(_blur(w, smooth_bands), 1e-6)
    return u + du, win


@jax.jit
def _window_channels(win, n2, residual_floor):
    """From the final windows' products (:func:`_lk_update`): the confidence
    ``clip(1 - n2 / lambda_min, 0, 1)`` of their structure tensor, the texture
    ``log1p(trace / 3 n2)`` and the residual ``log1p(e² / residual_floor)``."""
    lam = smallest_eigenvalue(*(win[..., k] for k in range(6)))
    confidence = jnp.clip(1.0 - n2 / jnp.where(lam > 0, lam, jnp.inf), 0.0, 1.0)
    tr = win[..., 0] + win[..., 1] + win[..., 2]
    return (confidence, jnp.log1p(jnp.maximum(tr, 0) / (3 * n2)),
            jnp.log1p(jnp.maximum(win[..., 9], 0) / residual_floor))


class PyramidLevel:
    """One level's images: the reference (prefiltered) and the deformed volume's spline."""

    def __init__(self, ref, dfm, interpolation: str = "keys", warp: str = "separable"):
        self.shape = ref.shape
        self.separable = warp == "separable"
        # the deformed volume is sampled by Keys' cubic convolution (interpolating, from the
        # voxel values themselves) or by the cubic B-spline (its coefficients cost 0.8 s per
        # 10M voxels)
        self.bspline = interpolation == "bspline"
        self.coeffs = (warps.spline_coefficients(dfm) if self.bspline
                       else jnp.asarray(np.pad(dfm, warps.SPLINE_PAD, mode="reflect")))
        lk = tuple(n // 2 for n in self.shape)
        # the separable warp's first passes also need the field on a margin of rows and columns
        m = warps.SPLINE_PAD if self.separable else 0
        self.taps_yx = [tuple(jnp.asarray(t) for t in linear_taps(n + 2 * m, k, start=-m))
                        for n, k in zip(self.shape[1:], lk[1:])]
        nz = max(2, min(self.shape[0], SLAB_VOXELS // (self.shape[1] * self.shape[2])) // 2 * 2)
        self.nz = nz
        # a plane of halo each side, and room for the last slab to reach beyond the volume
        self.ref = np.pad(ref, ((1, 1 + nz), (0, 0), (0, 0)), mode="edge")
        # each slab's planes z0 - 1 .. z0 + nz from the LK grid's: the same at every iteration;
        # they reach nz / 2 + 2 LK planes, from z_start (_slab_field)
        reach = min(lk[0], nz // 2 + 2)
        self.taps_z = []
        for z0 in range(0, self.shape[0], nz):
            i0, i1, f = linear_taps(nz + 2, lk[0], start=z0 - 1)
            z_start = int(np.clip(z0 // 2 - 1, 0, lk[0] - reach))
            assert i0.min() >= z_start and i1.max() < z_start + reach
            self.taps_z.append((tuple(jnp.asarray(t) for t in (i0 - z_start, i1 - z_start, f)), np.int32(z_start)))

    def products(self, u_lk):
        """Block sums of the LK products (:func:`_slab_products`) over the whole level."""
        nz, n = self.nz, self.shape[0]
        u_lk = jnp.asarray(u_lk)
        out = []
        ref = self.ref
        slab_warp = _slab_warp_separable if self.separable else _slab_warp
        for z0, (taps_z, z_start) in zip(range(0, n, nz), self.taps_z):
            dw, inside = slab_warp(self.coeffs, u_lk, jnp.float32(z0), (taps_z, *self.taps_yx), z_start, self.bspline)
            part = _slab_products(jnp.asarray(ref[z0 : z0 + nz + 2]), dw, inside)
            out.append(part[: max(0, min(nz, n - z0)) // 2])
        return jnp.concatenate(out, 0)


def _shifted(v, s):
    """``v`` moved by the integer shift ``s``: ``out[x] = v[x + s]``, 0 where ``x + s`` leaves it."""
    out = np.zeros_like(v)
    src = tuple(slice(max(k, 0), n + min(k, 0)) for k, n in zip(s, v.shape))
    dst = tuple(slice(max(-k, 0), n - max(k, 0)) for k, n in zip(s, v.shape))
    out[dst] = v[src]
    return out


def pair_correlation(ref, dfm, shift) -> float:
    """Pearson correlation of two volumes after the deformed one is moved back by ``shift``
    (rounded to voxels): about 0.3-1 for two acquisitions of the same beads, about 0 for a
    blank stack, another channel or another field of view."""
    d = _shifted(dfm, np.round(np.asarray(shift)).astype(int))
    r = np.corrcoef(ref.ravel(), d.ravel())[0, 1]
    return float(r) if np.isfinite(r) else 0.0


def pyramid_flow(reference, deformed, config: FlowConfig = FlowConfig(), progress=None, prefiltered: bool = False) -> dict:
    """Normalised working volumes (Z, Y, X), sizes a multiple of ``2^levels`` -> the dense
    motion on the LK grid (block centres of 2³ working voxels). ``prefiltered``: the volumes
    were already smoothed by ``config.prefilter`` (as :func:`tfm.nn.infer.working_pair` does).

    Returns a dict: ``u`` (z, y, x, 3) in working voxels; ``confidence`` (z, y, x) in [0, 1]
    (``1 - noise / lambda_min`` of the final windows' structure tensor); ``texture``
    (log of the windows' gradient energy over the noise's); ``residual`` (log of the windowed
    squared brightness mismatch left after the final warp over the noise's); ``mean``
    (block means of the two volumes' mean); ``levels``; ``rigid_voxels`` (the starting
    translation, working voxels); ``noise`` (the images' noise std) and ``pair_correlation``
    (:func:`pair_correlation` at the LK grid's resolution)."""
    from ..progress import resolve

    ref = np.asarray(reference, np.float32)
    dfm = np.asarray(deformed, np.float32)
    levels = n_levels(ref.shape, config)
    if any(n % 2**levels for n in ref.shape):
        raise ValueError(f"working volumes of shape {ref.shape} must be a multiple of {2 ** levels} per axis")
    if config.prefilter > 0 and not prefiltered:
        ref = ndimage.gaussian_filter(ref, config.prefilter)
        dfm = ndimage.gaussian_filter(dfm, config.prefilter)
    rs, ds = [ref], [dfm]
    for _ in range(levels - 1):
        rs.append(block_mean(rs[-1]))
        ds.append(block_mean(ds[-1]))
    coarse = rs[-1]
    rigid = correlation.rigid_shift(coarse, ds[-1]) * 2 ** (levels - 1) if min(coarse.shape) >= 8 else np.zeros(3)
    # the noise std of the (prefiltered) mean image, from the aligned pair's difference on
    # every 2nd voxel (the same estimate, 8x cheaper)
    sub = (slice(None, None, 2),) * 3
    noise = pair_noise(rs[0][sub], ds[0][sub], shift=rigid / 2)
    # two identical (or nearly noise-free) stacks: the high-pass estimate of one image
    # keeps the floor finite (a tenth of it: that estimate includes the beads' own detail)
    noise = max(noise, 0.1 * estimate_noise(rs[0][sub][..., None]), 1e-6)
    gain = gradient_noise_gain(config.prefilter)
    u = None
    steps = [config.fine_iterations if lev == 0 else config.iterations for lev in range(levels)]
    with resolve(progress).task(sum(steps), "dl motion") as task:
        for lev in range(levels - 1, -1, -1):
            level = PyramidLevel(rs[lev], ds[lev], config.interpolation, config.warp)
            lk_shape = tuple(n // 2 for n in level.shape)
            if u is None:  # the translation, in whole working voxels (an identical pair starts, and stays, at 0)
                u = jnp.broadcast_to(jnp.asarray(np.round(rigid) / 2**lev, jnp.float32), lk_shape + (3,))
            else:
                u = 2.0 * jnp.asarray(_upsample2(np.asarray(u), lk_shape))
            # image noise (std `noise` at the finest level, /sqrt(8) per block mean) -> gradient energy per axis
            n2 = jnp.float32(gain * noise**2 / 8**lev)
            wm = [jnp.asarray(gaussian_band(n, 0.5 * config.window)) for n in lk_shape]
            sm = [jnp.asarray(gaussian_band(n, config.smooth)) for n in lk_shape]
            for _ in range(steps[lev]):
                u, win = _lk_update(level.products(u), u, n2, jnp.float32(config.tikhonov), jnp.float32(config.noise_floor),
                                    wm, sm)
                task.update(1)
    # what the network is told about the windows: those of the last update (its products
    # were taken before that update's small step)
    confidence, texture, residual = (np.asarray(v) for v in _window_channels(win, n2, np.float32(4 * noise**2 + 1e-30)))
    mean_r, mean_d = (rs[1], ds[1]) if levels > 1 else (block_mean(rs[0]), block_mean(ds[0]))  # the LK grid's means
    return {"u": np.asarray(u, np.float32), "confidence": confidence, "texture": texture, "residual": residual,
            "mean": (0.5 * (mean_r + mean_d)).astype(np.float32), "levels": levels,
            "rigid_voxels": np.asarray(rigid, float), "noise": float(noise),
            "pair_correlation": pair_correlation(mean_r, mean_d, rigid / 2)}


def lk_grid(work: Grid) -> Grid:
    """The LK grid of a working grid: block centres of its 2³ voxels."""
    h = np.asarray(work.spacing_um)
    return Grid(tuple(n // 2 for n in work.shape), tuple(2 * h), tuple(np.asarray(work.origin_um) + 0.5 * h))
