"""Training, prediction and evaluation of the stiffness CNN.

Shares the 3D network's machinery (:mod:`tfm.learn`): the same optax optimiser factory (AdamW or Nesterov SGD, warm-up + cosine decay, gradient
clipping), the same orbax checkpoints with resume (a killed run restarted with the same
command continues exactly: epoch order from ``rng([seed, epoch])``, augmentation from
``rng([seed, epoch, step])``, dropout keys from ``fold_in(key(seed), step)``), the same
atomic model export with ``model.json`` and metrics as JSON lines.

Loss: mean squared error of log10 stiffness (rows with ``stiffness_pa``) plus
``class_weight`` times the cross-entropy of the class (rows with a class). Splits are by
group (donor/line, :func:`tfm.stiffness.data.group_split`) and are written to
``RUN/splits.json``; model selection uses the validation split only, and the test split
is touched only by :func:`evaluate`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ..atomic import atomic_path, write_json
from ..learn import config as configs
from ..learn import loop, store
from ..learn.optim import OptimConfig, make_optimizer, schedule
from . import data as sdata
from . import metrics as smetrics
from .model import TASKS, NetConfig, StiffnessNet

MODEL_KIND = "tfm.stiffness"


@dataclasses.dataclass(frozen=True)
class StiffnessConfig:
    """Everything that defines a stiffness training run (saved as RUN/config.json)."""

    csv: str = ""
    size: int = 128  # image window (pixels), a multiple of 16
    scale: float = 1.0  # resample images by this factor first
    task: str = "both"  # "regression", "classification" or "both"
    net: NetConfig = NetConfig()
    thresholds_pa: tuple | None = None  # derive classes from stiffness bins instead of the class column
    epochs: int = 30
    batch_size: int = 32
    optim: OptimConfig = OptimConfig(learning_rate=1e-3, warmup_steps=50)  # optimiser, schedule, clipping
    class_weight: float = 1.0
    splits: tuple = (0.7, 0.15, 0.15)  # train, validation, test fractions (by group)
    split_seed: int = 0
    seed: int = 0
    augment: bool = True
    max_saturated: float = 0.01
    checkpoint_every: int = 200

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        configs.check_counts(self, ("epochs", "batch_size", "checkpoint_every", "size"))
        if len(self.splits) != 3:
            raise ValueError(f"splits must be (train, validation, test) fractions, got {self.splits}")
        if self.thresholds_pa is not None:
            object.__setattr__(self, "thresholds_pa", tuple(float(t) for t in self.thresholds_pa))
        object.__setattr__(self, "splits", tuple(float(f) for f in self.splits))


def load_data(cfg: StiffnessConfig, progress=None) -> sdata.ImageSet:
    return sdata.load(cfg.csv, cfg.size, cfg.scale, cfg.max_saturated, thresholds_pa=cfg.thresholds_pa, progress=progress)


def _loss(out, batch, task: str, class_weight: float):
    terms = {}
    total = 0.0
    if task in ("regression", "both"):
        m = batch["has_e"]
        terms["regression"] = jnp.sum(m * (out["log_stiffness"] - batch["log_e"]) ** 2) / jnp.maximum(jnp.sum(m), 1.0)
        total = total + terms["regression"]
    if task in ("classification", "both"):
        m = batch["has_c"]
        ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], jnp.maximum(batch["cls"], 0))
        terms["classification"] = jnp.sum(m * ce) / jnp.maximum(jnp.sum(m), 1.0)
        total = total + class_weight * terms["classification"]
    return total, terms


@nnx.jit(static_argnames=("task", "class_weight"))
def train_step(model, optimizer, batch, key, task, class_weight):
    def loss_fn(model):
        return _loss(model(batch["x"], key), batch, task, class_weight)

    (loss, terms), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, terms


@nnx.jit
def forward(model, x):
    """The network's outputs for a batch of preprocessed images (N, H, W, 1), jitted."""
    return model(x)


def _batch(ds: sdata.ImageSet, idx, rng=None) -> dict:
    x = ds.images[idx]
    if rng is not None:
        x = sdata.augment(rng, x)
    e = ds.log_stiffness[idx]
    c = ds.classes[idx]
    return {"x": x, "log_e": np.nan_to_num(e).astype(np.float32), "has_e": np.isfinite(e).astype(np.float32),
            "cls": c.astype(np.int32), "has_c": (c >= 0).astype(np.float32)}


