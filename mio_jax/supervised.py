"""The supervised protocols: augmented linear evaluation and fine-tuning.

Both train a linear classifier on the backbone's pooled features with
labelled, augmented batches (`data.labelled`: random resized crop and
flip only), SGD with Nesterov momentum and a cosine schedule, then report
top-1 and top-5 on the centre-resized test split. They share one loop:

  * `linear_eval`: the backbone is frozen (BatchNorm running statistics,
    train=False) and only the head is trained: SimCLR's, BYOL's and
    solo-learn's linear evaluation, on views streamed from the pipeline
    rather than precomputed centre-crop features (that fast probe is the
    evaluation protocol "linear").
  * `finetune`: backbone and a new head (the projector dropped) trained
    together, BatchNorm in train mode, on a fixed labelled subset
    (SimCLR's semi-supervised fine-tuning), from a pretrained encoder or,
    as the baseline, from a random initialisation.

State, step and loop follow `train.py`: a typed state, a jitted
data-parallel step (replicated parameters, batch sharded over `data`,
state donated), Orbax checkpoints in `<workdir>/<protocol>/checkpoints`
(the batch of step i depends only on (seed, i), so a resumed run is
bit-identical to an uninterrupted one), the non-finite guard and SIGTERM
handling of `train.py`.
"""
import dataclasses
import functools
import os
from typing import Any, Callable, Iterator, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from etils import epath
from jax.sharding import Mesh

from mio_jax import checkpointing
from mio_jax import errors
from mio_jax import export
from mio_jax import files
from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax import optim
from mio_jax import train
from mio_jax.evaluation import accuracy

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
SUBSET_FILE = "subset.json"
# Settings of the pretraining config a supervised run depends on.
_ENCODER_KEYS = checkpointing.ARCHITECTURE_KEYS + ("dataset.name",
                                                  "dataset.image_size", "seed")

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


def finetune_epochs(section: ml_collections.ConfigDict) -> float:
  """finetune.epochs, or SimCLR's: 60 at 1% of the labels or fewer, else 30."""
  if section.epochs is not None:
    return float(section.epochs)
  # SimCLR v1, appendix B.5: 60 epochs for 1% of ImageNet's labels, 30 for
  # 10%; fractions above 10% take the 10% value.
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
  steps_per_epoch: int
  total_steps: int
  # Recorded with the checkpoints; a resume with other values is refused.
  settings: Mapping[str, Any]


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


