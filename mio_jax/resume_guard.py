"""Resume guarding, in one home: what a training records, compares, refuses.

Every training's checkpoints (pretraining, `linear_eval`, `finetune`) are
stored with a `Record` of its settings: every key of the config, flat
("optimizer.base_lr"), plus what is known only once the data are read
(`steps_per_epoch`, `prepared_dataset`: the data set's TFDS name, version
and split sizes, `data.prepared_identity`, or an image folder's fingerprint) and, for a
supervised protocol, the identity of the encoder it trains on. `check`
compares a record with the one stored beside the checkpoints and refuses,
naming every guarded setting that differs; `write` stores it (with the
first checkpoint: a training that saved nothing claims nothing). A record
guards every key except the few `FREE_KEYS` / `FREE_SECTIONS` of
pretraining (how often to log and save, how to evaluate, where the same
data live), or, for a protocol, only what its training depends on. So a
key added to the config later is guarded by default: a record made before
it existed is compared with the key's default, the behaviour of that run.

`config.resume_allow_changes` lets a user change guarded pretraining keys
on purpose (`allowed_changes`), except those that change the shape of the
saved state (`STRUCTURE_KEYS`), which no restore can bridge.

`stored_settings` is the one reader of the records of earlier builds (a
list of chosen keys, with the run's effective total steps, or the first
build's model/loss/optimizer); the next save rewrites them in this format.
"""
import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional

import ml_collections
from etils import epath

from mio_jax import config_base
from mio_jax import errors
from mio_jax import files

FORMAT = 3
METADATA_FILE = "run_metadata.json"

# The state's shapes: never allowed to change.
ARCHITECTURE_KEYS = (
    "model.name", "model.stem", "model.width_multiplier",
    "model.projector_num_layers", "model.projector_hidden_dim",
    "model.projector_output_dim", "model.projector_last_bn")
# Also the structure of the saved state: the probe's parameters, the
# optimizer's state (a resume could restore neither).
STRUCTURE_KEYS = ARCHITECTURE_KEYS + ("online_probe.enabled", "optimizer.name")

# May change freely between a run and its resume (reviewed, keep short):
# what the command does after training, how often it logs and saves, where
# the same data live (a changed data set shows in steps_per_epoch and
# prepared_dataset), where a fine-tuned encoder was read from (its digest
# is compared), and this list's own override.
FREE_KEYS = ("mode", "resume_allow_changes", "log_every_steps",
             "checkpoint_every_steps", "keep_checkpoints",
             "online_eval_every_steps", "dataset.data_dir",
             "dataset.manual_dir", "dataset.path", "dataset.prefetch",
             "finetune.init_from", "finetune.init_step")
# Sections that never touch pretraining: logging and the evaluations.
FREE_SECTIONS = ("logging", "eval", "knn", "fewshot", "feature_probe",
                 "linear_eval", "finetune")
# Known once the data are read.
DERIVED_KEYS = ("steps_per_epoch", "prepared_dataset")
# Besides the config keys it depends on, what a supervised protocol's
# resume must keep: the encoder's variables and step, the labelled
# examples. Where the encoder was read from may change (a moved workdir,
# an export of the same step).
PROTOCOL_KEYS = ("encoder.digest", "encoder.step", "num_labelled")


class CheckpointMismatchError(errors.UserError):
  """The checkpoints in a folder were made with other settings."""


def flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{"a.b": value} of every key of `config`, as JSON reads it back."""
  flat = {}

  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, (ml_collections.ConfigDict, dict)):
        walk(value, f"{prefix}{key}.")
      else:
        flat[f"{prefix}{key}"] = value

  walk(config, "")
  return files.as_stored(flat)


def is_free(key: str) -> bool:
  return key in FREE_KEYS or key.split(".")[0] in FREE_SECTIONS


def guards_pretraining(key: str) -> bool:
  """Whether a pretraining resume must keep `key` (all but the free ones)."""
  return not is_free(key)


def guards_protocol(name: str) -> Callable[[str], bool]:
  """The keys a supervised protocol's resume must keep.

  What its training depends on: the data set, the network, the compute
  dtype, the seed, the flip of its crops, its own section, the encoder's
  identity and the number of labelled examples.
  """
  sections = ("dataset", "model", name)
  keys = ("dtype", "seed", "augment.hflip") + DERIVED_KEYS + PROTOCOL_KEYS

  def guards(key: str) -> bool:
    if key in FREE_KEYS:
      return False
    return key in keys or key.split(".")[0] in sections

  return guards


# ---- the record ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Record:
  """What a training's checkpoints record, and how its resume is judged.

  settings: the flat config and derived values stored with the checkpoints.
  guards(key): whether a resume must keep `key`. what: the training in
  messages ("pretraining", "linear_eval", "finetune"). allowed: guarded
  keys the user allows to change (config.resume_allow_changes).
  total_steps: the run's effective length, compared with an earlier
  build's record (which stored that, not the config's total_steps).
  """
  settings: Mapping[str, Any]
  guards: Callable[[str], bool]
  what: str = "pretraining"
  allowed: tuple[str, ...] = ()
  total_steps: Optional[int] = None


def _derived(derived: Mapping[str, Any]) -> dict[str, Any]:
  return files.as_stored({k: v for k, v in derived.items() if v is not None})


def pretraining_record(config: ml_collections.ConfigDict, *,
                       total_steps: Optional[int] = None,
                       **derived: Any) -> Record:
  """The record of pretraining `config`: every key but the free ones.

  derived: steps_per_epoch, prepared_dataset (None: not known yet, not
  compared). Raises CheckpointMismatchError for a bad
  config.resume_allow_changes.
  """
  try:
    allowed = allowed_changes(config)
  except errors.InvalidValueError as error:
    raise CheckpointMismatchError(error.describe(
        "config.resume_allow_changes", "--config.resume_allow_changes")
                                  ) from None
  return Record({**flat_config(config), **_derived(derived)},
                guards_pretraining, "pretraining", allowed,
                None if total_steps is None else int(total_steps))


def protocol_record(name: str, config: ml_collections.ConfigDict,
                    encoder_identity: Mapping[str, Any],
                    **derived: Any) -> Record:
  """The record of supervised protocol `name` on an encoder
  (`encoder_sources.LoadedEncoder.identity`); derived: num_labelled, prepared_dataset."""
  return Record({**flat_config(config),
                 **files.as_stored({f"encoder.{k}": v
                                    for k, v in encoder_identity.items()}),
                 **_derived(derived)}, guards_protocol(name), name)


def architecture_record(config: ml_collections.ConfigDict) -> Record:
  """Only the network's shapes: what reading a saved encoder needs."""
  return Record(flat_config(config), ARCHITECTURE_KEYS.__contains__,
                "evaluation")


# ---- stored records ------------------------------------------------------------


def read(directory: epath.PathLike) -> Optional[dict[str, Any]]:
  """The metadata stored beside the checkpoints in `directory`, or None."""
  return files.read_json(epath.Path(directory) / METADATA_FILE)


_DEFAULTS = flat_config(config_base.base_config())


