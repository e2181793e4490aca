"""The supervised protocols: augmented linear evaluation and fine-tuning.

Both train on labelled, augmented batches (`data.labelled`: random resized
crop and flip only) with SGD with momentum (`optim.classifier_optimizer`),
a new linear head on the backbone's pooled features, then report top-1
and top-5 on the centre-resized test split:

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

The encoder comes from the orchestrator (`encoder_sources.load_encoder`).
`setup` is the one place that turns (config, data set facts, encoder) into
what the loop trains (`loop.Training`); `main` trains it, the compile check
lowers its step. Both protocols are entries of the one table of protocols,
`modes.PROTOCOLS`. Each encoder gets its own folder,
`<workdir>/<protocol>/step_000040/` (a pretraining step),
`.../file_<digest>/` (an exported encoder) or `.../random_<digest>/` (a
random initialisation), so evaluating a newer step is a new run beside the
older one's. The task, its step and its test pass are in `task`.
"""
import dataclasses
import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from mio_jax import checkpointing
from mio_jax import encoder_sources
from mio_jax import errors
from mio_jax import loop
from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax import optim
from mio_jax import resume_guard
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
    if section.epochs < 1:
      # Early stopping scores the head at each epoch's end: a fraction of
      # an epoch ends none, and the initial (zero) head would be tested.
      raise errors.InvalidValueError(
          "epochs", section.epochs,
          "is less than one epoch, which the public code's recipe never "
          "ends (its early stopping scores the head at each epoch's end)",
          "set {key}=1 or more, or linear_eval.recipe=simclr")


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


# ---- the set-up -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProtocolSetup:
  """What `setup` makes: the task (for the test pass) and its Training."""
  task: task_lib.Task
  training: loop.Training
  frozen: Any  # the step's frozen backbone (linear_eval) or None


def _labels(config: ml_collections.ConfigDict, name: str
           ) -> tuple[Optional[float], Optional[int]]:
  """(label fraction, labels per class) of protocol `name`'s subset; both
  None for the whole split."""
  if name != "finetune":
    return None, None
  section = config.finetune
  per_class = int(section.labels_per_class or 0) or None
  return (None if per_class else float(section.label_fraction)), per_class


def estimated_examples(config: ml_collections.ConfigDict, info,
                       name: str) -> int:
  """The labelled examples protocol `name` trains on, from the split sizes
  alone (a compile-only set-up reads no labels): exact for linear
  evaluation and labels_per_class below the smallest class.

  For a label fraction it is round(fraction * split), an estimate: the
  stratified subset (`data.labelled.stratified_subset`) keeps
  max(1, round(fraction * n_c)) of each class c, and the class sizes n_c
  are known only from the labels (neither TFDS's split info nor the data
  set table holds them, and a sliced split changes them), so the real
  count differs by at most one per class (149, not 150, for 10% of
  digits' 1,500). ImageNet-1K at 1% / 10% trains on SimCLR's lists, whose
  sizes only the prepared TFDS subset builder knows. The count sets the
  run's length and the learning rate schedule's constants, not the step's
  shapes: the compile check's memory and cost per step do not depend on it.
  """
  section = config[name]
  fraction, per_class = _labels(config, name)
  if name == "linear_eval" and section.train_split:
    from mio_jax.data import dataset  # pylint: disable=g-import-not-at-top
    spec = dataset.dataset_spec(config)
    return dataset.split_size(
        spec, section.train_split,
        dataset.split_lengths(spec, config.dataset.data_dir),
        key="linear_eval.train_split")
  num_train = int(info.num_eval_examples["train"])
  if per_class:
    return per_class * int(info.num_classes)
  if fraction is not None and fraction < 1.0:
    return max(1, int(round(fraction * num_train)))
  return num_train


def encoder_folder(workdir: str, name: str,
                   encoder: encoder_sources.LoadedEncoder,
                   identity: Mapping[str, Any]) -> str:
  """Where protocol `name` trains on `encoder`: one folder per encoder.

  `<workdir>/<name>/step_<step>` for a pretraining workdir's step, else
  `file_<digest>` (an exported file) or `random_<digest>` (a random
  initialisation), the digest of the backbone's variables. A folder
  of an earlier build (`<workdir>/<name>/checkpoints`) is used while it
  holds this very encoder's run.
  """
  base = os.path.join(workdir, name)
  stored = resume_guard.read(checkpointing.checkpoint_dir(base))
  if stored is not None:
    settings, _ = resume_guard.stored_settings(stored)
    if settings.get("encoder.digest") == identity["digest"]:
      return base
  if encoder.source.kind == encoder_sources.WORKDIR:
    return os.path.join(base, f"step_{encoder.step:06d}")
  return os.path.join(base, f"{encoder.source.kind}_{identity['digest']}")


