"""The supervised protocols: augmented linear evaluation and fine-tuning.

Both train a linear classifier on the backbone's pooled features with
labelled, augmented batches (`data.labelled`: random resized crop and
flip only), SGD with Nesterov momentum and a cosine schedule
(`optim.classifier_optimizer`), then report top-1 and top-5 on the
centre-resized test split:

  * `linear_eval`: the backbone is frozen (BatchNorm running statistics,
    train=False) and only the head is trained: SimCLR's, BYOL's and
    solo-learn's linear evaluation, on views streamed from the pipeline
    rather than precomputed centre-crop features (that fast probe is the
    evaluation protocol "feature_probe").
  * `finetune`: backbone and a new head (the projector dropped) trained
    together, BatchNorm in train mode, on a fixed labelled subset
    (SimCLR's semi-supervised fine-tuning), from a pretrained encoder or,
    as the baseline, from a random initialisation.

The encoder comes from the orchestrator (`modes.load_encoder`). This
module builds the task, its state and its jitted data-parallel step
(replicated parameters, batch sharded over `data`, state donated); the
loop is pretraining's (`loop.run`: resume, non-finite guard, logging,
checkpoints in `<workdir>/<protocol>/checkpoints`, SIGTERM).
"""
import dataclasses
import functools
import os
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from mio_jax import checkpointing
from mio_jax import errors
from mio_jax import files
from mio_jax import loop
from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax import modes
from mio_jax import optim
from mio_jax.evaluation import accuracy

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
SUBSET_FILE = "subset.json"
# Settings of the config a supervised run depends on besides its section.
_ENCODER_KEYS = checkpointing.ARCHITECTURE_KEYS + ("dataset.name",
                                                  "dataset.image_size", "seed")
# What identifies the encoder without deciding it: the same variables
# reached by another path (a moved workdir, an export of the same step).
_ENCODER_ORIGIN = ("encoder.source", "encoder.path")

# ---- config checks (each protocol's own section) ----------------------------


def _check_common(section: ml_collections.ConfigDict) -> None:
  errors.check_positive("batch_size", section.batch_size)
  errors.check_positive("base_lr", section.base_lr)
  errors.check_positive("weight_decay", section.weight_decay, allow_zero=True)
  if not 0 <= section.momentum < 1:
    raise errors.InvalidValueError("momentum", section.momentum,
                                   "must be in [0, 1)", "e.g. {key}=0.9")
  lo, hi = section.crop_scale
  if not 0 < lo <= hi <= 1:
    raise errors.InvalidValueError(
        "crop_scale", tuple(section.crop_scale),
        "must satisfy 0 < min <= max <= 1", "e.g. {key}=(0.08,1.0)")


def check_linear_eval_config(section: ml_collections.ConfigDict) -> None:
  """Raises errors.InvalidValueError (keys relative to config.linear_eval)."""
  _check_common(section)
  errors.check_positive("epochs", section.epochs)


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


# ---- the task: what is trained, how ------------------------------------------


# eq=False: hashed by identity, so jitted functions built from a task are
# cached per task.
@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """One supervised run: network, optimizer and length."""
  name: str  # "linear_eval" | "finetune": results prefix and workdir folder
  mesh: Mesh
  backbone: models.ResNet
  train_backbone: bool  # False: frozen backbone (linear evaluation)
  num_classes: int
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  batch_size: int
  total_steps: int


def make_task(config: ml_collections.ConfigDict, mesh: Mesh, name: str, *,
              num_examples: int, num_classes: int) -> Task:
  """The task of protocol `name` ("linear_eval" | "finetune") on n examples.

  Its length is SimCLR's count: n * epochs // batch + 1 steps
  (`indexing.labelled_num_steps`); the peak lr is base_lr * batch / 256.
  """
  from mio_jax.data import indexing  # pylint: disable=g-import-not-at-top
  section = config[name]
  batch_size = int(section.batch_size)
  total_steps = indexing.labelled_num_steps(num_examples, epochs(config, name),
                                            batch_size)
  optimizer, schedule = optim.classifier_optimizer(
      peak_lr=section.base_lr * batch_size / 256, total_steps=total_steps,
      momentum=section.momentum, nesterov=bool(section.nesterov),
      weight_decay=section.weight_decay)
  return Task(name=name, mesh=mesh,
              backbone=models.build_model(config.model,
                                          dtype=config.dtype).backbone,
              train_backbone=name == "finetune", num_classes=num_classes,
              optimizer=optimizer, schedule=schedule, batch_size=batch_size,
              total_steps=total_steps)


@flax.struct.dataclass
class SupervisedState:
  """Everything that changes during a supervised run (and is checkpointed).

  params: the head {"kernel" (D, C), "bias" (C,)} (linear evaluation), or
  {"backbone", "head"} (fine-tuning). batch_stats: the backbone's BatchNorm
  averages while fine-tuning; None in linear evaluation (the frozen
  backbone is an argument of the step, never donated).
  """
  step: jax.Array  # int32 scalar: updates applied so far
  params: Any
  batch_stats: Any
  opt_state: Any


