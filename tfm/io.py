"""Files in and out: TIFF / OME-TIFF / ImageJ stacks, HDF5 results, VTK for ParaView.

This is the only module that converts units or axis orders:

* TIFF voxel sizes are read from OME ``PhysicalSize{X,Y,Z}`` (with their units) or from
  ImageJ metadata (``spacing`` for z, the resolution tags for x and y, ``unit``).
  A file without a voxel size needs ``spacing_um`` from the caller: tfm never guesses.
* HDF5 results store arrays in tfm's own layout ((Z, Y, X, 3), components z, y, x) with
  units as attributes, plus the grid, the run's ``info`` and provenance.
* VTK image data runs x fastest with vector components (x, y, z): arrays are reordered
  here and nowhere else.

Every writer is atomic: it writes a temporary file beside the target and renames it,
so an interrupted run never leaves a half-written result.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .grid import Grid
from .result import Result

FORMAT = "tfm-result"
FORMAT_VERSION = 1
_UNIT_TO_UM = {"um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
               "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "m": 1e6, "meter": 1e6}


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same suffix); rename it to ``path`` on
    success, delete it on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results follow the umask
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_spacing(spacing_um, name="spacing_um") -> tuple:
    arr = np.asarray(spacing_um, dtype=float).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be 3 positive voxel sizes in µm, (z, y, x) order, got {spacing_um!r}")
    return tuple(float(a) for a in arr)


# ----------------------------------------------------------------------------- TIFF
def _ome_spacing(xml: str, axes: str = "ZYX"):
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels"):
            out = []
            for ax in axes:
                v = el.get(f"PhysicalSize{ax}")
                if v is None:
                    return None
                unit = el.get(f"PhysicalSize{ax}Unit", "µm")
                if unit not in _UNIT_TO_UM:
                    return None
                out.append(float(v) * _UNIT_TO_UM[unit])
            return tuple(out)
    return None


def _imagej_spacing(tif, need_z: bool = True):
    meta = tif.imagej_metadata or {}
    page = tif.pages[0]
    unit = str(meta.get("unit", "")).replace("\\u00B5", "µ")
    if (need_z and "spacing" not in meta) or unit.lower() not in _UNIT_TO_UM:
        return None
    scale = _UNIT_TO_UM[unit.lower()]
    xy = []
    for tag in ("YResolution", "XResolution"):
        t = page.tags.get(tag)
        if t is None:
            return None
        num, den = t.value
        if num == 0:
            return None
        xy.append(den / num * scale)
    return (float(meta.get("spacing", 1.0)) * scale, xy[0], xy[1])


def _read_tiff(path, channel, ndim: int):
    """``(data, file_spacing)`` of a TIFF holding one ``ndim``-D array (a channel picked);
    file_spacing is the stored (z, y, x) or (y, x) size in µm, or None."""
    import tifffile

    path = Path(path)
    kind = "stack" if ndim == 3 else "image"
    if not path.is_file():
        raise FileNotFoundError(f"{'volume' if ndim == 3 else 'image'} file not found: {path}")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data, axes = series.asarray(), series.axes
            file_spacing = None
            if tif.is_ome and tif.ome_metadata:
                file_spacing = _ome_spacing(tif.ome_metadata, axes="ZYX"[-ndim:])
            if file_spacing is None and tif.is_imagej:
                sp3 = _imagej_spacing(tif, need_z=ndim == 3)
                file_spacing = None if sp3 is None else sp3[-ndim:]
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        raise ValueError(f"cannot read {path} as a TIFF {kind}: {exc}") from exc
    if "C" in axes and data.shape[axes.index("C")] > 1:
        if channel is None:
            raise ValueError(f"{path} has {data.shape[axes.index('C')]} channels (axes {axes}); pass channel=")
        data = np.take(data, channel, axis=axes.index("C"))
    data = np.squeeze(data)
    if data.ndim != ndim:
        layout = "3D stack (Z, Y, X)" if ndim == 3 else "2D image (Y, X)"
        raise ValueError(f"{path} must hold a {layout}; got shape {data.shape} (axes {axes})")
    return data, file_spacing


def read_volume(path, spacing_um=None, channel: int | None = None):
    """Read a 3D stack (Z, Y, X) and its voxel size in µm.

    Args:
      path: TIFF, OME-TIFF or ImageJ TIFF holding one 3D stack (or several channels;
        pick one with ``channel``).
      spacing_um: (z, y, x) voxel size; overrides the file's. Required when the file
        has none.
      channel: index of the channel to read from a multi-channel stack.

    Returns:
      ``(volume, spacing_um)``, volume in the file's dtype.
    """
    data, file_spacing = _read_tiff(path, channel, 3)
    if spacing_um is not None:
        spacing = _check_spacing(spacing_um)
    elif file_spacing is not None:
        spacing = _check_spacing(file_spacing, f"voxel size stored in {path}")
    else:
        raise ValueError(f"{path} stores no voxel size: pass spacing_um=(z, y, x) in µm (--spacing-um on the command line)")
    return data, spacing


def read_image(path, spacing_um=None, channel: int | None = None):
    """Read a 2D image (Y, X) and its pixel size (y, x) in µm (from OME or ImageJ/TIFF
    resolution metadata, or ``spacing_um``; never guessed)."""
    data, file_spacing = _read_tiff(path, channel, 2)
    if spacing_um is not None:
        sp = np.asarray(spacing_um, dtype=float).ravel()
        sp = np.repeat(sp, 2) if sp.size == 1 else sp
    elif file_spacing is not None:
        sp = np.asarray(file_spacing, dtype=float)
    else:
        raise ValueError(f"{path} stores no pixel size: pass spacing_um=(y, x) in µm (--spacing-um on the command line)")
    if sp.shape != (2,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing_um must be 2 positive pixel sizes in µm, (y, x), got {sp.tolist()}")
    return data, (float(sp[0]), float(sp[1]))


def write_image(path, image, spacing_um) -> None:
    """Write a (Y, X) image as an ImageJ TIFF that records its pixel size (µm)."""
    import tifffile

    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2D (Y, X), got shape {img.shape}")
    dy, dx = (float(v) for v in np.broadcast_to(np.asarray(spacing_um, dtype=float), (2,)))
    if not (dy > 0 and dx > 0):
        raise ValueError(f"spacing_um must be positive, got {spacing_um!r}")
    if img.dtype == np.float64:
        img = img.astype(np.float32)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, img, imagej=True, resolution=(1.0 / dx, 1.0 / dy), metadata={"unit": "um", "axes": "YX"})


def write_volume(path, volume, spacing_um) -> None:
    """Write a (Z, Y, X) stack as an ImageJ TIFF that records its voxel size (µm)."""
    import tifffile

    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3D (Z, Y, X), got shape {vol.shape}")
    dz, dy, dx = _check_spacing(spacing_um)
    if vol.dtype == np.float64:
        vol = vol.astype(np.float32)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, vol, imagej=True, resolution=(1.0 / dx, 1.0 / dy), metadata={"spacing": dz, "unit": "um", "axes": "ZYX"})


# ----------------------------------------------------------------------------- HDF5
def _split_arrays(obj, path: str, out: list):
    """Replace arrays of more than 8 elements by ``{"__dataset__": path}`` placeholders,
    collecting ``(path, array)`` in ``out``; the rest must be JSON-serialisable."""
    if isinstance(obj, dict):
        return {str(k): _split_arrays(v, f"{path}/{k}", out) for k, v in obj.items()}
    if isinstance(obj, np.ndarray) and obj.size > 8:
        out.append((path, obj))
        return {"__dataset__": path}
    return _jsonable(obj)


def _join_arrays(obj, h):
    if isinstance(obj, dict):
        if set(obj) == {"__dataset__"}:
            return h[obj["__dataset__"]][...]
        return {k: _join_arrays(v, h) for k, v in obj.items()}
    return obj


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    return obj


def write_result(path, result: Result, provenance: dict | None = None) -> Path:
    """Write ``result`` to HDF5 atomically. Returns the path written."""
    import h5py

    from . import __version__

    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h:
        h.attrs["format"] = FORMAT
        h.attrs["format_version"] = FORMAT_VERSION
        h.attrs["tfm_version"] = __version__
        h.attrs["created_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        arrays: list = []
        h.attrs["info_json"] = json.dumps(_split_arrays(result.info, "info", arrays))
        for name, arr in arrays:
            h.create_dataset(name, data=arr, compression="gzip", compression_opts=4)
        h.attrs["provenance_json"] = json.dumps(_jsonable(provenance or {}))
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
            chunks = tuple(min(n, 64) for n in arr.shape[:-1]) + (arr.shape[-1],)
            ds = h.create_dataset(name, data=arr, compression="gzip", compression_opts=4, shuffle=True, chunks=chunks)
            ds.attrs["units"] = unit
            ds.attrs["components"] = ",".join("zyx"[-result.grid.ndim :])
    return path


def read_result(path) -> Result:
    """Read a Result written by :func:`write_result`."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file not found: {path}")
    try:
        h = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"cannot open {path} as HDF5: {exc}") from exc
    with h:
        if h.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a tfm result file (attribute format={h.attrs.get('format')!r})")
        g = h["grid"].attrs
        grid = Grid(tuple(int(v) for v in g["shape"]), tuple(g["spacing_um"]), tuple(g["origin_um"]))
        disp = h["displacement"][...] if "displacement" in h else None
        force = h["force"][...] if "force" in h else None
        info = _join_arrays(json.loads(h.attrs.get("info_json", "{}")), h)
        info["provenance"] = json.loads(h.attrs.get("provenance_json", "{}"))
    return Result(grid=grid, displacement=disp, force=force, info=info)


