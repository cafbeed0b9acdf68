"""The non-deep baseline: classic shape features + ridge / logistic regression.

Features per preprocessed image, from a segmentation of the cell (smoothed gradient
magnitude above the background level, holes filled, largest region): area, perimeter,
roundness ``4 pi A / P²``, eccentricity and major/minor axis lengths (from the second
moments), solidity (area / convex-hull area), and the mean and standard deviation of the
intensity inside. Standardised on the training split; ridge regression of log10
stiffness (closed form) and L2-regularised logistic / softmax regression (Newton / gradient
iterations), all NumPy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

FEATURES = ("area", "perimeter", "roundness", "eccentricity", "major_axis", "minor_axis", "solidity", "mean_intensity",
            "std_intensity")


def segment(image: np.ndarray) -> np.ndarray:
    """Boolean mask of the cell in a normalised image (H, W)."""
    img = np.asarray(image, float).squeeze()
    g = ndimage.gaussian_gradient_magnitude(img, 1.0)
    med = np.median(g)
    mad = np.median(np.abs(g - med)) * 1.4826 + 1e-9
    m = ndimage.binary_closing(g > med + 4 * mad, iterations=2)
    m = ndimage.binary_fill_holes(m)
    m = ndimage.binary_opening(m, iterations=2)
    lab, n = ndimage.label(m)
    if n == 0:
        return np.zeros(img.shape, bool)
    sizes = ndimage.sum_labels(np.ones_like(img), lab, index=np.arange(1, n + 1))
    return lab == (int(np.argmax(sizes)) + 1)


def shape_features(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, float).squeeze()
    m = segment(img)
    area = float(m.sum())
    if area < 5:
        return np.zeros(len(FEATURES))
    edge = m & ~ndimage.binary_erosion(m)
    perimeter = float(edge.sum())
    yy, xx = np.nonzero(m)
    cov = np.cov(np.vstack([yy, xx]))
    ev = np.sort(np.linalg.eigvalsh(cov))[::-1]
    major, minor = 4 * np.sqrt(max(ev[0], 1e-9)), 4 * np.sqrt(max(ev[1], 1e-9))
    ecc = float(np.sqrt(max(0.0, 1 - ev[1] / max(ev[0], 1e-12))))
    try:
        hull = ConvexHull(np.column_stack([yy, xx]).astype(float)).volume
    except QhullError:
        hull = area
    return np.array([area, perimeter, 4 * np.pi * area / max(perimeter, 1.0) ** 2, ecc, major, minor,
                     area / max(hull, 1.0), img[m].mean(), img[m].std()])


def features(images: np.ndarray) -> np.ndarray:
    return np.stack([shape_features(im) for im in images])


class ShapeBaseline:
    """Ridge regression (log10 stiffness) and logistic regression (classes) on shape features."""

    def __init__(self, alpha: float = 1.0, n_classes: int = 0, c_l2: float = 1.0):
        self.alpha, self.n_classes, self.c_l2 = alpha, n_classes, c_l2

    def fit(self, images, log_stiffness=None, classes=None) -> "ShapeBaseline":
        f = features(images)
        self.mu, self.sd = f.mean(0), f.std(0) + 1e-9
        z = np.column_stack([(f - self.mu) / self.sd, np.ones(len(f))])
        if log_stiffness is not None:
            y = np.asarray(log_stiffness, float)
            reg = self.alpha * np.eye(z.shape[1])
            reg[-1, -1] = 0
            self.w_reg = np.linalg.solve(z.T @ z + reg, z.T @ y)
        if classes is not None and self.n_classes >= 2:
            y = np.asarray(classes, int)
            w = np.zeros((z.shape[1], self.n_classes))
            onehot = np.eye(self.n_classes)[y]
            for _ in range(500):  # softmax regression, gradient descent with L2
                p = _softmax(z @ w)
                grad = z.T @ (p - onehot) / len(z) + w / (self.c_l2 * len(z))
                w -= 1.0 * grad
            self.w_cls = w
        return self

    def predict(self, images) -> dict:
        f = features(images)
        z = np.column_stack([(f - self.mu) / self.sd, np.ones(len(f))])
        out = {}
        if hasattr(self, "w_reg"):
            out["stiffness_pa"] = 1000.0 * 10.0 ** (z @ self.w_reg)
        if hasattr(self, "w_cls"):
            out["proba"] = _softmax(z @ self.w_cls)
        return out


def _softmax(a):
    a = a - a.max(1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(1, keepdims=True)
