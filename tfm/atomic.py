"""Atomic, durable writes: the one mechanism behind every file tfm writes.

A writer is handed a temporary path beside its target (same suffix, so libraries that
pick the format from the suffix still do), writes it, and on success the temporary is
flushed to disk (``fsync``), renamed over the target and the directory entry is flushed
too; on failure the temporary is deleted. A reader therefore sees the old file or the
complete new one, never half of one, even after a power cut.

A process killed outright (SIGKILL) cannot clean up: its temporary stays, named
``.TARGET.<pid>.<random>.part<suffix>``. The next write of the same target removes the
temporaries whose writing process no longer runs.

Directories (saved models) work the same way with :func:`atomic_dir`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

PART = ".part"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(path) -> list:
    """Delete temporaries of ``path`` left by writers that no longer run; returns them."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = f".{path.name}."
    for p in path.parent.iterdir():
        if not p.name.startswith(prefix) or PART not in p.name[len(prefix):]:
            continue
        pid = p.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def fsync_path(path) -> None:
    """Flush a file's data (or a directory's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            fsync_path(p)
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        fsync_path(d)


def _umask_mode(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same suffix); on success fsync it and
    rename it to ``path``, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=f"{PART}{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _umask_mode(0o666))  # mkstemp creates 0600; results follow the umask
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory beside ``path``; on success fsync its contents and put
    it in place of ``path`` (an existing directory is replaced), on failure delete it."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=PART, dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o777))
        _fsync_tree(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=f"{PART}-old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path, text: str) -> Path:
    """Write a text file atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def jsonable(obj):
    """``obj`` with NumPy scalars and arrays turned into Python values and non-finite
    floats into None (JSON has no NaN or Infinity)."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_json(path, obj, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON (see :func:`jsonable`) atomically."""
    return write_text(path, json.dumps(jsonable(obj), indent=indent, allow_nan=False) + "\n")
