"""Many cells: a manifest of bead-stack pairs run as Dask tasks, one result per row.

The manifest is a CSV file with a header; one row per pair. Columns (paths relative to
the manifest's folder; an empty cell takes the default):

=====================  ========  ===========================================================
column                 required  meaning
=====================  ========  ===========================================================
``reference``          yes       relaxed bead stack (TIFF / OME-TIFF)
``deformed``           yes       loaded bead stack, same shape
``cell``               no        cell-channel stack (thresholded: the cell's mask)
``name``               no        result name (``OUT/<name>.h5``; default ``row<N>``)
``spacing_um``         no        voxel size, µm: ``z y x`` or one number (default: the files')
``youngs_modulus_pa``  yes*      gel modulus, Pa (*or a default given to the batch)
``poisson_ratio``      no        default 0.45
``material``           no        ``linear`` (default), ``neo-hookean`` or ``fiber`` (collagen, saenopy's values, k = 6 E; needs ``classical``)
``method``             no        ``classical`` (default) or ``dl``
``force_grid``         no        classical: ``dvc`` (default), ``fine`` or ``auto``
``channel``            no        channel of multi-channel stacks
``cell_threshold``     no        intensity threshold of the cell channel (default Otsu)
``cell_dilate_um``     no        grow the cell mask by this distance, µm (default 0)
=====================  ========  ===========================================================

Every row is checked before any work; a bad row is reported by its number (the first
data row is row 1, on line 2 of the file) and skipped, the others run. Each row runs as
one Dask task (``dask.distributed``: a LocalCluster, or a running cluster's scheduler):
the worker reads the stacks, runs :func:`tfm.reconstruct` and writes ``OUT/<name>.h5``
atomically, with a key of the row and its input files; the client writes
``OUT/summary.csv`` (one line per row: status, error, headline numbers). A rerun skips the
rows whose result holds the same key, so a killed batch resumes where it stopped. Workers
share tfm's persistent JAX compilation cache (:mod:`tfm.jaxcache`; entries are written
atomically), so only the first task on a shape compiles.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
import time
from pathlib import Path

from .atomic import write_text
from .io import volume_exists
from .progress import resolve

COLUMNS = ("reference", "deformed", "cell", "name", "spacing_um", "youngs_modulus_pa", "poisson_ratio", "material",
           "method", "force_grid", "channel", "cell_threshold", "cell_dilate_um")
REQUIRED = ("reference", "deformed")
MATERIALS = ("linear", "neo-hookean", "fiber")
METHODS = ("classical", "dl")
FORCE_GRIDS = ("dvc", "fine", "auto")
SUMMARY = ("row", "name", "status", "error", "result", "contractility_pn", "net_force_over_total", "total_force_pn",
           "strain_energy_pn_um", "max_displacement_um", "valid_windows", "compute_s")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclasses.dataclass(frozen=True)
class Row:
    """One checked manifest row: absolute paths, parsed numbers, defaults applied."""

    number: int
    name: str
    reference: str
    deformed: str
    cell: str | None
    spacing_um: tuple | None
    youngs_modulus_pa: float
    poisson_ratio: float
    material: str
    method: str
    force_grid: str
    channel: int | None
    cell_threshold: float | None
    cell_dilate_um: float

    def key(self) -> str:
        """The row's settings and its input files (size, modification time): a result
        written under the same key is this row's."""
        files = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in (self.reference, self.deformed, self.cell) if p]
        text = json.dumps([dataclasses.asdict(self) | {"number": 0}, files], sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclasses.dataclass
class BatchReport:
    """What a batch did: ``rows`` (one dict per manifest row, :data:`SUMMARY`), the
    summary file, and ``ok`` (no invalid or failed row)."""

    rows: list
    summary_path: Path

    @property
    def ok(self) -> bool:
        return all(r["status"] in ("done", "skipped") for r in self.rows)

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)


