"""The jitted steps a config runs, lowered with abstract, sharded inputs.

Each `Program` is built exactly as training and evaluation build theirs,
from the library's own functions, and lowered on `jax.ShapeDtypeStruct`s
that carry their shardings, so nothing is allocated and the mesh may be
made of compile-only TPU devices:

  * "pretrain": `train.make_train_step(run.build_run(...))`, with the
    online probe and `augment.on_device` as configured (uint8 views then),
    at config.batch_size;
  * "extract": `evaluation.encoder.make_encode_fn`, the frozen encoder of
    feature extraction, at config.eval.batch_size; the train and test
    splits' features it fills stay on the chips (`resident_bytes_per_chip`);
  * "linear_eval", "finetune": `supervised.make_train_step` of each
    protocol's task, at config.linear_eval.batch_size and
    config.finetune.batch_size (`supervised_steps`).

A Program's run length (`steps`) uses the data set's split sizes from
`data.dataset_info`, which needs no prepared data.
"""
import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax import run as run_lib
from mio_jax import supervised
from mio_jax import train
from mio_jax.evaluation import encoder
from mio_jax.supervised import task as supervised_task

NAMES = ("pretrain", "extract", "linear_eval", "finetune")
# The config key of each program's global batch.
BATCH_KEYS = {"pretrain": "batch_size", "extract": "eval.batch_size",
              "linear_eval": "linear_eval.batch_size",
              "finetune": "finetune.batch_size"}


@dataclasses.dataclass(frozen=True)
class Program:
  """One step, ready to lower."""
  name: str  # one of NAMES
  batch_size: int  # global: source images per step
  steps: int  # steps of the config's whole run of this program
  lower: Callable[[], jax.stages.Lowered]
  # Bytes of one chip's shards of the inputs (known before compiling, so a
  # program too large to compile still has them).
  argument_bytes_per_chip: int
  # Bytes per chip that the program's process holds beside its own
  # arguments, temporaries and outputs (the features extraction fills).
  resident_bytes_per_chip: int = 0

  @property
  def batch_key(self) -> str:
    return BATCH_KEYS[self.name]


def abstract(tree: Any, sharding: NamedSharding) -> Any:
  """`tree`'s arrays (or shapes) as ShapeDtypeStructs carrying `sharding`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def bytes_per_chip(tree: Any) -> int:
  """Bytes of one device's shards of `tree`'s sharded ShapeDtypeStructs."""
  return sum(int(np.prod(x.sharding.shard_shape(x.shape)))
             * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _images(batch_size: int, size: int, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((batch_size, size, size, 3), dtype)


def _initial_variables(config: ml_collections.ConfigDict,
                       model: models.Encoder) -> Mapping[str, Any]:
  """The encoder's variables as shapes (nothing computed)."""
  return jax.eval_shape(lambda: models.initial_variables(
      model, seed=int(config.seed), image_size=int(config.dataset.image_size)))


