"""The epoch loop shared by every tfm network (the 3D force network, the stiffness CNN).

:func:`fit` runs minibatch steps with the next batch prepared on a background thread,
keeps per-epoch running sums of the loss terms, evaluates on the validation split at
each epoch's end, exports the model whenever the validation loss improves, appends one
JSON line per epoch to ``RUN/metrics.jsonl`` and checkpoints (orbax, :mod:`tfm.learn.store`)
every ``checkpoint_every`` steps and at each epoch's end. The checkpoint holds the
parameters, the optimiser state, the step, the best validation loss and the epoch's
running sums, so a run started again after a kill continues exactly as if never stopped,
provided ``batch_at`` and ``step`` are functions of the step index (both trainers draw
batch order and augmentation from ``rng([seed, epoch, ...])``).

A loss that is not finite (a diverged run: learning rate too high, bad data) stops the
run with :class:`TrainingDiverged` before anything is saved, so the last checkpoint and
the exported model are the last good ones.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
from flax import nnx

from ..atomic import jsonable, write_text
from ..progress import resolve
from . import store


class TrainingDiverged(ValueError):
    """The training loss (or the validation loss) became NaN or infinite."""


def _finite(value, what: str, s: int, ckpt) -> float:
    v = float(value)
    if not np.isfinite(v):
        last = ckpt.latest_step
        kept = f"the last good checkpoint is step {last}" if last is not None else "no checkpoint was written yet"
        raise TrainingDiverged(f"training diverged: the {what} is {v} at step {s} ({kept}); lower the learning rate "
                               "(--learning-rate) or check the data")
    return v


def fit(run: Path, model: nnx.Module, optimizer: nnx.Optimizer, *, epochs: int, steps_per_epoch: int,
        checkpoint_every: int, names: list, batch_at: Callable, step: Callable, evaluate: Callable,
        learning_rate: Callable, save_best: Callable, epoch_message: Callable | None = None, progress=None,
        max_steps: int | None = None, main_process: bool = True, after_restore: Callable | None = None) -> dict:
    """Train (or resume) ``model`` in ``run``.

    Args:
      names: the loss terms ``step`` returns (``"loss"`` first), checkpointed as running sums.
      batch_at: step index -> batch (runs on a background thread, one step ahead).
      step: (batch, step index) -> (loss, {term: value}); updates model and optimiser.
      evaluate: () -> validation dict with a ``"loss"`` entry.
      learning_rate: step index -> learning rate (logged).
      save_best: (epoch row) -> None; exports the model (called on the main process only).
      epoch_message: (epoch row) -> the message reported after each epoch.
      progress: a :class:`tfm.progress.Progress` (or True / None): per-epoch bars and messages.
      max_steps: stop after this many steps in total (after a checkpoint), as a kill would.
      after_restore: () -> None, called once the state is initialised or restored (e.g. to
        place it on devices).

    Raises :class:`TrainingDiverged` when a loss is not finite.
    """
    progress = resolve(progress).child(main_process)
    total = steps_per_epoch * epochs
    st = {"s": 0, "best_val": np.inf, "sums": {}, "rows": []}

    def state_tree():  # everything a resumed run needs to continue exactly
        return {"model": nnx.to_pure_dict(nnx.state(model, nnx.Param)), "opt": nnx.to_pure_dict(nnx.state(optimizer)),
                "step": np.int64(st["s"]), "best_val": np.float64(st["best_val"]),
                "epoch_sums": {k: np.float64(st["sums"].get(k, 0.0)) for k in names}}

    ckpt = store.Checkpoints(run / "checkpoints", checkpoint_every)
    metrics_file = run / "metrics.jsonl"
    tree, st["rows"] = store.resume(ckpt, state_tree(), model, optimizer, metrics_file)
    if tree is not None:
        st["s"], st["best_val"] = int(tree["step"]), float(tree["best_val"])
        st["sums"] = {k: float(v) for k, v in tree["epoch_sums"].items()} if st["s"] % steps_per_epoch else {}
    if after_restore is not None:
        after_restore()
    stop = total if max_steps is None else min(total, int(max_steps))
    pool = concurrent.futures.ThreadPoolExecutor(1)
    t_start = time.perf_counter()
    pending = pool.submit(batch_at, st["s"]) if st["s"] < stop else None
    try:
        while st["s"] < stop:
            e0 = st["s"] // steps_per_epoch
            t_epoch = time.perf_counter()
            with progress.task(steps_per_epoch, f"epoch {e0 + 1}/{epochs}") as bar:
                bar.update(st["s"] % steps_per_epoch)
                while st["s"] < stop:
                    batch = pending.result()
                    pending = pool.submit(batch_at, st["s"] + 1) if st["s"] + 1 < stop else None
                    loss, terms = step(batch, st["s"])
                    loss = _finite(loss, "training loss", st["s"] + 1, ckpt)
                    st["s"] += 1
                    for k, v in {"loss": loss, **terms}.items():
                        st["sums"][k] = st["sums"].get(k, 0.0) + float(v)
                    bar.update(1, f"loss {loss:.4f}")
                    end_of_epoch = st["s"] % steps_per_epoch == 0
                    if not end_of_epoch:
                        ckpt.save(st["s"], state_tree(), force=st["s"] == stop)
                    else:
                        break
            if end_of_epoch:
                _epoch_end(st, steps_per_epoch, evaluate, learning_rate, t_epoch, main_process, save_best,
                           metrics_file, progress, epoch_message, ckpt)
                ckpt.save(st["s"], state_tree(), force=True)
    finally:
        pool.shutdown()
        ckpt.close()
    s = st["s"]
    return {"steps": s, "total_steps": total, "best_val_loss": float(st["best_val"]), "finished": s >= total,
            "seconds": time.perf_counter() - t_start}


def _epoch_end(st, steps_per_epoch, evaluate, learning_rate, t_epoch, main_process, save_best, metrics_file,
               progress, epoch_message, ckpt) -> None:
    """Validate, log the epoch's row, export the model if it is the best so far."""
    s = st["s"]
    val = evaluate()
    _finite(val["loss"], "validation loss", s, ckpt)
    row = {"epoch": s // steps_per_epoch, "step": s, "train": {k: v / steps_per_epoch for k, v in st["sums"].items()},
           "val": val, "lr": float(learning_rate(s)), "seconds": time.perf_counter() - t_epoch}
    st["rows"].append(row)
    st["sums"] = {}
    if val["loss"] < st["best_val"]:
        st["best_val"] = val["loss"]
        if main_process:
            save_best(row)
    if main_process:
        write_text(metrics_file, "".join(json.dumps(jsonable(r), allow_nan=False) + "\n" for r in st["rows"]))
        msg = epoch_message(row) if epoch_message else f"val loss {val['loss']:.4f}"
        progress.message(f"epoch {row['epoch']}: train loss {row['train']['loss']:.4f}  {msg}")