# --------------------------------------------------------------------------- manifest
def read_manifest(path, defaults: dict | None = None) -> tuple[list, list]:
    """``(rows, errors)``: the valid :class:`Row` s and, per bad row, ``(number, message)``.
    ``defaults``: values for empty cells (e.g. ``{"youngs_modulus_pa": 1000}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ValueError(f"manifest {path}: the header lacks the column(s) {', '.join(missing)} (columns: "
                             f"{', '.join(COLUMNS)})")
        unknown = [c for c in header if c not in COLUMNS]
        if unknown:
            raise ValueError(f"manifest {path}: unknown column(s) {', '.join(unknown)} (known: {', '.join(COLUMNS)})")
        raw = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    if not raw:
        raise ValueError(f"manifest {path} has no rows")
    rows, errors, names = [], [], {}
    for number, cells in enumerate(raw, start=1):
        try:
            row = _row(number, cells, path.parent, defaults or {})
        except ValueError as exc:
            errors.append((number, str(exc)))
            continue
        if row.name in names:
            errors.append((number, f"name {row.name!r} is also row {names[row.name]}'s"))
            continue
        names[row.name] = number
        rows.append(row)
    return rows, errors


def _row(number: int, cells: dict, base: Path, defaults: dict) -> Row:
    get = lambda k: cells.get(k) or (str(defaults[k]) if defaults.get(k) is not None else "")  # noqa: E731

    def path(key):
        text = get(key)
        if not text:
            return None
        p = Path(text) if Path(text).is_absolute() else base / text
        if not volume_exists(p):  # a TIFF, or an OME-Zarr folder
            raise ValueError(f"{key}: file not found: {p}")
        return str(p.resolve())

    def number_(key, default=None, positive=True, lo=None, hi=None):
        text = get(key)
        if not text:
            if default is None:
                raise ValueError(f"{key} is empty (give it in the manifest, or as a default of the batch)")
            return default
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"{key}: {text!r} is not a number") from None
        if not (v == v and abs(v) != float("inf")) or (positive and v <= 0) or (lo is not None and not lo <= v <= hi):
            raise ValueError(f"{key}: {text} is out of range" + (f" [{lo}, {hi}]" if lo is not None else " (must be > 0)"))
        return v

    def choice(key, options, default):
        v = get(key) or default
        if v not in options:
            raise ValueError(f"{key}: {v!r} is not one of {', '.join(options)}")
        return v

    for key in REQUIRED:
        if not get(key):
            raise ValueError(f"{key} is empty")
    name = get("name") or f"row{number:04d}"
    if not NAME.match(name) or name.lower() == "summary":
        raise ValueError(f"name {name!r} must be a plain file name (letters, digits, '.', '_', '-'), not 'summary'")
    spacing = None
    if get("spacing_um"):
        try:
            values = tuple(float(v) for v in get("spacing_um").replace(",", " ").split())
        except ValueError:
            raise ValueError(f"spacing_um: {get('spacing_um')!r} is not 1 or 3 numbers") from None
        if len(values) not in (1, 3) or min(values) <= 0:
            raise ValueError(f"spacing_um: {get('spacing_um')!r} must be 1 or 3 numbers > 0 (µm)")
        spacing = values * 3 if len(values) == 1 else values
    material, method = choice("material", MATERIALS, "linear"), choice("method", METHODS, "classical")
    if material == "fiber" and method != "classical":
        raise ValueError("material fiber needs method classical (the learned path takes linear and neo-Hookean gels)")
    channel = get("channel")
    if channel and not channel.isdigit():
        raise ValueError(f"channel: {channel!r} is not a whole number >= 0")
    threshold = get("cell_threshold")
    return Row(number=number, name=name, reference=path("reference"), deformed=path("deformed"), cell=path("cell"),
               spacing_um=spacing, youngs_modulus_pa=number_("youngs_modulus_pa"),
               poisson_ratio=number_("poisson_ratio", 0.45, positive=False, lo=0.0, hi=0.4999),
               material=material, method=method, force_grid=choice("force_grid", FORCE_GRIDS, "dvc"),
               channel=int(channel) if channel else None,
               cell_threshold=None if not threshold else number_("cell_threshold", positive=False, lo=-1e30, hi=1e30),
               cell_dilate_um=number_("cell_dilate_um", 0.0, positive=False, lo=0.0, hi=1e6))


# ------------------------------------------------------------------------------ a row
def run_row(row: Row, out_dir) -> dict:
    """One row, where it runs (a Dask worker): read, reconstruct, write ``OUT/<name>.h5``
    atomically; returns the row's summary numbers."""
    from . import io, segment
    from .api import reconstruct
    from .material import make_law

    t0 = time.perf_counter()
    ref, grid = io.read_volume(row.reference, spacing_um=row.spacing_um, channel=row.channel)
    dfm, _ = io.read_volume(row.deformed, spacing_um=grid.spacing_um, channel=row.channel)
    if dfm.shape != ref.shape:
        raise ValueError(f"the stacks differ in shape: reference {ref.shape}, deformed {dfm.shape}")
    mask = None
    if row.cell:
        cell, _ = io.read_volume(row.cell, spacing_um=grid.spacing_um)
        if cell.shape != ref.shape:
            raise ValueError(f"cell stack has shape {cell.shape}, the bead stacks {ref.shape}")
        mask = segment.cell_mask(cell, grid, threshold=row.cell_threshold, dilate_um=row.cell_dilate_um)
    kwargs = {"force_grid": row.force_grid} if row.method == "classical" else {}
    result = reconstruct(ref, dfm, grid, make_law(row.material, row.youngs_modulus_pa, row.poisson_ratio),
                         method=row.method, mask=mask, **kwargs)
    numbers = _numbers(result, time.perf_counter() - t0)
    io.write_result(Path(out_dir) / f"{row.name}.h5", result,
                    {"command": "tfm batch", "batch_key": row.key(), "row": dataclasses.asdict(row), "summary": numbers})
    return numbers