def read_displacement(path, spacing_um=None, dataset: str = "displacement"):
    """Read a displacement field (Z, Y, X, 3) in µm and its Grid.

    Accepts a tfm result file, any HDF5 file with a ``dataset`` carrying a
    ``spacing_um`` attribute (else pass ``spacing_um``), or a ``.npy`` array with
    ``spacing_um`` given.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"displacement file not found: {path}")
    if path.suffix == ".npy":
        u = np.load(path, allow_pickle=False)
        if spacing_um is None:
            raise ValueError(f"{path} is a bare array: pass spacing_um=(z, y, x) in µm (--spacing-um)")
        grid = Grid(u.shape[:-1], _check_spacing(spacing_um))
    elif h5py.is_hdf5(path):
        with h5py.File(path, "r") as h:
            if h.attrs.get("format") == FORMAT:
                res = read_result(path)
                if res.displacement is None:
                    raise ValueError(f"{path} holds no displacement field")
                grid = res.grid if spacing_um is None else Grid(res.grid.shape, _check_spacing(spacing_um), res.grid.origin_um)
                return res.displacement, grid
            if dataset not in h:
                raise ValueError(f"{path} has no dataset {dataset!r} (found: {sorted(h.keys())})")
            u = h[dataset][...]
            sp = spacing_um if spacing_um is not None else h[dataset].attrs.get("spacing_um")
            if sp is None:
                raise ValueError(f"{path}:{dataset} has no spacing_um attribute: pass spacing_um (--spacing-um)")
            grid = Grid(u.shape[:-1], _check_spacing(sp))
    else:
        raise ValueError(f"{path}: expected a .npy array or an HDF5 file")
    if u.ndim != 4 or u.shape[-1] != 3:
        raise ValueError(f"displacement in {path} must have shape (Z, Y, X, 3), got {u.shape}")
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
