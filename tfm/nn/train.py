"""Training the 3D network on synthetic datasets: minibatch SGD, checkpoints, resume, devices.

Usage (what ``tfm train`` runs)::

    from tfm.nn import train
    cfg = train.TrainConfig(data=("train_a.h5", "train_b.h5"), epochs=20, batch_size=4)
    train.train(cfg, "runs/default")

Data: every sample of one or more :mod:`tfm.synth.dataset` files goes once through the
parameter-free motion front end, exactly as :func:`tfm.nn.infer.predict` prepares a user's
stacks, into a feature cache beside the file (:mod:`tfm.nn.features`); the network then
trains on crops of the LK grid, targets in its units (``u / h`` and ``g = f h / E``). A
seeded split holds out ``val_fraction`` of the samples for validation. Augmentation keeps
the physics: flips of any axis negate that vector component, and the lateral axes (y, x)
may be swapped with their components; z is never permuted with y or x, because the
microscope's PSF is elongated along the optical axis.

Optimiser: :class:`tfm.learn.optim.OptimConfig` (AdamW by default, or SGD with Nesterov
momentum as in Duan et al. 2022; linear warm-up then cosine decay; gradient clipping),
the same machinery as the stiffness CNN's (:mod:`tfm.learn`).

Reproducibility and resume: the batch order of epoch ``e`` is ``rng([seed, e])``'s
permutation and the crops and augmentation of step ``s`` draw from ``rng([seed, e, s])``, so
a run restarted from a checkpoint continues exactly as the uninterrupted one would (tested
bit for bit). Checkpoints (parameters, optimiser state, position, best validation loss)
are saved every ``checkpoint_every`` steps and at each epoch's end; the model with the
lowest validation loss is exported to ``RUN/model`` (see :mod:`tfm.learn.store`), and one
JSON line per epoch goes to ``RUN/metrics.jsonl``.

Devices: the batch is split over all local devices along a ``data`` mesh axis
(``jax.sharding``), parameters are replicated; XLA inserts the gradient all-reduce. With
``distributed=True`` the run calls ``jax.distributed.initialize()`` first (SLURM, Cloud TPU
and ``JAX_COORDINATOR_ADDRESS`` environments are detected by JAX) and each process loads its
own slice of every global batch.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..learn import config as configs
from ..learn import loop, store
from ..learn.optim import OptimConfig, make_optimizer, schedule
from . import features, physics
from .infer import MODEL_KIND
from .unet3d import ModelConfig, UNet3D


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as RUN/config.json)."""

    data: tuple = ()  # synthetic dataset files (tfm synth); any voxel sizes and laws
    model: ModelConfig = ModelConfig()
    loss: physics.LossWeights = physics.LossWeights()
    epochs: int = 20
    batch_size: int = 4  # global batch (split over devices)
    optim: OptimConfig = OptimConfig(learning_rate=2e-3)  # optimiser, schedule, clipping
    val_fraction: float = 0.1  # held out for validation and model selection
    augment: bool = True
    crop: tuple = (24, 32, 32)  # LK voxels (z, y, x), multiples of the network's factor; smaller samples are padded
    seed: int = 0
    checkpoint_every: int = 200  # steps
    max_val_samples: int = 64

    def __post_init__(self):
        if isinstance(self.data, (str, os.PathLike)):
            object.__setattr__(self, "data", (str(self.data),))
        object.__setattr__(self, "data", tuple(str(p) for p in self.data))
        configs.check_counts(self, ("epochs", "batch_size", "checkpoint_every", "max_val_samples"))
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        crop = (self.crop,) * 3 if np.isscalar(self.crop) else tuple(self.crop)
        m = self.model.multiple
        if len(crop) != 3 or any(int(c) != c or c < m or int(c) % m for c in crop):
            raise ValueError(f"crop must be 3 (or 1) positive multiples of {m} for this model (LK voxels), got {self.crop}")
        object.__setattr__(self, "crop", tuple(int(c) for c in crop))


# -- steps -------------------------------------------------------------------------------------


