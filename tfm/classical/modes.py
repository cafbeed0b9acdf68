"""Fourier modes of vector fields on a voxel grid: wavevectors, the longitudinal /
transverse split of an isotropic operator, and the transforms (channel-first fields
(3, Z, Y, X): XLA's FFT over the leading spatial axes of a channel-last array is about
1.5x slower on CPU). Shared by the FFT force inverse and the FEM inverse's preconditioner."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..grid import Grid


def fourier_modes(shape, spacing):
    """|k|² (Z, Y, Xr) and unit wavevectors (3, Z, Y, Xr) on the rFFT grid of ``shape``."""
    ks = Grid(shape, spacing).wavevector_axes(rfft=True)
    k = np.stack(np.meshgrid(*ks, indexing="ij"), 0)
    k2 = np.sum(k**2, 0)
    khat = k / np.sqrt(np.where(k2 > 0, k2, 1.0))
    return jnp.asarray(k2, jnp.float32), jnp.asarray(khat, jnp.float32)


def apply_modes(vh, khat, a_long, a_trans):
    """``a_long P_L v + a_trans (I - P_L) v`` per wavevector (P_L = k̂ k̂ᵀ)."""
    long = khat * jnp.sum(khat * vh, 0, keepdims=True)
    return a_long * long + a_trans * (vh - long)


def fft3(v):
    return jnp.fft.rfftn(v, axes=(1, 2, 3))


def ifft3(vh, shape):
    return jnp.fft.irfftn(vh, s=shape, axes=(1, 2, 3))