def stored_settings(metadata: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
  """(settings, whether the record is of an earlier build): the one reader
  of every format a build has written."""
  if metadata.get("format") == FORMAT:
    return dict(metadata["settings"]), False
  if "settings" in metadata:  # the second build: chosen keys only
    return dict(metadata["settings"]), True
  # The first build: {"model": {...}, "loss": ..., "optimizer": name}.
  settings = {f"model.{k}": v for k, v in metadata.get("model", {}).items()
              if f"model.{k}" in ARCHITECTURE_KEYS}
  if "loss" in metadata:
    settings["loss"] = metadata["loss"]
  if "optimizer" in metadata:
    settings["optimizer.name"] = metadata["optimizer"]
  return settings, True


def differences(metadata: Mapping[str, Any], current: Mapping[str, Any],
                guards: Callable[[str], bool], *,
                total_steps: Optional[int] = None
               ) -> list[tuple[str, Any, Any]]:
  """(key, stored, current) for each guarded key the two disagree on.

  A guarded key missing from a record of this format is compared with its
  default (the record predates the key). An earlier build's record is
  compared on the keys it holds; its "total_steps" was the run's effective
  length, compared with `total_steps` when given.
  """
  stored, legacy = stored_settings(metadata)
  if legacy:
    current = dict(current)
    current.pop("total_steps", None)
    if total_steps is not None:
      current["total_steps"] = int(total_steps)
    keys = [key for key in stored if key in current]
  else:
    keys = list(current)
  changes = []
  for key in filter(guards, keys):
    if key in stored:
      old = stored[key]
    elif key in _DEFAULTS:
      old = _DEFAULTS[key]  # added to the config after the record was made
    else:
      continue  # a derived value the record's run did not know yet
    if not _same(key, old, current[key]):
      changes.append((key, old, current[key]))
  return changes


def _same(key: str, stored: Any, current: Any) -> bool:
  # Records made before the data set's version and sizes were recorded
  # hold its bare TFDS name ("cifar10", now "cifar10@3.0.2 (...)").
  if (key == "prepared_dataset" and isinstance(stored, str)
      and isinstance(current, str) and "@" not in stored):
    return stored == current.split("@")[0]
  return stored == current


def _named(key: str) -> str:
  if key in DERIVED_KEYS or key in PROTOCOL_KEYS:
    return key
  return f"config.{key}"


def _refusal(directory: epath.Path, record: Record,
             refused: list[tuple[str, Any, Any]]) -> str:
  """One line naming every refused setting, and the fix."""
  keys = [key for key, _, _ in refused]
  differ = "; ".join(f"made with {_named(key)}={old!r}, this run has {new!r}"
                     for key, old, new in refused)
  if record.what != "pretraining" and record.what != "evaluation":
    return (f"{directory} holds a {record.what} run of other settings: "
            f"{differ}; delete that folder or use another --workdir")
  architecture = any(key in ARCHITECTURE_KEYS for key in keys)
  if architecture or record.what == "evaluation":
    fix = "use a new --workdir or the checkpoint's model"
  elif any(key in STRUCTURE_KEYS for key in keys):
    fix = "use a new --workdir, or set them back"
  else:
    fix = ("use a new --workdir, set them back, or pass "
           f"--config.resume_allow_changes={','.join(keys)} to change "
           "them on purpose")
  return (f"the checkpoints in {directory} are of another "
          f"{'model' if architecture else 'recipe'}: {differ}; {fix}")


def check(directory: epath.PathLike, record: Record
         ) -> list[tuple[str, Any, Any]]:
  """Raises CheckpointMismatchError unless `record` may resume from the
  checkpoints in `directory`, naming every guarded setting that differs.

  Changes of keys in record.allowed pass (checked, `check_allowed`) and
  are returned: `write` records them with the step they took effect at.
  """
  directory = epath.Path(directory)
  metadata = read(directory)
  if metadata is None:
    return []
  changes = differences(metadata, record.settings, record.guards,
                        total_steps=record.total_steps)
  refused = [change for change in changes if change[0] not in record.allowed]
  if refused:
    raise CheckpointMismatchError(_refusal(directory, record, refused))
  try:
    check_allowed(changes)
  except errors.InvalidValueError as error:
    raise CheckpointMismatchError(error.describe(
        "config.resume_allow_changes", "--config.resume_allow_changes")
                                  ) from None
  return changes


def write(directory: epath.PathLike, record: Record,
          changes: Iterable[tuple[str, Any, Any]] = (),
          from_step: Optional[int] = None) -> None:
  """Stores `record` beside the checkpoints, with the allowed `changes`
  taking effect at `from_step`; an earlier build's record is rewritten in
  this format, one of this format kept as it is."""
  path = epath.Path(directory) / METADATA_FILE
  stored = files.read_json(path)
  changes = list(changes)
  if (stored is not None and not changes
      and stored.get("format") == FORMAT):
    return
  history = (stored or {}).get("changes", []) + [
      {"key": key, "from": old, "to": new, "from_step": from_step}
      for key, old, new in changes]
  files.write_json(path, {"format": FORMAT, "settings": dict(record.settings),
                          "changes": history})


# ---- allowed changes -----------------------------------------------------------


def allowed_changes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The keys config.resume_allow_changes names, checked.

  Raises InvalidValueError (key "resume_allow_changes") for a key that is
  not a setting of the record, or one that changes the saved state's
  structure.
  """
  allowed = tuple(k.strip() for k in config.resume_allow_changes.split(",")
                  if k.strip())
  known = set(flat_config(config)) | set(DERIVED_KEYS)
  for key in allowed:
    if key not in known:
      raise errors.InvalidValueError(
          "resume_allow_changes", key, "is not a config key",
          "name keys as they are written in --config.KEY=..., e.g. "
          "{key}=total_steps")
    if key in STRUCTURE_KEYS:
      raise errors.InvalidValueError(
          "resume_allow_changes", key,
          "changes the structure of the saved state (the network, the "
          "online probe's parameters or the optimizer's state), which a "
          "resume cannot restore",
          "drop it from --config.resume_allow_changes; a new --workdir can "
          "change it")
  return allowed


def structure_change(key: str, old: Any, new: Any) -> bool:
  """Whether an allowed change still changes the saved state's structure.

  Adding or removing gradient clipping adds or removes a stage of the
  optimizer (and its state); changing the clip norm does not.
  """
  return key == "optimizer.grad_clip_norm" and (old is None) != (new is None)


def check_allowed(changes: Iterable[tuple[str, Any, Any]]) -> None:
  """Raises InvalidValueError for an allowed change no restore can bridge."""
  for key, old, new in changes:
    if structure_change(key, old, new):
      raise errors.InvalidValueError(
          "resume_allow_changes", key,
          f"cannot change from {old!r} to {new!r} on resume: it adds or "
          "removes a stage of the optimizer and its saved state",
          "use a new --workdir, or keep gradient clipping on (or off) and "
          "change its norm only")
