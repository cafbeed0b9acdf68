"""Synthetic fluorescent-bead volumes, rendered by forward mapping.

A bead at reference position ``X`` appears in the deformed volume at ``X + u(X)``: each
bead is *drawn* at its displaced position (never by warping an image), so the pair
carries no interpolation error and a correlation method is tested against the exact
field.

Each bead is an anisotropic Gaussian PSF integrated over the voxel it falls in
(``erf`` differences along each axis), so sub-voxel positions are rendered exactly.
Noise: Poisson shot noise at ``photons`` per unit intensity plus Gaussian read noise,
over a constant background; :func:`camera` turns that into uint16 detector counts.
Per-bead brightness and photobleaching between the two volumes are arguments of
:func:`render_pair`.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

from ..grid import Grid


def random_positions(grid: Grid, density_per_um3: float, rng: np.random.Generator, margin_um: float = 0.0) -> np.ndarray:
    """Uniformly random bead positions (N, 3) in µm inside the grid's box (Poisson count).

    ``margin_um`` extends the box on every side, so beads entering across the faces
    under a displacement are rendered too.
    """
    if not density_per_um3 > 0:
        raise ValueError(f"density_per_um3 must be > 0, got {density_per_um3}")
    lo = np.asarray(grid.origin_um) - 0.5 * np.asarray(grid.spacing_um) - margin_um
    hi = lo + np.asarray(grid.extent_um) + 2 * margin_um
    n = rng.poisson(density_per_um3 * float(np.prod(hi - lo)))
    return lo + (hi - lo) * rng.random((n, 3))


@partial(jax.jit, static_argnums=(3, 4))
def _splat(vol, pos_vox, amp, sigma_vox, radius):
    """Add voxel-integrated Gaussians for beads at fractional voxel indices ``pos_vox``."""
    base = jnp.floor(pos_vox).astype(jnp.int32) - jnp.asarray(radius)  # (N, 3)
    weights = []
    idx = []
    for a in range(3):
        offs = jnp.arange(2 * radius[a] + 1)
        i = base[:, a : a + 1] + offs[None, :]  # (N, K)
        s = sigma_vox[a] * math.sqrt(2.0)
        w = 0.5 * (erf((i + 0.5 - pos_vox[:, a : a + 1]) / s) - erf((i - 0.5 - pos_vox[:, a : a + 1]) / s))
        weights.append(w)
        # JAX wraps negative indices Python-style before mode="drop" applies: send them
        # past the far face instead, so beads near the low faces do not wrap around.
        idx.append(jnp.where(i < 0, vol.shape[a] + 2 * radius[a] + 2, i))
    patch = amp[:, None, None, None] * weights[0][:, :, None, None] * weights[1][:, None, :, None] * weights[2][:, None, None, :]
    iz = jnp.broadcast_to(idx[0][:, :, None, None], patch.shape)
    iy = jnp.broadcast_to(idx[1][:, None, :, None], patch.shape)
    ix = jnp.broadcast_to(idx[2][:, None, None, :], patch.shape)
    return vol.at[iz, iy, ix].add(patch, mode="drop")


def render(grid: Grid, positions_um, psf_sigma_um=(0.6, 0.25, 0.25), brightness=1.0, batch: int = 4096) -> np.ndarray:
    """Render beads at ``positions_um`` (N, 3) into a float32 volume on ``grid``.

    Args:
      psf_sigma_um: Gaussian PSF standard deviations (z, y, x), µm; confocal PSFs are
        2-3x wider in z.
      brightness: peak intensity of a bead (scalar or (N,)); exact for a PSF much wider
        than a voxel (voxel integration lowers the peak of a narrower one).
      batch: beads splatted per JAX call (bounds memory).
    """
    pos = np.asarray(positions_um, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions_um must have shape (N, 3), got {pos.shape}")
    sig = np.broadcast_to(np.asarray(psf_sigma_um, dtype=float), (3,))
    if np.any(sig <= 0):
        raise ValueError(f"psf_sigma_um must be > 0, got {psf_sigma_um}")
    sig_vox = tuple(float(s / h) for s, h in zip(sig, grid.spacing_um))
    radius = tuple(int(math.ceil(3.5 * s)) for s in sig_vox)
    pos_vox = (pos - np.asarray(grid.origin_um)) / np.asarray(grid.spacing_um)
    # Integrated intensity that gives peak `brightness`: (2 pi)^(3/2) sz sy sx (voxel units).
    norm = (2 * np.pi) ** 1.5 * float(np.prod(sig_vox))
    amp = np.broadcast_to(np.asarray(brightness, dtype=np.float32) * norm, (len(pos),))
    vol = jnp.zeros(grid.shape, jnp.float32)
    for s in range(0, len(pos), batch):
        p = np.zeros((batch, 3), np.float32) - 1e4  # padding beads land far outside: dropped
        a = np.zeros(batch, np.float32)
        chunk = pos_vox[s : s + batch]
        p[: len(chunk)] = chunk
        a[: len(chunk)] = amp[s : s + batch]
        vol = _splat(vol, jnp.asarray(p), jnp.asarray(a), sig_vox, radius)
    return np.asarray(vol)


def add_noise(volume, rng: np.random.Generator, photons: float = 200.0, read_noise: float = 0.01, background: float = 0.05) -> np.ndarray:
    """Shot noise (Poisson, ``photons`` per unit intensity: a bead's peak of 1 collects
    ``photons``) + Gaussian read noise, over a constant background.

    Returned in the same intensity units as ``volume`` (float32)."""
    v = np.asarray(volume, dtype=np.float64) + background
    if photons > 0:
        v = rng.poisson(np.clip(v, 0, None) * photons) / photons
    v = v + read_noise * rng.standard_normal(v.shape)
    return v.astype(np.float32)


def camera(volume, rng: np.random.Generator, photons: float = 200.0, read_noise: float = 0.01, background: float = 0.05,
           offset: int = 100, dtype=np.uint16) -> np.ndarray:
    """Detector counts of a rendered volume, as a microscope writes them: the noise of
    :func:`add_noise` in photo-electrons (gain 1: a bead's peak of 1 gives ``photons``
    counts), plus a dark ``offset``, rounded and clipped to ``dtype`` (uint16 by default)."""
    if not photons > 0:
        raise ValueError(f"photons must be > 0 for a camera, got {photons}")
    v = add_noise(volume, rng, photons, read_noise, background).astype(np.float64) * photons + offset
    lim = np.iinfo(dtype)
    return np.clip(np.rint(v), lim.min, lim.max).astype(dtype)


def render_pair(grid: Grid, positions_um, displacement_fn, psf_sigma_um=(0.6, 0.25, 0.25), brightness=1.0,
                brightness_deformed=None):
    """Reference and deformed volumes of beads at ``X`` and ``X + u(X)``.

    ``displacement_fn`` maps positions (N, 3) µm to displacements (N, 3) µm (for example
    ``solution.displacement`` of a :mod:`tfm.analytic` solution, or the FEM's own trilinear
    field via :func:`tfm.synth.fem.interpolate`). ``brightness_deformed`` (scalar or (N,))
    models photobleaching between the two acquisitions (default: ``brightness``)."""
    pos = np.asarray(positions_um, dtype=np.float64)
    moved = pos + np.asarray(displacement_fn(pos), dtype=np.float64)
    bd = brightness if brightness_deformed is None else brightness_deformed
    return render(grid, pos, psf_sigma_um, brightness), render(grid, moved, psf_sigma_um, bd)
