"""The photometric pieces of self-supervised adaptation (:mod:`tfm.nn.adapt`), all
differentiable in JAX: the network's field on the working grid (:func:`upsample2`), its
smoothing at a bead image's scale (:func:`smoothing_matrices`, :func:`smooth_field`), the
deformed volume pulled back by it (:func:`warp`), where such a
warp reads within a volume's data (:func:`inside_data`) and the texture-weighted local
``1 - NCC`` that compares the result with the reference (:func:`photometric_loss`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..fields import band_filter, gaussian_band, gaussian_matrix


# -- the differentiable field on the working grid -----------------------------------------------


def smoothing_matrices(n: int, sigma_voxels) -> np.ndarray:
    """(3, n, n): per axis the Gaussian window matrix (:func:`tfm.fields.gaussian_matrix`,
    normalised at the faces) of ``sigma_voxels`` (3,); the identity where it is 0."""
    return np.stack([gaussian_matrix(n, float(s)) if s > 0 else np.eye(n, dtype=np.float32) for s in sigma_voxels])


def smooth_field(field, matrices):
    """(N, Z, Y, X, C) field smoothed along z, y, x by per-sample matrices: (N, 3, n, n)
    for cubic crops (:func:`smoothing_matrices`), or a sequence of three (N, n_axis, n_axis)."""
    mz, my, mx = matrices if isinstance(matrices, (list, tuple)) else (matrices[:, 0], matrices[:, 1], matrices[:, 2])
    field = jnp.einsum("nzk,nkyxc->nzyxc", mz, field)
    field = jnp.einsum("nyk,nzkxc->nzyxc", my, field)
    return jnp.einsum("nxk,nzykc->nzyxc", mx, field)


def upsample2(field, shape):
    """(N, z, y, x, C) on the LK grid -> (N, *shape, C) on the working grid (2x finer),
    trilinear at the working voxel centres, edge values held; differentiable."""
    coords = jnp.stack(jnp.meshgrid(*[(jnp.arange(n) + 0.5) / 2 - 0.5 for n in shape], indexing="ij"), 0)

    def one(f):  # (z, y, x) -> shape
        return jax.scipy.ndimage.map_coordinates(f, list(coords), order=1, mode="nearest")

    return jax.vmap(jax.vmap(one, in_axes=-1, out_axes=-1))(field)


def voxel_points(shape, margin: int, dtype):
    """(*shape, 3) the voxel indices ``x + margin`` of a field's grid of ``shape`` (Z, Y, X)."""
    return jnp.stack(jnp.meshgrid(*[jnp.arange(n, dtype=dtype) + margin for n in shape], indexing="ij"), -1)


def warp(volume, u_vox, margin: int = 0):
    """``volume(x + margin + u(x))`` for (N, Z+2m, Y+2m, X+2m) volumes and (N, Z, Y, X, 3)
    fields in voxels (0 -- the normalised background -- outside): the deformed volume pulled
    back by ``u``, trilinear. (Keys' cubic convolution was measured here and gave adaptation
    no help at 2.3x the time: docs/learned.md section 8.)"""
    base = voxel_points(u_vox.shape[1:4], margin, u_vox.dtype)

    def one(v, u):
        c = jnp.moveaxis(base + u, -1, 0)
        return jax.scipy.ndimage.map_coordinates(v, list(c), order=1, mode="constant", cval=0.0)

    return jax.vmap(one)(volume, u_vox)


# -- the loss ----------------------------------------------------------------------------------


def blur(x, sigma: float):
    """Normalised Gaussian window sums over (Z, Y, X) of (N, Z, Y, X, C): one banded product
    per axis (:func:`tfm.fields.band_filter`; normalised convolution at the faces)."""
    for ax in (1, 2, 3):
        x = band_filter(x, ax, jnp.asarray(gaussian_band(x.shape[ax], sigma), x.dtype))
    return x


def photometric_loss(reference, warped, sigma: float = 2.0, eps: float = 1e-4, valid=None):
    """Per-sample ``1 - NCC``: local normalised cross-correlation of (N, Z, Y, X) volumes in
    Gaussian windows of ``sigma`` voxels, averaged with the reference's local variance as
    weight (texture counts, empty background does not); where ``valid`` (N, Z, Y, X) is
    given (0 where the warp reads beyond the deformed volume's data), the windows' moments
    and the average run over its valid voxels alone. 0 for identical volumes
    (to ``eps``), up to 2 for inverted ones; unchanged by a local gain and offset of
    ``warped``."""
    a, b = reference[..., None], warped[..., None]
    moments = jnp.concatenate([a, b, a * a, b * b, a * b], -1)
    if valid is None:
        stats = blur(moments, sigma)
    else:  # the windows' moments over valid voxels alone (normalised convolution)
        m = jax.lax.stop_gradient(valid)[..., None]
        both = blur(jnp.concatenate([moments * m, m], -1), sigma)
        stats = both[..., :5] / jnp.maximum(both[..., 5:], 1e-6)
    ma, mb = stats[..., 0], stats[..., 1]
    vaa = jnp.maximum(stats[..., 2] - ma * ma, 0.0)
    vbb = jnp.maximum(stats[..., 3] - mb * mb, 0.0)
    vab = stats[..., 4] - ma * mb
    ncc = vab / jnp.sqrt(vaa * vbb + eps**2)
    w = jax.lax.stop_gradient(vaa if valid is None else vaa * valid)
    return 1.0 - jnp.sum(w * ncc, (1, 2, 3)) / jnp.maximum(jnp.sum(w, (1, 2, 3)), 1e-12)


def inside_data(u_vox, lo, hi, margin: int = 0):
    """(N, Z, Y, X) 1 where ``x + margin + u(x)`` (``u_vox`` (N, Z, Y, X, 3), voxels) lies
    at least one voxel inside the box ``[lo, hi]`` (N, 3) of a volume's real data, else 0
    (no gradient): where a warp by ``u`` reads data and not the zeros beyond it."""
    pos = jax.lax.stop_gradient(voxel_points(u_vox.shape[1:4], margin, u_vox.dtype) + u_vox)
    lo, hi = lo[:, None, None, None, :], hi[:, None, None, None, :]
    return jnp.all((pos >= lo + 1) & (pos <= hi - 1), -1).astype(u_vox.dtype)
