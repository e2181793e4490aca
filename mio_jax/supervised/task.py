"""A supervised protocol's task, state, jitted step and test pass.

`make_task` builds what a protocol trains (network, optimizer, length),
`init_state` its state from the encoder's variables, `make_train_step`
the jitted data-parallel step (replicated parameters, batch sharded over
`data`, state donated); `supervised.setup` hands them to the one training
loop (`loop.train`). `accuracy` scores the head on any labelled split.
"""
import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from mio_jax import loop
from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax import optim
from mio_jax.data import indexing
from mio_jax.evaluation import accuracy as accuracy_lib
from mio_jax.models import vit

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
# How a frozen backbone's BatchNorm normalises while its head trains:
# "running": its running statistics, untouched (SimCLR, BYOL, solo-learn);
# "batch": the batch's, updating the running statistics the test then uses
# (the public MIO code's linear evaluation runs its model in train mode).
BN_MODES = ("running", "batch")


# eq=False: hashed by identity, so jitted functions built from a task are
# cached per task.
@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """One supervised run: network, optimizer and length."""
  name: str  # "linear_eval" | "finetune": results prefix and workdir folder
  mesh: Mesh
  backbone: models.Backbone
  train_backbone: bool  # False: frozen backbone (linear evaluation)
  num_classes: int
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  batch_size: int
  total_steps: int
  bn_mode: str = "running"  # a frozen backbone's BatchNorm (BN_MODES)
  seed: int = 0  # of the drop-path key of step s: fold_in(key(seed), s)


def lr_schedule(section: ml_collections.ConfigDict, *, num_examples: int,
                total_steps: int) -> optax.Schedule:
  """The classifier's learning rate by step.

  schedule "cosine": from base_lr (times batch / 256 under lr_scaling
  "linear") to 0 over the run, SimCLR's. "step": times lr_decay after each
  epoch, the public MIO code's torch StepLR(step_size=1, gamma=0.98).
  """
  batch_size = int(section.batch_size)
  peak = optim.peak_learning_rate(section, batch_size)
  if section.schedule == "cosine":
    return optax.cosine_decay_schedule(peak, decay_steps=max(total_steps, 1))
  decay = float(section.lr_decay)
  # Epochs end inside a step: the batches stream across them
  # (indexing.labelled_step_examples).
  return lambda step: peak * decay ** jnp.floor(step * batch_size
                                                / num_examples)


def make_task(config: ml_collections.ConfigDict, mesh: Mesh, name: str, *,
              num_examples: int, num_classes: int, epochs: float) -> Task:
  """The task of protocol `name` ("linear_eval" | "finetune") on n examples.

  Its length is SimCLR's count: n * epochs // batch + 1 steps
  (`indexing.labelled_num_steps`).
  """
  section = config[name]
  batch_size = int(section.batch_size)
  total_steps = indexing.labelled_num_steps(num_examples, epochs, batch_size)
  schedule = lr_schedule(section, num_examples=num_examples,
                         total_steps=total_steps)
  backbone = models.build_model(config.model, dtype=config.dtype).backbone
  optimizer = optim.classifier_optimizer(
      schedule, momentum=section.momentum, nesterov=bool(section.nesterov),
      weight_decay=section.weight_decay)
  if name == "finetune" and isinstance(backbone, models.ViT):
    # A ViT fine-tunes with its own drop path and layer-wise lr decay.
    backbone = backbone.clone(drop_path=section.drop_path)
    optimizer = optax.chain(optimizer, optim.layer_decay(
        section.layer_decay, functools.partial(
            _finetune_layer_ids, num_layers=backbone.num_layers),
        backbone.num_layers))
  return Task(name=name, mesh=mesh, backbone=backbone,
              train_backbone=name == "finetune", num_classes=num_classes,
              optimizer=optimizer, schedule=schedule, batch_size=batch_size,
              total_steps=total_steps,
              bn_mode=section.get("backbone_bn", "running"),
              seed=int(config.seed))


