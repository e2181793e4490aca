"""The supervised protocols: augmented linear evaluation and fine-tuning.

Both train a linear classifier on the backbone's pooled features with
labelled, augmented batches (`data.labelled`: random resized crop and
flip only), SGD with momentum (`optim.classifier_optimizer`), then report
top-1 and top-5 on the centre-resized test split:

  * `linear_eval`: the backbone is frozen and only the head is trained.
    recipe "simclr" (default): SimCLR's, BYOL's and solo-learn's linear
    evaluation (BatchNorm running statistics, Nesterov, cosine, lr
    base_lr * batch / 256), on views streamed from the pipeline rather
    than precomputed centre-crop features (that fast probe is the
    evaluation protocol "feature_probe"). recipe "public_code": the public
    MIO code's (`configs/cifar10_public_code.py` sets its numbers): the
    backbone's BatchNorm in train mode, lr times lr_decay per epoch, and
    the head of the lowest loss on a validation split kept, with early
    stopping (`early_stopping`).
  * `finetune`: backbone and a new head (the projector dropped) trained
    together, BatchNorm in train mode, on a fixed labelled subset
    (SimCLR's semi-supervised fine-tuning), from a pretrained encoder or,
    as the baseline, from a random initialisation.

The encoder comes from the orchestrator (`modes.load_encoder`); the task,
its step and the loop are in `task`.
"""
import os
from typing import Optional

import ml_collections
from jax.sharding import Mesh

from mio_jax import errors
from mio_jax import files
from mio_jax import loop
from mio_jax import models
from mio_jax import modes
from mio_jax import optim
from mio_jax.models import vit
from mio_jax.supervised import early_stopping
from mio_jax.supervised import task as task_lib

SUBSET_FILE = "subset.json"
RECIPES = ("simclr", "public_code")
SCHEDULES = ("cosine", "step")

# ---- config checks (each protocol's own section) ----------------------------


def _check_common(section: ml_collections.ConfigDict) -> None:
  errors.check_positive("batch_size", section.batch_size)
  errors.check_positive("base_lr", section.base_lr)
  errors.check_positive("weight_decay", section.weight_decay, allow_zero=True)
  if not 0 <= section.momentum < 1:
    raise errors.InvalidValueError("momentum", section.momentum,
                                   "must be in [0, 1)", "e.g. {key}=0.9")
  errors.check_one_of("schedule", section.schedule, SCHEDULES)
  errors.check_one_of("lr_scaling", section.lr_scaling, optim.LR_SCALINGS)
  if section.schedule == "step" and not 0 < section.lr_decay <= 1:
    raise errors.InvalidValueError("lr_decay", section.lr_decay,
                                   "must be in (0, 1]", "e.g. {key}=0.98")
  lo, hi = section.crop_scale
  if not 0 < lo <= hi <= 1:
    raise errors.InvalidValueError(
        "crop_scale", tuple(section.crop_scale),
        "must satisfy 0 < min <= max <= 1", "e.g. {key}=(0.08,1.0)")


def check_linear_eval_config(section: ml_collections.ConfigDict) -> None:
  """Raises errors.InvalidValueError (keys relative to config.linear_eval)."""
  _check_common(section)
  errors.check_positive("epochs", section.epochs)
  errors.check_one_of("recipe", section.recipe, RECIPES)
  errors.check_one_of("backbone_bn", section.backbone_bn, task_lib.BN_MODES)
  if section.recipe == "public_code":
    if not section.validation_split:
      raise errors.InvalidValueError(
          "validation_split", section.validation_split,
          "is needed by the public code's recipe (early stopping)",
          "e.g. {key}=train[80%:]")
    errors.check_positive("patience", section.patience, allow_zero=True)


def check_finetune_config(section: ml_collections.ConfigDict) -> None:
  """Raises errors.InvalidValueError (keys relative to config.finetune)."""
  _check_common(section)
  if section.epochs is not None:
    errors.check_positive("epochs", section.epochs)
  if section.labels_per_class:
    errors.check_positive("labels_per_class", section.labels_per_class)
  elif not 0 < section.label_fraction <= 1:
    raise errors.InvalidValueError(
        "label_fraction", section.label_fraction, "must be in (0, 1]",
        "e.g. {key}=0.1, or set finetune.labels_per_class")
  if section.init_step is not None and not section.init_from:
    raise errors.InvalidValueError(
        "init_step", section.init_step, "needs finetune.init_from",
        "set finetune.init_from=<pretraining workdir> or unset {key}")
  if not 0 < section.layer_decay <= 1:
    raise errors.InvalidValueError(
        "layer_decay", section.layer_decay, "must be in (0, 1]",
        "use e.g. {key}=0.65 (MAE's ViT-B), or 1.0 for none")
  if not 0 <= section.drop_path < 1:
    raise errors.InvalidValueError("drop_path", section.drop_path,
                                   "must be in [0, 1)",
                                   "use e.g. {key}=0.1 (0: no drop path)")


def check_finetune_backbone(section: ml_collections.ConfigDict,
                            model_name: str) -> None:
  """Raises errors.InvalidValueError (keys relative to config.finetune)
  for a ViT-only setting with another backbone."""
  if models.FAMILIES.get(model_name) is vit:
    return
  for key, off in (("layer_decay", 1.0), ("drop_path", 0.0)):
    if section[key] != off:
      raise errors.InvalidValueError(
          key, section[key], f"applies to ViTs only (model.name={model_name})",
          f"set {{key}}={off}")