def setup(name: str, config: ml_collections.ConfigDict, mesh: Mesh, info,
          encoder: encoder_sources.LoadedEncoder, *,
          workdir: Optional[str] = None,
          dataset_identity: Optional[str] = None) -> ProtocolSetup:
  """What protocol `name` ("linear_eval" | "finetune") trains: the one set-up.

  info: `data.DatasetInfo` of config's data set. encoder: the variables
  trained on (ShapeDtypeStructs for a compile-only set-up). workdir: the
  command's --workdir: the labelled examples are read, the training gets
  its batches, its folder (`encoder_folder`) and the record that guards
  its resume (with dataset_identity); None: compile only, the example
  count estimated (`estimated_examples`).
  """
  section = config[name]
  public_code = section.get("recipe") == "public_code"
  fraction, per_class = _labels(config, name)
  labelled_set = None
  if workdir is None:
    num_examples = estimated_examples(config, info, name)
  else:
    # Imported here: the data package loads TensorFlow.
    from mio_jax import data  # pylint: disable=g-import-not-at-top
    from mio_jax.data import labelled  # pylint: disable=g-import-not-at-top
    labelled_set = labelled.labelled_set(config, fraction=fraction,
                                         per_class=per_class,
                                         split=section.get("train_split"))
    num_examples = len(labelled_set.indices)
  task = task_lib.make_task(config, mesh, name, num_examples=num_examples,
                            num_classes=int(info.num_classes),
                            epochs=epochs(config, name))
  frozen = task_lib.frozen_backbone(task, encoder.variables)

  def init(variables):
    best = (early_stopping.initial_best(task, variables) if public_code
            else None)
    return task_lib.init_state(task, variables, best=best)

  size = int(config.dataset.image_size)
  sharding = mesh_lib.batch_sharding(mesh)
  # The batch `data.labelled.labelled_batches` yields.
  batch = {"image": jax.ShapeDtypeStruct((task.batch_size, size, size, 3),
                                         jnp.float32, sharding=sharding),
           "label": jax.ShapeDtypeStruct((task.batch_size,), jnp.int32,
                                         sharding=sharding)}
  runtime = {}
  if workdir is not None:
    identity = encoder.identity()
    hflip = section.get("hflip")
    if hflip is None:
      hflip = bool(config.augment.hflip)
    runtime = dict(
        folder=encoder_folder(workdir, name, encoder, identity),
        record=resume_guard.protocol_record(
            name, config, identity, num_labelled=num_examples,
            prepared_dataset=dataset_identity),
        batches=lambda start_step: labelled.labelled_batches(
            config, mesh, labelled=labelled_set, batch_size=task.batch_size,
            crop_scale=tuple(section.crop_scale), hflip=hflip,
            batch_key=f"config.{name}.batch_size", start_step=start_step),
        notes=({SUBSET_FILE: labelled_set.description}
               if fraction is not None or per_class is not None else {}))
    if public_code:
      runtime.update(
          after_step=early_stopping.after_step_fn(
              task, frozen, num_examples=num_examples,
              validation_batches=data.split_passes(
                  config, mesh, section.validation_split)),
          stop=early_stopping.stopped_fn(int(section.patience)))
  training = loop.Training(
      name=name, mesh=mesh, step=task_lib.make_train_step(task), init=init,
      init_args=(encoder.variables,), constants=(frozen,), batch=batch,
      num_steps=task.total_steps, images_per_step=task.batch_size,
      cadence=loop.Cadence.from_config(config),
      keep_checkpoints=int(config.keep_checkpoints), **runtime)
  return ProtocolSetup(task, training, frozen)


# ---- the two protocols ---------------------------------------------------------


def _protocol(name: str, config: ml_collections.ConfigDict, workdir: str,
              mesh: Mesh, encoder: encoder_sources.LoadedEncoder, *,
              logger: loop.Logger,
              preemption: Optional[loop.PreemptionWatch]
             ) -> tuple[int, dict[str, float]]:
  """Trains protocol `name` on `encoder` and tests it: (steps, results).

  preemption: the process's watch, else one is opened for this call; on
  SIGTERM the training saves and exits, the test pass is abandoned
  (loop.Preempted).
  """
  if preemption is None:
    with loop.PreemptionWatch() as watch:
      return _protocol(name, config, workdir, mesh, encoder, logger=logger,
                       preemption=watch)
  # Imported here: the data package loads TensorFlow.
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  made = setup(name, config, mesh, data.dataset_info(config), encoder,
               workdir=workdir,
               dataset_identity=data.prepared_identity(config))
  state = loop.train(made.training, logger=logger, preemption=preemption)
  kept = state.best if made.training.stop is not None else state
  with preemption.interruptible():  # what it needs is saved
    results = task_lib.accuracy(made.task, kept.params, kept.batch_stats,
                                made.frozen,
                                data.eval_batches(config, mesh, "test"))
  return int(state.step), {f"{name}_{k}": results[k] for k in ("top1", "top5")}


def linear_eval(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh,
                encoder: encoder_sources.LoadedEncoder, *,
                logger: loop.Logger,
                preemption: Optional[loop.PreemptionWatch] = None
               ) -> tuple[int, dict[str, float]]:
  """Linear evaluation of the frozen `encoder` (config.linear_eval.recipe).

  The head is trained on augmented views of the labelled train split (or
  config.linear_eval.train_split), checkpointed in the encoder's folder
  under `<workdir>/linear_eval/` (`encoder_folder`). Returns (the
  encoder's pretraining step, {"linear_eval_top1", "linear_eval_top5"} on
  the test split).
  """
  check_linear_eval_config(config.linear_eval)
  _, results = _protocol("linear_eval", config, workdir, mesh, encoder,
                         logger=logger, preemption=preemption)
  return encoder.step, results


def finetune(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh,
             encoder: encoder_sources.LoadedEncoder, *,
             logger: loop.Logger,
             preemption: Optional[loop.PreemptionWatch] = None
            ) -> tuple[int, dict[str, float]]:
  """Fine-tunes `encoder`'s backbone + a new linear head on a labelled subset.

  The subset (config.finetune.label_fraction or labels_per_class) is
  written to `subset.json` in the encoder's folder under
  `<workdir>/finetune/`, beside its checkpoints. Returns (fine-tuning
  steps, {"finetune_top1", "finetune_top5"} on the test split).
  """
  check_finetune_config(config.finetune)
  return _protocol("finetune", config, workdir, mesh, encoder, logger=logger,
                   preemption=preemption)
