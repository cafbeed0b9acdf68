"""Files in and out: TIFF / OME-TIFF / ImageJ stacks, OME-Zarr images and results, HDF5
results, VTK for ParaView.

This is the only module that converts units or axis orders:

* TIFF voxel sizes are read from OME ``PhysicalSize{X,Y,Z}`` (with their units) or from
  ImageJ metadata (``spacing`` for z, the resolution tags for x and y, ``unit``).
  A file without a voxel size needs ``spacing_um`` from the caller: tfm never guesses.
* OME-Zarr (``.zarr`` folders, through the ome-zarr library): a level and a channel of an
  image are read (only those from disk), the voxel size from the level's
  ``coordinateTransformations`` scale in its axes' units; results are written with the
  vector components as the channel axis (c, z, y, x).
* HDF5 results store arrays in tfm's own layout ((Z, Y, X, 3), components z, y, x) with
  units as attributes, plus the grid, the run's ``info`` and provenance.
* VTK image data runs x fastest with vector components (x, y, z): arrays are reordered
  here and nowhere else.

Every writer is atomic (:mod:`tfm.atomic`): it writes a temporary file beside the target,
flushes it to disk and renames it, so an interrupted run never leaves a half-written
result.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np

from ._version import __version__
from .atomic import atomic_dir, atomic_path, jsonable
from .grid import Grid, check_spacing
from .imagefile import ome_pixels, read_raster
from .zarrfile import image_node, is_zarr, need_ome_zarr, write_image_group
from .result import Result

FORMAT = "tfm-result"
FORMAT_VERSION = 1
_UNIT_TO_UM = {"um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
               "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "mm": 1e3, "millimeter": 1e3,
               "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6}


# ----------------------------------------------------------------------------- TIFF
def _ome_spacing(xml: str, axes: str = "ZYX"):
    px = ome_pixels(xml)
    if px is None:
        return None
    out = []
    for ax in axes:
        v, scale = px.get(f"PhysicalSize{ax}"), _unit_scale(px.get(f"PhysicalSize{ax}Unit", "µm"))
        if v is None or scale is None:
            return None
        out.append(float(v) * scale)
    return tuple(out)


def _unit_scale(unit) -> float | None:
    u = str(unit).strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ")
    return _UNIT_TO_UM.get(u) or _UNIT_TO_UM.get(u.lower())


def _imagej_spacing(raster, need_z: bool = True):
    meta = raster.imagej or {}
    scale = _unit_scale(meta.get("unit", ""))
    if (need_z and "spacing" not in meta) or scale is None or raster.resolution is None:
        return None
    xy = []
    for num, den in raster.resolution:
        if num == 0:
            return None
        xy.append(den / num * scale)
    return (float(meta.get("spacing", 1.0)) * scale, xy[0], xy[1])


def _axes_to(data, axes: str, channel, ndim: int, path):
    """``data`` with its file axes reduced to ``(Z, Y, X)`` or ``(Y, X)``: a channel (or
    colour sample) picked, singleton axes other than Z dropped, a single plane read as a
    one-plane stack."""
    for ax, what in (("C", "channels"), ("S", "colour samples (an RGB image)")):
        if ax in axes:
            i, n = axes.index(ax), data.shape[axes.index(ax)]
            if n > 1 and channel is None:
                raise ValueError(f"{path} has {n} {what} (axes {axes}); pass channel= (--channel) to pick one")
            if channel is not None and not 0 <= int(channel) < n:
                raise ValueError(f"channel must lie in [0, {n - 1}] for {path} ({n} {what}), got {channel}")
            data, axes = np.take(data, int(channel) if n > 1 else 0, axis=i), axes[:i] + axes[i + 1:]
    for ax in [a for a in axes if a not in "ZYX"]:  # unnamed stack axes (I, Q) hold the planes
        i = axes.index(ax)
        if data.shape[i] == 1:
            data, axes = np.take(data, 0, axis=i), axes[:i] + axes[i + 1:]
        elif "Z" not in axes and ax in "IQ":
            axes = axes[:i] + "Z" + axes[i + 1:]
    if ndim == 3 and axes == "YX":
        data, axes = data[None], "ZYX"
    if ndim == 2 and axes == "ZYX" and data.shape[0] == 1:
        data, axes = data[0], "YX"
    if axes != "ZYX"[-ndim:]:
        layout = "3D stack (Z, Y, X)" if ndim == 3 else "2D image (Y, X)"
        raise ValueError(f"{path} must hold a {layout}; got shape {data.shape} (axes {axes})")
    return data


def _read_tiff(path, channel, ndim: int):
    """``(data, file_spacing)`` of an image file holding one ``ndim``-D array (a channel
    picked); file_spacing is the stored (z, y, x) or (y, x) size in µm, or None."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{'volume' if ndim == 3 else 'image'} file not found: {path}")
    raster = read_raster(path)
    return _check_pixels(_axes_to(raster.data, raster.axes, channel, ndim, path), path), _raster_spacing(raster, ndim)


