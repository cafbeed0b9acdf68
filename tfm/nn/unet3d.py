"""The learned reconstruction's network: measured motion -> displacement and force.

What it sees
------------
Not the raw volumes: the dense motion measured by the parameter-free front end
(:mod:`tfm.nn.flow`: coarse-to-fine Lucas-Kanade with warping on the working grid) on its
LK grid, as two kinds of channels:

* **motion** (3): the measured displacement ``u_LK``, in units of ``h`` (the geometric mean
  of the LK grid's voxel size, so components keep their physical direction on anisotropic
  voxels);
* **context** (8 + 2): what the images say about that measurement and the scene -- the
  window's confidence and gradient energy over the noise's (where the beads are), the
  brightness mismatch left after warping (where the measurement failed), the mean image
  (the cell is the bead-free region), the Poisson ratio, the LK grid's voxel aspect (log
  h_z/h, log h_y/h) and the law (0 linear, 1 neo-Hookean) -- and two channels even in the
  measured motion (:func:`motion_magnitudes`: log |u|² and log |grad u|², where the strain
  concentrates the cell is).

What it is
----------
A U-Net with two streams of equal topology. The context stream is an ordinary CNN (3x3x3
convolutions with biases, SiLU). The motion stream has no biases and no nonlinearity of
its own: each of its convolutions is multiplied, channel by channel, by a sigmoid gate
computed from the context stream at that resolution (a 1x1x1 convolution). Pooling,
upsampling and skip connections are linear. The outputs -- a correction to the measured
displacement, a force density, each 3 channels -- are therefore *odd in the measured
motion* (linear in it for a given pattern of its magnitude), with coefficients that depend
on the images and on where the motion's magnitude and strain concentrate:

* an identical pair (zero measured motion) gives exactly zero displacement and force, by
  construction, in one pass (no second "baseline" pass);
* it is the form of the optimal estimator for a linear-elastic matrix: displacement and
  force are linear in the cell's loads, the measurement linear in the displacement, so the
  best estimate given a geometry and a noise pattern is a (geometry-dependent) linear map
  of the measurement -- which the gates learn to build (how much to trust each window, how
  the field continues into the bead-free cell, where forces sit).

The U-Net runs at half the LK grid's resolution (space-to-depth of 2³ blocks in, pixel
shuffle out), so its output has the LK grid's resolution without 3x3x3 convolutions there.

The constitutive law in the forward pass
----------------------------------------
The force is ``g = s * (G(u) + g_net)``: ``G(u)`` is the force density the matrix's law
requires for the predicted displacement (the voxel FEM operator the labels satisfy,
:func:`tfm.nn.physics.implied_force`, on the LK grid's anisotropic voxels; its linear law,
to first order the neo-Hookean one too -- the network, told the law by a context channel,
supplies the difference), ``g_net`` what the network adds, and ``s`` in [0, 1] the support
map the context stream draws, trained to be the cell and its surface (a body force exists
only there: the matrix itself carries none, so the noise of ``G(u)`` in the far field is
cut). Units: ``g = f h / E``. The force loss trains ``s`` and ``g_net``; it does not
reach ``u`` through ``G`` (a second-derivative operator: with that gradient flowing, the
displacement did not learn at all in a 60-step test; without it, it did) -- ``u`` learns from
the displacement loss and from the consistency term ``|g - G(u)|``, the Navier equations
of a force-free matrix away from the cell.

Convolutions
------------
:class:`Conv3d` holds an ordinary ``(3, 3, 3, in, out)`` kernel and has two equivalent
implementations: ``"native"`` (XLA's 3D convolution, cuDNN on GPU) and ``"stacked2d"``
(the three z-shifted slices stacked on the channel axis, one 2D convolution per z-plane:
4.7x faster forward and 5.1x for the gradient on the 2-core CPU). ``"auto"`` picks
``"native"`` on GPU/TPU and ``"stacked2d"`` on CPU. Channels-last (N, Z, Y, X, C).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..learn import config as configs
from ..learn.init import he_normal
from . import physics
from .flow import FlowConfig

IMPLS = ("auto", "native", "stacked2d")
MOTION_CHANNELS = 3
CONTEXT_CHANNELS = 8
U_SCALE = 0.1  # network output 1 = 0.1 h of displacement correction
G_SCALE = 0.01  # network output 1 = 0.01 E / h of force density
ARCHITECTURE = 2  # version of the architecture; models of another version are refused by name


DRIFT_FITS = ("alone", "joint")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`UNet3D` and the working grid it was trained on (saved as JSON
    beside the weights)."""

    widths: tuple = (24, 32, 48)  # channels per level of each stream, finest first (levels = len)
    convs_per_level: int = 2  # 3x3x3 convolutions per block
    physics_forward: bool = True  # force = s * (G(u) + g_net) (False: s * g_net, the ablation)
    impl: str = "auto"  # convolution implementation: "auto", "native" or "stacked2d"
    spacing_um: tuple = (0.8, 0.6, 0.6)  # finest working voxel (z, y, x), µm: stacks finer than this are brought to it
    flow: FlowConfig = FlowConfig()  # the motion front end it was trained with
    # How the stacks' drift was taken out of the motion it was trained on (and so must be at
    # inference): "alone", the drift model fitted to the far field by itself (every model
    # trained so far, the shipped weights among them), or "joint", fitted together with a
    # cell's dipole far field so the cell's own far field stays (as the DVC fits it).
    drift_fit: str = "alone"
    architecture: int = ARCHITECTURE
    seed: int = 0  # parameter initialisation

    def __post_init__(self):
        if self.architecture != ARCHITECTURE:
            raise ValueError(f"this model has architecture version {self.architecture}; this tfm runs version "
                             f"{ARCHITECTURE} (retrain it with tfm train, or use the tfm release that made it)")
        if len(self.widths) < 1 or any(int(w) < 1 for w in self.widths):
            raise ValueError(f"widths must be positive channel counts, got {self.widths}")
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        if self.drift_fit not in DRIFT_FITS:
            raise ValueError(f"drift_fit must be one of {DRIFT_FITS}, got {self.drift_fit!r}")
        if len(self.spacing_um) != 3 or any(not float(h) > 0 for h in self.spacing_um):
            raise ValueError(f"spacing_um must be 3 positive voxel sizes, got {self.spacing_um}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "spacing_um", tuple(float(h) for h in self.spacing_um))
        if not isinstance(self.flow, FlowConfig):
            raise ValueError(f"flow must be a tfm.nn.flow.FlowConfig, got {type(self.flow).__name__}")

    @property
    def flow_config(self):
        return self.flow

    @property
    def multiple(self) -> int:
        """Every LK-grid size the network sees must be a multiple of this (stem and pooling)."""
        return 2 * 2 ** (len(self.widths) - 1)

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
    compilation at init, which costs seconds per shape on CPU); ``bias=False`` for the
    motion stream."""

    def __init__(self, c_in: int, c_out: int, rng: np.random.Generator, size: int = 3, impl: str = "auto",
                 scale: float = 1.0, bias: bool = True):
        self.kernel = nnx.Param(he_normal(rng, (size, size, size, c_in, c_out), c_in * size**3, scale))
        self.bias = nnx.Param(jnp.zeros((c_out,), jnp.float32)) if bias else None
        self.impl = impl

    def __call__(self, x):
        y = conv3d(x, self.kernel[...], _resolve_impl(self.impl))
        return y if self.bias is None else y + self.bias[...]


class GatedBlock(nnx.Module):
    """``convs_per_level`` layers of both streams: context ``c <- silu(conv(c))``; motion
    ``v <- conv(v) * sigmoid(gate(c))`` (no bias: linear in ``v``)."""

    def __init__(self, c_in: int, v_in: int, width: int, n: int, rng, impl: str):
        self.cconv = nnx.List([Conv3d(c_in if i == 0 else width, width, rng, impl=impl) for i in range(n)])
        self.vconv = nnx.List([Conv3d(v_in if i == 0 else width, width, rng, impl=impl, bias=False) for i in range(n)])
        self.gate = nnx.List([Conv3d(width, width, rng, size=1, impl=impl) for _ in range(n)])

    def __call__(self, c, v):
        for cc, vc, gc in zip(self.cconv, self.vconv, self.gate):
            c = jax.nn.silu(cc(c))
            v = vc(v) * jax.nn.sigmoid(gc(c))
        return c, v


def _down(x):
    n, z, y, xx, c = x.shape
    return x.reshape(n, z // 2, 2, y // 2, 2, xx // 2, 2, c).mean(axis=(2, 4, 6))


def _up(x):
    for ax in (1, 2, 3):
        x = jnp.repeat(x, 2, axis=ax)
    return x


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


class UNet3D(nnx.Module):
    """(motion (N, Z, Y, X, 3), context (N, Z, Y, X, 8)) on the LK grid -> (u, g), each
    (N, Z, Y, X, 3): ``u`` the displacement (the measured one plus the network's
    correction) in units of ``h``, ``g = f h / E``. See the module docs."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        self.config = config
        rng = np.random.default_rng(config.seed)
        w, k, impl = config.widths, config.convs_per_level, config.impl
        self.cstem = Conv3d(8 * (CONTEXT_CHANNELS + 2), w[0], rng, size=1, impl=impl)
        self.vstem = Conv3d(8 * MOTION_CHANNELS, w[0], rng, size=1, impl=impl, bias=False)
        self.enc = nnx.List([GatedBlock(w[max(i - 1, 0)], w[max(i - 1, 0)], w[i], k, rng, impl) for i in range(len(w))])
        self.dec = nnx.List([GatedBlock(w[i] + w[i + 1], w[i] + w[i + 1], w[i], k, rng, impl) for i in range(len(w) - 1)])
        self.head = Conv3d(w[0], 6 * 8, rng, size=1, impl=impl, scale=0.1, bias=False)
        # the support map: where forces may be (the cell and its surface); it starts mostly off
        # (s ~ 0.05): in the far field G(u) of a measured u is its noise, second-differenced
        self.support = Conv3d(w[0], 8, rng, size=1, impl=impl)
        self.support.bias = nnx.Param(jnp.full((8,), -3.0, jnp.float32))

    def __call__(self, motion, context, nu, spacing_rel, law_flag=None):
        """``nu`` (N,): the Poisson ratio; ``spacing_rel`` (N, 3): the LK grid's voxel size
        over ``h``. The context channels are those of :func:`context_channels` (the law is
        one of them; ``law_flag`` is accepted for symmetry and unused). Returns ``(u, g)``."""
        u, g, _, _ = self.forward(motion, context, nu, spacing_rel)
        return u, g

    def forward(self, motion, context, nu, spacing_rel, need_physics: bool = False):
        """``(u, g, G(u), s)``: :meth:`__call__`'s outputs, the constitutive layer's force for
        ``u`` (None unless the forward pass uses it or ``need_physics``) and the support map
        ``s`` (where forces may be: at the cell)."""
        m = self.config.multiple
        if any(s % m for s in motion.shape[1:4]):
            raise ValueError(f"spatial shape {motion.shape[1:4]} must be a multiple of {m} (use tfm.nn.infer.predict)")
        c = jax.nn.silu(self.cstem(space_to_depth(jnp.concatenate([context, motion_magnitudes(motion, spacing_rel)], -1), 2)))
        v = self.vstem(space_to_depth(motion, 2))
        skips = []
        for i, block in enumerate(self.enc):
            c, v = block(c if i == 0 else _down(c), v if i == 0 else _down(v))
            skips.append((c, v))
        for i in reversed(range(len(self.dec))):
            c, v = self.dec[i](jnp.concatenate([_up(c), skips[i][0]], -1), jnp.concatenate([_up(v), skips[i][1]], -1))
        out = depth_to_space(self.head(v), 2)
        u = motion + U_SCALE * out[..., :3]
        g = G_SCALE * out[..., 3:]
        g_phys = None
        if self.config.physics_forward or need_physics:
            g_phys = physics.implied_force_batch(u, nu, spacing_rel)
        s = jax.nn.sigmoid(depth_to_space(self.support(c), 2))
        if self.config.physics_forward:
            # the force loss trains the support map and g_net, not u through the layer: bending
            # u to fit a force through a second-derivative operator costs displacement accuracy
            # (measured: with the gradient flowing, the displacement loss did not fall at all)
            g = g + jax.lax.stop_gradient(g_phys)
        return u, s * g, g_phys, s