def make_optimizer(section: ml_collections.ConfigDict, *, total_steps: int
                  ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD with Nesterov momentum, cosine from base_lr * batch / 256 to 0.

  Weight decay (if any) skips biases and normalisation parameters.
  """
  peak = section.base_lr * section.batch_size / 256
  schedule = optax.cosine_decay_schedule(peak, decay_steps=max(total_steps, 1))
  return optax.chain(
      optax.add_decayed_weights(section.weight_decay, mask=optim.decay_mask),
      optax.sgd(schedule, momentum=section.momentum,
                nesterov=bool(section.nesterov))), schedule


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
        "params_finite": train.all_finite(params).astype(jnp.float32),
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


# ---- the loop -----------------------------------------------------------------


BatchesFn = Callable[[int], Iterator[Batch]]


def _prefixed(task: Task, metrics: Mapping[str, Any]) -> dict[str, float]:
  return {f"{task.name}_{k}": float(v) for k, v in metrics.items()}


def fit(task: Task, state: SupervisedState, frozen, batches_fn: BatchesFn, *,
        directory: str, logger: train.Logger, log_every_steps: int,
        checkpoint_every_steps: int, keep_checkpoints: int) -> SupervisedState:
  """Trains `state` to task.total_steps, resuming from `directory`.

  batches_fn(start_step): the batches of steps start_step, start_step+1...
  Checkpoints go to `<directory>/checkpoints`. Metrics are logged as
  "<task.name>_<metric>". Raises train.NonFiniteLossError on a NaN/inf
  step (the last good checkpoint is kept), SystemExit(0) after saving on
  SIGTERM, checkpointing.CheckpointMismatchError when `directory` holds
  checkpoints made with other settings.
  """
  checkpointing.refuse_changes(
      directory, task.settings, task.settings.keys(),
      describe=lambda key, stored, new: (
          f"{checkpointing.checkpoint_dir(directory)} holds a {task.name} "
          f"run made with {key}={stored!r}, this one has {new!r}; delete "
          "that folder or use another --workdir"))
  checkpointer = checkpointing.Checkpointer(directory, settings=task.settings,
                                            keep=keep_checkpoints)
  try:
    if checkpointer.latest_step() is not None:
      state = checkpointer.restore(state)
      if jax.process_index() == 0:
        print(f"Resumed {task.name} from {checkpointer.directory} at step "
              f"{int(state.step)}.", flush=True)
    step_fn = make_train_step(task)
    batches = batches_fn(int(state.step))
    every = lambda period, step: period > 0 and step % period == 0
    with train.PreemptionWatch() as preemption:
      for step in range(int(state.step), task.total_steps):
        state, metrics = step_fn(state, frozen, next(batches))
        done = step + 1
        last = done == task.total_steps
        preempted = preemption.reached(done)
        if every(log_every_steps, done) or last:
          train.check_finite(step, metrics)
          logger.log(done, _prefixed(task, jax.device_get(metrics)))
        if every(checkpoint_every_steps, done) or last or preempted:
          train.check_finite(step, metrics)
          checkpointer.save(state)
        if preempted:
          checkpointer.wait()
          print(f"Preempted: saved {task.name} step {done} in "
                f"{checkpointer.directory}; exiting.", flush=True)
          raise SystemExit(0)
  finally:
    checkpointer.close()
  return state


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


def _task(config: ml_collections.ConfigDict, mesh: Mesh, *, name: str,
          section: ml_collections.ConfigDict, num_examples: int,
          epochs: float, train_backbone: bool,
          settings: Mapping[str, Any]) -> Task:
  from mio_jax.data import labelled  # pylint: disable=g-import-not-at-top
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  batch_size = int(section.batch_size)
  steps_per_epoch = labelled.steps_per_epoch(num_examples, batch_size)
  total_steps = max(1, int(round(epochs * steps_per_epoch)))
  optimizer, schedule = make_optimizer(section, total_steps=total_steps)
  model = models.build_model(config.model, dtype=config.dtype)
  return Task(
      name=name, mesh=mesh, backbone=model.backbone,
      train_backbone=train_backbone,
      num_classes=data.dataset_info(config).num_classes, optimizer=optimizer,
      schedule=schedule, batch_size=batch_size,
      steps_per_epoch=steps_per_epoch, total_steps=total_steps,
      settings=files.as_stored({
          **{key: checkpointing.run_settings(config)[key]
             for key in _ENCODER_KEYS},
          **{f"{name}.{k}": v for k, v in section.to_dict().items()},
          "total_steps": total_steps, **settings}))


def _run(task: Task, config, workdir: str, variables, frozen, labelled_set,
         section, logger) -> tuple[int, dict[str, float]]:
  """(steps trained, {"<task>_top1", "<task>_top5"}) of a whole run."""
  from mio_jax.data import labelled  # pylint: disable=g-import-not-at-top
  directory = os.path.join(workdir, task.name)

  def batches_fn(start_step):
    return labelled.labelled_batches(
        config, task.mesh, labelled=labelled_set, batch_size=task.batch_size,
        crop_scale=tuple(section.crop_scale), start_step=start_step)

  state = fit(task, init_state(task, variables), frozen, batches_fn,
              directory=directory, logger=logger,
              log_every_steps=int(config.log_every_steps),
              checkpoint_every_steps=int(config.checkpoint_every_steps),
              keep_checkpoints=int(config.keep_checkpoints))
  return int(state.step), {
      f"{task.name}_{k}": v
      for k, v in accuracy_on_test_split(task, state, frozen, config).items()}


def linear_eval(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh,
                variables: Mapping[str, Any], *, encoder_step: int,
                logger: train.Logger) -> dict[str, float]:
  """Augmented linear evaluation of the frozen encoder `variables`.

  A linear head on the frozen backbone's features (BatchNorm running
  statistics) is trained on augmented views of the whole labelled train
  split for config.linear_eval.epochs, checkpointed in
  `<workdir>/linear_eval/`. encoder_step: the pretraining step of
  `variables`, recorded so that a resume on another encoder is refused.
  Returns {"linear_eval_top1", "linear_eval_top5"} on the test split.
  """
  from mio_jax.data import labelled  # pylint: disable=g-import-not-at-top
  section = config.linear_eval
  check_linear_eval_config(section)
  labelled_set = labelled.labelled_set(config)
  task = _task(config, mesh, name="linear_eval", section=section,
               num_examples=len(labelled_set.indices),
               epochs=float(section.epochs), train_backbone=False,
               settings={"encoder_step": int(encoder_step)})
  frozen = {"params": variables["params"]["backbone"],
            "batch_stats": variables["batch_stats"]["backbone"]}
  return _run(task, config, workdir, variables, frozen, labelled_set, section,
              logger)[1]


def initial_encoder(config: ml_collections.ConfigDict, mesh: Mesh
                   ) -> tuple[str, dict[str, Any]]:
  """(description, encoder variables) fine-tuning starts from.

  finetune.init_from: an exported encoder file (with its .json beside it),
  or a pretraining workdir (its step finetune.init_step, default the
  latest); empty: a random initialisation seeded by config.seed.
  Raises checkpointing.NoCheckpointError / CheckpointMismatchError /
  export.ExportError for a source that cannot be used.
  """
  source = config.finetune.init_from
  if not source:
    model = models.build_model(config.model, dtype=config.dtype)
    variables = train.initial_variables(
        model, seed=int(config.seed), image_size=config.dataset.image_size)
    return "random", jax.device_put(variables,
                                    mesh_lib.replicated_sharding(mesh))
  if epath.Path(f"{source}.json").exists():
    step, variables = export.encoder_variables(source, config, mesh)
  else:
    step, variables = checkpointing.restore_variables(
        source, config, mesh, step=config.finetune.init_step)
  return f"{source}@{step}", variables


def finetune(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh, *,
             logger: train.Logger) -> tuple[int, dict[str, float]]:
  """Fine-tunes backbone + a new linear head on a fixed labelled subset.

  The subset (config.finetune.label_fraction or labels_per_class) is
  written to `<workdir>/finetune/subset.json`; checkpoints go to
  `<workdir>/finetune/checkpoints`. Returns (fine-tuning steps,
  {"finetune_top1", "finetune_top5"} on the test split).
  """
  from mio_jax import distributed  # pylint: disable=g-import-not-at-top
  from mio_jax.data import labelled  # pylint: disable=g-import-not-at-top
  section = config.finetune
  check_finetune_config(section)
  per_class = int(section.labels_per_class or 0) or None
  fraction = None if per_class else float(section.label_fraction)
  labelled_set = labelled.labelled_set(config, fraction=fraction,
                                       per_class=per_class)
  if distributed.is_main_process():
    files.write_json(os.path.join(workdir, "finetune", SUBSET_FILE),
                     labelled_set.description)
  init, variables = initial_encoder(config, mesh)
  task = _task(config, mesh, name="finetune", section=section,
               num_examples=len(labelled_set.indices),
               epochs=finetune_epochs(section), train_backbone=True,
               settings={"init": init,
                         "num_labelled": len(labelled_set.indices)})
  return _run(task, config, workdir, variables, None, labelled_set, section,
              logger)
