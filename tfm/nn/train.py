"""Training the 3D network on synthetic datasets: minibatch SGD, checkpoints, resume, devices.

Usage (what ``tfm train`` runs)::

    from tfm.nn import train
    cfg = train.TrainConfig(data=("train_a.h5", "train_b.h5"), epochs=20, batch_size=2)
    train.train(cfg, "runs/default")

Data: samples from one or more :mod:`tfm.synth.dataset` files, normalised per sample
(:func:`tfm.nn.unet3d.normalise_pair`), targets in the network's units (``u / h`` voxels,
``g = f h / E``). A seeded split holds out ``val_fraction`` of the samples for validation.
Augmentation keeps the physics: flips of any axis negate that vector component, and the
lateral axes (y, x) may be swapped with their components; z is never permuted with y or x,
because the microscope's PSF is elongated along the optical axis.

Optimiser: :class:`tfm.learn.optim.OptimConfig` (AdamW by default, or SGD with Nesterov
momentum as in Duan et al. 2022; linear warm-up then cosine decay; gradient clipping),
the same machinery as the stiffness CNN's (:mod:`tfm.learn`).

Reproducibility and resume: the batch order of epoch ``e`` is ``rng([seed, e])``'s
permutation and the augmentation of step ``s`` draws from ``rng([seed, e, s])``, so a run
restarted from a checkpoint continues exactly as the uninterrupted one would (tested
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

from ..fields import resample
from ..learn import config as configs
from ..learn import loop, store
from ..learn.optim import OptimConfig, make_optimizer, schedule
from . import physics
from .infer import working_grid, working_pair
from .unet3d import ModelConfig, UNet3D, normalise_pair

MODEL_KIND = "tfm.unet3d"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as RUN/config.json)."""

    data: tuple = ()  # synthetic dataset files (tfm synth); one working shape, or use crop
    model: ModelConfig = ModelConfig()
    loss: physics.LossWeights = physics.LossWeights()
    law: str = "auto"  # constitutive layer: "linear", "neo-hookean" or "auto" (the datasets' law)
    epochs: int = 20
    batch_size: int = 2  # global batch (split over devices)
    optim: OptimConfig = OptimConfig(learning_rate=2e-3)  # optimiser, schedule, clipping
    val_fraction: float = 0.1  # held out for validation and model selection
    augment: bool = True
    crop: int | None = None  # random cubic crops of this size (a multiple of 2^(levels-1)); None = whole volumes
    seed: int = 0
    checkpoint_every: int = 200  # steps
    max_val_samples: int = 64

    def __post_init__(self):
        if isinstance(self.data, (str, os.PathLike)):
            object.__setattr__(self, "data", (str(self.data),))
        object.__setattr__(self, "data", tuple(str(p) for p in self.data))
        if self.law not in ("auto", *physics.LAWS):
            raise ValueError(f"law must be 'auto' or one of {physics.LAWS}, got {self.law!r}")
        configs.check_counts(self, ("epochs", "batch_size", "checkpoint_every", "max_val_samples"))
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.crop is not None and (int(self.crop) != self.crop or self.crop < self.model.multiple
                                      or int(self.crop) % self.model.multiple):
            raise ValueError(f"crop must be a positive multiple of {self.model.multiple} for this model, got {self.crop}")


# -- data ------------------------------------------------------------------------------------


