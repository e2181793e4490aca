"""A validation split held out of the labelled training split, by TFDS slicing.

`hold_out_validation(config, fraction)` keeps the last `fraction` of the
labelled train split (`DatasetInfo.eval_splits["train"]`) apart and returns
the TFDS split expressions of what is left: the pretraining split without
those examples, the labelled train split without them (what probes fit)
and the held-out part (what they are scored on). The test split is not
touched. A contiguous slice is what big_vision's "minival" is
(`train[98%:]`); TFDS shuffles a split's examples by key when it builds
it, so the tail is a pseudo-random sample, the same on every run.
"""
import dataclasses
from typing import Mapping

import ml_collections

from mio_jax import errors
from mio_jax.data import dataset
from mio_jax.host_tf import tfds


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """TFDS split expressions of a run that never sees the validation split."""
  pretrain: str  # the pretraining split without the validation examples
  train: str  # the labelled train split without them
  validation: str  # the held-out labelled examples
  num_train: int
  num_validation: int


def _absolute_parts(split: str, lengths: Mapping[str, int], key: str
                    ) -> list[tuple[str, int, int]]:
  """(split name, start, end) of each part of a split expression."""
  try:
    parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(
        {name: dataset._SplitLength(size) for name, size in lengths.items()})
  except (ValueError, KeyError, AssertionError) as e:
    raise errors.InvalidValueError(
        key, split, f"is not a split of the data set ({e})",
        "use a split name, optionally sliced, e.g. train[:80%]") from None
  return [(p.splitname, 0 if p.from_ is None else p.from_,
           lengths[p.splitname] if p.to is None else p.to) for p in parts]


def _expression(parts) -> str:
  return "+".join(f"{name}[{start}:{end}]" for name, start, end in parts)


def hold_out_validation(config: ml_collections.ConfigDict,
                        fraction: float) -> HeldOut:
  """The splits of `config`'s data with a validation split held out.

  Args:
    config: its dataset section (with any pretrain/eval split overrides).
    fraction: share of the labelled train split held out, in (0, 1).

  Raises:
    InvalidValueError: ("validation_fraction") a fraction that leaves no
      example on one side, or ("dataset.eval_train_split") a labelled
      train split of several parts, which has no one tail to hold out.
  """
  if not 0 < fraction < 1:
    raise errors.InvalidValueError("validation_fraction", fraction,
                                   "must be in (0, 1)", "e.g. {key}=0.1")
  spec = dataset.dataset_spec(config)
  lengths = dataset.split_lengths(spec, config.dataset.data_dir)
  labelled = _absolute_parts(spec.eval_splits["train"], lengths,
                             "dataset.eval_train_split")
  if len(labelled) != 1:
    raise errors.InvalidValueError(
        "dataset.eval_train_split", spec.eval_splits["train"],
        "has several parts; a validation split is held out of one",
        "use one split, optionally sliced")
  (name, start, end), = labelled
  num_validation = round(fraction * (end - start))
  if not 0 < num_validation < end - start:
    raise errors.InvalidValueError(
        "validation_fraction", fraction,
        f"holds out {num_validation} of the {end - start} labelled training "
        "examples; at least one must be on each side", "raise or lower {key}")
  cut = end - num_validation
  pretrain = []
  for part, part_start, part_end in _absolute_parts(
      spec.pretrain_split, lengths, "dataset.pretrain_split"):
    if part != name:
      pretrain.append((part, part_start, part_end))
      continue
    # The part without [cut, end): what lies before it and after it.
    pretrain += [piece for piece in ((part, part_start, min(part_end, cut)),
                                     (part, max(part_start, end), part_end))
                 if piece[1] < piece[2]]
  if not pretrain:
    raise errors.InvalidValueError(
        "dataset.pretrain_split", spec.pretrain_split,
        "lies inside the validation split", "lower validation_fraction")
  return HeldOut(pretrain=_expression(pretrain),
                 train=_expression([(name, start, cut)]),
                 validation=_expression([(name, cut, end)]),
                 num_train=cut - start, num_validation=num_validation)