def epochs(config: ml_collections.ConfigDict, name: str) -> float:
  """Epochs of protocol `name`: its section's, or for finetune SimCLR's.

  SimCLR v1, appendix B.5: 60 epochs for 1% of ImageNet's labels, 30 for
  10%; fractions above 10% take the 10% value.
  """
  section = config[name]
  if section.epochs is not None:
    return float(section.epochs)
  small = (not section.labels_per_class) and section.label_fraction <= 0.01
  return 60.0 if small else 30.0


# ---- the two protocols ---------------------------------------------------------


def _protocol(name: str, config: ml_collections.ConfigDict, workdir: str,
              mesh: Mesh, encoder: modes.Encoder, *, fraction=None,
              per_class=None, logger: loop.Logger,
              preemption: Optional[loop.PreemptionWatch]
             ) -> tuple[int, dict[str, float]]:
  """Trains protocol `name` on `encoder` and tests it: (steps, results).

  preemption: the process's watch, else one is opened for this call; on
  SIGTERM the training saves and exits, the test pass is abandoned
  (loop.Preempted).
  """
  if preemption is None:
    with loop.PreemptionWatch() as watch:
      return _protocol(name, config, workdir, mesh, encoder, fraction=fraction,
                       per_class=per_class, logger=logger, preemption=watch)
  # Imported here: the data package loads TensorFlow.
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  from mio_jax import distributed  # pylint: disable=g-import-not-at-top
  from mio_jax.data import labelled  # pylint: disable=g-import-not-at-top
  section = config[name]
  public_code = section.get("recipe") == "public_code"
  labelled_set = labelled.labelled_set(config, fraction=fraction,
                                       per_class=per_class,
                                       split=section.get("train_split"))
  num_examples = len(labelled_set.indices)
  task = task_lib.make_task(config, mesh, name, num_examples=num_examples,
                            num_classes=data.dataset_info(config).num_classes,
                            epochs=epochs(config, name))
  directory = os.path.join(workdir, name)
  settings = task_lib.run_settings(
      config, encoder.identity(), num_labelled=num_examples,
      prepared_dataset=data.dataset_spec(config).tfds_name)
  # Checked before the subset is written: a refused resume must leave the
  # record of the subset the kept checkpoints were trained on.
  task_lib.guard_resume(directory, task, settings)
  if fraction is not None or per_class is not None:
    if distributed.is_main_process():
      files.write_json(os.path.join(directory, SUBSET_FILE),
                       labelled_set.description)
  hflip = section.get("hflip")
  if hflip is None:
    hflip = bool(config.augment.hflip)

  def batches_fn(start_step):
    return labelled.labelled_batches(
        config, mesh, labelled=labelled_set, batch_size=task.batch_size,
        crop_scale=tuple(section.crop_scale), hflip=hflip,
        batch_key=f"config.{name}.batch_size", start_step=start_step)

  frozen = task_lib.frozen_backbone(task, encoder.variables)
  stopping = {}
  if public_code:
    stopping = dict(
        after_step=early_stopping.after_step_fn(
            task, frozen, num_examples=num_examples,
            validation_batches=data.split_passes(
                config, mesh, section.validation_split)),
        stop=early_stopping.stopped_fn(int(section.patience)))
  state = task_lib.init_state(
      task, encoder.variables,
      best=early_stopping.initial_best(task, encoder.variables)
      if public_code else None)
  state = task_lib.train(task, state, frozen, batches_fn,
                         directory=directory, settings=settings,
                         config=config, logger=logger, preemption=preemption,
                         **stopping)
  kept = state.best if public_code else state
  with preemption.interruptible():  # what it needs is saved
    results = task_lib.accuracy(task, kept.params, kept.batch_stats, frozen,
                                data.eval_batches(config, mesh, "test"))
  return int(state.step), {f"{name}_{k}": results[k] for k in ("top1", "top5")}


def linear_eval(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh,
                encoder: modes.Encoder, *, logger: loop.Logger,
                preemption: Optional[loop.PreemptionWatch] = None
               ) -> tuple[int, dict[str, float]]:
  """Linear evaluation of the frozen `encoder` (config.linear_eval.recipe).

  The head is trained on augmented views of the labelled train split (or
  config.linear_eval.train_split), checkpointed in `<workdir>/linear_eval/`;
  a resume on another encoder (another digest of its variables) is
  refused. Returns (the encoder's pretraining step, {"linear_eval_top1",
  "linear_eval_top5"} on the test split).
  """
  check_linear_eval_config(config.linear_eval)
  _, results = _protocol("linear_eval", config, workdir, mesh, encoder,
                         logger=logger, preemption=preemption)
  return encoder.step, results


def finetune(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh,
             encoder: modes.Encoder, *, logger: loop.Logger,
             preemption: Optional[loop.PreemptionWatch] = None
            ) -> tuple[int, dict[str, float]]:
  """Fine-tunes `encoder`'s backbone + a new linear head on a labelled subset.

  The subset (config.finetune.label_fraction or labels_per_class) is
  written to `<workdir>/finetune/subset.json`; checkpoints go to
  `<workdir>/finetune/checkpoints`. Returns (fine-tuning steps,
  {"finetune_top1", "finetune_top5"} on the test split).
  """
  section = config.finetune
  check_finetune_config(section)
  per_class = int(section.labels_per_class or 0) or None
  return _protocol("finetune", config, workdir, mesh, encoder,
                   fraction=None if per_class else float(section.label_fraction),
                   per_class=per_class, logger=logger, preemption=preemption)


# Name (modes.Mode.trains) -> fn(config, workdir, mesh, encoder, *, logger,
# preemption) -> (the step its results belong to, results).
PROTOCOLS = {"linear_eval": linear_eval, "finetune": finetune}
