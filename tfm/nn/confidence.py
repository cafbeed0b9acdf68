r"""How much a bead volume pair can say about the motion at each voxel.

Any estimate of motion from images -- a correlation window, Lucas-Kanade, a network --
needs intensity gradients in every direction: where the local structure tensor
``T = G_s * (grad m grad m^T)`` (``m`` the mean of the two normalised volumes, ``G_s`` a
Gaussian window of ``sigma`` voxels) has a weak direction, the motion along it is not in
the data (the aperture problem), and where there are no beads at all there is nothing but
noise. White noise of standard deviation ``s`` gives central-difference gradients of
variance ``s² / 2`` per axis, hence ``T ~ (s² / 2) I``. The confidence is

    c = clip(1 - (s² / 2) / lambda_min(T), 0, 1),

the share of the weakest direction's gradient energy that is not noise: 0 where the
structure is what noise alone would give (no beads, or an edge-on stripe), near 1 among
beads. ``s`` is the smaller of two robust estimates: from ``m`` itself
(:func:`tfm.classical.noise.estimate_noise`: the spread of a high-pass residual, right
where beads are sparse) and from the two acquisitions, whose noise is independent while
their beads are the same: the spread (1.4826 MAD) of ``deformed - reference``, the
deformed volume shifted back by the pair's translation (Fourier shift), divided by 2 for
the mean of two volumes, over the voxels not clipped to the floor in both -- right for
dense, voxel-sized beads, where a high-pass keeps the beads too; the cell's motion, a
minority of the voxels, does not move the median. The eigenvalue is the closed-form smallest root of the 3x3 characteristic
polynomial (trigonometric solution), vectorised, so the map costs a few filters.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..classical.noise import estimate_noise

SIGMA = 2.0  # voxels: the window of the structure tensor (the network's own LK features use 2 and 4)


def smallest_eigenvalue(a11, a22, a33, a12, a13, a23) -> np.ndarray:
    """Smallest eigenvalue of symmetric 3x3 matrices given by their six entries (arrays)."""
    q = (a11 + a22 + a33) / 3.0
    b11, b22, b33 = a11 - q, a22 - q, a33 - q
    p2 = (b11**2 + b22**2 + b33**2 + 2.0 * (a12**2 + a13**2 + a23**2)) / 6.0
    p = np.sqrt(np.maximum(p2, 0.0))
    det = b11 * (b22 * b33 - a23**2) - a12 * (a12 * b33 - a23 * a13) + a13 * (a12 * a23 - b22 * a13)
    safe = np.where(p > 0, p, 1.0)
    r = np.clip(det / (2.0 * safe**3), -1.0, 1.0)
    phi = np.arccos(r) / 3.0
    return np.where(p > 0, q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0), q)


def pair_noise(reference, deformed, shift=None) -> float:
    """Noise std of the mean of two acquisitions of the same beads, from their difference
    (``deformed`` shifted back by ``shift`` voxels first, exactly, in Fourier space)."""
    d = np.asarray(deformed, np.float32)
    if shift is not None and np.any(np.abs(np.asarray(shift)) > 1e-3):
        axes = tuple(range(d.ndim))
        d = np.fft.irfftn(ndimage.fourier_shift(np.fft.rfftn(d), -np.asarray(shift, float), n=d.shape[-1]), s=d.shape,
                          axes=axes).astype(np.float32)
    ref = np.asarray(reference, np.float32)
    live = (ref > ref.min()) | (d > d.min())  # voxels clipped to the floor in both (8-bit zeros) say nothing of the noise
    r = (d - ref)[live] if live.mean() > 0.05 else (d - ref).ravel()
    return 1.4826 * float(np.median(np.abs(r - np.median(r)))) / 2.0


def confidence_map(reference, deformed, sigma: float = SIGMA, shift=None) -> np.ndarray:
    """Per-voxel confidence in [0, 1] (float32, the volumes' shape) of normalised volumes.

    See the module docs; volumes are (Z, Y, X), already normalised to a common scale;
    ``shift``: the translation (voxels) left between them, for the noise estimate."""
    m = 0.5 * (np.asarray(reference, np.float32) + np.asarray(deformed, np.float32))
    if m.ndim != 3 or min(m.shape) < 3:
        raise ValueError(f"volumes must be (Z, Y, X) with at least 3 voxels per axis, got {m.shape}")
    noise = min(estimate_noise(m[..., None]), pair_noise(reference, deformed, shift))
    g = np.gradient(m)
    win = [sigma] * 3
    t = {}
    for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)):
        t[i, j] = ndimage.gaussian_filter(g[i] * g[j], win, mode="nearest")
    del g
    lam = smallest_eigenvalue(t[0, 0], t[1, 1], t[2, 2], t[0, 1], t[0, 2], t[1, 2])
    floor = 0.5 * noise**2
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(lam > floor, 1.0 - floor / lam, 0.0) if floor > 0 else (lam > 0).astype(np.float32)
    return np.clip(c, 0.0, 1.0).astype(np.float32)
