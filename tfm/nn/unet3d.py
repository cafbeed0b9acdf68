"""The learned reconstruction: a 3D U-Net from a bead volume pair to displacement and force.

Input layer (``optical_flow_features``)
---------------------------------------
The displacements the network must see are small (typically 0.01-1 voxel), so it is
given the brightness-constancy terms that make sub-voxel motion linear in the data:
with ``m`` the mean and ``d`` the difference of the two normalised volumes and
``g = grad m`` (central differences, per voxel),

    d ~ -g . u    =>    (sum g g^T) u = -sum g d     (Lucas-Kanade, windowed sums)

so the channels ``m, d, g (3), g d (3), g g^T (6)`` plus the Poisson ratio (a constant
channel, ``(nu - 0.4) / 0.1``) let the first layers form local least-squares flow
estimates, and the U-Net's pooling supplies the windows at four scales. Both volumes are
normalised together (background = reference median, scale = its 99.9th percentile above
background), so brightness units never matter.

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
  ``"native"`` (2 x 40³, 16 channels: 21 vs 98 ms and 75 vs 385 ms; see docs/methods.md).

``"auto"`` picks ``"native"`` on GPU/TPU and ``"stacked2d"`` on CPU. Layout is
channels-last (N, Z, Y, X, C) throughout.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..material import inv3

IMPLS = ("auto", "native", "stacked2d")
N_FEATURES = 14  # m, d, g(3), LK flow (3 + 3), LK confidence (2), nu
U_SCALE = 0.1  # network output 1 = 0.1 voxel of displacement
G_SCALE = 0.1  # network output 1 = 0.1 E / h of force density


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`UNet3D` (saved as JSON beside the weights)."""

    widths: tuple = (16, 32, 48, 64)  # channels per level, finest first; len = levels
    convs_per_level: int = 2  # 3x3x3 convolutions per block
    impl: str = "auto"  # convolution implementation: "auto", "native" or "stacked2d"
    spacing_um: tuple = (1.0, 1.0, 1.0)  # voxel size of the training data (z, y, x), µm
    seed: int = 0  # parameter initialisation

    def __post_init__(self):
        if len(self.widths) < 1 or any(int(w) < 1 for w in self.widths):
            raise ValueError(f"widths must be positive channel counts, got {self.widths}")
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        if len(self.spacing_um) != 3 or any(float(h) <= 0 for h in self.spacing_um):
            raise ValueError(f"spacing_um must be 3 positive voxel sizes, got {self.spacing_um}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "spacing_um", tuple(float(h) for h in self.spacing_um))

    @property
    def multiple(self) -> int:
        """Every spatial size the network sees must be a multiple of this (pooling)."""
        return 2 ** (len(self.widths) - 1)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        d = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known})


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
        fan_in = c_in * size**3
        w = rng.standard_normal((size, size, size, c_in, c_out)) * np.sqrt(2.0 / fan_in) * scale
        self.kernel = nnx.Param(jnp.asarray(w, jnp.float32))
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


def _up(x):
    for ax in (1, 2, 3):
        x = jnp.repeat(x, 2, axis=ax)
    return x


def _gradient(v):
    """Central differences per voxel (one-sided at the faces), for (N, Z, Y, X)."""
    return jnp.stack([jnp.gradient(v, axis=ax) for ax in (1, 2, 3)], axis=-1)


def _blur(x, sigma: float):
    """Normalised Gaussian window sums over (Z, Y, X) of (N, Z, Y, X, C) (zero outside)."""
    r = int(math.ceil(2.5 * sigma))
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    w = w / w.sum()
    ones = jnp.ones(x.shape[1:4] + (1,), x.dtype)
    for ax in (1, 2, 3):
        n = x.shape[ax]
        pad = [(0, 0)] * 5
        pad[ax] = (r, r)
        xp, op = jnp.pad(x, pad), jnp.pad(ones[None], pad)
        x = sum(float(w[k]) * jax.lax.slice_in_dim(xp, k, k + n, axis=ax) for k in range(2 * r + 1))
        ones = sum(float(w[k]) * jax.lax.slice_in_dim(op, k, k + n, axis=ax) for k in range(2 * r + 1))[0]
    return x / ones