def _raster_spacing(raster, ndim: int):
    """The (z, y, x) or (y, x) pixel size (µm) an image file stores (OME first, then
    ImageJ), or None."""
    file_spacing = None
    if raster.ome_xml:
        file_spacing = _ome_spacing(raster.ome_xml, axes="ZYX"[-ndim:])
    if file_spacing is None and raster.imagej is not None:
        sp3 = _imagej_spacing(raster, need_z=ndim == 3)
        file_spacing = None if sp3 is None else sp3[-ndim:]
    return file_spacing


def _check_pixels(data, path):
    """``data``, refused unless its pixels are integers or floating point."""
    if data.dtype == bool or not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise ValueError(f"{path} holds {data.dtype} pixels; tfm reads integer or floating-point images")
    return data


def _spacing(path, spacing_um, file_spacing, ndim: int) -> tuple:
    if spacing_um is not None:
        return check_spacing(spacing_um, ndim)
    if file_spacing is not None:
        return check_spacing(file_spacing, ndim, f"the voxel size stored in {path}")
    what, order = ("voxel", "(z, y, x)") if ndim == 3 else ("pixel", "(y, x)")
    raise ValueError(f"{path} stores no {what} size: pass spacing_um={order} in µm (--spacing-um on the command line)")


def read_volume(path, spacing_um=None, channel: int | None = None, level: int = 0):
    """Read a 3D stack (Z, Y, X) and the :class:`~tfm.grid.Grid` it is sampled on.

    Args:
      path: TIFF, OME-TIFF or ImageJ TIFF holding one 3D stack (or several channels;
        pick one with ``channel``), or an OME-Zarr image (a ``.zarr`` folder). A single
        plane is read as a one-plane stack.
      spacing_um: (z, y, x) voxel size; overrides the file's. Required when the file
        has none (tfm never guesses a voxel size).
      channel: index of the channel to read from a multi-channel (or colour) stack.
      level: OME-Zarr: the multiscale level (0, the default: full resolution); its voxel
        size is that level's ``coordinateTransformations`` scale (in µm from the axes'
        units). Only that level's chosen channel is read from disk.

    Returns:
      ``(volume, grid)``: the volume in the file's dtype and its Grid (voxel size in µm,
      origin 0), which the pair-level functions (``tfm.reconstruct`` ...) take.
    """
    if is_zarr(path):
        data, file_spacing = _read_zarr(path, channel, level)
    elif level != 0:
        raise ValueError(f"level applies to OME-Zarr images (a .zarr folder), not {path}")
    else:
        data, file_spacing = _read_tiff(path, channel, 3)
    return data, Grid(data.shape, _spacing(path, spacing_um, file_spacing, 3))


# --------------------------------------------------------------------------- OME-Zarr
def volume_exists(path) -> bool:
    """Whether ``path`` is a stack :func:`read_volume` can open: a file, or an OME-Zarr folder."""
    path = Path(path)
    return path.is_file() or (is_zarr(path) and path.is_dir())


def is_result_zarr(path) -> bool:
    """Whether ``path`` is an OME-Zarr folder holding a tfm result (a new result may
    replace it; any other folder must not be)."""
    if not (is_zarr(path) and Path(path).is_dir()):
        return False
    need_ome_zarr()
    import zarr

    try:
        return zarr.open_group(str(path), mode="r").attrs.get("format") == FORMAT
    except Exception:  # noqa: BLE001 - zarr raises several kinds for a folder that is not a group
        return False


