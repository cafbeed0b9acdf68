r"""How much a bead volume pair can say about the motion at each point: the pieces.

Any estimate of motion from images -- a correlation window, Lucas-Kanade, a network --
needs intensity gradients in every direction: where the local structure tensor
``T = G_s * (grad m grad m^T)`` (``m`` the mean of the two normalised volumes, ``G_s`` a
window) has a weak direction, the motion along it is not in the data (the aperture
problem), and where there are no beads at all there is nothing but noise. The motion front
end (:mod:`tfm.nn.flow`) reports, per window, ``c = clip(1 - n / lambda_min(T), 0, 1)`` with
``n`` what image noise alone gives the structure tensor: the share of the weakest
direction's gradient energy that is not noise (0 without beads, near 1 among them). This
module holds the two pieces it needs:

* :func:`smallest_eigenvalue`: the closed-form smallest root of the 3x3 characteristic
  polynomial (trigonometric solution), vectorised;
* :func:`pair_noise`: the image noise from the two acquisitions, whose noise is independent
  while their beads are the same: the spread (1.4826 MAD) of ``deformed - reference``
  (the deformed volume shifted back by the pair's translation, in Fourier space), divided
  by 2 for the mean of two volumes, over the voxels not clipped to the floor in both --
  right for dense, voxel-sized beads, where a high-pass of one image keeps the beads too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage


def smallest_eigenvalue(a11, a22, a33, a12, a13, a23):
    """Smallest eigenvalue of symmetric 3x3 matrices given by their six entries (NumPy
    arrays, or JAX arrays -- then traceable inside a compiled function)."""
    xp = jnp if isinstance(a11, jax.Array) else np
    q = (a11 + a22 + a33) / 3.0
    b11, b22, b33 = a11 - q, a22 - q, a33 - q
    p2 = (b11**2 + b22**2 + b33**2 + 2.0 * (a12**2 + a13**2 + a23**2)) / 6.0
    p = xp.sqrt(xp.maximum(p2, 0.0))
    det = b11 * (b22 * b33 - a23**2) - a12 * (a12 * b33 - a23 * a13) + a13 * (a12 * a23 - b22 * a13)
    safe = xp.where(p > 0, p, 1.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # p so small its cube underflows: r is clipped
        r = xp.clip(xp.nan_to_num(det / (2.0 * safe**3)), -1.0, 1.0)
    phi = xp.arccos(r) / 3.0
    return xp.where(p > 0, q + 2.0 * p * xp.cos(phi + 2.0 * np.pi / 3.0), q)


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