def lucas_kanade(g, d, sigma: float, reg: float = 0.1):
    """Windowed least-squares flow ``u = -(S[g g^T] + a I)^-1 S[g d]`` (voxels) and the
    log of the window's gradient energy (a confidence); ``S`` is a Gaussian window of
    ``sigma`` voxels and ``a = reg trace(S[g g^T]) / 3`` (Tikhonov, towards zero motion)."""
    iu = np.triu_indices(3)
    prods = jnp.concatenate([(g[..., :, None] * g[..., None, :])[..., iu[0], iu[1]], g * d[..., None]], axis=-1)
    s = _blur(prods, sigma)
    a = jnp.zeros(s.shape[:-1] + (3, 3), s.dtype).at[..., iu[0], iu[1]].set(s[..., :6])
    a = a + jnp.swapaxes(jnp.triu(a, 1), -1, -2)
    tr = jnp.trace(a, axis1=-2, axis2=-1)
    a = a + (reg * tr / 3 + 1e-6)[..., None, None] * jnp.eye(3, dtype=s.dtype)
    u = -jnp.einsum("...ij,...j->...i", inv3(a), s[..., 6:])
    return u, jnp.log1p(tr * 100.0)


LK_SIGMAS = (2.0, 4.0)  # voxels


def optical_flow_features(reference, deformed, poisson_ratio):
    """(N, Z, Y, X) normalised volumes + (N,) Poisson ratios -> (N, Z, Y, X, 14) channels:
    mean, difference, gradient (3), Lucas-Kanade flow at two window sizes (3 + 3, in units of
    0.1 voxel, clipped to +-1 voxel) and their confidences (2), Poisson ratio."""
    m = 0.5 * (reference + deformed)
    d = deformed - reference
    g = _gradient(m)
    chans = [m[..., None], d[..., None], g]
    conf = []
    for sigma in LK_SIGMAS:
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
        bg = float(np.median(v))
        hi = float(np.percentile(v, 99.9))
        out.append((v - bg) / (hi - bg if hi > bg else 1.0))
    return tuple(out)


class UNet3D(nnx.Module):
    """Image pair -> (u in voxels, g = f h / E): returns (N, Z, Y, X, 6)."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        self.config = config
        rng = np.random.default_rng(config.seed)
        w = config.widths
        k = config.convs_per_level
        impl = config.impl
        self.enc = nnx.List([Block(N_FEATURES if i == 0 else w[i - 1], w[i], k, rng, impl) for i in range(len(w))])
        self.dec = nnx.List([Block(w[i] + w[i + 1], w[i], k, rng, impl) for i in range(len(w) - 1)])
        self.head = Conv3d(w[0], 6, rng, size=1, impl=impl, scale=0.1)

    def __call__(self, features):
        m = self.config.multiple
        if any(s % m for s in features.shape[1:4]):
            raise ValueError(f"spatial shape {features.shape[1:4]} must be a multiple of {m} (use tfm.nn.infer.predict)")
        skips = []
        x = features
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else _down(x))
            skips.append(x)
        for i in reversed(range(len(self.dec))):
            x = self.dec[i](jnp.concatenate([_up(x), skips[i]], axis=-1))
        out = self.head(x)
        return jnp.concatenate([U_SCALE * out[..., :3], G_SCALE * out[..., 3:]], axis=-1)

    def apply_pair(self, reference, deformed, poisson_ratio):
        """Normalised volumes (N, Z, Y, X) -> (u_voxels, g), each (N, Z, Y, X, 3)."""
        out = self(optical_flow_features(reference, deformed, poisson_ratio))
        return out[..., :3], out[..., 3:]


def count_parameters(model: nnx.Module) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param))))
