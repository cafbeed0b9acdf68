"""A compact residual CNN (Flax NNX) for single-cell stiffness from bright-field images.

``StiffnessNet(config)`` maps (N, H, W, 1) normalised images to a dict with

* ``log_stiffness``: (N,) predicted log10(E / 1 kPa) (the regression head), and
* ``logits``: (N, n_classes) (the classification head; absent when ``n_classes`` is 0).

Architecture: a 3x3 stem convolution, then one residual stage per entry of ``widths``
(each: a downsampling residual block, then ``blocks - 1`` more; two 3x3 convolutions
with SiLU per block, a 1x1 projection on the shortcut where the width changes), global
average pooling, dropout, and the linear heads. Downsampling is 2x2 average pooling
before the block's stride-1 convolutions, not strided convolution, whose uneven kernel
coverage printed a 16-pixel checkerboard on the input gradients (SmoothGrad maps).
No batch normalisation: the second
convolution of every residual block starts at zero (each block starts as the identity,
as in Fixup / "zero-init residual"), which trains stably at small batch sizes and leaves
no train/eval state to get wrong. Parameters are drawn from a NumPy generator (He normal),
as for the 3D network (:func:`tfm.learn.init.he_normal`).

``features(x)`` returns the last stage's feature maps (for Grad-CAM) and ``heads(f)`` the
outputs from them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..learn import config as configs
from ..learn.init import he_normal

TASKS = ("regression", "classification", "both")


@dataclasses.dataclass(frozen=True)
class NetConfig:
    widths: tuple = (16, 32, 64, 128)  # channels per stage (each halves the resolution)
    blocks: int = 1  # residual blocks per stage
    dropout: float = 0.1  # before the heads
    n_classes: int = 2  # 0: regression only
    seed: int = 0

    def __post_init__(self):
        if not self.widths or any(int(w) < 1 for w in self.widths):
            raise ValueError(f"widths must be positive channel counts, got {self.widths}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if int(self.blocks) < 1:
            raise ValueError(f"blocks must be >= 1, got {self.blocks}")
        if not 0 <= float(self.dropout) < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if int(self.n_classes) < 0 or int(self.n_classes) == 1:
            raise ValueError(f"n_classes must be 0 (regression only) or >= 2, got {self.n_classes}")

    def to_json(self) -> str:
        return configs.to_json(self)


class Conv2d(nnx.Module):
    def __init__(self, c_in: int, c_out: int, rng: np.random.Generator, size: int = 3, scale: float = 1.0):
        self.kernel = nnx.Param(he_normal(rng, (size, size, c_in, c_out), c_in * size * size, scale))
        self.bias = nnx.Param(jnp.zeros((c_out,), jnp.float32))

    def __call__(self, x):
        y = jax.lax.conv_general_dilated(x, self.kernel[...], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.bias[...]


class Dense(nnx.Module):
    def __init__(self, c_in: int, c_out: int, rng: np.random.Generator):
        self.kernel = nnx.Param(he_normal(rng, (c_in, c_out), c_in, 0.5))
        self.bias = nnx.Param(jnp.zeros((c_out,), jnp.float32))

    def __call__(self, x):
        return x @ self.kernel[...] + self.bias[...]


def _pool2(x):
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class ResBlock(nnx.Module):
    def __init__(self, c_in: int, c_out: int, pool: bool, rng):
        self.pool = pool
        self.conv1 = Conv2d(c_in, c_out, rng)
        self.conv2 = Conv2d(c_out, c_out, rng, scale=0.0)  # zero-init: the block starts as the identity
        self.proj = Conv2d(c_in, c_out, rng, size=1) if c_in != c_out else None

    def __call__(self, x):
        if self.pool:  # 2x2 average pooling, then stride-1 convolutions: no checkerboard in the gradients
            x = _pool2(x)
        h = self.conv2(jax.nn.silu(self.conv1(x)))
        return jax.nn.silu(h + (x if self.proj is None else self.proj(x)))


class StiffnessNet(nnx.Module):
    def __init__(self, config: NetConfig = NetConfig()):
        self.config = config
        rng = np.random.default_rng(config.seed)
        w = config.widths
        self.stem = Conv2d(1, w[0], rng)
        blocks = []
        c = w[0]
        for width in w:
            for b in range(config.blocks):
                blocks.append(ResBlock(c, width, b == 0, rng))
                c = width
        self.blocks = nnx.List(blocks)
        self.reg = Dense(c, 1, rng)
        self.cls = Dense(c, config.n_classes, rng) if config.n_classes else None

    @property
    def multiple(self) -> int:
        return 2 ** len(self.config.widths)

    def features(self, x):
        x = jax.nn.silu(self.stem(x))
        for blk in self.blocks:
            x = blk(x)
        return x

    def heads(self, feat, key=None):
        h = feat.mean(axis=(1, 2))
        p = float(self.config.dropout)
        if key is not None and p > 0:
            keep = jax.random.bernoulli(key, 1 - p, h.shape)
            h = jnp.where(keep, h / (1 - p), 0.0)
        out = {"log_stiffness": self.reg(h)[:, 0]}
        if self.cls is not None:
            out["logits"] = self.cls(h)
        return out

    def __call__(self, x, key=None):
        """``key``: a PRNG key to apply dropout (training); None for inference."""
        return self.heads(self.features(x), key)