def _numbers(result, compute_s: float) -> dict:
    from .series import table_row

    numbers = table_row(0, 0.0, result, compute_s, False)
    return {k: numbers[k] for k in SUMMARY if k in numbers}


def _done(row: Row, out_dir: Path) -> dict | None:
    """The summary numbers of a result already written for this row (same key), else None."""
    import h5py

    path = out_dir / f"{row.name}.h5"
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as h:
            prov = json.loads(h.attrs.get("provenance_json", "{}"))
    except (OSError, json.JSONDecodeError):
        return None
    return prov.get("summary") if prov.get("batch_key") == row.key() else None


# ---------------------------------------------------------------------------- a batch
def run_batch(manifest, out_dir, client=None, defaults: dict | None = None, progress=None) -> BatchReport:
    """Every valid row of ``manifest`` as a Dask task on ``client`` (a
    ``dask.distributed.Client``; None: a LocalCluster of 2 single-threaded workers for
    this call). Rows done by an earlier run (same key) are skipped. Returns a
    :class:`BatchReport`; ``OUT/summary.csv`` holds the same table."""
    out_dir = Path(out_dir)
    rows, errors = read_manifest(manifest, defaults)
    inputs = {Path(p) for r in rows for p in (r.reference, r.deformed, r.cell) if p}
    if any((out_dir / f"{r.name}.h5").resolve() in inputs for r in rows):
        raise ValueError(f"an output in {out_dir} would overwrite an input stack: choose another output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    table = {n: _summary(n, None, "invalid", error=msg) for n, msg in errors}
    todo = []
    for row in rows:
        done = _done(row, out_dir)
        if done is not None:
            table[row.number] = _summary(row.number, row, "skipped", done, out_dir)
        else:
            todo.append(row)
    if todo:
        own = None
        if client is None:
            from dask.distributed import Client, LocalCluster

            own = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(own)
        try:
            _submit(client, todo, out_dir, table, progress)
        finally:
            if own is not None:
                client.close()
                own.close()
    report = [table[n] for n in sorted(table)]
    path = write_text(out_dir / "summary.csv", _csv(report))
    return BatchReport(rows=report, summary_path=path)


def _submit(client, todo, out_dir: Path, table: dict, progress) -> None:
    from dask.distributed import as_completed

    futures = {client.submit(run_row, row, str(out_dir), pure=False, key=f"tfm-batch-{row.name}-{row.key()[:8]}"): row
               for row in todo}
    with resolve(progress).task(len(futures), "batch") as bar:
        for future in as_completed(futures):
            row = futures[future]
            try:
                table[row.number] = _summary(row.number, row, "done", future.result(), out_dir)
            except Exception as exc:  # a failed row does not stop the others  # noqa: BLE001
                table[row.number] = _summary(row.number, row, "failed", error=f"{type(exc).__name__}: {exc}")
            bar.update(1, note=f"row {row.number} {table[row.number]['status']}")


def _summary(number: int, row: Row | None, status: str, numbers: dict | None = None, out_dir=None, error: str = "") -> dict:
    out = {k: None for k in SUMMARY}
    out.update(numbers or {})
    out.update(row=number, name=None if row is None else row.name, status=status, error=" ".join(error.split()),
               result=None if out_dir is None or row is None else str(Path(out_dir) / f"{row.name}.h5"))
    return out


def _csv(rows) -> str:
    import io as _io

    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r[k] is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in SUMMARY})
    return buf.getvalue()