def _head(feature_dim: int, num_classes: int) -> dict[str, jax.Array]:
  # Zeros, as SimCLR's zero_init_logits_layer: every class starts equal.
  return {"kernel": jnp.zeros((feature_dim, num_classes)),
          "bias": jnp.zeros((num_classes,))}


def _logits(task: Task, params, batch_stats, frozen, images: jax.Array, *,
            train: bool) -> tuple[jax.Array, Any]:
  """(logits (B, C) f32, new batch_stats) of `images`."""
  images = images.astype(task.backbone.dtype)
  if task.train_backbone:
    variables = {"params": params["backbone"], "batch_stats": batch_stats}
    if train:
      features, updates = task.backbone.apply(variables, images, train=True,
                                              mutable=["batch_stats"])
      batch_stats = updates["batch_stats"]
    else:
      features = task.backbone.apply(variables, images, train=False)
    head = params["head"]
  else:
    features = jax.lax.stop_gradient(
        task.backbone.apply(frozen, images, train=False))
    head = params
  features = features.astype(jnp.float32)
  return features @ head["kernel"] + head["bias"], batch_stats


def make_train_step(task: Task) -> Callable[..., tuple[SupervisedState, Metrics]]:
  """Jitted (state, frozen, batch) -> (state, metrics); state is donated.

  frozen: the backbone's {"params", "batch_stats"} for linear evaluation
  (replicated), None for fine-tuning. batch: {"image" (B, S, S, 3),
  "label" (B,)} sharded over `data`. Metrics (replicated scalars): loss,
  grad_norm, learning_rate, params_finite, train_top1.
  """

  def step(state: SupervisedState, frozen, batch: Batch):

    def loss_fn(params):
      logits, batch_stats = _logits(task, params, state.batch_stats, frozen,
                                    batch["image"], train=True)
      loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
          logits, batch["label"]))
      return loss, (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = task.optimizer.update(grads, state.opt_state,
                                               state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": task.schedule(state.step),
        "params_finite": loop.all_finite(params).astype(jnp.float32),
        "train_top1": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
    }
    return state.replace(step=state.step + 1, params=params,
                         batch_stats=batch_stats, opt_state=opt_state), metrics

  replicated = mesh_lib.replicated_sharding(task.mesh)
  return jax.jit(step, in_shardings=(replicated, replicated,
                                     mesh_lib.batch_sharding(task.mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def init_state(task: Task, variables: Mapping[str, Any]) -> SupervisedState:
  """The state at step 0 from the encoder `variables`, replicated.

  Linear evaluation trains a head only (the backbone is passed to the step
  as `frozen`); fine-tuning trains the backbone and a head.
  """
  head = _head(task.backbone.feature_dim, task.num_classes)
  if task.train_backbone:
    # Copies: the step donates the state, and the caller keeps `variables`.
    params = {"backbone": jax.tree.map(jnp.copy, variables["params"]["backbone"]),
              "head": head}
    batch_stats = jax.tree.map(jnp.copy, variables["batch_stats"]["backbone"])
  else:
    params, batch_stats = head, None
  state = SupervisedState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=batch_stats,
                          opt_state=task.optimizer.init(params))
  return jax.device_put(state, mesh_lib.replicated_sharding(task.mesh))


def frozen_backbone(task: Task, variables: Mapping[str, Any]) -> Optional[dict]:
  """The step's `frozen` argument: the backbone (linear_eval) or None."""
  if task.train_backbone:
    return None
  return {"params": variables["params"]["backbone"],
          "batch_stats": variables["batch_stats"]["backbone"]}


# ---- training -----------------------------------------------------------------


def run_settings(config: ml_collections.ConfigDict, task: Task,
                 encoder_identity: Mapping[str, Any],
                 **extra: Any) -> dict[str, Any]:
  """What a supervised run's checkpoints record (flat "a.b" keys)."""
  stored = checkpointing.run_settings(config)
  return files.as_stored({
      **{key: stored[key] for key in _ENCODER_KEYS},
      **{f"{task.name}.{k}": v for k, v in config[task.name].to_dict().items()},
      **{f"encoder.{k}": v for k, v in encoder_identity.items()},
      "total_steps": task.total_steps, **extra})


def guard_resume(directory: str, task: Task,
                 settings: Mapping[str, Any]) -> None:
  """Raises CheckpointMismatchError if `directory` holds another run's steps."""
  checkpointing.refuse_changes(
      directory, settings,
      [key for key in settings if key not in _ENCODER_ORIGIN],
      describe=lambda key, stored, new: (
          f"{checkpointing.checkpoint_dir(directory)} holds a {task.name} "
          f"run made with {key}={stored!r}, this one has {new!r}; delete "
          "that folder or use another --workdir"))


def train(task: Task, state: SupervisedState, frozen,
          batches_fn: loop.BatchesFn, *, directory: str,
          settings: Mapping[str, Any], config: ml_collections.ConfigDict,
          logger: loop.Logger,
          preemption: Optional[loop.PreemptionWatch] = None
         ) -> SupervisedState:
  """Trains `state` to task.total_steps in the one loop, resuming from `directory`.

  Checkpoints (with `settings`, see `run_settings`) go to
  `<directory>/checkpoints`, every config.checkpoint_every_steps; metrics
  are logged as "<task.name>_<metric>". Raises loop.NonFiniteLossError,
  SystemExit(0) after saving on SIGTERM, and CheckpointMismatchError
  (`guard_resume`) when `directory` holds checkpoints of another run.
  """
  guard_resume(directory, task, settings)
  step_fn = make_train_step(task)
  with checkpointing.Checkpointer(directory, settings=settings,
                                  keep=int(config.keep_checkpoints)
                                 ) as checkpointer:
    return loop.run(state, lambda state, batch: step_fn(state, frozen, batch),
                    batches_fn, num_steps=task.total_steps,
                    images_per_step=task.batch_size,
                    checkpointer=checkpointer,
                    cadence=loop.Cadence.from_config(config), logger=logger,
                    preemption=preemption, name=task.name)


def accuracy_on_test_split(task: Task, state: SupervisedState, frozen,
                  config: ml_collections.ConfigDict) -> dict[str, float]:
  """{"top1", "top5"} of the trained classifier on the test split."""
  # Imported here: the data package loads TensorFlow.
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  replicated = mesh_lib.replicated_sharding(task.mesh)

  @functools.partial(jax.jit, in_shardings=(replicated, replicated, replicated,
                                            mesh_lib.batch_sharding(task.mesh)))
  def counts(params, batch_stats, frozen, batch):
    logits, _ = _logits(task, params, batch_stats, frozen, batch["image"],
                        train=False)
    return accuracy.hit_counts(logits, batch["label"], batch["mask"],
                               num_classes=task.num_classes)

  top1 = top5 = 0
  for batch in data.eval_batches(config, task.mesh, "test"):
    hits = jax.device_get(counts(state.params, state.batch_stats, frozen,
                                 batch))
    top1, top5 = top1 + int(hits[0]), top5 + int(hits[1])
  num_examples = data.dataset_info(config).num_eval_examples["test"]
  return {"top1": top1 / num_examples, "top5": top5 / num_examples}


# ---- the two protocols ---------------------------------------------------------


def _protocol(name: str, config: ml_collections.ConfigDict, workdir: str,
              mesh: Mesh, encoder: modes.Encoder, *, fraction=None,
              per_class=None, logger: loop.Logger,
              preemption: Optional[loop.PreemptionWatch]
             ) -> tuple[int, dict[str, float]]:
  """Trains protocol `name` on `encoder` and tests it: (steps, results)."""
  # Imported here: the data package loads TensorFlow.
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  from mio_jax import distributed  # pylint: disable=g-import-not-at-top
  from mio_jax.data import labelled  # pylint: disable=g-import-not-at-top
  section = config[name]
  labelled_set = labelled.labelled_set(config, fraction=fraction,
                                       per_class=per_class)
  task = make_task(config, mesh, name,
                   num_examples=len(labelled_set.indices),
                   num_classes=data.dataset_info(config).num_classes)
  directory = os.path.join(workdir, name)
  settings = run_settings(config, task, encoder.identity(),
                          num_labelled=len(labelled_set.indices))
  # Checked before the subset is written: a refused resume must leave the
  # record of the subset the kept checkpoints were trained on.
  guard_resume(directory, task, settings)
  if fraction is not None or per_class is not None:
    if distributed.is_main_process():
      files.write_json(os.path.join(directory, SUBSET_FILE),
                       labelled_set.description)

  def batches_fn(start_step):
    return labelled.labelled_batches(
        config, mesh, labelled=labelled_set, batch_size=task.batch_size,
        crop_scale=tuple(section.crop_scale),
        batch_key=f"config.{name}.batch_size", start_step=start_step)

  frozen = frozen_backbone(task, encoder.variables)
  state = train(task, init_state(task, encoder.variables), frozen, batches_fn,
                directory=directory, settings=settings, config=config,
                logger=logger, preemption=preemption)
  results = accuracy_on_test_split(task, state, frozen, config)
  return int(state.step), {f"{name}_{k}": v for k, v in results.items()}


def linear_eval(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh,
                encoder: modes.Encoder, *, logger: loop.Logger,
                preemption: Optional[loop.PreemptionWatch] = None
               ) -> tuple[int, dict[str, float]]:
  """Augmented linear evaluation of the frozen `encoder`.

  A linear head on the frozen backbone's features (BatchNorm running
  statistics) is trained on augmented views of the whole labelled train
  split for config.linear_eval.epochs, checkpointed in
  `<workdir>/linear_eval/`; a resume on another encoder (another digest of
  its variables) is refused. Returns (the encoder's pretraining step,
  {"linear_eval_top1", "linear_eval_top5"} on the test split).
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
