"""The table of `--mode`s: where each one's encoder comes from, what it runs.

One table, read by the orchestrator (`experiment.train_and_evaluate`) and
by the checks before any work (`config_validation.validate_workdir`):

| mode | encoder | then the protocols |
| --- | --- | --- |
| pretrain | pretrained by this command, in --workdir | - |
| all | pretrained by this command, in --workdir | knn, fewshot, feature_probe |
| knn_eval, fewshot_eval, feature_probe_eval | evaluated: eval.encoder_file, else --workdir's step eval.step (default the latest) | knn, fewshot, feature_probe |
| linear_eval | evaluated, as above | linear_eval |
| finetune | finetune.init_from: an exported file, another pretraining workdir (step finetune.init_step), or "" for a random initialisation | finetune |

Every protocol has one name, in one table (`PROTOCOL_KINDS`), saying how
it runs: on the frozen encoder's features, all of a mode's together
(`evaluation.PROTOCOLS`: kNN, few-label, feature probe; also the online
kNN during pretraining), or trained in the loop (`supervised.PROTOCOLS`).

`encoder_source(config, workdir)` applies the table to a config;
`load_encoder` turns a source into a `LoadedEncoder` (variables and where
they came from; the Flax network is `models.Encoder`), whose `identity()`
a supervised protocol records so that its resume on another encoder is
refused.
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

# Where a mode's encoder comes from.
PRETRAINED = "pretrained"  # trained by this command in --workdir
EVALUATED = "evaluated"  # eval.encoder_file, else --workdir at eval.step
FINETUNE_INIT = "finetune_init"  # finetune.init_from (or random)


# How a protocol runs.
FROZEN_FEATURES = "frozen_features"  # evaluation.PROTOCOLS, on features
TRAINED = "trained"  # supervised.PROTOCOLS, in the training loop

PROTOCOL_KINDS: dict[str, str] = {
    "knn": FROZEN_FEATURES,
    "fewshot": FROZEN_FEATURES,
    "feature_probe": FROZEN_FEATURES,
    "linear_eval": TRAINED,
    "finetune": TRAINED,
}


@dataclasses.dataclass(frozen=True)
class Mode:
  encoder: str  # PRETRAINED | EVALUATED | FINETUNE_INIT
  # The protocols run on the encoder (names of PROTOCOL_KINDS).
  protocols: tuple[str, ...] = ()

  def of_kind(self, kind: str) -> tuple[str, ...]:
    """This mode's protocols that run as `kind` (FROZEN_FEATURES | TRAINED)."""
    return tuple(name for name in self.protocols
                 if PROTOCOL_KINDS[name] == kind)


MODES: dict[str, Mode] = {
    "pretrain": Mode(PRETRAINED),
    "all": Mode(PRETRAINED, ("knn", "fewshot", "feature_probe")),
    "knn_eval": Mode(EVALUATED, ("knn",)),
    "fewshot_eval": Mode(EVALUATED, ("fewshot",)),
    "feature_probe_eval": Mode(EVALUATED, ("feature_probe",)),
    "linear_eval": Mode(EVALUATED, ("linear_eval",)),
    "finetune": Mode(FINETUNE_INIT, ("finetune",)),
}

# ---- sources ------------------------------------------------------------------

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


def encoder_source(config: ml_collections.ConfigDict,
                   workdir: str) -> Optional[EncoderSource]:
  """Where config.mode's encoder comes from; None when this command trains it."""
  mode = MODES[config.mode]
  if mode.encoder == PRETRAINED:
    return None
  if mode.encoder == EVALUATED:
    if config.eval.encoder_file:
      return EncoderSource(FILE, config.eval.encoder_file)
    return EncoderSource(WORKDIR, workdir, config.eval.step)
  source = config.finetune.init_from
  if not source:
    return EncoderSource(RANDOM)
  if is_export(source):
    return EncoderSource(FILE, source)
  return EncoderSource(WORKDIR, source, config.finetune.init_step)


# ---- encoders -----------------------------------------------------------------


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
    step, variables = checkpointing.restore_variables(source.path, config,
                                                      mesh, step=source.step)
  return LoadedEncoder(source, step, variables)
