"""Where an evaluated or fine-tuned encoder comes from, and its loading.

`EncoderSource` names it: a random initialisation, a saved step of a
pretraining workdir, or an exported file (`python -m mio_jax.cli.export`);
`load_encoder` turns a source into a `LoadedEncoder` (the variables and
where they came from; the Flax network is `models.Encoder`), whose
`identity()` a supervised protocol records so that its resume on another
encoder is refused. Which source a `--mode` uses is the modes table's
(`modes.encoder_source`).
"""
import dataclasses
import hashlib
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh

from mio_jax import checkpointing
from mio_jax import export
from mio_jax import mesh as mesh_lib
from mio_jax import models

RANDOM = "random"  # models.initial_variables(seed=config.seed)
WORKDIR = "workdir"  # a saved step of a pretraining workdir
FILE = "file"  # an exported encoder (python -m mio_jax.cli.export)


@dataclasses.dataclass(frozen=True)
class EncoderSource:
  kind: str  # RANDOM | WORKDIR | FILE
  path: str = ""
  step: Optional[int] = None  # WORKDIR: the saved step; None: the latest


def is_export(path: str) -> bool:
  """True when `path` names an exported encoder (it has a .json beside it)."""
  return epath.Path(f"{path}.json").exists()


@dataclasses.dataclass(frozen=True)
class LoadedEncoder:
  """Encoder variables ({"params", "batch_stats"}, replicated) and their origin."""
  source: EncoderSource
  step: int  # the pretraining step of the variables (0: random)
  variables: dict[str, Any]

  def identity(self) -> dict[str, Any]:
    """Source, step and a digest of the backbone's variables (all processes)."""
    digest = hashlib.sha256()
    backbone = jax.device_get({k: v["backbone"]
                               for k, v in self.variables.items()})
    for path, leaf in jax.tree_util.tree_leaves_with_path(backbone):
      digest.update(jax.tree_util.keystr(path).encode())
      digest.update(np.ascontiguousarray(leaf).tobytes())
    return {"source": self.source.kind, "path": self.source.path,
            "step": self.step, "digest": digest.hexdigest()[:16]}


def load_encoder(source: EncoderSource, config: ml_collections.ConfigDict,
                 mesh: Mesh) -> LoadedEncoder:
  """The encoder `source` names, for config's architecture, replicated on mesh.

  Raises checkpointing.NoCheckpointError / CheckpointMismatchError and
  export.ExportError for a source that cannot be used.
  """
  if source.kind == RANDOM:
    model = models.build_model(config.model, dtype=config.dtype)
    variables = models.initial_variables(
        model, seed=int(config.seed), image_size=config.dataset.image_size)
    return LoadedEncoder(source, 0, jax.device_put(
        variables, mesh_lib.replicated_sharding(mesh)))
  if source.kind == FILE:
    step, variables = export.encoder_variables(source.path, config, mesh)
  else:
    step, variables = checkpointing.restore_variables(
        source.path, checkpointing.EncoderArchitecture.from_config(config),
        mesh, step=source.step)
  return LoadedEncoder(source, step, variables)
