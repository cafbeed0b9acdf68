"""OME-Zarr stores, through the ome-zarr and zarr libraries: which paths are Zarr, the
image node of a store, and an array written as an OME-Zarr image. Units and axis orders
are :mod:`tfm.io`'s business; this module hands it the store's own arrays and metadata
(as :mod:`tfm.imagefile` does for TIFF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ZARR_SUFFIX = ".zarr"


def is_zarr(path) -> bool:
    """Whether ``path`` names a Zarr store (``NAME.zarr``, ``NAME.ome.zarr``) or a group in
    one (``result.ome.zarr/force``)."""
    return any(part.lower().endswith(ZARR_SUFFIX) for part in Path(path).parts)


def need_ome_zarr():
    """Refuse OME-Zarr with a clear message where the optional packages are missing."""
    try:
        import ome_zarr  # noqa: F401
        import zarr  # noqa: F401
    except ImportError:
        raise ImportError("OME-Zarr needs the ome-zarr and zarr packages: pip install 'tfm[zarr]'") from None


def image_node(path):
    """The first image node of the OME-Zarr at ``path`` (ome-zarr's Reader)."""
    need_ome_zarr()
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    if not Path(path).is_dir():
        raise FileNotFoundError(f"OME-Zarr image not found: {path}")
    location = parse_url(str(path))
    nodes = [] if location is None else [n for n in Reader(location)() if n.data and "axes" in n.metadata]
    if not nodes:
        raise ValueError(f"{path} holds no OME-Zarr image (multiscales metadata with axes)")
    return nodes[0]


def write_image_group(group, data, spacing_um, axes: str, levels: int = 1, origin_um=None) -> None:
    """``data`` (axes ``axes``, ending z, y, x) as an OME-Zarr image in zarr ``group``:
    ``levels`` pyramid levels (each halving y and x), voxel size and origin in µm."""
    from ome_zarr.writer import write_image

    factors = [{"y": 2**k, "x": 2**k} for k in range(1, int(levels))]
    units = {a: "micrometer" for a in "zyx"}
    scale = {**({"c": 1.0} if "c" in axes.lower() else {}), **dict(zip("zyx", map(float, spacing_um)))}
    write_image(np.asarray(data), group, axes=axes.lower(), scale=scale, axes_units=units, scale_factors=factors or None)
    if origin_um is not None and any(origin_um):
        ms = group.attrs["ome"]["multiscales"] if "ome" in group.attrs else group.attrs["multiscales"]
        for ds in ms[0]["datasets"]:  # the levels' translations, shifted by the grid's origin
            for t in ds["coordinateTransformations"]:
                if t["type"] == "translation":
                    t["translation"] = [v + (origin_um["zyx".index(a)] if a in "zyx" else 0.0)
                                        for v, a in zip(t["translation"], axes.lower())]
        if "ome" in group.attrs:
            group.attrs["ome"] = {**group.attrs["ome"], "multiscales": ms}
        else:
            group.attrs["multiscales"] = ms