MAGNITUDE_FLOOR = 1e-4  # h²: the floor of the logarithms of motion_magnitudes (a hundredth of h, squared)


def motion_magnitudes(motion, spacing_rel):
    """Two channels even in the measured motion (N, Z, Y, X, 3) that the context stream sees
    beside the images: ``log(|u|² + e)`` and ``log(|grad u|² + e)`` (central differences on
    the LK grid's voxels ``spacing_rel``, in units of ``h``; ``e`` = MAGNITUDE_FLOOR). Where
    the strain concentrates, the cell is: the gates may follow it, and the network stays
    linear (odd) in the motion because these features are even in it."""
    sq = jnp.sum(motion * motion, -1, keepdims=True)
    grad = 0.0
    for a in range(3):
        d = (jnp.roll(motion, -1, axis=a + 1) - jnp.roll(motion, 1, axis=a + 1)) / (2 * spacing_rel[:, a, None, None, None, None])
        grad = grad + jnp.sum(d * d, -1, keepdims=True)
    return jnp.concatenate([jnp.log(sq + MAGNITUDE_FLOOR), jnp.log(grad + MAGNITUDE_FLOOR)], -1)


def context_channels(flow_out: dict, nu: float, spacing_rel, law_flag: float) -> np.ndarray:
    """The 8 context channels (Z, Y, X, 8) from :func:`tfm.nn.flow.pyramid_flow`'s output:
    confidence, texture, residual, mean image, ``(nu - 0.4) / 0.1``, ``log(h_z / h)``,
    ``log(h_y / h)``, law (0 linear, 1 neo-Hookean)."""
    shape = flow_out["u"].shape[:3]
    h = np.log(np.asarray(spacing_rel, np.float32))
    consts = [(float(nu) - 0.4) / 0.1, h[0], h[1], float(law_flag)]
    chans = [flow_out["confidence"], flow_out["texture"], flow_out["residual"], flow_out["mean"]]
    chans += [np.full(shape, v, np.float32) for v in consts]
    return np.stack(chans, -1).astype(np.float32)