class Samples:
    """The samples of several dataset files behind one index, on one working voxel size.

    Datasets that share one isotropic voxel size are used as stored (that size becomes the
    model's). Otherwise every sample is brought to ``spacing_um`` (isotropic; the model's)
    exactly as :func:`tfm.nn.infer.predict` brings a user's stacks: both volumes normalised
    on their own voxels, then anti-aliased and resampled (:func:`tfm.nn.infer.working_pair`),
    with the displacement and force resampled beside them -- so a network trained on the
    anisotropic voxels of ``tfm synth --preset acquisition`` sees what it will see on a
    microscope's stacks. Resampled samples are kept in memory up to ``cache_bytes``."""

    def __init__(self, paths, spacing_um=(1.0, 1.0, 1.0), cache_bytes: float = 4e9):
        from ..synth.dataset import SyntheticDataset

        if not paths:
            raise ValueError("data: give at least one synthetic dataset file (tfm synth)")
        self.sets = [SyntheticDataset(p) for p in paths]
        self.index = [(k, i) for k, ds in enumerate(self.sets) for i in range(len(ds))]
        laws = {ds.material for ds in self.sets}
        self.law = laws.pop() if len(laws) == 1 else "mixed"
        spacings = {ds.grid.spacing_um for ds in self.sets}
        if len(spacings) == 1 and len(set(next(iter(spacings)))) == 1:
            self.spacing_um = spacings.pop()
        else:
            self.spacing_um = tuple(float(h) for h in spacing_um)
            if len(set(self.spacing_um)) != 1:
                raise ValueError(f"data: datasets of voxel sizes {sorted(spacings)} are resampled to the model's voxel "
                                 f"size, which must be isotropic; got spacing_um {self.spacing_um}")
        self.work = [working_grid(ds.grid, self.spacing_um) for ds in self.sets]
        self.shapes = {w.shape for w in self.work}
        self.cache, self.cache_bytes, self._cached = {}, float(cache_bytes), 0

    def __len__(self) -> int:
        return len(self.index)

    def _sample(self, k: int, i: int):
        """Sample ``i`` of set ``k`` on the working grid: (ref, dfm, u voxels, g); the
        volumes normalised here only when they were resampled (else per crop, in load)."""
        if (k, i) in self.cache:
            return self.cache[(k, i)]
        h5, grid, work = self.sets[k]._h5, self.sets[k].grid, self.work[k]
        h = self.spacing_um[0]
        ref, dfm = h5["reference"][i], h5["deformed"][i]
        u = h5["displacement"][i] / h
        g = h5["force"][i] * (h / float(h5["youngs_modulus_pa"][i]))
        if work == grid:
            return ref, dfm, u, g
        ref, dfm, _ = working_pair(ref, dfm, grid, self.spacing_um)
        out = (ref, dfm, resample(u.astype(np.float32), grid, work), resample(g.astype(np.float32), grid, work))
        size = sum(a.nbytes for a in out)
        if self._cached + size <= self.cache_bytes:
            self.cache[(k, i)] = out
            self._cached += size
        return out

    def load(self, items, rng: np.random.Generator | None, crop: int | None, augment: bool) -> dict:
        """Stack samples ``items`` into network-unit arrays, cropped and augmented by ``rng``."""
        out = {"reference": [], "deformed": [], "u": [], "g": [], "nu": []}
        for item in items:
            k, i = self.index[int(item)]
            ref, dfm, u, g = self._sample(k, i)
            if crop is not None:
                if any(n < crop for n in ref.shape):
                    raise ValueError(f"crop {crop} is larger than the samples of {self.sets[k].path} {ref.shape} "
                                     "(on the working grid)")
                o = [int(rng.integers(0, n - crop + 1)) if rng is not None else (n - crop) // 2 for n in ref.shape]
                sl = tuple(slice(a, a + crop) for a in o)
                ref, dfm, u, g = ref[sl], dfm[sl], u[sl], g[sl]
            if self.work[k] == self.sets[k].grid:
                ref, dfm = normalise_pair(ref, dfm)
            if augment and rng is not None:
                ref, dfm, u, g = augment_sample(rng, ref, dfm, u, g)
            for key, v in (("reference", ref), ("deformed", dfm), ("u", u), ("g", g)):
                out[key].append(np.ascontiguousarray(v, np.float32))
            out["nu"].append(np.float32(self.sets[k]._h5["poisson_ratio"][i]))
        return {k: np.stack(v) for k, v in out.items()}


def augment_sample(rng: np.random.Generator, ref, dfm, u, g):
    """Random flips (any axis) and a lateral y/x swap, transforming vector components too."""
    u, g = u.copy(), g.copy()
    for ax in range(3):
        if rng.random() < 0.5:
            ref, dfm, u, g = (np.flip(a, ax) for a in (ref, dfm, u, g))
            u[..., ax] *= -1
            g[..., ax] *= -1
    if rng.random() < 0.5:
        ref, dfm = (np.swapaxes(a, 1, 2) for a in (ref, dfm))
        u, g = (np.swapaxes(a, 1, 2)[..., [0, 2, 1]] for a in (u, g))
    return ref, dfm, u, g


# -- steps -------------------------------------------------------------------------------------


@nnx.jit(static_argnames=("weights", "law"))
def train_step(model, optimizer, batch, weights, law):
    def loss_fn(model):
        u, g = model.apply_pair(batch["reference"], batch["deformed"], batch["nu"])
        return physics.losses(u, g, batch["u"], batch["g"], batch["nu"], weights, law)

    (loss, terms), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, terms


@nnx.jit(static_argnames=("weights", "law"))
def eval_step(model, batch, weights, law):
    u, g = model.apply_pair(batch["reference"], batch["deformed"], batch["nu"])
    loss, terms = physics.losses(u, g, batch["u"], batch["g"], batch["nu"], weights, law)
    rel_u = jnp.sqrt(jnp.sum((u - batch["u"]) ** 2, (1, 2, 3, 4)) / jnp.maximum(jnp.sum(batch["u"] ** 2, (1, 2, 3, 4)), 1e-20))
    rel_g = jnp.sqrt(jnp.sum((g - batch["g"]) ** 2, (1, 2, 3, 4)) / jnp.maximum(jnp.sum(batch["g"] ** 2, (1, 2, 3, 4)), 1e-20))
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


def _plan(cfg: TrainConfig) -> dict:
    """Open and check the data and the settings against it (before any file is written)."""
    data = Samples(cfg.data, cfg.model.spacing_um)
    law = data.law if cfg.law == "auto" else cfg.law
    if law == "mixed":
        raise ValueError("data: datasets with different matrix laws; set law= explicitly")
    if cfg.crop is None and len(data.shapes) != 1:
        raise ValueError(f"data: samples of several shapes {sorted(data.shapes)}; set crop= to train on crops")
    cfg_model = dataclasses.replace(cfg.model, spacing_um=data.spacing_um) if cfg.model.spacing_um != data.spacing_um else cfg.model
    shape = (cfg.crop,) * 3 if cfg.crop is not None else next(iter(data.shapes))
    if any(n % cfg_model.multiple for n in shape):
        raise ValueError(f"data: sample shape {shape} is not a multiple of {cfg_model.multiple}; set crop=")
    n_dev = jax.device_count()
    if cfg.batch_size % n_dev:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the device count {n_dev}")
    perm = np.random.default_rng([cfg.seed, 999]).permutation(len(data))
    n_val = max(1, int(round(cfg.val_fraction * len(data))))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if len(train_idx) < cfg.batch_size:
        raise ValueError(f"data: {len(train_idx)} training samples, fewer than batch_size {cfg.batch_size}")
    return {"data": data, "law": law, "model": cfg_model, "val": val_idx[: cfg.max_val_samples], "train": train_idx,
            "steps_per_epoch": len(train_idx) // cfg.batch_size}


def train(cfg: TrainConfig, run_dir, progress=None, max_steps: int | None = None, distributed: bool = False) -> dict:
    """Train (or resume) the run in ``run_dir``; returns a summary dict.

    ``max_steps`` stops early (after saving a checkpoint), as a kill would; calling again
    resumes. A run directory holding another configuration is refused. The data and
    settings are checked before anything is written. ``progress``: a
    :class:`tfm.progress.Progress` (or True) for per-epoch bars and messages."""
    if distributed:
        jax.distributed.initialize()
    plan = _plan(cfg)
    data, law, cfg_model, val_idx, train_idx = plan["data"], plan["law"], plan["model"], plan["val"], plan["train"]
    steps_per_epoch = plan["steps_per_epoch"]
    total = steps_per_epoch * cfg.epochs
    run = Path(run_dir)
    store.claim_run(run, configs.to_dict(cfg))

    model = UNet3D(cfg_model)
    optimizer = nnx.Optimizer(model, make_optimizer(cfg.optim, total), wrt=nnx.Param)
    mesh = _mesh()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    names = ["loss", "displacement", "force"] + [k for k in ("consistency", "equilibrium") if getattr(cfg.loss, k) > 0]
    meta = {"kind": MODEL_KIND, "law": law, "spacing_um": data.spacing_um, "train_samples": int(len(train_idx)),
            "val_samples": int(len(val_idx)), "data": list(cfg.data),
            "data_spacing_um": sorted({ds.grid.spacing_um for ds in data.sets})}

    def batch_at(s):
        e, k = divmod(s, steps_per_epoch)
        order = np.random.default_rng([cfg.seed, e]).permutation(train_idx)
        items = _process_slice(order[k * cfg.batch_size : (k + 1) * cfg.batch_size], cfg.batch_size)
        return data.load(items, np.random.default_rng([cfg.seed, e, k]), cfg.crop, cfg.augment)

    def save_best(row):
        store.save_model(run / "model", model, MODEL_KIND, configs.to_dict(cfg_model),
                         {**meta, "epoch": row["epoch"], "step": row["step"], "val": row["val"]})

    out = loop.fit(
        run, model, optimizer, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, checkpoint_every=cfg.checkpoint_every,
        names=names, batch_at=batch_at,
        step=lambda batch, s: train_step(model, optimizer, _to_global(batch, sharded), cfg.loss, law),
        evaluate=lambda: evaluate(model, data, val_idx, cfg, law, sharded), learning_rate=schedule(cfg.optim, total),
        save_best=save_best, progress=progress, max_steps=max_steps, main_process=jax.process_index() == 0,
        epoch_message=lambda r: f"val loss {r['val']['loss']:.4f}  val rel.err u {r['val']['rel_u']:.3f} f {r['val']['rel_f']:.3f}",
        after_restore=lambda: nnx.update((model, optimizer), jax.device_put(nnx.state((model, optimizer)), replicated)))
    model_dir = run / "model"
    return {**out, "law": law, "model_dir": str(model_dir) if (model_dir / "model.json").is_file() else None}


def evaluate(model, data: Samples, indices, cfg: TrainConfig, law: str, sharding=None) -> dict:
    """Mean loss terms and per-sample relative L2 errors of u and f over ``indices``."""
    n_dev = jax.device_count()
    bs = max(n_dev, (cfg.batch_size // n_dev) * n_dev)
    sums, rel_u, rel_g, n = {}, [], [], 0
    indices = np.asarray(indices)
    if len(indices) == 0:
        raise ValueError("validation needs at least one sample")
    for s in range(0, len(indices), bs):
        real = indices[s : s + bs]
        items = np.concatenate([real, np.repeat(real[-1:], bs - len(real))])  # pad: one compiled shape
        batch = data.load(_process_slice(items, bs), None, cfg.crop, False)
        if sharding is not None:
            batch = _to_global(batch, sharding)
        _, terms, ru, rg = eval_step(model, batch, cfg.loss, law)
        m = len(real)
        for k, v in terms.items():  # per-term batch means; padding repeats a real sample
            sums[k] = sums.get(k, 0.0) + float(v) * m
        rel_u += list(np.asarray(ru)[:m])
        rel_g += list(np.asarray(rg)[:m])
        n += m
    sums["loss"] = sum(getattr(cfg.loss, k) * v for k, v in sums.items())
    return {**{k: v / n for k, v in sums.items()}, "rel_u": float(np.mean(rel_u)), "rel_f": float(np.mean(rel_g)),
            "samples": n}
