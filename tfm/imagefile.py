"""Image files into arrays: the one decoder behind every image tfm reads.

TIFF (plain, ImageJ and OME; through tifffile), PNG and JPEG (through Pillow). A
:class:`Raster` keeps the pixels in the file's dtype, the axes as the file states them
(``"ZYX"``, ``"YX"``, ``"YXS"`` for colour samples, ``"ZCYX"``...) and the raw metadata
a caller needs to find the pixel size (converting it to µm is :mod:`tfm.io`'s job).

A TIFF whose pages or data do not match its own header -- a copy cut short, a damaged
file -- is an error, not a silently smaller image: tifffile's warnings about invalid
offsets or corrupted series, and an ImageJ or OME header that announces more planes than
the file holds, raise :class:`CorruptImageError`.
"""

from __future__ import annotations

import dataclasses
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
OTHER_SUFFIXES = (".png", ".jpg", ".jpeg")


class CorruptImageError(ValueError):
    """The file is truncated, damaged or not the image format its name says."""


@dataclasses.dataclass
class Raster:
    data: np.ndarray  # pixels, file dtype, axes as ``axes``
    axes: str  # one letter per axis of ``data`` (tifffile's letters: Z, C, Y, X, S = colour samples, ...)
    ome_xml: str | None = None  # the OME-XML description, if any
    imagej: dict | None = None  # ImageJ metadata (spacing, unit, images, ...), if any
    resolution: tuple | None = None  # ((num, den) of YResolution, (num, den) of XResolution): pixels per unit


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def ome_pixels(xml: str) -> dict | None:
    """The attributes of the first ``Pixels`` element of an OME-XML description (sizes,
    ``PhysicalSize*`` and their units), or None when there is none or the XML is broken."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels"):
            return dict(el.attrib)
    return None


def _ome_planes(xml: str) -> int | None:
    px = ome_pixels(xml)
    try:
        return None if px is None else int(px.get("SizeZ", 1)) * int(px.get("SizeC", 1)) * int(px.get("SizeT", 1))
    except ValueError:
        return None


def _read_tiff(path: Path) -> Raster:
    import tifffile

    log = logging.getLogger("tifffile")
    handler = _Collect()
    log.addHandler(handler)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data, axes = series.asarray(), series.axes
            pages = len(tif.pages)
            ome = tif.ome_metadata if tif.is_ome else None
            ij = dict(tif.imagej_metadata) if tif.is_imagej and tif.imagej_metadata else None
            tags = tif.pages[0].tags
            res = tuple(tags[t].value if t in tags else None for t in ("YResolution", "XResolution"))
            samples = int(getattr(tif.pages[0], "samplesperpixel", 1) or 1)
    except (tifffile.TiffFileError, ValueError, OSError, KeyError, IndexError) as exc:
        raise CorruptImageError(f"cannot read {path} as a TIFF: {exc}") from exc
    finally:
        log.removeHandler(handler)
    bad = [m for m in handler.messages if any(w in m.lower() for w in ("invalid", "corrupt", "truncat", "failed"))]
    if bad:
        raise CorruptImageError(f"{path} is truncated or damaged ({bad[0].strip()}); copy it again from its source")
    expected = None
    if ij and "images" in ij:
        expected = int(ij["images"])
    elif ome:
        expected = _ome_planes(ome)
    if expected is not None and samples == 1 and pages < expected:
        raise CorruptImageError(f"{path} is truncated: its header announces {expected} planes but it holds {pages}")
    return Raster(data, axes, ome, ij, res if all(r is not None for r in res) else None)


def _read_other(path: Path) -> Raster:
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            data = np.asarray(im)
    except ImportError as exc:
        raise CorruptImageError(f"reading {path.suffix} images needs Pillow (pip install pillow)") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure means an unreadable image
        raise CorruptImageError(f"cannot read image {path}: {exc}") from exc
    return Raster(data, "YX" if data.ndim == 2 else "YXS")


def read_raster(path) -> Raster:
    """The pixels and metadata of an image file (see the module docs).

    Raises FileNotFoundError for a missing file and :class:`CorruptImageError` (a
    ValueError) for one that cannot be decoded or is truncated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.suffix.lower() in OTHER_SUFFIXES:
        return _read_other(path)
    return _read_tiff(path)
