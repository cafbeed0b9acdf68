"""Bright-field single-cell images with stiffness labels: loading, preprocessing, splits.

A data set is a folder of images (TIFF, PNG or JPEG; 8- or 16-bit, any size, grey or RGB)
plus a CSV with one row per image:

=============  =========================================================================
column         meaning
=============  =========================================================================
file           image path, relative to the CSV's folder (required)
stiffness_pa   measured stiffness (e.g. AFM Young's modulus), Pa, > 0 (regression)
class          a class name, e.g. ``soft``/``stiff`` (classification)
cell_type      optional, reported per type
donor / group  optional; the split unit, so no donor or cell line leaks between splits
=============  =========================================================================

At least one of ``stiffness_pa`` and ``class`` is needed. Every problem is reported with
its CSV row (the header is row 1).

Preprocessing, as the field does it (Wu, Feng et al. 2025; Kim et al. 2022):

1. Over-exposed frames are excluded: more than ``max_saturated`` (default 1 %) of the
   pixels at the format's maximum (255, 65535; float images: at their own maximum when
   that is repeated). Excluded images are listed with the reason, not silently dropped.
2. Brightness normalisation: ``(image - median) / (p99.5 - p0.5)`` (the median is the
   background in a sparse bright-field field of view).
3. The cell is located (local contrast: smoothed gradient magnitude above background,
   largest connected region) and a ``size`` x ``size`` window centred on it is cut at the
   native scale (``scale`` resamples first, for another magnification). The window is not
   fitted to the cell: spreading area is information, and rescaling every cell to the same
   size would remove it.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..imagefile import read_raster
from ..progress import resolve

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
GROUP_COLUMNS = ("donor", "group")


class ImageError(ValueError):
    """An image cannot be used; the message names the file (and the CSV row)."""


@dataclasses.dataclass
class Record:
    row: int  # CSV row (header = 1)
    path: Path
    stiffness_pa: float | None
    label: str | None
    cell_type: str
    group: str


def read_table(csv_path, require_labels: bool = True) -> list[Record]:
    """Parse and check the label CSV; errors name the row and the column.

    ``csv_path`` may also be a folder of images (unlabelled, for prediction), and with
    ``require_labels=False`` a CSV may hold only the ``file`` column."""
    csv_path = Path(csv_path)
    if csv_path.is_dir():
        if require_labels:
            raise ValueError(f"{csv_path} is a folder; training and evaluation need a labels CSV")
        files = sorted(f for f in csv_path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{csv_path}: no images ({', '.join(IMAGE_SUFFIXES)})")
        return [Record(i + 1, f.resolve(), None, None, "", "") for i, f in enumerate(files)]
    if not csv_path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {csv_path}")
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "file" not in cols:
            raise ValueError(f"{csv_path}: needs a 'file' column; found {cols}")
        if require_labels and "stiffness_pa" not in cols and "class" not in cols:
            raise ValueError(f"{csv_path}: needs a 'stiffness_pa' or a 'class' column (or both); found {cols}")
        group_col = next((c for c in GROUP_COLUMNS if c in cols), None)
        records = []
        for i, raw in enumerate(reader, start=2):
            r = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{csv_path.name} row {i}"
            if not r.get("file"):
                raise ValueError(f"{where}: empty 'file'")
            path = (csv_path.parent / r["file"]).resolve()
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ValueError(f"{where}: file {r['file']!r} is not an image ({', '.join(IMAGE_SUFFIXES)})")
            if not path.is_file():
                raise FileNotFoundError(f"{where}: file {r['file']!r} not found (looked for {path})")
            e = None
            if "stiffness_pa" in cols and r.get("stiffness_pa", "") != "":
                try:
                    e = float(r["stiffness_pa"])
                except ValueError:
                    raise ValueError(f"{where}: stiffness_pa {r['stiffness_pa']!r} is not a number") from None
                if not np.isfinite(e) or e <= 0:
                    raise ValueError(f"{where}: stiffness_pa must be a positive number of Pa, got {r['stiffness_pa']!r}")
            label = r.get("class") or None
            if require_labels and e is None and label is None:
                raise ValueError(f"{where}: neither stiffness_pa nor class is given")
            records.append(Record(i, path, e, label, r.get("cell_type", "") or "", r.get(group_col, "") if group_col else ""))
    if not records:
        raise ValueError(f"{csv_path}: no rows")
    return records


def read_image(path) -> np.ndarray:
    """An image as a 2D array in its own dtype (colour averaged to grey), through the
    decoder every tfm image goes through (:func:`tfm.imagefile.read_raster`)."""
    path = Path(path)
    try:
        raster = read_raster(path)
    except (ValueError, OSError) as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from exc
    img = np.squeeze(np.asarray(raster.data))
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        dtype = img.dtype
        img = img[..., :3].astype(np.float64).mean(-1).astype(dtype)
    if img.ndim != 2:
        raise ImageError(f"image {path} is not a 2D grey or RGB image (shape {img.shape})")
    if img.shape[0] < 16 or img.shape[1] < 16:
        raise ImageError(f"image {path} is too small ({img.shape})")
    return img


def saturated_fraction(img: np.ndarray) -> float:
    """Fraction of pixels at the format's maximum (integer) or at the image's own maximum (float)."""
    top = np.iinfo(img.dtype).max if np.issubdtype(img.dtype, np.integer) else float(np.max(img))
    return float(np.mean(img >= top))


def normalise(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, np.float32)
    lo, med, hi = np.percentile(img, (0.5, 50, 99.5))
    return (img - med) / max(float(hi - lo), 1e-6)


def locate_cell(norm: np.ndarray) -> tuple[float, float]:
    """Centre (row, col) of the largest high-contrast region (the cell)."""
    g = ndimage.gaussian_gradient_magnitude(norm, 1.5)
    g = ndimage.gaussian_filter(g, 3.0)
    med = np.median(g)
    mad = np.median(np.abs(g - med)) * 1.4826 + 1e-9
    lab, n = ndimage.label(g > med + 4 * mad)
    if n == 0:
        return (norm.shape[0] - 1) / 2, (norm.shape[1] - 1) / 2
    sizes = ndimage.sum_labels(np.ones_like(g), lab, index=np.arange(1, n + 1))
    big = int(np.argmax(sizes)) + 1
    cy, cx = ndimage.center_of_mass(g, lab, big)
    return float(cy), float(cx)


def preprocess(img: np.ndarray, size: int = 128, scale: float = 1.0, max_saturated: float = 0.01) -> np.ndarray:
    """Raw image -> normalised ``size`` x ``size`` float32 window on the cell (see module docs).

    Raises :class:`ImageError` for over-exposed images."""
    frac = saturated_fraction(img)
    if frac > max_saturated:
        raise ImageError(f"over-exposed: {100 * frac:.1f} % of pixels saturated (limit {100 * max_saturated:.1f} %)")
    x = normalise(img)
    if scale != 1.0:
        x = ndimage.zoom(x, scale, order=1)
    cy, cx = locate_cell(x)
    half = size / 2
    y0, x0 = int(round(cy - half)), int(round(cx - half))
    pad = size
    xp = np.pad(x, pad, mode="reflect") if min(x.shape) > pad else np.pad(x, pad, mode="constant")
    return np.ascontiguousarray(xp[y0 + pad : y0 + pad + size, x0 + pad : x0 + pad + size], np.float32)


@dataclasses.dataclass
class ImageSet:
    """Preprocessed images and their labels, in CSV order (excluded rows left out)."""

    images: np.ndarray  # (N, size, size, 1) float32
    log_stiffness: np.ndarray  # (N,) log10(stiffness / 1 kPa); NaN where not given
    classes: np.ndarray  # (N,) int class index; -1 where not given
    class_names: tuple
    groups: np.ndarray  # (N,) str
    cell_types: np.ndarray  # (N,) str
    files: list
    excluded: list  # (row, file, reason)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, idx) -> "ImageSet":
        idx = np.asarray(idx)
        return ImageSet(self.images[idx], self.log_stiffness[idx], self.classes[idx], self.class_names, self.groups[idx],
                        self.cell_types[idx], [self.files[i] for i in idx], [])


def load(csv_path, size: int = 128, scale: float = 1.0, max_saturated: float = 0.01, class_names=None,
         thresholds_pa=None, progress=None, require_labels: bool = True) -> ImageSet:
    """Read, check and preprocess a labelled image folder.

    Classes come from the CSV's ``class`` column (ordered as ``class_names``, default
    sorted) or, with ``thresholds_pa``, from binning ``stiffness_pa`` (``n`` thresholds give
    ``n + 1`` classes named ``<T1``, ``T1-T2``, ..., ``>Tn`` in Pa). Unreadable images are
    errors naming the row; over-exposed ones are excluded and listed in ``excluded``."""
    if size < 32 or size % 16:
        raise ValueError(f"size must be a multiple of 16 and >= 32, got {size}")
    recs = read_table(csv_path, require_labels)
    if thresholds_pa is not None:
        t = sorted(float(v) for v in thresholds_pa)
        names = [f"<{t[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(t, t[1:])] + [f">{t[-1]:g}"]
        for r in recs:
            if r.stiffness_pa is None:
                raise ValueError(f"row {r.row}: thresholds_pa needs stiffness_pa")
            r.label = names[int(np.searchsorted(t, r.stiffness_pa))]
        class_names = tuple(names)
    elif class_names is None:
        class_names = tuple(sorted({r.label for r in recs if r.label is not None}))
    class_names = tuple(class_names)
    imgs, logs, cls, groups, types, files, excluded = [], [], [], [], [], [], []
    with resolve(progress).task(len(recs), "images") as bar:
        for r in recs:
            try:
                img = read_image(r.path)
                x = preprocess(img, size, scale, max_saturated)
            except ImageError as exc:
                if str(exc).startswith("over-exposed"):
                    excluded.append((r.row, str(r.path), str(exc)))
                    bar.update(1)
                    continue
                raise ImageError(f"row {r.row}: {exc}") from exc
            if r.label is not None and r.label not in class_names:
                raise ValueError(f"row {r.row}: class {r.label!r} is not one of {class_names}")
            imgs.append(x)
            logs.append(np.log10(r.stiffness_pa / 1000.0) if r.stiffness_pa is not None else np.nan)
            cls.append(class_names.index(r.label) if r.label is not None else -1)
            groups.append(r.group or f"row{r.row}")
            types.append(r.cell_type)
            files.append(str(r.path))
            bar.update(1)
    if not imgs:
        raise ValueError(f"{csv_path}: every image was excluded ({len(excluded)} over-exposed)")
    return ImageSet(np.stack(imgs)[..., None], np.asarray(logs, np.float32), np.asarray(cls, np.int32), class_names,
                    np.asarray(groups), np.asarray(types), files, excluded)


def group_split(groups, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> list[np.ndarray]:
    """Indices of each split; whole groups (donors, lines) go to one split only.

    Groups are shuffled (seeded) and dealt greedily so each split's sample count approaches
    its fraction; every split gets at least one group."""
    groups = np.asarray(groups)
    fr = np.asarray(fractions, float)
    if np.any(fr <= 0) or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"fractions must be positive and sum to 1, got {tuple(fractions)}")
    names, counts = np.unique(groups, return_counts=True)
    if len(names) < len(fr):
        raise ValueError(f"{len(names)} groups cannot fill {len(fr)} splits without sharing a group; "
                         "add donor/group labels or use fewer splits")
    order = np.random.default_rng(seed).permutation(len(names))
    target = fr * counts.sum()
    filled = np.zeros(len(fr))
    assign = {}
    for j, gi in enumerate(order):
        left = len(order) - j
        empty = [k for k in range(len(fr)) if filled[k] == 0]
        if len(empty) >= left:  # the remaining groups must seed the empty splits
            k = empty[0]
        else:
            k = int(np.argmax((target - filled) / target))
        assign[names[gi]] = k
        filled[k] += counts[gi]
    split = np.array([assign[g] for g in groups])
    return [np.flatnonzero(split == k) for k in range(len(fr))]


def augment(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Flips, 90-degree rotations and brightness/contrast jitter of a (N, H, W, 1) batch."""
    out = np.empty_like(x)
    for i in range(len(x)):
        im = x[i]
        if rng.random() < 0.5:
            im = im[::-1]
        im = np.rot90(im, int(rng.integers(4)), axes=(0, 1))
        out[i] = im * rng.uniform(0.85, 1.15) + rng.normal(0, 0.05)
    return out
