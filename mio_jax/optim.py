"""Every optimizer of mio_jax and its learning-rate schedule, from optax.

  * pretraining (`make_optimizer`, config.optimizer): LARS (the SimCLR/MIO
    recipe), SGD with momentum or AdamW, warm-up + cosine;
  * the classifiers trained on a backbone (`classifier_optimizer`: the
    supervised protocols and the feature probe): SGD with (Nesterov)
    momentum and their schedule (SimCLR's linear head and fine-tuning);
  * the online probe inside the pretraining step (`online_probe_optimizer`).

They share one rule: biases and normalisation parameters (every parameter
with fewer than two dimensions: Dense biases, BatchNorm and LayerNorm
scales and biases) and a ViT's position embedding and class token get no
weight decay and, for LARS, no trust-ratio adaptation (MoCo v3, DINO).
Fine-tuning a ViT may scale each layer's learning rate (`layer_decay`).
"""
from typing import Any, Callable, Optional

import jax
import ml_collections
import optax

from mio_jax import errors
from mio_jax.models import vit


def decay_mask(params: Any) -> Any:
  """True for weight matrices / conv kernels; False for biases, norm params
  and embeddings (a ViT's position embedding and class token)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p.ndim > 1 and getattr(
          path[-1], "key", None) not in vit.EMBEDDING_PARAMS, params)


LR_SCALINGS = ("linear", "none")


def check_config(opt: ml_collections.ConfigDict) -> None:
  """Raises errors.InvalidValueError (key relative to config.optimizer)."""
  errors.check_one_of("name", opt.name, OPTIMIZERS)
  errors.check_one_of("lr_scaling", opt.lr_scaling, LR_SCALINGS)
  errors.check_positive("base_lr", opt.base_lr)
  errors.check_positive("warmup_epochs", opt.warmup_epochs, allow_zero=True)
  errors.check_positive("weight_decay", opt.weight_decay, allow_zero=True)
  errors.check_positive("warmup_start_lr", opt.warmup_start_lr,
                        allow_zero=True)
  errors.check_positive("final_lr", opt.final_lr, allow_zero=True)
  if opt.schedule_epochs is not None:
    errors.check_positive("schedule_epochs", opt.schedule_epochs)
  if opt.grad_clip_norm is not None:
    errors.check_positive("grad_clip_norm", opt.grad_clip_norm)


def peak_learning_rate(opt: ml_collections.ConfigDict, batch_size: int) -> float:
  """base_lr, scaled by batch_size / 256 under lr_scaling="linear"."""
  return opt.base_lr * batch_size / 256 if opt.lr_scaling == "linear" else (
      opt.base_lr)


def learning_rate_schedule(opt: ml_collections.ConfigDict, *, batch_size: int,
                           total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from warmup_start_lr, then cosine decay to final_lr.

  The cosine ends at `total_steps`, or after `schedule_epochs` epochs when
  set: a horizon longer than the run stops part-way down the cosine, as the
  public MIO script does (250 of 1,000 cosine epochs).
  """
  warmup_steps = min(int(round(opt.warmup_epochs * steps_per_epoch)),
                     total_steps)
  horizon = total_steps if opt.schedule_epochs is None else int(
      round(opt.schedule_epochs * steps_per_epoch))
  return optax.warmup_cosine_decay_schedule(
      init_value=opt.warmup_start_lr,
      peak_value=peak_learning_rate(opt, batch_size),
      warmup_steps=warmup_steps,
      # optax needs a non-empty cosine phase; a run shorter than its warm-up
      # (a smoke test) just ends before the peak.
      decay_steps=max(horizon, warmup_steps + 1), end_value=opt.final_lr)


def _lars(opt: ml_collections.ConfigDict,
          lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.lars(lr, weight_decay=opt.weight_decay,
                    weight_decay_mask=decay_mask,
                    trust_coefficient=opt.trust_coefficient,
                    trust_ratio_mask=decay_mask, momentum=opt.momentum)


def _sgd(opt: ml_collections.ConfigDict,
         lr: optax.Schedule) -> optax.GradientTransformation:
  return classifier_optimizer(lr, momentum=opt.momentum, nesterov=False,
                              weight_decay=opt.weight_decay)


def _adamw(opt: ml_collections.ConfigDict,
           lr: optax.Schedule) -> optax.GradientTransformation:
  return optax.adamw(lr, weight_decay=opt.weight_decay, mask=decay_mask)


OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict, optax.Schedule],
                               optax.GradientTransformation]] = {
    "lars": _lars,
    "sgd": _sgd,
    "adamw": _adamw,
}


def make_optimizer(opt: ml_collections.ConfigDict, *, batch_size: int,
                   total_steps: int, steps_per_epoch: int,
                   frozen: Optional[Callable[[Any], Any]] = None
                  ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer `config.optimizer` describes, and its lr schedule.

  frozen: params -> a tree of bools, True for the parameters never to
  update (`models.frozen_params`): not even weight decay touches them.
  Raises errors.InvalidValueError for a bad `config.optimizer` value.
  """
  check_config(opt)
  schedule = learning_rate_schedule(opt, batch_size=batch_size,
                                    total_steps=total_steps,
                                    steps_per_epoch=steps_per_epoch)
  tx = OPTIMIZERS[opt.name](opt, schedule)
  if frozen is not None:
    tx = optax.multi_transform(
        {"train": tx, "frozen": optax.set_to_zero()},
        lambda params: jax.tree.map(lambda f: "frozen" if f else "train",
                                    frozen(params)))
  if opt.grad_clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, schedule


def layer_decay(decay: float, layer_ids: Callable[[Any], Any],
                num_layers: int) -> optax.GradientTransformation:
  """Scales the update of a parameter of layer i by decay**(num_layers + 1 - i).

  Layer-wise learning-rate decay of BEiT and MAE fine-tuning: layer 0 is
  the embeddings, 1..num_layers the transformer blocks, num_layers + 1 the
  final norm and the head (unscaled). Chained after an optimizer, it scales
  that optimizer's whole step, weight decay included, as their per-layer
  learning rates do. layer_ids: params -> a tree of ints.
  """
  return optax.multi_transform(
      {i: optax.scale(decay**(num_layers + 1 - i))
       for i in range(num_layers + 2)}, layer_ids)


def classifier_optimizer(learning_rate: optax.ScalarOrSchedule, *,
                         momentum: float, nesterov: bool = True,
                         weight_decay: float = 0.0
                        ) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum; weight decay skips biases and norm scales.

  SimCLR's optimizer for a linear head and for fine-tuning (its
  model_util.get_optimizer: momentum with use_nesterov), with the
  protocol's learning-rate schedule.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=decay_mask),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


def online_probe_optimizer(learning_rate: float) -> optax.GradientTransformation:
  """The online probe's SGD: constant lr, momentum 0.9 (solo-learn's)."""
  return optax.sgd(learning_rate, momentum=0.9)
