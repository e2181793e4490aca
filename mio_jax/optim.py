"""Optimizers and the learning-rate schedule, built from optax.

LARS (the SimCLR/MIO recipe), SGD with momentum and AdamW share one rule:
biases and normalisation parameters (every parameter with fewer than two
dimensions: Dense biases, BatchNorm scales and biases) get no weight decay
and, for LARS, no trust-ratio adaptation.
"""
from typing import Any, Callable

import jax
import ml_collections
import optax


def decay_mask(params: Any) -> Any:
  """True for weight matrices / conv kernels, False for biases and norm params."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def learning_rate_schedule(config: ml_collections.ConfigDict, *,
                           total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from 0, then cosine decay to 0 at `total_steps`."""
  opt = config.optimizer
  if opt.lr_scaling == "linear":
    peak = opt.base_lr * config.batch_size / 256
  elif opt.lr_scaling == "none":
    peak = opt.base_lr
  else:
    raise ValueError(f"Unknown optimizer.lr_scaling {opt.lr_scaling!r}; "
                     "valid: linear, none.")
  warmup_steps = min(int(round(opt.warmup_epochs * steps_per_epoch)),
                     total_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
      # optax needs a non-empty cosine phase; a run shorter than its warm-up
      # (a smoke test) just ends before the peak.
      decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)


def _lars(opt: ml_collections.ConfigDict,
          lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.lars(lr, weight_decay=opt.weight_decay,
                    weight_decay_mask=decay_mask,
                    trust_coefficient=opt.trust_coefficient,
                    trust_ratio_mask=decay_mask, momentum=opt.momentum)


def _sgd(opt: ml_collections.ConfigDict,
         lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.chain(
      optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
      optax.sgd(lr, momentum=opt.momentum))


def _adamw(opt: ml_collections.ConfigDict,
           lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.adamw(lr, weight_decay=opt.weight_decay, mask=decay_mask)


OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict, optax.Schedule],
                               optax.GradientTransformation]] = {
    "lars": _lars,
    "sgd": _sgd,
    "adamw": _adamw,
}


def make_optimizer(config: ml_collections.ConfigDict, *, total_steps: int,
                   steps_per_epoch: int
                  ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer named by `config.optimizer.name` and its lr schedule."""
  name = config.optimizer.name
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer.name {name!r}; valid: "
                     f"{', '.join(OPTIMIZERS)}.")
  schedule = learning_rate_schedule(config, total_steps=total_steps,
                                    steps_per_epoch=steps_per_epoch)
  tx = OPTIMIZERS[name](config.optimizer, schedule)
  clip = config.optimizer.grad_clip_norm
  if clip is not None:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx, schedule