def predict_arrays(model: StiffnessNet, images: np.ndarray, batch_size: int = 64) -> dict:
    """(N, H, W, 1) preprocessed images -> stiffness_pa (N,) and class probabilities (N, K)."""
    n = len(images)
    if n == 0:
        raise ValueError("images is empty")
    bs = min(batch_size, n)
    logs, probs = [], []
    for s in range(0, n, bs):
        x = images[s : s + bs]
        m = len(x)
        if m < bs:  # one compiled shape
            x = np.concatenate([x, np.repeat(x[-1:], bs - m, 0)])
        out = forward(model, jnp.asarray(x))
        logs.append(np.asarray(out["log_stiffness"])[:m])
        if "logits" in out:
            probs.append(np.asarray(jax.nn.softmax(out["logits"]))[:m])
    res = {"stiffness_pa": 1000.0 * 10.0 ** np.concatenate(logs)}
    if probs:
        res["proba"] = np.concatenate(probs)
    return res


def _val_loss(model, ds, cfg) -> dict:
    pred = predict_arrays(model, ds.images)
    out = {}
    loss = 0.0
    if cfg.task in ("regression", "both") and np.isfinite(ds.log_stiffness).any():
        m = np.isfinite(ds.log_stiffness)
        out["regression"] = float(np.mean((np.log10(pred["stiffness_pa"][m] / 1000.0) - ds.log_stiffness[m]) ** 2))
        loss += out["regression"]
    if cfg.task in ("classification", "both") and (ds.classes >= 0).any():
        m = ds.classes >= 0
        p = np.clip(pred["proba"][m, ds.classes[m]], 1e-7, 1)
        out["classification"] = float(-np.mean(np.log(p)))
        out["accuracy"] = float(np.mean(pred["proba"][m].argmax(1) == ds.classes[m]))
        loss += cfg.class_weight * out["classification"]
    out["loss"] = loss
    return out


