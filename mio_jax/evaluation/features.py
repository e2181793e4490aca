"""Features of a frozen encoder over an evaluation split, on the host."""
from typing import Any, Callable, Iterable, Mapping

import jax
from jax.experimental import multihost_utils
import numpy as np


def _to_host(value: Any) -> np.ndarray:
  """The whole global array as numpy, on every process.

  A jax.Array sharded across processes is not fully addressable: gather it
  (every host gets every row). Fully addressable arrays and numpy already
  hold the whole global batch, and must not be concatenated across hosts.
  """
  if isinstance(value, jax.Array) and not value.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))
  return np.asarray(value)


def extract_features(encode_fn: Callable[[Any, jax.Array], jax.Array],
                     state: Any,
                     batches: Iterable[Mapping[str, Any]],
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Encodes every batch and returns the valid rows' features and labels.

  Args:
    encode_fn: (state, images) -> (B, D) features, e.g. `make_encode_fn`.
    state: passed through to `encode_fn`.
    batches: {"image", "label", "mask"} dicts of global arrays sharded on the
      `data` axis (possibly across processes); rows with mask False are
      padding. Without "mask" every row is kept.

  Returns:
    (features float32 (n, D), labels (n,)) in batch order, the same on every
    process.
  """
  features, labels = [], []
  pending = None
  # Encode batch i+1 before copying batch i to the host, so the device is not
  # idle while the host waits for the transfer.
  for batch in batches:
    encoded = encode_fn(state, batch["image"])
    if pending is not None:
      _collect(*pending, features, labels)
    pending = (encoded, batch)
  if pending is not None:
    _collect(*pending, features, labels)
  if not features:
    raise ValueError("extract_features got no batches: the split is empty.")
  return (np.concatenate(features).astype(np.float32),
          np.concatenate(labels))


def _collect(encoded, batch, features, labels) -> None:
  batch_features = _to_host(encoded)
  batch_labels = _to_host(batch["label"])
  if "mask" in batch:
    keep = _to_host(batch["mask"]).astype(bool)
    batch_features, batch_labels = batch_features[keep], batch_labels[keep]
  features.append(batch_features)
  labels.append(batch_labels)