def _read_zarr(path, channel, level: int):
    """``(volume, file_spacing)`` of level ``level`` of an OME-Zarr image, a channel picked."""
    node = image_node(path)
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level < len(node.data):
        raise ValueError(f"level must be one of 0..{len(node.data) - 1} for {path} ({len(node.data)} levels), got {level!r}")
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in node.metadata["axes"]]
    units = {a["name"]: a.get("unit") for a in node.metadata["axes"] if isinstance(a, dict)}
    transforms = node.metadata.get("coordinateTransformations") or []
    scale = next((t["scale"] for t in (transforms[level] if level < len(transforms) else []) if t.get("type") == "scale"),
                 None)
    data = _axes_to(node.data[level], "".join(axes).upper(), channel, 3, path)  # lazy: dask until here
    data = _check_pixels(np.asarray(data), path)
    spacing = None
    if scale is not None and all(a in axes for a in "zyx"):
        factors = [_unit_scale(units.get(a) or "micrometer") for a in "zyx"]
        if None not in factors:
            spacing = tuple(float(scale[axes.index(a)]) * f for a, f in zip("zyx", factors))
    return data, spacing


def read_image(path, spacing_um=None, channel: int | None = None):
    """Read a 2D image (Y, X) and its 2D :class:`~tfm.grid.Grid` (pixel size (y, x) in µm
    from OME or ImageJ/TIFF resolution metadata, or ``spacing_um``; never guessed)."""
    data, file_spacing = _read_tiff(path, channel, 2)
    return data, Grid(data.shape, _spacing(path, spacing_um, file_spacing, 2))


def write_image(path, image, spacing_um) -> None:
    """Write a (Y, X) image as an ImageJ TIFF that records its pixel size (µm, or a 2D Grid)."""
    import tifffile

    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2D (Y, X), got shape {img.shape}")
    dy, dx = check_spacing(spacing_um.spacing_um if isinstance(spacing_um, Grid) else spacing_um, 2)
    if img.dtype == np.float64:
        img = img.astype(np.float32)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, img, imagej=True, resolution=(1.0 / dx, 1.0 / dy), metadata={"unit": "um", "axes": "YX"})


def write_volume(path, volume, spacing_um, levels: int = 1) -> None:
    """Write a (Z, Y, X) stack that records its voxel size (µm, or a Grid): an ImageJ TIFF,
    or for a ``.zarr`` path an OME-Zarr image with ``levels`` multiscale levels (each
    halving y and x), written atomically as a folder."""
    if not is_zarr(path):
        _write_imagej(path, volume, spacing_um, "ZYX", "volume must be 3D (Z, Y, X)")
        return
    need_ome_zarr()
    import zarr

    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3D (Z, Y, X), got shape {vol.shape}")
    spacing = check_spacing(spacing_um.spacing_um if isinstance(spacing_um, Grid) else spacing_um)
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"levels must be a whole number >= 1, got {levels!r}")
    with atomic_dir(path) as tmp:
        write_image_group(zarr.open_group(str(tmp), mode="w"), vol, spacing, "zyx", levels)


def _write_imagej(path, data, spacing_um, axes: str, need: str) -> None:
    """``data`` with ``axes`` (ending Z, Y, X) as an ImageJ TIFF with its voxel size, atomically."""
    import tifffile

    data = np.asarray(data)
    if data.ndim != len(axes):
        raise ValueError(f"{need}, got shape {data.shape}")
    dz, dy, dx = check_spacing(spacing_um.spacing_um if isinstance(spacing_um, Grid) else spacing_um)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, imagej=True, resolution=(1.0 / dx, 1.0 / dy),
                         metadata={"spacing": dz, "unit": "um", "axes": axes})


