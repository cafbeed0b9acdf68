"""The learned reconstruction: a 3D U-Net from a bead volume pair to displacement and force.

Input layer (``optical_flow_features``)
---------------------------------------
The displacements the network must see are small (typically 0.01-1 voxel), so it is
given the brightness-constancy terms that make sub-voxel motion linear in the data: with
``m`` the mean and ``d`` the difference of the two normalised volumes and ``g = grad m``
(central differences, per voxel), ``d ~ -g . u``, whose windowed least-squares solution is
the Lucas-Kanade flow ``u = -(S[g g^T] + a I)^-1 S[g d]``. The channels are ``m, d, g``,
the LK flow and its confidence for each Gaussian window in ``lk_sigmas`` (default 2 and 4
voxels), and the Poisson ratio as a constant channel (``(nu - 0.4) / 0.1``): 14 channels.
Each volume is normalised by its own median and 99.9th percentile, so brightness units and
photobleaching divide out.

Physical scale
--------------
The network works in voxel units and is dimensionless: it returns ``u / h`` (voxels) and
``g = f h / E`` for a matrix of Young's modulus ``E`` and voxel size ``h``; ``predict``
turns them into µm and pN/µm³ (``f = E g / h``, exact for a linear matrix and to first
order for neo-Hookean). Stiffness thus enters by scaling (forces are linear in E at a
given strain) and the Poisson ratio by conditioning; other voxel sizes are resampled to
the model's by :mod:`tfm.nn.infer`, since bead images at another scale look different.

Convolutions
------------
:class:`Conv3d` holds an ordinary ``(3, 3, 3, in, out)`` kernel and has two equivalent
implementations (identical weights, results equal to float rounding):

* ``"native"``: XLA's 3D convolution (fast on GPU via cuDNN).
* ``"stacked2d"``: the three z-shifted slices are stacked on the channel axis and one 2D
  convolution with a ``(3, 3, 3 in, out)`` kernel runs over (Y, X) on every z-plane.
  On the 2-core CPU this is 4.7x faster forward and 5.1x faster for the gradient than
  ``"native"`` (2 x 40³, 16 channels: 21 vs 98 ms and 75 vs 385 ms; see docs/learned.md).

``"auto"`` picks ``"native"`` on GPU/TPU and ``"stacked2d"`` on CPU. Layout is
channels-last (N, Z, Y, X, C) throughout.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..fields import gaussian_matrix
from ..learn import config as configs
from ..learn.init import he_normal
from ..material import inv3

IMPLS = ("auto", "native", "stacked2d")


def n_features(lk_sigmas) -> int:
    """Input channels: m, d, g (3), per LK window flow (3) + confidence (1), nu."""
    return 6 + 4 * len(lk_sigmas)

U_SCALE = 0.1  # network output 1 = 0.1 voxel of displacement
G_SCALE = 0.1  # network output 1 = 0.1 E / h of force density


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`UNet3D` (saved as JSON beside the weights)."""

    widths: tuple = (24, 48, 64)  # channels per level, finest first; len = levels
    convs_per_level: int = 2  # 3x3x3 convolutions per block
    stem: int = 2  # 1: U-Net at full resolution; 2: at half resolution (space-to-depth in, pixel shuffle out)
    lk_sigmas: tuple = (2.0, 4.0)  # Gaussian windows (voxels) of the Lucas-Kanade input channels
    impl: str = "auto"  # convolution implementation: "auto", "native" or "stacked2d"
    spacing_um: tuple = (1.0, 1.0, 1.0)  # voxel size of the training data (z, y, x), µm
    seed: int = 0  # parameter initialisation

    def __post_init__(self):
        if len(self.widths) < 1 or any(int(w) < 1 for w in self.widths):
            raise ValueError(f"widths must be positive channel counts, got {self.widths}")
        if int(self.stem) not in (1, 2):
            raise ValueError(f"stem must be 1 or 2, got {self.stem}")
        if not self.lk_sigmas or any(float(v) <= 0 for v in self.lk_sigmas):
            raise ValueError(f"lk_sigmas must be positive window widths (voxels), got {self.lk_sigmas}")
        object.__setattr__(self, "lk_sigmas", tuple(float(v) for v in self.lk_sigmas))
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        if len(self.spacing_um) != 3 or any(float(h) <= 0 for h in self.spacing_um):
            raise ValueError(f"spacing_um must be 3 positive voxel sizes, got {self.spacing_um}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "spacing_um", tuple(float(h) for h in self.spacing_um))

    @property
    def multiple(self) -> int:
        """Every spatial size the network sees must be a multiple of this (pooling)."""
        return int(self.stem) * 2 ** (len(self.widths) - 1)

    def to_json(self) -> str:
        return configs.to_json(self)


def _resolve_impl(impl: str) -> str:
    if impl != "auto":
        return impl
    return "stacked2d" if jax.default_backend() == "cpu" else "native"


def conv3d(x, kernel, impl: str):
    """'SAME' 3x3x3 (or 1x1x1) convolution of (N, Z, Y, X, C) by a (kz, ky, kx, C, O) kernel."""
    kz = kernel.shape[0]
    if impl == "native" or kz == 1 and kernel.shape[1] == 1:
        return jax.lax.conv_general_dilated(x, kernel, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    n, z, y, xx, c = x.shape
    p = kz // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0), (0, 0)))
    xs = jnp.concatenate([xp[:, d : d + z] for d in range(kz)], axis=-1).reshape(n * z, y, xx, kz * c)
    k2 = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kernel.shape[1], kernel.shape[2], kz * c, -1)
    out = jax.lax.conv_general_dilated(xs, k2, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out.reshape(n, z, y, xx, -1)


class Conv3d(nnx.Module):
    """3D convolution with He-normal weights drawn from a NumPy generator (no JAX PRNG
    compilation at init, which costs seconds per shape on CPU)."""

    def __init__(self, c_in: int, c_out: int, rng: np.random.Generator, size: int = 3, impl: str = "auto",
                 scale: float = 1.0):
        self.kernel = nnx.Param(he_normal(rng, (size, size, size, c_in, c_out), c_in * size**3, scale))
        self.bias = nnx.Param(jnp.zeros((c_out,), jnp.float32))
        self.impl = impl

    def __call__(self, x):
        return conv3d(x, self.kernel[...], _resolve_impl(self.impl)) + self.bias[...]


class Block(nnx.Module):
    def __init__(self, c_in: int, c_out: int, n: int, rng, impl: str):
        self.convs = nnx.List([Conv3d(c_in if i == 0 else c_out, c_out, rng, impl=impl) for i in range(n)])

    def __call__(self, x):
        for conv in self.convs:
            x = jax.nn.silu(conv(x))
        return x


def _down(x):
    n, z, y, xx, c = x.shape
    return x.reshape(n, z // 2, 2, y // 2, 2, xx // 2, 2, c).mean(axis=(2, 4, 6))


def space_to_depth(x, s: int):
    """(N, Z, Y, X, C) -> (N, Z/s, Y/s, X/s, s³ C): each s³ block becomes one voxel's channels."""
    n, z, y, xx, c = x.shape
    x = x.reshape(n, z // s, s, y // s, s, xx // s, s, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(n, z // s, y // s, xx // s, s**3 * c)


def depth_to_space(x, s: int):
    """Inverse of :func:`space_to_depth` (a 3D pixel shuffle)."""
    n, z, y, xx, cs = x.shape
    c = cs // s**3
    x = x.reshape(n, z, y, xx, s, s, s, c).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(n, z * s, y * s, xx * s, c)


def _up(x):
    for ax in (1, 2, 3):
        x = jnp.repeat(x, 2, axis=ax)
    return x


def _gradient(v):
    """Central differences per voxel (one-sided at the faces), for (N, Z, Y, X)."""
    return jnp.stack([jnp.gradient(v, axis=ax) for ax in (1, 2, 3)], axis=-1)


def blur(x, sigma: float):
    """Normalised Gaussian window sums over (Z, Y, X) of (N, Z, Y, X, C): one banded matrix
    product per axis (dense matmuls are the fastest separable filter on CPU)."""
    for ax in (1, 2, 3):
        a = jnp.asarray(gaussian_matrix(x.shape[ax], sigma), x.dtype)
        x = jnp.moveaxis(jnp.tensordot(a, x, axes=([1], [ax])), 0, ax)
    return x


def lucas_kanade(g, d, sigma: float, reg: float = 0.1):
    """Windowed least-squares flow ``u = -(S[g g^T] + a I)^-1 S[g d]`` (voxels) and the
    log of the window's gradient energy (a confidence); ``S`` is a Gaussian window of
    ``sigma`` voxels and ``a = reg trace(S[g g^T]) / 3`` (Tikhonov, towards zero motion)."""
    iu = np.triu_indices(3)
    prods = jnp.concatenate([(g[..., :, None] * g[..., None, :])[..., iu[0], iu[1]], g * d[..., None]], axis=-1)
    s = blur(prods, sigma)
    a = jnp.zeros(s.shape[:-1] + (3, 3), s.dtype).at[..., iu[0], iu[1]].set(s[..., :6])
    a = a + jnp.swapaxes(jnp.triu(a, 1), -1, -2)
    tr = jnp.trace(a, axis1=-2, axis2=-1)
    a = a + (reg * tr / 3 + 1e-6)[..., None, None] * jnp.eye(3, dtype=s.dtype)
    u = -jnp.einsum("...ij,...j->...i", inv3(a), s[..., 6:])
    return u, jnp.log1p(tr * 100.0)


def optical_flow_features(reference, deformed, poisson_ratio, lk_sigmas=(2.0, 4.0)):
    """(N, Z, Y, X) normalised volumes + (N,) Poisson ratios -> (N, Z, Y, X, C) channels:
    mean, difference, gradient (3), Lucas-Kanade flow per window in ``lk_sigmas`` (3 each, in
    units of 0.1 voxel, clipped to +-1 voxel) and its confidence (1 each), Poisson ratio."""
    m = 0.5 * (reference + deformed)
    d = deformed - reference
    g = _gradient(m)
    chans = [m[..., None], d[..., None], g]
    conf = []
    for sigma in lk_sigmas:
        u, c = lucas_kanade(g, d, sigma)
        chans.append(jnp.clip(u / U_SCALE, -10.0, 10.0))
        conf.append(c[..., None])
    nu = jnp.broadcast_to(((jnp.asarray(poisson_ratio, m.dtype) - 0.4) / 0.1)[:, None, None, None, None], (*m.shape, 1))
    return jnp.concatenate(chans + conf + [nu], axis=-1)


def normalise_pair(reference, deformed):
    """Each volume to (v - median) / (p99.9 - median): background 0, bright beads ~1, so
    photobleaching (a dimmer deformed volume) is divided out. NumPy, float32; call it once
    on a whole volume (not per tile)."""
    out = []
    for v in (reference, deformed):
        v = np.asarray(v, np.float32)
        bg, hi = (float(q) for q in np.percentile(v, [50.0, 99.9]))  # one partition for both (the median is the 50th)
        v = v - bg
        v /= hi - bg if hi > bg else 1.0
        out.append(v)
    return tuple(out)


class UNet3D(nnx.Module):
    """Image pair -> (u in voxels, g = f h / E): returns (N, Z, Y, X, 6).

    With ``stem=2`` the U-Net runs at half resolution: the input channels of each 2³ block
    are stacked (space-to-depth) and mixed by a 1x1x1 convolution, and a 1x1x1 head emits
    the 6 outputs of all 8 voxels of the block (pixel shuffle) -- full-resolution output
    without full-resolution 3x3x3 convolutions, which dominate the cost on CPU."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        self.config = config
        rng = np.random.default_rng(config.seed)
        w = config.widths
        k = config.convs_per_level
        impl = config.impl
        s3 = config.stem**3
        c_in = n_features(config.lk_sigmas)
        self.stem = Conv3d(c_in * s3, w[0], rng, size=1, impl=impl) if config.stem > 1 else None
        first = w[0] if config.stem > 1 else c_in
        self.enc = nnx.List([Block(first if i == 0 else w[i - 1], w[i], k, rng, impl) for i in range(len(w))])
        self.dec = nnx.List([Block(w[i] + w[i + 1], w[i], k, rng, impl) for i in range(len(w) - 1)])
        self.head = Conv3d(w[0], 6 * s3, rng, size=1, impl=impl, scale=0.1)

    def __call__(self, features):
        m = self.config.multiple
        if any(s % m for s in features.shape[1:4]):
            raise ValueError(f"spatial shape {features.shape[1:4]} must be a multiple of {m} (use tfm.nn.infer.predict)")
        x = features
        if self.stem is not None:
            x = jax.nn.silu(self.stem(space_to_depth(x, self.config.stem)))
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else _down(x))
            skips.append(x)
        for i in reversed(range(len(self.dec))):
            x = self.dec[i](jnp.concatenate([_up(x), skips[i]], axis=-1))
        out = self.head(x)
        if self.stem is not None:
            out = depth_to_space(out, self.config.stem)
        return jnp.concatenate([U_SCALE * out[..., :3], G_SCALE * out[..., 3:]], axis=-1)

    def features(self, reference, deformed, poisson_ratio):
        return optical_flow_features(reference, deformed, poisson_ratio, self.config.lk_sigmas)

    def apply_pair(self, reference, deformed, poisson_ratio):
        """Normalised volumes (N, Z, Y, X) -> (u_voxels, g), each (N, Z, Y, X, 3)."""
        out = self(self.features(reference, deformed, poisson_ratio))
        return out[..., :3], out[..., 3:]


def count_parameters(model: nnx.Module) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param))))
