"""The epoch loop shared by every tfm network (the 3D force network, the stiffness CNN).

:func:`fit` runs minibatch steps with the next batch prepared on a background thread,
keeps per-epoch running sums of the loss terms, evaluates on the validation split at
each epoch's end, exports the model whenever the validation loss improves, appends one
JSON line per epoch to ``RUN/metrics.jsonl`` and checkpoints (orbax, :mod:`tfm.nn.store`)
every ``checkpoint_every`` steps and at each epoch's end. The checkpoint holds the
parameters, the optimiser state, the step, the best validation loss and the epoch's
running sums, so a run started again after a kill continues exactly as if never stopped,
provided ``batch_at`` and ``step`` are functions of the step index (both trainers draw
batch order and augmentation from ``rng([seed, epoch, ...])``).
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
from flax import nnx

from ..progress import Progress
from . import store


def fit(run: Path, model: nnx.Module, optimizer: nnx.Optimizer, *, epochs: int, steps_per_epoch: int,
        checkpoint_every: int, names: list, batch_at: Callable, step: Callable, evaluate: Callable,
        learning_rate: Callable, save_best: Callable, epoch_message: Callable | None = None, progress: bool = True,
        max_steps: int | None = None, main_process: bool = True, after_restore: Callable | None = None) -> dict:
    """Train (or resume) ``model`` in ``run``.

    Args:
      names: the loss terms ``step`` returns (``"loss"`` first), checkpointed as running sums.
      batch_at: step index -> batch (runs on a background thread, one step ahead).
      step: (batch, step index) -> (loss, {term: value}); updates model and optimiser.
      evaluate: () -> validation dict with a ``"loss"`` entry.
      learning_rate: step index -> learning rate (logged).
      save_best: (epoch row) -> None; exports the model (called on the main process only).
      epoch_message: (epoch row) -> the line printed after each epoch.
      max_steps: stop after this many steps in total (after a checkpoint), as a kill would.
      after_restore: () -> None, called once the state is initialised or restored (e.g. to
        place it on devices).
    """
    total = steps_per_epoch * epochs
    s, best_val, sums = 0, np.inf, {}

    def state_tree():  # everything a resumed run needs to continue exactly
        return {"model": nnx.to_pure_dict(nnx.state(model, nnx.Param)), "opt": nnx.to_pure_dict(nnx.state(optimizer)),
                "step": np.int64(s), "best_val": np.float64(best_val),
                "epoch_sums": {k: np.float64(sums.get(k, 0.0)) for k in names}}

    ckpt = store.Checkpoints(run / "checkpoints", checkpoint_every)
    metrics_file = run / "metrics.jsonl"
    tree, rows = store.resume(ckpt, state_tree(), model, optimizer, metrics_file)
    if tree is not None:
        s, best_val = int(tree["step"]), float(tree["best_val"])
        sums = {k: float(v) for k, v in tree["epoch_sums"].items()} if s % steps_per_epoch else {}
    if after_restore is not None:
        after_restore()
    stop = total if max_steps is None else min(total, int(max_steps))
    pool = concurrent.futures.ThreadPoolExecutor(1)
    t_start = time.perf_counter()
    pending = pool.submit(batch_at, s) if s < stop else None
    bar, t_epoch = None, time.perf_counter()
    try:
        while s < stop:
            if bar is None:
                bar = Progress(steps_per_epoch, f"epoch {s // steps_per_epoch + 1}/{epochs}", enabled=progress and main_process)
                bar.update(s % steps_per_epoch)
                t_epoch = time.perf_counter()
            batch = pending.result()
            pending = pool.submit(batch_at, s + 1) if s + 1 < stop else None
            loss, terms = step(batch, s)
            s += 1
            for k, v in {"loss": loss, **terms}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.update(1, f"loss {float(loss):.4f}")
            end_of_epoch = s % steps_per_epoch == 0
            if end_of_epoch:
                bar.__exit__(None, None, None)
                bar = None
                val = evaluate()
                row = {"epoch": s // steps_per_epoch, "step": s, "train": {k: v / steps_per_epoch for k, v in sums.items()},
                       "val": val, "lr": float(learning_rate(s)), "seconds": time.perf_counter() - t_epoch}
                rows.append(row)
                sums = {}
                if val["loss"] < best_val:
                    best_val = val["loss"]
                    if main_process:
                        save_best(row)
                if main_process:
                    store.write_text(metrics_file, "".join(json.dumps(r) + "\n" for r in rows))
                    if progress:
                        msg = epoch_message(row) if epoch_message else f"val loss {val['loss']:.4f}"
                        print(f"epoch {row['epoch']}: train loss {row['train']['loss']:.4f}  {msg}", flush=True)
            ckpt.save(s, state_tree(), force=end_of_epoch or s == stop)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
        pool.shutdown()
        ckpt.close()
    return {"steps": s, "total_steps": total, "best_val_loss": float(best_val), "finished": s >= total,
            "seconds": time.perf_counter() - t_start}