def count_parameters(model: nnx.Module) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param))))


def normalisation(volume) -> tuple:
    """``(background, scale)`` of :func:`normalise_pair` for one volume: its median and its
    99.9th percentile less the median (1 where that is not positive). The percentiles of
    volumes over 8M voxels are taken on a regular subsample of at least 4M voxels (the same
    statistics, a fraction of the cost)."""
    v = np.asarray(volume)
    step = max(1, int((v.size / 4e6) ** (1 / 3))) if v.size > 8e6 else 1
    sample = v[::step, ::step, ::step] if v.ndim == 3 else v
    bg, hi = (float(q) for q in np.percentile(sample, [50.0, 99.9]))  # one partition for both
    return bg, (hi - bg if hi > bg else 1.0)


def pair_normalisation(reference, deformed) -> tuple:
    """:func:`normalisation` of both volumes, in two threads (NumPy's partition releases
    the GIL; 128³: 56 -> 30 ms): ``((bg_ref, scale_ref), (bg_dfm, scale_dfm))``."""
    with ThreadPoolExecutor(2) as pool:
        return tuple(pool.map(normalisation, (reference, deformed)))


def normalise_pair(reference, deformed):
    """Each volume to (v - median) / (p99.9 - median) (:func:`normalisation`): background 0,
    bright beads ~1, so photobleaching (a dimmer deformed volume) is divided out. NumPy,
    float32; call it once on a whole volume (not per tile)."""
    out = []
    for v, (bg, scale) in zip((reference, deformed), pair_normalisation(reference, deformed)):
        v = np.asarray(v, np.float32) - np.float32(bg)
        v /= np.float32(scale)
        out.append(v)
    return tuple(out)
