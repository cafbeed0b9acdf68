"""The optimiser of every tfm network, from one frozen :class:`OptimConfig`.

AdamW (default) or SGD with Nesterov momentum (as in Duan et al. 2022), after clipping
the gradient by its global norm, on a schedule of linear warm-up to ``learning_rate``
then cosine decay to 1 % of it at the last step (optax).
"""

from __future__ import annotations

import dataclasses
import math

import optax

OPTIMIZERS = ("adamw", "sgd")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """How the parameters are updated (embedded in each trainer's configuration)."""

    optimizer: str = "adamw"  # "adamw" or "sgd" (Nesterov momentum)
    learning_rate: float = 1e-3  # peak, after warm-up
    warmup_steps: int = 100  # linear warm-up from 0
    weight_decay: float = 1e-4  # decoupled (AdamW) or added to the gradient (SGD)
    momentum: float = 0.9  # sgd only
    grad_clip: float = 1.0  # global-norm clipping of the gradient

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("learning_rate", "grad_clip"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        for name in ("weight_decay", "momentum"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if isinstance(self.warmup_steps, bool) or int(self.warmup_steps) != self.warmup_steps or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a whole number >= 0, got {self.warmup_steps!r}")


def schedule(cfg: OptimConfig, total_steps: int):
    """Linear warm-up to ``learning_rate``, cosine decay to 1 % of it at ``total_steps``."""
    warm = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warm, max(total_steps, warm + 1),
                                              0.01 * cfg.learning_rate)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """Clipped AdamW or Nesterov SGD on :func:`schedule`."""
    sched = schedule(cfg, total_steps)
    if cfg.optimizer == "adamw":
        opt = optax.adamw(sched, weight_decay=cfg.weight_decay)
    else:
        opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.sgd(sched, momentum=cfg.momentum, nesterov=True))
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