def read_frames(path, spacing_um=None, channel: int | None = None):
    """Read a time series of 3D stacks from one file: ``(frames, grid)``, ``frames`` a
    (T, Z, Y, X) array (a file with no time axis is one frame). The file's time axis is
    the one tifffile names T (ImageJ hyperstacks, OME-TIFF); the rest as
    :func:`read_volume`. The whole series is read: for series larger than memory, give
    one file per frame (``tfm series REF F1 F2 ...`` reads them one at a time)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"series file not found: {path}")
    raster = read_raster(path)
    if "T" in raster.axes:
        i = raster.axes.index("T")
        axes = raster.axes[:i] + raster.axes[i + 1:]
        frames = np.stack([_axes_to(np.take(raster.data, t, axis=i), axes, channel, 3, path)
                           for t in range(raster.data.shape[i])])
    else:  # one frame
        frames = _axes_to(raster.data, raster.axes, channel, 3, path)[None]
    _check_pixels(frames, path)
    return frames, Grid(frames.shape[1:], _spacing(path, spacing_um, _raster_spacing(raster, 3), 3))


def write_frames(path, frames, spacing_um) -> None:
    """Write a (T, Z, Y, X) series as an ImageJ hyperstack that records its voxel size."""
    _write_imagej(path, frames, spacing_um, "TZYX", "frames must be 4D (T, Z, Y, X)")


# ----------------------------------------------------------------------------- HDF5
def split_arrays(obj, path: str, out: list):
    """Replace arrays of more than 8 elements by ``{"__dataset__": path}`` placeholders,
    collecting ``(path, array)`` in ``out``; the rest must be JSON-serialisable."""
    if isinstance(obj, dict):
        return {str(k): split_arrays(v, f"{path}/{k}", out) for k, v in obj.items()}
    if isinstance(obj, np.ndarray) and obj.size > 8:
        out.append((path, obj))
        return {"__dataset__": path}
    return jsonable(obj)


def join_arrays(obj, h):
    if isinstance(obj, dict):
        if set(obj) == {"__dataset__"}:
            return h[obj["__dataset__"]][...]
        return {k: join_arrays(v, h) for k, v in obj.items()}
    return obj


def _write_fields(h, result: Result) -> None:
    g = h.create_group("grid")
    g.attrs["shape"] = result.grid.shape
    g.attrs["spacing_um"] = result.grid.spacing_um
    g.attrs["origin_um"] = result.grid.origin_um
    g.attrs["axes"] = "zyx"[-result.grid.ndim :]
    fields = {"displacement": ("um", "displacement"), "force": ("pN/um^3" if result.grid.ndim == 3 else "Pa", "force")}
    for name, (unit, attr) in fields.items():
        arr = getattr(result, attr)
        if arr is None:
            continue
        arr = np.asarray(arr)
        if arr.dtype == np.float64:  # float32 keeps 7 digits, more than any measurement here
            arr = arr.astype(np.float32)
        chunks = tuple(min(n, 64) for n in arr.shape[:-1]) + (arr.shape[-1],)
        ds = h.create_dataset(name, data=arr, compression="gzip", compression_opts=4, shuffle=True, chunks=chunks)
        ds.attrs["units"] = unit
        ds.attrs["components"] = ",".join("zyx"[-result.grid.ndim :])


def preview(result: Result, factor) -> Result:
    """Every ``factor``-th point of ``result``'s fields along each axis (an int, or one per
    axis), on the coarser grid through those points: a small copy to browse or plot."""
    d = result.grid.ndim
    f = (int(factor),) * d if np.ndim(factor) == 0 else tuple(int(v) for v in factor)
    if len(f) != d or min(f) < 1:
        raise ValueError(f"factor must be a positive integer or {d} of them, got {factor!r}")
    sl = tuple(slice(None, None, k) for k in f)
    grid = Grid(tuple(len(range(n)[s]) for n, s in zip(result.grid.shape, sl)),
                tuple(h * k for h, k in zip(result.grid.spacing_um, f)), result.grid.origin_um)
    pick = lambda a: None if a is None else np.ascontiguousarray(np.asarray(a)[sl])  # noqa: E731
    return Result(grid=grid, displacement=pick(result.displacement), force=pick(result.force),
                  info={"preview_of": list(result.grid.shape), "preview_factor": list(f)})


def write_result(path, result: Result, provenance: dict | None = None, preview_factor=None) -> Path:
    """Write ``result`` to HDF5 atomically: the fields chunked (64³ blocks) and compressed,
    float32. ``preview_factor`` (an int, or one per axis): also store :func:`preview`'s
    copy in the group ``preview`` (``read_result(path, preview=True)``). A ``.zarr`` path
    is written as OME-Zarr instead (:func:`write_result_zarr`). Returns the path."""
    import h5py

    path = Path(path)
    if is_zarr(path):
        if preview_factor is not None:
            raise ValueError("preview_factor applies to HDF5 results (an OME-Zarr result has its own multiscale levels)")
        return write_result_zarr(path, result, provenance)
    small = preview(result, preview_factor) if preview_factor is not None else None
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h:
        h.attrs["format"] = FORMAT
        h.attrs["format_version"] = FORMAT_VERSION
        h.attrs["tfm_version"] = __version__
        h.attrs["created_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        arrays: list = []
        h.attrs["info_json"] = json.dumps(split_arrays(result.info, "info", arrays))
        for name, arr in arrays:
            chunks = tuple(min(n, 64) for n in arr.shape) if arr.ndim >= 3 else None
            h.create_dataset(name, data=arr, compression="gzip", compression_opts=4, chunks=chunks)
        h.attrs["provenance_json"] = json.dumps(jsonable(provenance or {}))
        _write_fields(h, result)
        if small is not None:
            p = h.create_group("preview")
            p.attrs["factor"] = small.info["preview_factor"]
            _write_fields(p, small)
    return path


def open_h5(path, what: str):
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"cannot read {path} as HDF5 (truncated, damaged or not HDF5): {exc}") from None


def write_result_zarr(path, result: Result, provenance: dict | None = None, levels: int = 2) -> Path:
    """``result`` as an OME-Zarr folder, atomically: the groups ``displacement`` (µm) and
    ``force`` (pN/µm³; Pa on 2D grids) are OME-Zarr images with axes (c, z, y, x), the
    channels the components z, y, x, the grid's spacing and origin as their scale and
    translation, ``levels`` multiscale levels (napari, Fiji/MoBIE and other OME-Zarr
    viewers open them); the info's arrays under ``info/``, the rest of the info and the
    provenance as JSON attributes of the root. 3D results."""
    if result.grid.ndim != 3:
        raise ValueError("OME-Zarr results are written for 3D grids; write 2D results as .h5")
    need_ome_zarr()
    import zarr

    path = Path(path)
    with atomic_dir(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        arrays: list = []
        root.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, tfm_version=__version__,
                          info_json=json.dumps(split_arrays(result.info, "info", arrays)),
                          provenance_json=json.dumps(jsonable(provenance or {})),
                          grid={"shape": list(result.grid.shape), "spacing_um": list(result.grid.spacing_um),
                                "origin_um": list(result.grid.origin_um)})
        for name, arr in arrays:
            root.create_array(name, data=np.asarray(arr))
        for name, unit in (("displacement", "um"), ("force", "pN/um^3")):
            field = getattr(result, name)
            if field is None:
                continue
            chans = np.moveaxis(np.asarray(field, np.float32), -1, 0)  # (c = z, y, x components, z, y, x)
            group = root.create_group(name)
            write_image_group(group, chans, result.grid.spacing_um, "czyx", levels, result.grid.origin_um)
            group.attrs["tfm"] = {"units": unit, "components": "z,y,x"}
    return path


def _read_result_zarr(path) -> Result:
    need_ome_zarr()
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
        attrs = dict(root.attrs)
    except Exception as exc:  # noqa: BLE001 - zarr raises several kinds for a folder that is not a group
        raise ValueError(f"cannot read {path} as Zarr: {exc}") from None
    if attrs.get("format") != FORMAT:
        raise ValueError(f"{path} is not a tfm result (attribute format={attrs.get('format')!r})")
    g = attrs["grid"]
    grid = Grid(tuple(g["shape"]), tuple(g["spacing_um"]), tuple(g["origin_um"]))
    fields = {}
    for name in ("displacement", "force"):
        if name in root:
            level0 = root[name][dict(root[name].attrs)["ome"]["multiscales"][0]["datasets"][0]["path"]
                                if "ome" in root[name].attrs else "0"]
            fields[name] = np.moveaxis(np.asarray(level0[...]), 0, -1)
    info = join_arrays(json.loads(attrs.get("info_json", "{}")), {k: root[k] for k in _array_paths(root)})
    info["provenance"] = json.loads(attrs.get("provenance_json", "{}"))
    return Result(grid=grid, displacement=fields.get("displacement"), force=fields.get("force"), info=info)


def _array_paths(root, prefix: str = "info") -> list:
    """The paths of the arrays under ``root[prefix]`` (the info's large arrays)."""
    if prefix not in root:
        return []
    out = []
    for name, item in root[prefix].members():
        key = f"{prefix}/{name}"
        out += _array_paths(root, key) if hasattr(item, "members") else [key]
    return out


def read_result(path, preview: bool = False) -> Result:
    """Read a Result written by :func:`write_result` (``preview=True``: its preview copy,
    fields only; an OME-Zarr result (``.zarr``) reads its full-resolution level). A damaged
    file, or one that lacks what a result holds (its grid, a dataset its info refers to,
    the preview asked for), is a ValueError."""
    path = Path(path)
    if is_zarr(path):
        if preview:
            raise ValueError("preview applies to HDF5 results; read an OME-Zarr result's coarser levels with a viewer")
        if not path.is_dir():
            raise FileNotFoundError(f"result file not found: {path}")
        return _read_result_zarr(path)
    with open_h5(path, "result") as h:
        if h.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a tfm result file (attribute format={h.attrs.get('format')!r})")
        if preview and "preview" not in h:
            raise ValueError(f"{path} holds no preview copy (write it with preview_factor / --preview-factor)")
        src = h["preview"] if preview else h
        try:
            g = src["grid"].attrs
            grid = Grid(tuple(int(v) for v in g["shape"]), tuple(g["spacing_um"]), tuple(g["origin_um"]))
            disp = src["displacement"][...] if "displacement" in src else None
            force = src["force"][...] if "force" in src else None
            if preview:
                info = {"preview_of": list(h["grid"].attrs["shape"]), "preview_factor": list(src.attrs["factor"])}
            else:
                info = join_arrays(json.loads(h.attrs.get("info_json", "{}")), h)
            info["provenance"] = json.loads(h.attrs.get("provenance_json", "{}"))
        except KeyError as exc:
            raise ValueError(f"{path} is an incomplete tfm result file (missing {exc})") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is a damaged tfm result file: {exc}") from None
    return Result(grid=grid, displacement=disp, force=force, info=info)


def read_displacement(path, spacing_um=None, dataset: str = "displacement"):
    """Read a displacement field (Z, Y, X, 3) in µm and its Grid.

    Accepts a tfm result file, any HDF5 file with a ``dataset`` carrying a
    ``spacing_um`` attribute (else pass ``spacing_um``), or a ``.npy`` array with
    ``spacing_um`` given.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"displacement file not found: {path}")
    if path.suffix == ".npy":
        try:
            u = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"cannot read {path} as a NumPy array: {exc}") from None
        if spacing_um is None:
            raise ValueError(f"{path} is a bare array: pass spacing_um=(z, y, x) in µm (--spacing-um)")
        grid = Grid(u.shape[:-1], check_spacing(spacing_um)) if u.ndim == 4 else None
    else:
        with open_h5(path, "displacement") as h:
            is_result = h.attrs.get("format") == FORMAT
            if not is_result:
                if dataset not in h:
                    raise ValueError(f"{path} has no dataset {dataset!r} (found: {sorted(h.keys())})")
                try:
                    u = h[dataset][...]
                except OSError as exc:
                    raise ValueError(f"{path}:{dataset} cannot be read (damaged file): {exc}") from None
                sp = spacing_um if spacing_um is not None else h[dataset].attrs.get("spacing_um")
                if sp is None:
                    raise ValueError(f"{path}:{dataset} has no spacing_um attribute: pass spacing_um (--spacing-um)")
                grid = Grid(u.shape[:-1], check_spacing(sp)) if u.ndim == 4 else None
        if is_result:
            res = read_result(path)
            if res.displacement is None:
                raise ValueError(f"{path} holds no displacement field")
            grid = res.grid if spacing_um is None else Grid(res.grid.shape, check_spacing(spacing_um), res.grid.origin_um)
            return res.displacement, grid
    if u.ndim != 4 or u.shape[-1] != 3:
        raise ValueError(f"displacement in {path} must have shape (Z, Y, X, 3), got {u.shape}")
    if not (np.issubdtype(u.dtype, np.floating) or np.issubdtype(u.dtype, np.integer)):
        raise ValueError(f"displacement in {path} must be numbers (µm), got dtype {u.dtype}")
    return u.astype(np.float32, copy=False) if u.dtype != np.float64 else u, grid


# ----------------------------------------------------------------------------- VTK
def to_pyvista(result: Result):
    """The result as ``pyvista.ImageData`` (x fastest; vectors in (x, y, z) order)."""
    import pyvista as pv

    g = result.grid
    if g.ndim != 3:
        raise ValueError("VTK export needs a 3D result")
    img = pv.ImageData(dimensions=g.shape[::-1], spacing=g.spacing_um[::-1], origin=g.origin_um[::-1])
    # C-order ravel of (Z, Y, X) runs x fastest, which is VTK's point order.
    for name, arr, unit in (("displacement", result.displacement, "um"), ("force", result.force, "pN_per_um3")):
        if arr is None:
            continue
        vec = np.ascontiguousarray(arr.reshape(-1, 3)[:, ::-1], dtype=np.float32)
        img.point_data[f"{name}_{unit}"] = vec
        img.point_data[f"{name}_magnitude_{unit}"] = np.linalg.norm(vec, axis=1)
    return img


def write_vtk(path, result: Result) -> Path:
    """Export a 3D result to a VTK image file (``.vti``) for ParaView, atomically."""
    path = Path(path)
    if path.suffix != ".vti":
        raise ValueError(f"VTK image data files end in .vti, got {path.name}")
    img = to_pyvista(result)
    with atomic_path(path) as tmp:
        img.save(tmp)
    return path
