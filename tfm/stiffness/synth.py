"""Synthetic bright-field images of single cells whose morphology depends on stiffness.

No public AFM-labelled image set is reachable from this project, so the stiffness tools
are validated on images drawn here. **This validates the machinery (loading, training,
metrics, explanations), not biology**: the link between stiffness and shape below is a
stated, tunable rule, loosely modelled on what the field reports (stiffer cells spread
more, are less round and have more stress-fibre-driven edge structure; soft cells are
small and round), not a measured law.

The rules (:class:`MorphologyRules`), with ``s = log10(E / reference_pa)``:

* spreading area ``A = area_px * exp(area_gain * s + area_sd * N(0, 1))`` pixels, times a
  per-cell-type and a per-donor factor (nuisance the model must not learn from);
* aspect ratio ``1 + elongation_gain * sigmoid(2 s) + 0.15 |N(0, 1)|``;
* edge texture: harmonics 3-8 of the outline with amplitude ``edge_gain * sigmoid(2 s)``
  (plus ``edge_floor`` for every cell), i.e. ruffles and protrusions when stiff;
* internal granularity ``texture_gain * (1 - sigmoid(2 s))`` (soft cells look grainier).

Nuisance variation: position, orientation, nucleus size and place, background level,
illumination gradient, exposure, defocus blur, Poisson-Gaussian camera noise, debris; and,
with probability ``overexposed_fraction``, an over-exposed frame (saturated pixels) that
preprocessing must reject.

Images are bright-field-like: a dark cell body with a bright halo ring at its edge and a
darker nucleus, on a flat, slightly graded background. 16-bit TIFF.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..atomic import atomic_path, write_json
from ..progress import resolve

SATURATION = 65535


@dataclasses.dataclass(frozen=True)
class MorphologyRules:
    """How stiffness shows in the image (see the module docs); all tunable."""

    reference_pa: float = 1000.0  # s = log10(E / reference_pa)
    area_px: float = 1300.0  # spreading area at the reference stiffness (pixels, at 128 px)
    area_gain: float = 0.9  # d ln(area) / d s
    area_sd: float = 0.2  # lognormal scatter of the area
    elongation_gain: float = 1.2
    edge_gain: float = 0.10
    edge_floor: float = 0.02
    texture_gain: float = 0.25
    type_area_factors: tuple = (1.0, 0.7)  # per cell type (e.g. MSC, macrophage)
    donor_area_sd: float = 0.15  # per-donor lognormal factor of the area
    overexposed_fraction: float = 0.0


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def render_cell(rng: np.random.Generator, stiffness_pa: float, size: int = 128, rules: MorphologyRules = MorphologyRules(),
                cell_type: int = 0, donor_factor: float = 1.0, overexposed: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """One image (uint16, ``size`` x ``size``), the cell's mask (bool) and its drawn parameters."""
    if stiffness_pa <= 0:
        raise ValueError(f"stiffness_pa must be > 0, got {stiffness_pa}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    k = size / 128.0  # rules are stated at 128 px
    s = float(np.log10(stiffness_pa / rules.reference_pa))
    ft = rules.type_area_factors[cell_type % len(rules.type_area_factors)]
    area = rules.area_px * k**2 * ft * donor_factor * np.exp(rules.area_gain * s + rules.area_sd * rng.standard_normal())
    aspect = 1.0 + rules.elongation_gain * _sigmoid(2 * s) + 0.15 * abs(rng.standard_normal())
    edge = rules.edge_floor + rules.edge_gain * _sigmoid(2 * s)
    r0 = np.sqrt(area / np.pi)
    a, b = r0 * np.sqrt(aspect), r0 / np.sqrt(aspect)
    theta0 = rng.uniform(0, np.pi)
    centre = size / 2 + rng.uniform(-0.08, 0.08, 2) * size

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - centre[0], xx - centre[1]
    c, sn = np.cos(theta0), np.sin(theta0)
    u, v = c * dx + sn * dy, -sn * dx + c * dy
    phi = np.arctan2(v, u)
    harm = sum(rng.uniform(0.3, 1.0) * np.cos(m * phi + rng.uniform(0, 2 * np.pi)) / np.sqrt(m) for m in range(3, 9))
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    outline = 1.0 + edge * harm + 0.04 * np.cos(2 * phi + rng.uniform(0, 2 * np.pi))
    dist = (rho - outline) * r0  # ~ signed distance to the edge (pixels), negative inside
    body = _sigmoid(-dist / 0.8)
    mask = dist < 0

    nuc_r = r0 * rng.uniform(0.28, 0.4)
    nc = centre + rng.uniform(-0.2, 0.2, 2) * np.array([b, a]).min()
    nuc = _sigmoid(-(np.hypot(yy - nc[0], xx - nc[1]) - nuc_r) / 1.0) * body

    tex_amp = rules.texture_gain * (1 - _sigmoid(2 * s))
    granules = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.2)
    granules /= granules.std() + 1e-12
    halo = np.exp(-0.5 * ((dist - 1.5) / 1.3) ** 2)

    bg = rng.uniform(0.45, 0.6)
    gy, gx = rng.uniform(-0.08, 0.08, 2)
    illum = 1 + gy * (yy / size - 0.5) + gx * (xx / size - 0.5)
    img = bg * illum * (1 - 0.22 * body * (1 + tex_amp * granules) - 0.12 * nuc + 0.35 * halo)
    for _ in range(rng.integers(0, 4)):  # debris
        p = rng.uniform(0, size, 2)
        img -= 0.15 * bg * np.exp(-0.5 * (np.hypot(yy - p[0], xx - p[1]) / rng.uniform(0.8, 2.0)) ** 2)
    img = ndimage.gaussian_filter(img, rng.uniform(0.4, 1.4))  # defocus
    exposure = rng.uniform(0.7, 1.1) * (4.0 if overexposed else 1.0)
    photons = np.clip(img * exposure * 40000.0, 0, None)
    img = rng.poisson(photons / 20.0) * 20.0 + rng.normal(0, 150.0, photons.shape) + 800.0
    img = np.clip(img, 0, SATURATION).astype(np.uint16)
    params = {"stiffness_pa": float(stiffness_pa), "log10_rel": s, "area_px": float(mask.sum()), "aspect": float(aspect),
              "edge_amplitude": float(edge), "cell_type": int(cell_type), "overexposed": bool(overexposed)}
    return img, mask, params


