"""A pretrained encoder as one file: export a saved step, load it back.

`export_encoder(workdir, config, out)` writes the backbone's parameters and
BatchNorm statistics of a saved step to `out` (flax's msgpack
serialization: arrays and nested dicts, no pickle) and, beside it,
`out + ".json"`: the step, the source workdir and the config sections that
rebuild the network (model, dtype, image size, data set). `load_encoder`
reads both back; `encoder_variables` places the backbone into a full
encoder's variables for evaluation or fine-tuning (the projector, which no
protocol uses, keeps its initial values).
"""
from typing import Any, Optional

import flax.serialization
import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh

from mio_jax import checkpointing
from mio_jax import errors
from mio_jax import files
from mio_jax import mesh as mesh_lib
from mio_jax import models

FORMAT = "mio_jax.encoder/1"


class ExportError(errors.UserError):
  """An export file that is missing, unreadable or of another network."""


def _description(config: ml_collections.ConfigDict, step: int,
                 workdir: str) -> dict[str, Any]:
  return files.as_stored({
      "format": FORMAT, "step": step, "workdir": str(workdir),
      "model": config.model.to_dict(), "dtype": config.dtype,
      "image_size": config.dataset.image_size,
      "dataset": config.dataset.name,
  })


def export_encoder(workdir: str, config: ml_collections.ConfigDict, out: str, *,
                   step: Optional[int] = None,
                   mesh: Optional[Mesh] = None) -> dict[str, Any]:
  """Writes the backbone of saved `step` (default latest) to `out` and out.json.

  Returns the JSON description written. Raises NoCheckpointError and
  CheckpointMismatchError as `checkpointing.restore_variables` does, and
  ExportError where `out` cannot be written.
  """
  mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
  step, variables = checkpointing.restore_variables(
      workdir, checkpointing.EncoderArchitecture.from_config(config), mesh,
      step=step)
  backbone = jax.device_get({"params": variables["params"]["backbone"],
                             "batch_stats": variables["batch_stats"]["backbone"]})
  description = _description(config, step, workdir)
  try:
    path = epath.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flax.serialization.msgpack_serialize(backbone))
    files.write_json(f"{out}.json", description)
  except OSError as error:
    # A parent that is a file, a read-only place (/proc), no permission.
    raise ExportError(f"cannot write the encoder to {out} "
                      f"({error.strerror or error}); give a path in a "
                      "directory you can write to") from None
  return description


def load_encoder(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(description, {"params", "batch_stats"} of the backbone) of an export."""
  description = files.read_json(f"{path}.json")
  if not epath.Path(path).exists() or description is None:
    raise ExportError(
        f"no exported encoder at {path} (and {path}.json); write one with "
        "python -m mio_jax.cli.export --config=... --workdir=... --out=PATH")
  if description.get("format") != FORMAT:
    raise ExportError(f"{path}.json is not a mio_jax encoder export "
                      f"(format {description.get('format')!r}, want {FORMAT!r})")
  backbone = flax.serialization.msgpack_restore(epath.Path(path).read_bytes())
  return description, backbone


def check_matches(description: dict[str, Any],
                  config: ml_collections.ConfigDict, path: str) -> None:
  """Raises ExportError unless the export is of config's architecture."""
  wanted = files.as_stored(config.model.to_dict())
  stored = description["model"]
  differing = sorted(k for k in set(wanted) | set(stored)
                     if wanted.get(k) != stored.get(k))
  if differing:
    key = differing[0]
    raise ExportError(
        f"{path} holds another network: model.{key}={stored.get(key)!r}, "
        f"this config has {wanted.get(key)!r}; use the config it was "
        "exported with")


def encoder_variables(path: str, config: ml_collections.ConfigDict,
                      mesh: Mesh) -> tuple[int, dict[str, Any]]:
  """(step, full encoder variables) with the exported backbone, replicated.

  The projector's variables are a fresh init (seed config.seed): evaluation
  reads backbone features only, and fine-tuning replaces the projector by a
  classifier head.
  """
  description, backbone = load_encoder(path)
  check_matches(description, config, path)
  model = models.build_model(config.model, dtype=config.dtype)
  variables = jax.device_get(models.init_variables(
      model, jax.random.key(config.seed), image_size=config.dataset.image_size))
  for collection in ("params", "batch_stats"):
    fresh = variables[collection]["backbone"]
    if (jax.tree.structure(fresh) != jax.tree.structure(backbone[collection])
        or any(np.shape(a) != np.shape(b) for a, b in zip(
            jax.tree.leaves(fresh), jax.tree.leaves(backbone[collection])))):
      raise ExportError(f"{path}: the {collection} do not fit the backbone of "
                        "this config; use the config it was exported with")
    variables[collection] = {**variables[collection],
                             "backbone": backbone[collection]}
  return int(description["step"]), jax.device_put(
      variables, mesh_lib.replicated_sharding(mesh))