def train(cfg: StiffnessConfig, run_dir, progress=None, max_steps: int | None = None,
          data: sdata.ImageSet | None = None) -> dict:
    """Train (or resume) the run in ``run_dir``; returns a summary. ``data``: preloaded images
    (as the hyperparameter search does), else read from ``cfg.csv``. Data and settings are
    checked before anything is written. ``progress``: a :class:`tfm.progress.Progress`."""
    ds = load_data(cfg, progress) if data is None else data
    if cfg.task != "regression" and len(ds.class_names) < 2:
        raise ValueError(f"task {cfg.task!r} needs >= 2 classes; the data have {list(ds.class_names)}")
    if cfg.task != "regression" and cfg.net.n_classes != len(ds.class_names):
        cfg = dataclasses.replace(cfg, net=dataclasses.replace(cfg.net, n_classes=len(ds.class_names)))
    if cfg.task == "regression" and cfg.net.n_classes:
        cfg = dataclasses.replace(cfg, net=dataclasses.replace(cfg.net, n_classes=0))
    if cfg.size % 2 ** len(cfg.net.widths):
        raise ValueError(f"size {cfg.size} must be a multiple of 2^len(widths) = {2 ** len(cfg.net.widths)}")
    tr, va, te = sdata.group_split(ds.groups, cfg.splits, cfg.split_seed)
    run = Path(run_dir)
    store.claim_run(run, configs.to_dict(cfg))
    write_json(run / "splits.json", {k: [ds.files[i] for i in v] for k, v in (("train", tr), ("validation", va), ("test", te))},
               indent=1)
    bs = min(cfg.batch_size, len(tr))
    steps_per_epoch = max(1, len(tr) // bs)
    total = steps_per_epoch * cfg.epochs
    model = StiffnessNet(cfg.net)
    optimizer = nnx.Optimizer(model, make_optimizer(cfg.optim, total), wrt=nnx.Param)
    val = ds.subset(va)

    names = ["loss"] + [t for t in ("regression", "classification") if cfg.task in (t, "both")]
    card = {"class_names": list(ds.class_names), "size": cfg.size, "scale": cfg.scale, "task": cfg.task,
            "train_samples": int(len(tr)), "val_samples": int(len(va)), "test_samples": int(len(te)),
            "data": cfg.csv, "excluded": len(ds.excluded)}
    key0 = jax.random.key(cfg.seed)

    def batch_at(s):
        e, k = divmod(s, steps_per_epoch)
        order = np.random.default_rng([cfg.seed, e]).permutation(tr)
        idx = np.sort(order[k * bs : (k + 1) * bs])
        return _batch(ds, idx, np.random.default_rng([cfg.seed, e, k]) if cfg.augment else None)

    def save_best(row):
        store.save_model(run / "model", model, MODEL_KIND, configs.to_dict(cfg.net),
                         {**card, "epoch": row["epoch"], "step": row["step"], "val": row["val"]})

    out = loop.fit(
        run, model, optimizer, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, checkpoint_every=cfg.checkpoint_every,
        names=names, batch_at=batch_at,
        step=lambda batch, s: train_step(model, optimizer, batch, jax.random.fold_in(key0, s), cfg.task, cfg.class_weight),
        evaluate=lambda: _val_loss(model, val, cfg), learning_rate=schedule(cfg.optim, total), save_best=save_best,
        progress=progress, max_steps=max_steps)
    return {**out, "model_dir": str(run / "model"), "excluded": ds.excluded}


def load_model(path) -> tuple[StiffnessNet, dict]:
    """A trained stiffness model (saved-model or run directory) and its ``model.json``."""
    path, desc = store.open_model(path, MODEL_KIND)
    model = StiffnessNet(configs.from_dict(NetConfig, desc["config"]))
    store.load_weights(path, model)
    return model, desc


def predict(model_path, source=None, images=None, progress=None) -> dict:
    """Predictions of a trained model for ``source`` (a labels CSV, a CSV with just a
    ``file`` column, or a folder of images) or for raw 2D ``images`` (arrays). Returns
    ``files``, ``stiffness_pa``, ``proba`` (classification models), ``class_names``,
    ``data`` (the preprocessed :class:`~tfm.stiffness.data.ImageSet`, None for arrays)."""
    model, desc = load_model(model_path)
    c = desc["card"]
    if images is not None:
        x = np.stack([sdata.preprocess(np.asarray(im), c["size"], c.get("scale", 1.0)) for im in images])[..., None]
        files, ds = [f"image {i}" for i in range(len(x))], None
    elif source is not None:
        ds = sdata.load(source, c["size"], c.get("scale", 1.0), class_names=c["class_names"] or None, progress=progress,
                        require_labels=False)
        x, files = ds.images, ds.files
    else:
        raise ValueError("predict needs source (a CSV or a folder of images) or images")
    out = predict_arrays(model, x)
    out.update({"files": files, "class_names": c["class_names"], "data": ds})
    return out


def evaluate(run_or_model, csv_path=None, split: str = "test", progress=None) -> dict:
    """Metrics of a trained model on a split of its run (``split``: train, validation, test)
    or on all of another labelled folder (``csv_path``): ``n``, ``split``, ``regression``
    and/or ``classification`` (see :mod:`tfm.stiffness.metrics`). :func:`evaluation` also
    returns the images and predictions (for per-image tables and ROC figures)."""
    return evaluation(run_or_model, csv_path, split, progress)[0]


def evaluation(run_or_model, csv_path=None, split: str = "test", progress=None):
    """``(metrics, images, predictions)``: :func:`evaluate`'s metrics, the evaluated
    :class:`~tfm.stiffness.data.ImageSet` and :func:`predict_arrays`' output."""
    run = Path(run_or_model)
    model_dir = run / "model" if (run / "model").is_dir() else run
    model, desc = load_model(model_dir)
    c = desc["card"]
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be 'train', 'validation' or 'test', got {split!r}")
    if csv_path is None:
        splits_file = run / "splits.json"
        if not splits_file.exists():
            raise ValueError(f"{run} is not a run directory with splits.json; pass csv_path")
        cfg = configs.from_dict(StiffnessConfig, json.loads((run / "config.json").read_text()))
        ds = load_data(cfg, progress)
        keep = set(json.loads(splits_file.read_text())[split])
        ds = ds.subset([i for i, f in enumerate(ds.files) if f in keep])
    else:
        ds = sdata.load(csv_path, c["size"], c.get("scale", 1.0), class_names=c["class_names"] or None, progress=progress)
    pred = predict_arrays(model, ds.images)
    res = {"n": len(ds), "split": split if csv_path is None else str(csv_path)}
    m = np.isfinite(ds.log_stiffness)
    if m.sum() >= 2:
        res["regression"] = smetrics.regression_metrics(1000.0 * 10.0 ** ds.log_stiffness[m], pred["stiffness_pa"][m])
    if "proba" in pred and (ds.classes >= 0).sum() >= 2:
        mc = ds.classes >= 0
        res["classification"] = smetrics.classification_metrics(ds.classes[mc], pred["proba"][mc], ds.class_names)
    return res, ds, pred


def write_predictions(path, files, pred: dict, ds: sdata.ImageSet | None = None) -> None:
    import csv

    names = pred.get("class_names") or (list(ds.class_names) if ds is not None else [])
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        head = ["file", "stiffness_pa_pred"] + ([f"p_{n}" for n in names] + ["class_pred"] if "proba" in pred else [])
        if ds is not None:
            head += ["stiffness_pa_true", "class_true"]
        w.writerow(head)
        for i, f in enumerate(files):
            row = [f, f"{pred['stiffness_pa'][i]:.2f}"]
            if "proba" in pred:
                row += [f"{p:.4f}" for p in pred["proba"][i]] + [names[int(np.argmax(pred["proba"][i]))]]
            if ds is not None:
                le, c = ds.log_stiffness[i], ds.classes[i]
                row += [f"{1000 * 10 ** le:.2f}" if np.isfinite(le) else "", ds.class_names[c] if c >= 0 else ""]
            w.writerow(row)