def pretrain_program(config: ml_collections.ConfigDict, mesh: Mesh,
                     info) -> Program:
  """The pretraining update step, as `train.pretrain` runs it.

  info: `data.DatasetInfo` of the config (sizes, classes, normalisation).
  """
  from mio_jax.data import indexing  # pylint: disable=g-import-not-at-top
  run = run_lib.build_run(
      config, mesh, steps_per_epoch=indexing.steps_per_epoch(
          info.num_pretrain_examples, int(config.batch_size)),
      num_classes=info.num_classes, normalization=(info.mean, info.std))
  size, batch_size = int(config.dataset.image_size), int(config.batch_size)
  # The host pipeline's batch (data.pretrain_batches): normalised float32
  # views, or uint8 crops when the colour ops run on the device.
  views = jnp.uint8 if config.augment.on_device else jnp.float32
  batch = {"view1": _images(batch_size, size, views),
           "view2": _images(batch_size, size, views),
           "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
           "index": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  state = jax.eval_shape(lambda: train.init_state(run))
  step = train.make_train_step(run)
  args = (abstract(state, mesh_lib.replicated_sharding(mesh)),
          abstract(batch, mesh_lib.batch_sharding(mesh)))
  return Program("pretrain", batch_size, run.total_steps,
                 lambda: step.lower(*args), bytes_per_chip(args))


def extract_program(config: ml_collections.ConfigDict, mesh: Mesh,
                    info) -> Program:
  """The frozen encoder of feature extraction, on one eval batch.

  The train and test splits' features (`evaluation.features`: float32
  features, int32 labels and positions, bool validity, rows padded to whole
  batches) stay on the chips while the protocols run: counted as resident.
  """
  from mio_jax.data import indexing  # pylint: disable=g-import-not-at-top
  model = models.build_model(config.model, dtype=config.dtype)
  batch_size = int(config.eval.batch_size)
  variables = _initial_variables(config, model)
  encode = encoder.make_encode_fn(model, mesh)
  images = _images(batch_size, int(config.dataset.image_size))
  batches = {split: indexing.num_eval_batches(count, batch_size)
             for split, count in info.num_eval_examples.items()}
  row_bytes = 4 * model.backbone.feature_dim + 4 + 4 + 1
  resident = sum(batches.values()) * batch_size * row_bytes // mesh.size

  args = (abstract(variables, mesh_lib.replicated_sharding(mesh)),
          abstract(images, mesh_lib.batch_sharding(mesh)))
  return Program("extract", batch_size, sum(batches.values()),
                 lambda: encode.lower(*args), bytes_per_chip(args),
                 resident_bytes_per_chip=int(resident))


def supervised_steps(config: ml_collections.ConfigDict, mesh: Mesh, info,
                     name: str) -> tuple[Callable[..., Any], int, int, tuple]:
  """(jitted step, global batch, run steps, abstract (state, frozen, batch)).

  The one place that builds the supervised protocols' steps (name
  "linear_eval" or "finetune") as `supervised.linear_eval` and
  `supervised.finetune` do: `supervised.task.make_task`, `init_state`
  (with early stopping's record for linear_eval.recipe "public_code"),
  `frozen_backbone`, `make_train_step`. Examples: the whole labelled train
  split for linear evaluation (or its linear_eval.train_split), the
  configured fraction (or labels per class) of it for fine-tuning; they set
  only the run length.
  """
  section = config[name]
  num_train = int(info.num_eval_examples["train"])
  if name == "linear_eval" and section.train_split:
    from mio_jax.data import dataset  # pylint: disable=g-import-not-at-top
    spec = dataset.dataset_spec(config)
    num_examples = dataset.split_size(
        spec, section.train_split,
        dataset.split_lengths(spec, config.dataset.data_dir),
        key="linear_eval.train_split")
  elif name == "linear_eval":
    num_examples = num_train
  elif section.labels_per_class:
    num_examples = int(section.labels_per_class) * int(info.num_classes)
  else:
    num_examples = max(1, int(round(float(section.label_fraction) * num_train)))
  task = supervised_task.make_task(
      config, mesh, name, num_examples=num_examples,
      num_classes=int(info.num_classes), epochs=supervised.epochs(config, name))
  model = models.build_model(config.model, dtype=config.dtype)
  variables = _initial_variables(config, model)
  early_stopping = name == "linear_eval" and section.recipe == "public_code"
  state = jax.eval_shape(lambda v: supervised_task.init_state(
      task, v, best=supervised.early_stopping.initial_best(task, v)
      if early_stopping else None), variables)
  frozen = supervised_task.frozen_backbone(task, variables)
  batch_size = int(section.batch_size)
  batch = {"image": _images(batch_size, int(config.dataset.image_size)),
           "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  replicated = mesh_lib.replicated_sharding(mesh)
  return (supervised_task.make_train_step(task), batch_size, task.total_steps,
          (abstract(state, replicated), abstract(frozen, replicated),
           abstract(batch, mesh_lib.batch_sharding(mesh))))


def supervised_program(config: ml_collections.ConfigDict, mesh: Mesh, info,
                       name: str) -> Program:
  step, batch_size, steps, args = supervised_steps(config, mesh, info, name)
  return Program(name, batch_size, steps, lambda: step.lower(*args),
                 bytes_per_chip(args))


_BUILDERS = {"pretrain": pretrain_program, "extract": extract_program,
             "linear_eval": lambda c, m, i: supervised_program(
                 c, m, i, "linear_eval"),
             "finetune": lambda c, m, i: supervised_program(
                 c, m, i, "finetune")}


def build(name: str, config: ml_collections.ConfigDict, mesh: Mesh,
          info: Optional[Any] = None) -> Program:
  """Program `name` (one of NAMES) of `config` on `mesh`.

  info: `data.dataset_info(config)` (read here when None).
  """
  if info is None:
    from mio_jax import data  # pylint: disable=g-import-not-at-top
    info = data.dataset_info(config)
  return _BUILDERS[name](config, mesh, info)
