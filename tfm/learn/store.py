"""Saving and loading trained networks, and the run directory's checkpoints.

A saved model is a directory::

    model.json     {"kind": ..., "config": {...}, "card": {...}}  (architecture + model card)
    weights/       the parameters (orbax-checkpoint v1 PyTree)

written through :func:`tfm.atomic.atomic_dir`, so an interrupted save never leaves half
a model.
Training checkpoints (:class:`Checkpoints`) hold parameters, optimiser state and the loop
position under ``RUN/checkpoints/<step>/`` via ``orbax.checkpoint.v1.training.Checkpointer``
with a fixed-interval save policy; the newest few are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from ..atomic import atomic_dir, jsonable, write_text


def _ocp():
    from orbax.checkpoint import v1 as ocp

    return ocp


def _host(tree):
    return jax.tree.map(lambda a: np.asarray(a), tree)


def save_model(path, model: nnx.Module, kind: str, config: dict, card: dict | None = None) -> Path:
    """Write ``model``'s parameters and description to directory ``path`` atomically."""
    path = Path(path).absolute()  # orbax needs absolute paths
    with atomic_dir(path) as tmp:
        desc = jsonable({"kind": kind, "config": config, "card": card or {}})
        (tmp / "model.json").write_text(json.dumps(desc, indent=2, allow_nan=False))
        ocp = _ocp()
        (getattr(ocp, "save", None) or ocp.save_pytree)(tmp / "weights", _host(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    return path


def read_description(path) -> dict:
    """The ``model.json`` of a saved model, with a clear error if ``path`` is not one."""
    path = Path(path)
    f = path / "model.json"
    if not f.is_file() or not (path / "weights").is_dir():
        raise FileNotFoundError(f"{path} is not a saved tfm model (needs model.json and weights/)")
    try:
        desc = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{f} is not readable JSON: {exc}") from None
    if not isinstance(desc, dict) or not isinstance(desc.get("config"), dict):
        raise ValueError(f"{f} does not describe a tfm model (no 'config')")
    return desc


def open_model(path, kind: str) -> tuple[Path, dict]:
    """(directory, model.json) of a saved model of ``kind``; ``path`` may be a run directory
    (its ``model/`` is used)."""
    path = Path(path)
    if (path / "model").is_dir() and not (path / "model.json").exists():
        path = path / "model"
    desc = read_description(path)
    if desc.get("kind") != kind:
        raise ValueError(f"{path} holds a {desc.get('kind')!r} model, not a {kind} model")
    return path, desc


def check_run(run: Path, config: dict) -> str:
    """Refuse a ``run`` directory that holds a run with another configuration (a different
    ``epochs`` is allowed: it extends the run); returns the configuration's JSON text."""
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise ValueError(f"run directory {run} exists and is not a directory")
    f = run / "config.json"
    text = json.dumps(jsonable(config), indent=2, sort_keys=True, allow_nan=False)
    if f.exists():
        try:
            old = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{f} is not readable JSON ({exc}); delete the run directory or choose another") from None
        new = json.loads(text)
        old.pop("epochs", None)
        new.pop("epochs", None)
        if old != new:
            raise ValueError(f"{run} holds a run with another configuration; choose another --out or delete it")
    return text


def claim_run(run: Path, config: dict) -> None:
    """Create ``run`` and write ``run/config.json`` (atomically) after :func:`check_run`.
    Call it once the settings and data have been checked."""
    run = Path(run)
    text = check_run(run, config)
    if jax.process_index() == 0:
        run.mkdir(parents=True, exist_ok=True)
        write_text(run / "config.json", text)


def resume(ckpt: "Checkpoints", tree: dict, model: nnx.Module, optimizer, metrics_file: Path):
    """Load the latest checkpoint (if any) into ``model`` and ``optimizer``.

    ``tree`` is the template (``{"model", "opt", ...}``); returns (loaded tree or None,
    the metrics rows up to its step)."""
    if ckpt.latest_step is None:
        return None, []
    tree = ckpt.load(tree)
    for obj, key in ((model, "model"), (optimizer, "opt")):
        st = nnx.state(obj, nnx.Param) if key == "model" else nnx.state(obj)
        nnx.replace_by_pure_dict(st, tree[key])
        nnx.update(obj, st)
    rows = []
    if metrics_file.exists():
        rows = [r for r in map(json.loads, metrics_file.read_text().splitlines()) if r["step"] <= int(tree["step"])]
    return tree, rows


def load_weights(path, model: nnx.Module) -> nnx.Module:
    """Replace ``model``'s parameters by those saved at ``path`` (shapes must match)."""
    state = nnx.state(model, nnx.Param)
    template = _host(nnx.to_pure_dict(state))
    try:
        ocp = _ocp()
        loaded = (getattr(ocp, "load", None) or ocp.load_pytree)(Path(path).absolute() / "weights", template)
    except Exception as e:  # orbax raises several types for a structure mismatch
        raise ValueError(f"weights at {path} do not fit the model described in its model.json: {e}") from e
    nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, loaded))
    nnx.update(model, state)
    return model


class Checkpoints:
    """Periodic training checkpoints of a pytree (orbax v1 training Checkpointer)."""

    def __init__(self, directory, every_steps: int, keep: int = 2):
        ocp = _ocp()
        sd = ocp.training.save_decision_policies
        pp = ocp.training.preservation_policies
        self._ckpt = ocp.training.Checkpointer(
            Path(directory).absolute(), save_decision_policy=sd.FixedIntervalPolicy(int(every_steps)),
            preservation_policy=pp.LatestN(int(keep)))

    @property
    def latest_step(self) -> int | None:
        latest = self._ckpt.latest
        return None if latest is None else int(latest.step)

    def save(self, step: int, tree, force: bool = False) -> bool:
        return bool(self._ckpt.save(int(step), _host(tree), force=force))

    def load(self, template, step: int | None = None):
        return jax.tree.map(np.asarray, self._ckpt.load(self.latest_step if step is None else step, _host(template)))

    def close(self) -> None:
        self._ckpt.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
