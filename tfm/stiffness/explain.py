"""Where the stiffness network looks: Grad-CAM and SmoothGrad saliency maps.

* Grad-CAM (Selvaraju et al. 2017): the last stage's feature maps ``A_k`` weighted by the
  spatial mean of the gradient of the target score with respect to them,
  ``ReLU(sum_k mean(dS/dA_k) A_k)``, upsampled (bilinear) to the image. Coarse (1/16 of
  the image for four stages) but class-discriminative.
* SmoothGrad (Smilkov et al. 2017), the gradient-based alternative: the mean absolute
  input gradient over ``n`` noisy copies of the image (noise 10 % of the image range),
  smoothed by a 2-pixel Gaussian. Pixel-level, not class-discriminative in sign.

The target score is the predicted log10 stiffness (``target=None``) or the logit of a
class (``target=`` its index). :func:`mask_fraction` measures
how much of a map's mass falls on the cell, for checking that the network looks at the
cell and not the background.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from .model import StiffnessNet


def _score(model: StiffnessNet, out, target):
    if target is None or "logits" not in out:
        return out["log_stiffness"][0]
    return out["logits"][0, target]


def gradcam(model: StiffnessNet, image: np.ndarray, target: int | None = None) -> np.ndarray:
    """Grad-CAM map (H, W) in [0, 1] of one preprocessed image (H, W) or (H, W, 1).

    ``target``: class index; None explains the regression head (log10 stiffness)."""
    x = jnp.asarray(np.asarray(image, np.float32).reshape(1, *np.shape(image)[:2], 1))
    feat = model.features(x)

    def score(f):
        return _score(model, model.heads(f), target)

    g = jax.grad(score)(feat)
    w = g.mean(axis=(1, 2), keepdims=True)
    cam = np.asarray(jax.nn.relu((w * feat).sum(-1))[0])
    cam = ndimage.zoom(cam, (x.shape[1] / cam.shape[0], x.shape[2] / cam.shape[1]), order=1)
    return cam / cam.max() if cam.max() > 0 else cam


def smoothgrad(model: StiffnessNet, image: np.ndarray, target: int | None = None, n: int = 16, noise: float = 0.1,
               seed: int = 0) -> np.ndarray:
    """SmoothGrad map (H, W) in [0, 1] of one preprocessed image."""
    x = np.asarray(image, np.float32).reshape(1, *np.shape(image)[:2], 1)
    sd = noise * float(x.max() - x.min())
    xs = x + np.random.default_rng(seed).normal(0, sd, (n,) + x.shape[1:]).astype(np.float32)

    def score(v):
        out = model(v)
        return out["log_stiffness"].sum() if target is None or "logits" not in out else out["logits"][:, target].sum()

    g = np.asarray(jax.grad(score)(jnp.asarray(xs)))
    s = ndimage.gaussian_filter(np.abs(g).mean(0)[..., 0], 2.0)
    return s / s.max() if s.max() > 0 else s


def mask_fraction(saliency: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(fraction of the map's mass on ``mask``, fraction of the image that ``mask`` covers).
    A map that ignores the cell gives about equal numbers; one on the cell, a much larger first."""
    s = np.asarray(saliency, float)
    m = np.asarray(mask, bool)
    if s.shape != m.shape:
        raise ValueError(f"saliency {s.shape} and mask {m.shape} must have the same shape")
    return float(s[m].sum() / max(s.sum(), 1e-12)), float(m.mean())
