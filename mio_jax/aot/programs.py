"""The jitted steps a config runs, lowered with abstract, sharded inputs.

The training steps come from the very set-ups `main` trains
(`pretraining.setup`, `supervised.setup`, without a workdir: compile
only) and are lowered by `loop.Training.lower` on `jax.ShapeDtypeStruct`s
that carry their shardings, so nothing is allocated and the mesh may be
made of compile-only TPU devices:

  * "pretrain": pretraining's update step, with the online probe and
    `augment.on_device` as configured (uint8 views then), at
    config.batch_size;
  * "extract": `evaluation.encoder.make_encode_fn`, the frozen encoder of
    feature extraction, at config.eval.batch_size; the train and test
    splits' features it fills stay on the chips (`resident_bytes_per_chip`);
  * "linear_eval", "finetune": each protocol's step, at
    config.linear_eval.batch_size and config.finetune.batch_size.

A Program's run length (`steps`) uses the data set's split sizes from
`data.dataset_info`, which needs no prepared data (a fine-tuning subset's
size is estimated from them: `supervised.estimated_examples`).
"""
import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mio_jax import encoder_sources
from mio_jax import loop
from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax import pretraining
from mio_jax import recipe
from mio_jax import supervised
from mio_jax.evaluation import encoder

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


abstract = loop.abstract


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


def _program(name: str, training: loop.Training, batch_size: int) -> Program:
  args = training.abstract_args()
  return Program(name, batch_size, training.num_steps, training.lower,
                 bytes_per_chip(args))


def pretrain_program(config: ml_collections.ConfigDict, mesh: Mesh,
                     info) -> Program:
  """The pretraining update step `main` trains (`pretraining.setup`).

  info: `data.DatasetInfo` of the config (sizes, classes, normalisation).
  """
  training = pretraining.setup(config, mesh, recipe.DataFacts.of(info))
  return _program("pretrain", training, int(config.batch_size))


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


def supervised_program(config: ml_collections.ConfigDict, mesh: Mesh, info,
                       name: str) -> Program:
  """Protocol `name`'s step as `main` trains it (`supervised.setup`), on the
  shapes of the encoder's initial variables."""
  model = models.build_model(config.model, dtype=config.dtype)
  encoder_shapes = encoder_sources.LoadedEncoder(
      encoder_sources.EncoderSource(encoder_sources.RANDOM), 0,
      _initial_variables(config, model))
  made = supervised.setup(name, config, mesh, info, encoder_shapes)
  return _program(name, made.training, int(config[name].batch_size))


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