def _loss(model, batch, weights):
    u, g, g_phys, s = model.forward(batch["motion"], batch["context"], batch["nu"], batch["rel"],
                                    need_physics=weights.consistency > 0)
    total, terms = physics.losses(u, g, batch["u"], batch["g"], batch["nu"], batch["rel"], weights, mask=batch["mask"],
                                  g_phys=g_phys, support=s, cell=batch["cell"])
    return total, (terms, u, g)


@nnx.jit(static_argnames=("weights",))
def train_step(model, optimizer, batch, weights):
    (loss, (terms, _, _)), grads = nnx.value_and_grad(_loss, has_aux=True)(model, batch, weights)
    optimizer.update(model, grads)
    return loss, terms


@nnx.jit(static_argnames=("weights",))
def eval_step(model, batch, weights):
    loss, (terms, u, g) = _loss(model, batch, weights)
    m = batch["mask"][..., None]
    axes = (1, 2, 3, 4)
    mean_u = jnp.sum(m * batch["u"], (1, 2, 3), keepdims=True) / jnp.sum(m, (1, 2, 3), keepdims=True)
    var_u = jnp.sum(m * (batch["u"] - mean_u) ** 2, axes)  # relative to the field's variation (not the stack's drift)
    rel_u = jnp.sqrt(jnp.sum(m * (u - batch["u"]) ** 2, axes) / jnp.maximum(var_u, 1e-20))
    rel_g = jnp.sqrt(jnp.sum(m * (g - batch["g"]) ** 2, axes) / jnp.maximum(jnp.sum(m * batch["g"] ** 2, axes), 1e-20))
    return loss, terms, rel_u, rel_g


# -- the loop ----------------------------------------------------------------------------------


def _mesh():
    devices = np.asarray(jax.devices())
    return jax.sharding.Mesh(devices, ("data",))


def _to_global(batch: dict, sharding) -> dict:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _process_slice(items, batch_size: int):
    """This process's contiguous share of a global batch."""
    n, p = jax.process_count(), jax.process_index()
    per = batch_size // n
    return items[p * per : (p + 1) * per]


