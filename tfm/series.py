"""Time series: one relaxed reference and many loaded frames -> fields, a table, a figure.

A time-lapse of a cell pulling on its gel is a series of bead stacks against one relaxed
reference (after cytochalasin or trypsin). :func:`reconstruct_series` runs
:func:`tfm.reconstruct` on every frame and keeps what the frames share:

* ``mode="reference"`` (the default): every frame against the reference. With
  ``reuse=True`` (classical), a frame's DVC starts its last pass from the previous
  frame's field (the coarse passes skipped; :func:`tfm.classical.dvc.correlate`'s
  ``initial_um``) and the inverse on the DVC grid from its fitted field; the windows are
  chosen once, from the reference; every frame runs the same compiled functions. Errors
  do not accumulate: each frame is measured against the reference.
* ``mode="incremental"`` (classical): each frame against the one before, the increments
  accumulated along the material points: ``U_t(X) = U_{t-1}(X) + du_t(X + U_{t-1}(X))``
  (the increment interpolated where the point has moved to). Use it where the frames
  drift too far from the reference to correlate. What accumulates: the DVC's random error
  adds up as a random walk (its standard deviation grows as the square root of the
  number of frames), the interpolation of each increment adds a bias where the field
  curves between windows, and a window lost in one increment stays lost (the validity
  maps are combined).

Nothing is lost when a run is killed: every finished frame is written atomically to
``OUT.parts/frame_NNNNN.h5`` with a key of its inputs and settings; a rerun with the same
inputs reuses those frames and computes the rest (a frame whose inputs or settings
changed is recomputed). At the end one HDF5 file ``OUT`` (fields with a time axis,
chunked one frame at a time and compressed; the per-frame table and info), the table as
CSV (``OUT`` with suffix ``.csv``) and a figure of it against time (``.png``) are written
atomically and the parts are removed.

With a Dask ``client`` (``dask.distributed``), frames of ``mode="reference"`` run as
independent tasks on its workers (no warm start between them) and the client assembles
the series; frames given as file paths are read by the workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from .atomic import atomic_path, jsonable, write_text
from .grid import Grid
from .progress import resolve
from .result import Result

MODES = ("reference", "incremental")
COLUMNS = ("frame", "label", "time_s", "contractility_pn", "net_force_pn", "net_force_over_total", "net_torque_over_moment",
           "total_force_pn", "strain_energy_pn_um", "max_displacement_um", "valid_windows", "compute_s", "warm_start")
FORMAT = "tfm-series"


@dataclasses.dataclass
class SeriesResult:
    """A reconstructed time series: ``table`` (one dict per frame, :data:`COLUMNS`),
    ``grid`` (of every frame's fields), ``path`` (the series file, or None) and, without a
    file, the frames' Results in ``results``. ``frame(t)`` gives frame ``t``'s Result."""

    grid: Grid | None
    table: list
    path: Path | None = None
    results: list | None = None

    def __len__(self) -> int:
        return len(self.table)

    def frame(self, t: int) -> Result:
        if not 0 <= t < len(self.table):
            raise IndexError(f"frame {t} outside the series' {len(self.table)} frames")
        if self.results is not None:
            item = self.results[t]
            if isinstance(item, Path):  # a finished frame's part, before the series file is written
                from .io import read_result

                return read_result(item)
            return item
        return read_series_frame(self.path, t)

    def column(self, name: str) -> np.ndarray:
        """One column of the table as an array (None -> NaN)."""
        if name not in COLUMNS:
            raise KeyError(f"no column {name!r}; the table has {', '.join(COLUMNS)}")
        return np.array([np.nan if row[name] is None else row[name] for row in self.table], float)


# ----------------------------------------------------------------------------- inputs
def _frame_count(frames) -> int:
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"frames must be a (T, Z, Y, X) array or a sequence of (Z, Y, X) volumes or files, got an "
                             f"array of shape {frames.shape}")
        return frames.shape[0]
    try:
        n = len(frames)
    except TypeError:
        raise TypeError(f"frames must be a (T, Z, Y, X) array or a sequence of volumes or files, got "
                        f"{type(frames).__name__}") from None
    if n == 0:
        raise ValueError("frames is empty: give at least one deformed volume")
    return n


def _load(item, spacing_um, channel=None):
    if isinstance(item, (str, os.PathLike)):
        from . import io

        return io.read_volume(item, spacing_um=spacing_um, channel=channel)[0]
    return np.asarray(item)


def _digest(*arrays) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _mask_at(mask, t: int, shape):
    if mask is None:
        return None
    m = mask[t] if (isinstance(mask, (list, tuple)) or np.ndim(mask) == 4) else mask
    m = np.asarray(m)
    if m.shape != tuple(shape):
        raise ValueError(f"mask must be one (Z, Y, X) cell mask of the volumes' shape {tuple(shape)} or one per frame, "
                         f"got shape {m.shape}" + (f" for frame {t}" if np.ndim(mask) == 4 else ""))
    return m.astype(bool)


def _settings_key(method, mode, material, grid: Grid, options) -> str:
    text = json.dumps(jsonable({"method": method, "mode": mode, "material": repr(material),
                                "E": material.youngs_modulus_pa, "nu": material.poisson_ratio,
                                "spacing": list(grid.spacing_um), "options": _plain(options)}), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj if isinstance(obj, (int, float, str, bool, type(None))) else str(obj)


# ------------------------------------------------------------------------------ parts
def parts_dir(path) -> Path:
    """Where the finished frames of a series being written to ``path`` are kept."""
    path = Path(path)
    return path.with_name(path.name + ".parts")


def _part(parts: Path, t: int) -> Path:
    return parts / f"frame_{t:05d}.h5"


def _read_part(parts: Path | None, t: int, key: str) -> Result | None:
    """Frame ``t`` from an earlier run with the same ``key``, else None."""
    from . import io

    if parts is None or not _part(parts, t).is_file():
        return None
    try:
        res = io.read_result(_part(parts, t))
    except ValueError:
        return None  # damaged: computed again
    return res if res.info.get("provenance", {}).get("series_key") == key else None


def _write_part(parts: Path, t: int, key: str, result: Result, compute_s: float) -> None:
    from . import io

    io.write_result(_part(parts, t), result, {"series_key": key, "frame": t, "compute_s": compute_s})


# ------------------------------------------------------------------------------- rows
def table_row(t: int, time_s, result: Result, compute_s: float, warm: bool, label: str = "") -> dict:
    """The headline numbers of frame ``t`` (:data:`COLUMNS`; ``time_s`` None or NaN: not
    given)."""
    time_s = None if time_s is None or not np.isfinite(time_s) else float(time_s)
    measured = result.measured()
    dvc = result.info.get("dvc")
    valid = None
    if dvc is not None and "valid" in dvc:
        outside = ~np.asarray(dvc.get("masked", np.zeros_like(dvc["valid"])), bool)
        valid = float(np.asarray(dvc["valid"])[outside].mean()) if outside.any() else 0.0
    elif "confident_fraction" in result.info:
        valid = float(result.info["confident_fraction"])
    eq = result.info.get("equilibrium") or result.equilibrium()  # stored by every 3D force reconstruction
    has_force = result.force is not None and bool(np.any(result.force))
    return {"frame": t, "label": label, "time_s": time_s, "contractility_pn": result.contractility() if has_force else 0.0,
            "net_force_pn": float(np.linalg.norm(result.net_force())), "net_force_over_total": eq["net_force_over_total"],
            "net_torque_over_moment": eq["net_torque_over_moment"], "total_force_pn": result.total_force(),
            "strain_energy_pn_um": result.strain_energy(),
            "max_displacement_um": float(np.linalg.norm(measured.displacement, axis=-1).max()),
            "valid_windows": valid, "compute_s": compute_s, "warm_start": bool(warm)}


# --------------------------------------------------------------------------- the run
def reconstruct_series(reference, frames, grid, material, method: str = "classical", mask=None,
                       mode: str = "reference", out=None, times_s=None, reuse: bool = True, progress=None,
                       client=None, channel: int | None = None, **options) -> SeriesResult:
    """Displacement and force of every frame of a time series.

    Args:
      reference: the relaxed (Z, Y, X) volume (or its file).
      frames: the loaded volumes: a (T, Z, Y, X) array, or a sequence of (Z, Y, X) arrays
        or of files (read one at a time: a long series never sits in memory whole).
      grid: the volumes' :class:`~tfm.grid.Grid` or voxel size (z, y, x) µm.
      material: the matrix (as for :func:`tfm.reconstruct`).
      method: ``"classical"`` or ``"dl"`` (:func:`tfm.reconstruct`).
      mask: None, one (Z, Y, X) cell mask for every frame, or one per frame.
      mode: ``"reference"`` or ``"incremental"`` (classical; the module docs).
      out: the series file (.h5) to write, with its ``.csv`` table and ``.png`` figure; a
        killed run with the same ``out`` resumes at the first unfinished frame. None:
        the frames stay in memory (``SeriesResult.results``).
      times_s: the frames' acquisition times, s (default: the frame index).
      reuse: classical, sequential runs: start each frame from the previous one.
      progress: :class:`tfm.progress.Progress` or True (a bar over frames).
      client: a ``dask.distributed.Client``: frames run as its tasks (mode "reference").
      channel: the channel of multi-channel frame files.
      **options: the other arguments of :func:`tfm.reconstruct` (``dvc_options``,
        ``force_grid``, ``regularization``, ``model``, ...).

    Returns a :class:`SeriesResult`.
    """
    from .api import RECONSTRUCT_METHODS

    if method not in RECONSTRUCT_METHODS:
        raise ValueError(f"method must be one of {RECONSTRUCT_METHODS}, got {method!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "incremental" and method != "classical":
        raise ValueError("mode='incremental' accumulates DVC increments: it needs method='classical'")
    if mode == "incremental" and client is not None:
        raise ValueError("mode='incremental' runs frame after frame; a Dask client runs mode='reference' frames")
    if "warm_start" in options:
        raise TypeError("warm_start is chosen by the series (reuse=True)")
    n = _frame_count(frames)
    times = np.full(n, np.nan) if times_s is None else np.asarray(times_s, float)
    if times.shape != (n,) or (times_s is not None and not np.all(np.isfinite(times))):
        raise ValueError(f"times_s must hold one finite time per frame ({n}), got {np.shape(times_s)}")
    ref = _load(reference, grid.spacing_um if isinstance(grid, Grid) else grid, channel)
    if ref.ndim != 3:
        raise ValueError(f"reference must be a (Z, Y, X) volume, got shape {ref.shape}")
    image_grid = Grid.of(ref.shape, grid)
    out = None if out is None else Path(out)
    if out is not None and out.suffix.lower() not in (".h5", ".hdf5"):
        raise ValueError(f"out must name an .h5 file, got {out}")
    key0 = _settings_key(method, mode, material, image_grid, options)
    job = _Job(ref, frames, image_grid, material, method, mode, mask, options, channel, key0,
               None if out is None else parts_dir(out))
    t_start = time.perf_counter()
    if client is not None:
        results, rows = _run_distributed(job, client, times, progress)
    else:
        results, rows = _run_sequential(job, n, times, reuse, progress)
    series = SeriesResult(grid=None, table=rows, path=None, results=results)
    series.grid = series.frame(0).grid
    if out is not None:
        write_series(out, series, {"method": method, "mode": mode, "frames": n, "time_s": time.perf_counter() - t_start,
                                   "settings_key": key0, "options": _plain(options)})
        shutil.rmtree(job.parts, ignore_errors=True)
        series = SeriesResult(grid=series.grid, table=rows, path=out, results=None)
    return series


@dataclasses.dataclass
class _Job:
    ref: np.ndarray
    frames: object
    grid: Grid
    material: object
    method: str
    mode: str
    mask: object
    options: dict
    channel: int | None
    settings: str
    parts: Path | None
    keys: dict = dataclasses.field(default_factory=dict)  # frame -> key, computed once

    def label(self, t: int) -> str:
        """The frame's file name (without its suffix) where frames are files, else ''."""
        item = None if isinstance(self.frames, np.ndarray) else self.frames[t]
        return Path(item).name.split(".")[0] if isinstance(item, (str, os.PathLike)) else ""

    def frame(self, t: int) -> np.ndarray:
        vol = _load(self.frames[t], self.grid.spacing_um, self.channel)
        if vol.shape != self.ref.shape:
            raise ValueError(f"frame {t} has shape {vol.shape}, the reference {self.ref.shape}")
        return vol

    def key(self, t: int, vol) -> str:
        """Frame ``t``'s key: the settings, the reference, the frame and its mask (and, in
        incremental mode, the frames before it, through frame t-1's key)."""
        if t not in self.keys:
            m = _mask_at(self.mask, t, self.ref.shape)
            prev = "" if self.mode == "reference" or t == 0 else self.key(t - 1, self.frame(t - 1))
            self.keys[t] = hashlib.blake2b((self.settings + _digest(self.ref, vol, m) + prev).encode(),
                                           digest_size=16).hexdigest()
        return self.keys[t]


def _run_sequential(job: _Job, n: int, times, reuse: bool, progress):
    from .api import reconstruct

    results, rows = [], []
    prev, windows, prev_vol = None, None, job.ref
    bar_progress = resolve(progress)
    with bar_progress.task(n, f"series ({job.mode})") as bar:
        for t in range(n):
            vol = job.frame(t)
            key = job.key(t, vol)
            done = _read_part(job.parts, t, key)
            t0 = time.perf_counter()
            warm = False
            if done is not None:
                res = done
            elif job.mode == "incremental":
                res = _increment(job, t, prev_vol, vol, prev, windows, reuse, bar_progress)
                warm = reuse and prev is not None
            else:
                opts = _with_windows(job.options, windows)
                warm_start = prev if (reuse and job.method == "classical") else None
                res = reconstruct(job.ref, vol, job.grid, job.material, method=job.method, progress=bar_progress,
                                  mask=_mask_at(job.mask, t, job.ref.shape), warm_start=warm_start, **opts)
                warm = warm_start is not None and res.info.get("dvc", {}).get("initial", {}).get("used", False)
            elapsed = res.info["provenance"].get("compute_s", 0.0) if done is not None else time.perf_counter() - t0
            if done is None and job.parts is not None:
                _write_part(job.parts, t, key, res, elapsed)
            if job.method == "classical" and windows is None and "dvc" in res.info:
                windows = res.info["dvc"]["windows_voxels"]
            rows.append(table_row(t, float(times[t]), res, float(elapsed), warm, job.label(t)))
            results.append(res if job.parts is None else _part(job.parts, t))  # written: read back when needed
            prev = res if job.mode == "reference" else _state(res)
            prev_vol = vol
            bar.update(1, note=f"frame {t}: contractility {rows[-1]['contractility_pn']:.4g} pN")
    return results, rows


def _state(res: Result) -> Result:
    """What the next frame of an incremental series needs of this one: the accumulated
    field on the DVC grid, its combined validity and the last increment."""
    measured = res.measured()
    return Result(measured.grid, measured.displacement,
                  info={"valid": np.asarray(res.info["dvc"]["valid"], bool), "increment_um": res.info.get("increment_um")})


def _with_windows(options: dict, windows) -> dict:
    """``options`` with the DVC's windows fixed to those chosen for the first frame (the
    same reference gives the same choice; the bead statistics are not measured again)."""
    dvc = dict(options.get("dvc_options") or {})
    if windows is None or dvc.get("windows", "auto") != "auto":
        return options
    return {**options, "dvc_options": {**dvc, "windows": tuple(tuple(w) for w in windows)}}


def _increment(job: _Job, t: int, source, vol, accumulated, windows, reuse: bool, progress=None):
    """Frame ``t`` of an incremental series: the DVC of ``source`` (frame t-1, or the
    reference at t = 0) -> ``vol``, accumulated onto ``accumulated`` (:func:`_state` of
    frame t-1; None at t = 0)."""
    from .api import forces_from_measurement, measure_displacement
    from .fields import trilinear

    opts = dict(job.options)
    dvc_options = _with_windows(opts, windows).get("dvc_options") or {}
    mask = _mask_at(job.mask, t, job.ref.shape)
    initial = accumulated.info.get("increment_um") if (reuse and accumulated is not None) else None
    t0 = time.perf_counter()
    inc = measure_displacement(source, vol, job.grid, mask=mask, initial_um=initial, progress=progress, **dvc_options)
    if accumulated is None:
        total, valid = inc.displacement, inc.info["valid"]
    else:
        u_prev = accumulated.displacement
        at = (inc.grid.coordinates_um() + u_prev - np.asarray(inc.grid.origin_um)) / np.asarray(inc.grid.spacing_um)
        at = np.clip(at, 0, np.asarray(inc.grid.shape) - 1).reshape(-1, 3)
        du = np.asarray(trilinear(inc.displacement, at)).reshape(u_prev.shape)
        total = (u_prev + du).astype(np.float32)
        valid = accumulated.info["valid"] & inc.info["valid"]
    disp = Result(inc.grid, total, info={**inc.info, "valid": valid, "accumulated_frames": t + 1})
    force_kwargs = {k: v for k, v in opts.items() if k in ("regularization", "force_method", "force_options", "force_grid",
                                                             "force_spacing_um")}
    unknown = sorted(set(opts) - set(force_kwargs) - {"dvc_options"})
    if unknown:
        raise TypeError(f"option(s) {', '.join(unknown)} do not apply to mode='incremental'")
    res = forces_from_measurement(disp, job.grid, job.material, mask=mask, time_dvc_s=time.perf_counter() - t0,
                                  progress=progress, **force_kwargs)
    res.info["increment_um"] = np.asarray(inc.displacement, np.float32)
    return res


def _frame_task(job: _Job, t: int) -> dict:
    """One frame on a Dask worker: computed (or taken from an earlier run) and written."""
    from .api import reconstruct

    vol = job.frame(t)
    key = job.key(t, vol)
    if _read_part(job.parts, t, key) is not None:
        return {"frame": t, "key": key, "computed": False, "compute_s": 0.0}
    t0 = time.perf_counter()
    res = reconstruct(job.ref, vol, job.grid, job.material, method=job.method, mask=_mask_at(job.mask, t, job.ref.shape),
                      **job.options)
    _write_part(job.parts, t, key, res, time.perf_counter() - t0)
    return {"frame": t, "key": key, "computed": True, "compute_s": time.perf_counter() - t0}


def _run_distributed(job: _Job, client, times, progress):
    """The frames as Dask tasks; each writes its part, the client reads them back."""
    from dask.distributed import as_completed

    if job.parts is None:
        raise ValueError("a Dask client needs out= (the workers write the frames there)")
    job.parts.mkdir(parents=True, exist_ok=True)
    n = _frame_count(job.frames)
    shared = client.scatter(job, broadcast=False)  # the reference (and array frames) sent once, not per task
    futures = [client.submit(_frame_task, shared, t, pure=False, key=f"tfm-series-frame-{t}-{job.settings[:8]}")
               for t in range(n)]
    done = {}
    with resolve(progress).task(n, "series (Dask)") as bar:
        for future in as_completed(futures):
            task = future.result()  # a failed frame raises here: a series needs every frame
            done[task["frame"]] = task
            bar.update(1, note=f"frame {task['frame']}")
    results, rows = [], []
    for t in range(n):
        res = _read_part(job.parts, t, done[t]["key"])
        results.append(_part(job.parts, t))
        rows.append(table_row(t, float(times[t]), res, done[t]["compute_s"], False, job.label(t)))
    return results, rows


# ----------------------------------------------------------------------------- files
def write_series(path, series: SeriesResult, info: dict) -> Path:
    """The series file (fields with a time axis, one frame per chunk, gzip), its table as
    CSV and a figure of the table, each written atomically."""
    import h5py

    from ._version import __version__
    from .io import split_arrays

    path = Path(path)
    first = series.frame(0)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h:
        h.attrs.update(format=FORMAT, format_version=1, tfm_version=__version__, info_json=json.dumps(jsonable(info)),
                       table_json=json.dumps(jsonable(series.table)))
        g = h.create_group("grid")
        g.attrs.update(shape=series.grid.shape, spacing_um=series.grid.spacing_um, origin_um=series.grid.origin_um,
                       axes="zyx")
        n = len(series)
        fields = {}
        for name, unit in (("displacement", "um"), ("force", "pN/um^3")):
            if getattr(first, name) is None:
                continue
            shape = (n, *series.grid.shape, 3)
            chunks = (1, *(min(s, 64) for s in series.grid.shape), 3)
            fields[name] = h.create_dataset(name, shape=shape, dtype=np.float32, chunks=chunks, compression="gzip",
                                            compression_opts=4, shuffle=True)
            fields[name].attrs.update(units=unit, components="z,y,x", axes="t,z,y,x")
        infos = h.create_group("frame_info")
        for t in range(n):  # one frame in memory at a time
            frame = first if t == 0 else series.frame(t)
            for name, ds in fields.items():
                ds[t] = np.asarray(getattr(frame, name), np.float32)
            arrays: list = []
            infos.attrs[str(t)] = json.dumps(split_arrays(_light(frame.info), f"frame_info/{t}", arrays))
            for name, arr in arrays:
                h.create_dataset(name, data=arr, compression="gzip", compression_opts=4)
    write_text(path.with_suffix(".csv"), table_csv(series.table))
    from .viz import series_figure

    series_figure(series.table, path.with_suffix(".png"), title=path.stem)
    return path


def _light(info: dict) -> dict:
    """A frame's info without its large fields (kept per frame in the parts only)."""
    drop = ("displacement_fit", "increment_um", "provenance")
    out = {k: v for k, v in info.items() if k not in drop}
    if isinstance(out.get("dvc"), dict):
        out["dvc"] = {k: v for k, v in out["dvc"].items() if k not in ("displacement_um", "quality")}
    return out


def table_csv(table) -> str:
    lines = [",".join(COLUMNS)]
    for row in table:
        lines.append(",".join("" if row[c] is None else (f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]))
                              for c in COLUMNS))
    return "\n".join(lines) + "\n"


def read_series(path) -> SeriesResult:
    """A series file written by :func:`reconstruct_series` (frames read on demand)."""
    from .io import open_h5

    with open_h5(path, "series") as h:
        if h.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a tfm series file (attribute format={h.attrs.get('format')!r})")
        g = h["grid"].attrs
        grid = Grid(tuple(int(v) for v in g["shape"]), tuple(g["spacing_um"]), tuple(g["origin_um"]))
        table = json.loads(h.attrs["table_json"])
    return SeriesResult(grid=grid, table=table, path=Path(path), results=None)


def read_series_frame(path, t: int) -> Result:
    """Frame ``t`` of a series file as a :class:`~tfm.result.Result`."""
    from .io import join_arrays, open_h5

    series = read_series(path)
    with open_h5(path, "series") as h:
        disp = h["displacement"][t] if "displacement" in h else None
        force = h["force"][t] if "force" in h else None
        info = join_arrays(json.loads(h["frame_info"].attrs[str(t)]), h)
    return Result(grid=series.grid, displacement=disp, force=force, info=info)