def generate(out_dir, n: int, size: int = 128, seed: int = 0, rules: MorphologyRules = MorphologyRules(),
             n_donors: int = 8, cell_types: tuple = ("msc", "raw264.7"), stiffness_range_pa: tuple = (200.0, 20000.0),
             threshold_pa: float | None = None, progress=None) -> Path:
    """Write ``n`` images to ``out_dir/images/`` and ``out_dir/labels.csv``.

    CSV columns: ``file, stiffness_pa, class, cell_type, donor`` (``class`` is ``stiff``
    above ``threshold_pa``, default the geometric mean of the range, else ``soft``). Masks
    go to ``out_dir/masks.npz`` (for measuring where explanations look). Stiffness is
    log-uniform over ``stiffness_range_pa``; each donor has its own area factor."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    lo, hi = map(float, stiffness_range_pa)
    if not 0 < lo < hi:
        raise ValueError(f"stiffness_range_pa must be (low, high) with 0 < low < high, got {stiffness_range_pa}")
    thr = float(np.sqrt(lo * hi)) if threshold_pa is None else float(threshold_pa)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    donor_factor = np.exp(rules.donor_area_sd * rng.standard_normal(n_donors))
    rows, masks = [], {}
    import tifffile

    with resolve(progress).task(n, "cells") as bar:
        for i in range(n):
            e = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            donor = int(rng.integers(n_donors))
            t = int(rng.integers(len(cell_types)))
            over = bool(rng.random() < rules.overexposed_fraction)
            img, mask, _ = render_cell(rng, e, size, rules, t, float(donor_factor[donor]), over)
            name = f"cell_{i:05d}.tif"
            with atomic_path(out / "images" / name) as tmp:
                tifffile.imwrite(tmp, img)
            masks[name] = np.packbits(mask)
            rows.append({"file": f"images/{name}", "stiffness_pa": f"{e:.2f}", "class": "stiff" if e > thr else "soft",
                         "cell_type": cell_types[t], "donor": f"d{donor:02d}"})
            bar.update(1)
    with atomic_path(out / "labels.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with atomic_path(out / "masks.npz") as tmp:
        np.savez_compressed(tmp, shape=np.array([size, size]), **masks)
    write_json(out / "generator.json", {"n": n, "size": size, "seed": seed, "rules": dataclasses.asdict(rules),
                                        "n_donors": n_donors, "cell_types": list(cell_types), "stiffness_range_pa": [lo, hi],
                                        "threshold_pa": thr})
    return out


def load_masks(folder) -> dict:
    """The generator's cell masks, by image file name (bool arrays)."""
    z = np.load(Path(folder) / "masks.npz")
    n = int(np.prod(z["shape"]))
    return {k: np.unpackbits(z[k])[:n].reshape(tuple(z["shape"])).astype(bool) for k in z.files if k != "shape"}