def _plan(cfg: TrainConfig, progress=None) -> dict:
    """Check the data and the settings against it (before any run file is written) and
    bring every dataset's feature cache up to date."""
    from ..synth.dataset import SyntheticDataset

    if not cfg.data:
        raise ValueError("data: give at least one synthetic dataset file (tfm synth)")
    laws, spacings, n = set(), set(), 0
    for p in cfg.data:
        with SyntheticDataset(p) as ds:  # clear errors for missing / foreign files
            laws.add(ds.material)
            spacings.add(ds.grid.spacing_um)
            n += len(ds)
    n_dev = jax.device_count()
    if cfg.batch_size % n_dev:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the device count {n_dev}")
    n_val = max(1, int(round(cfg.val_fraction * n)))
    if n - n_val < cfg.batch_size:  # before the feature cache is computed: a wrong setting fails at once
        raise ValueError(f"data: {n - n_val} training samples, fewer than batch_size {cfg.batch_size}")
    probe = UNet3D(cfg.model)
    caches = [features.ensure(p, probe, progress) for p in cfg.data]
    data = features.FeatureSet(caches)
    perm = np.random.default_rng([cfg.seed, 999]).permutation(len(data))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return {"data": data, "laws": sorted(laws), "spacings": sorted(spacings), "val": val_idx[: cfg.max_val_samples],
            "train": train_idx, "steps_per_epoch": len(train_idx) // cfg.batch_size}


def train(cfg: TrainConfig, run_dir, progress=None, max_steps: int | None = None, distributed: bool = False) -> dict:
    """Train (or resume) the run in ``run_dir``; returns a summary dict.

    ``max_steps`` stops early (after saving a checkpoint), as a kill would; calling again
    resumes. A run directory holding another configuration is refused. The data and
    settings are checked before anything is written. ``progress``: a
    :class:`tfm.progress.Progress` (or True) for per-epoch bars and messages."""
    if distributed:
        jax.distributed.initialize()
    run = Path(run_dir)
    store.check_run(run, configs.to_dict(cfg))
    plan = _plan(cfg, progress)
    data, val_idx, train_idx = plan["data"], plan["val"], plan["train"]
    steps_per_epoch = plan["steps_per_epoch"]
    total = steps_per_epoch * cfg.epochs
    store.claim_run(run, configs.to_dict(cfg))

    model = UNet3D(cfg.model)
    optimizer = nnx.Optimizer(model, make_optimizer(cfg.optim, total), wrt=nnx.Param)
    mesh = _mesh()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    names = ["loss", "displacement", "force"] + [k for k in ("consistency", "moments", "support") if getattr(cfg.loss, k) > 0]
    meta = {"kind": MODEL_KIND, "laws": plan["laws"], "spacing_um": cfg.model.spacing_um,
            "train_samples": int(len(train_idx)), "val_samples": int(len(val_idx)), "data": list(cfg.data),
            "data_spacing_um": plan["spacings"]}

    def batch_at(s):
        e, k = divmod(s, steps_per_epoch)
        order = np.random.default_rng([cfg.seed, e]).permutation(train_idx)
        items = _process_slice(order[k * cfg.batch_size : (k + 1) * cfg.batch_size], cfg.batch_size)
        return data.load(items, cfg.crop, np.random.default_rng([cfg.seed, e, k]), cfg.augment)

    def save_best(row):
        store.save_model(run / "model", model, MODEL_KIND, configs.to_dict(cfg.model),
                         {**meta, "epoch": row["epoch"], "step": row["step"], "val": row["val"]})

    out = loop.fit(
        run, model, optimizer, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, checkpoint_every=cfg.checkpoint_every,
        names=names, batch_at=batch_at,
        step=lambda batch, s: train_step(model, optimizer, _to_global(batch, sharded), cfg.loss),
        evaluate=lambda: evaluate(model, data, val_idx, cfg, sharded), learning_rate=schedule(cfg.optim, total),
        save_best=save_best, progress=progress, max_steps=max_steps, main_process=jax.process_index() == 0,
        epoch_message=lambda r: f"val loss {r['val']['loss']:.4f}  val rel.err u {r['val']['rel_u']:.3f} f {r['val']['rel_f']:.3f}",
        after_restore=lambda: nnx.update((model, optimizer), jax.device_put(nnx.state((model, optimizer)), replicated)))
    model_dir = run / "model"
    return {**out, "laws": plan["laws"], "model_dir": str(model_dir) if (model_dir / "model.json").is_file() else None}


def evaluate(model, data, indices, cfg: TrainConfig, sharding=None) -> dict:
    """Mean loss terms and per-sample relative L2 errors of u and f over ``indices``
    (centred crops)."""
    n_dev = jax.device_count()
    bs = max(n_dev, (cfg.batch_size // n_dev) * n_dev)
    sums, rel_u, rel_g, n = {}, [], [], 0
    indices = np.asarray(indices)
    if len(indices) == 0:
        raise ValueError("validation needs at least one sample")
    for s in range(0, len(indices), bs):
        real = indices[s : s + bs]
        items = np.concatenate([real, np.repeat(real[-1:], bs - len(real))])  # pad: one compiled shape
        batch = data.load(_process_slice(items, bs), cfg.crop, None, False)
        if sharding is not None:
            batch = _to_global(batch, sharding)
        _, terms, ru, rg = eval_step(model, batch, cfg.loss)
        m = len(real)
        for k, v in terms.items():  # per-term batch means; padding repeats a real sample
            sums[k] = sums.get(k, 0.0) + float(v) * m
        rel_u += list(np.asarray(ru)[:m])
        rel_g += list(np.asarray(rg)[:m])
        n += m
    sums["loss"] = sum(getattr(cfg.loss, k) * v for k, v in sums.items())
    return {**{k: v / n for k, v in sums.items()}, "rel_u": float(np.mean(rel_u)), "rel_f": float(np.mean(rel_g)),
            "samples": n}