def _finetune_layer_ids(params: Any, *, num_layers: int) -> Any:
  """The layer of each fine-tuned ViT parameter ({"backbone", "head"})."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: num_layers + 1 if path[0].key == "head" else
      vit.layer_id(tuple(k.key for k in path[1:]), num_layers), params)


@flax.struct.dataclass
class SupervisedState:
  """Everything that changes during a supervised run (and is checkpointed).

  params: the head {"kernel" (D, C), "bias" (C,)} (linear evaluation), or
  {"backbone", "head"} (fine-tuning). batch_stats: the backbone's BatchNorm
  averages while fine-tuning or with bn_mode "batch"; None otherwise (the
  frozen backbone is an argument of the step, never donated).
  best: early stopping's record (`early_stopping.Best`), or None.
  """
  step: jax.Array  # int32 scalar: updates applied so far
  params: Any
  batch_stats: Any
  opt_state: Any
  best: Any = None


def _head(feature_dim: int, num_classes: int) -> dict[str, jax.Array]:
  # Zeros, as SimCLR's zero_init_logits_layer: every class starts equal.
  return {"kernel": jnp.zeros((feature_dim, num_classes)),
          "bias": jnp.zeros((num_classes,))}


def _logits(task: Task, params, batch_stats, frozen, images: jax.Array, *,
            train: bool, step: Optional[jax.Array] = None
           ) -> tuple[jax.Array, Any]:
  """(logits (B, C) f32, new batch_stats) of `images`.

  step: the training step, whose key drives drop path (a ViT's).
  """
  images = images.astype(task.backbone.dtype)
  if task.train_backbone:
    variables = {"params": params["backbone"], "batch_stats": batch_stats}
    head = params["head"]
  else:
    running = frozen["batch_stats"] if batch_stats is None else batch_stats
    variables = {"params": frozen["params"], "batch_stats": running}
    head = params
  if train and (task.train_backbone or task.bn_mode == "batch"):
    rngs = {} if step is None else {"dropout": jax.random.fold_in(
        jax.random.key(task.seed), step)}
    features, updates = task.backbone.apply(variables, images, train=True,
                                            mutable=["batch_stats"], rngs=rngs)
    batch_stats = updates["batch_stats"]
  else:
    features = task.backbone.apply(variables, images, train=False)
  if not task.train_backbone:
    features = jax.lax.stop_gradient(features)
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
                                    batch["image"], train=True,
                                    step=state.step)
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


def init_state(task: Task, variables: Mapping[str, Any],
               best: Any = None) -> SupervisedState:
  """The state at step 0 from the encoder `variables`, replicated.

  Linear evaluation trains a head only (the backbone is passed to the step
  as `frozen`); fine-tuning trains the backbone and a head.
  """
  head = _head(task.backbone.feature_dim, task.num_classes)
  # Copies: the step donates the state, and the caller keeps `variables`.
  stats = lambda: jax.tree.map(jnp.copy, variables["batch_stats"]["backbone"])
  if task.train_backbone:
    params = {"backbone": jax.tree.map(jnp.copy,
                                       variables["params"]["backbone"]),
              "head": head}
    batch_stats = stats()
  else:
    params = head
    batch_stats = stats() if task.bn_mode == "batch" else None
  state = SupervisedState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=batch_stats,
                          opt_state=task.optimizer.init(params), best=best)
  return jax.device_put(state, mesh_lib.replicated_sharding(task.mesh))


def frozen_backbone(task: Task, variables: Mapping[str, Any]) -> Optional[dict]:
  """The step's `frozen` argument: the backbone (linear_eval) or None."""
  if task.train_backbone:
    return None
  return {"params": variables["params"]["backbone"],
          "batch_stats": variables["batch_stats"]["backbone"]}


# ---- the test pass ----------------------------------------------------------------


# One program per task: early stopping scores the validation split after
# every epoch, and a jit of a new closure would trace and compile it again.
@functools.cache
def _hit_and_loss_counts(task: Task) -> Callable[..., tuple[jax.Array, ...]]:
  """Jitted (params, batch_stats, frozen, batch) -> (top-1 hits, top-5 hits,
  summed loss, rows) over the batch's unmasked rows."""
  replicated = mesh_lib.replicated_sharding(task.mesh)

  @functools.partial(jax.jit, in_shardings=(replicated, replicated, replicated,
                                            mesh_lib.batch_sharding(task.mesh)))
  def counts(params, batch_stats, frozen, batch):
    logits, _ = _logits(task, params, batch_stats, frozen, batch["image"],
                        train=False)
    top1, top5 = accuracy_lib.hit_counts(logits, batch["label"],
                                         batch["mask"],
                                         num_classes=task.num_classes)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.maximum(batch["label"], 0))
    return (top1, top5, jnp.sum(jnp.where(batch["mask"], losses, 0.0)),
            jnp.sum(batch["mask"]))

  return counts


def accuracy(task: Task, params, batch_stats, frozen, batches
            ) -> dict[str, float]:
  """{"top1", "top5", "loss"} of the classifier over `batches` (masked rows).

  batches: `data.eval_batches`, or a pass of `data.split_passes`, of a
  labelled split.
  """
  counts = _hit_and_loss_counts(task)
  totals = [0.0] * 4
  for batch in batches:
    totals = [t + float(c) for t, c in zip(
        totals, jax.device_get(counts(params, batch_stats, frozen, batch)))]
  top1, top5, loss, count = totals
  return {"top1": top1 / count, "top5": top5 / count, "loss": loss / count}
