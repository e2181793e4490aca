"""Which examples each step reads: plain NumPy arithmetic on (seed, step).

Every batch of mio_jax, pretraining, labelled or evaluation, is chosen
here, never by tf.data shuffling, so a step's batch is the same after a
restart (the pipelines start at any step without touching earlier ones),
on 1 or 8 devices and with 1 or several processes:

  * pretraining (`pretrain_step_examples`): step i of epoch
    e = i // steps_per_epoch takes positions [p*B, (p+1)*B),
    p = i % steps_per_epoch, of a permutation of the split drawn from
    (seed, e); each epoch's remainder is dropped (SimCLR's pretraining
    drops it too), so the schedule counts whole batches;
  * the supervised protocols (`labelled_step_examples`): the epochs'
    permutations of the labelled examples are read end to end as one
    stream, step i taking stream positions [i*B, (i+1)*B) across epoch
    boundaries, as SimCLR's repeated, shuffled tf.data does; no example is
    dropped, and n * epochs // B + 1 steps (its count) see every example
    `epochs` times;
  * evaluation (`eval_batch_examples`): the split in order, the last batch
    padded and masked;
  * `local_rows`: the contiguous rows of each global batch this process
    reads, those its devices hold.
"""
import functools

import jax
import numpy as np

from mio_jax import errors
from mio_jax import mesh as mesh_lib

# Mixed into the permutation seed so it is not the augmentation stream.
_PERMUTATION_STREAM = 0x5EED


class BatchTooLargeError(errors.UserError):
  """A global batch larger than the examples it is drawn from."""


def check_batch(num_examples: int, global_batch_size: int, *, key: str,
                what: str) -> None:
  """Raises BatchTooLargeError (naming config `key`) if the batch exceeds them.

  what: the examples, for the message ("examples in the pretraining split").
  """
  if num_examples < global_batch_size:
    raise BatchTooLargeError(
        f"{key}={global_batch_size} is larger than the {num_examples} {what}; "
        f"use a batch of at most {num_examples}, e.g. --{key}="
        f"{max(1, num_examples)}")


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of `num_examples` examples in `epoch` (PCG64, platform-stable).

  Cached (read-only): each step's reader asks for it, and drawing it for
  1.28M examples takes tens of milliseconds.
  """
  rng = np.random.default_rng([seed, epoch, _PERMUTATION_STREAM])
  order = rng.permutation(num_examples)
  order.setflags(write=False)
  return order


# ---- pretraining ---------------------------------------------------------------


def steps_per_epoch(num_examples: int, global_batch_size: int, *,
                    key: str = "config.batch_size") -> int:
  """Full pretraining batches per epoch (the remainder is dropped).

  Raises BatchTooLargeError (naming `key`) when the batch exceeds the split.
  """
  check_batch(num_examples, global_batch_size, key=key,
              what="examples in the pretraining split")
  return num_examples // global_batch_size


def pretrain_step_examples(step: int, *, seed: int, num_examples: int,
                           global_batch_size: int) -> tuple[np.ndarray, int]:
  """(split indices of the global batch of pretraining `step`, its epoch)."""
  epoch, position = divmod(step, steps_per_epoch(num_examples,
                                                 global_batch_size))
  order = epoch_permutation(seed, epoch, num_examples)
  start = position * global_batch_size
  return order[start:start + global_batch_size], epoch


# ---- the supervised protocols -------------------------------------------------


def labelled_num_steps(num_examples: int, epochs: float,
                       global_batch_size: int) -> int:
  """Steps of `epochs` over the examples: SimCLR's n * epochs // B + 1."""
  return int(num_examples * epochs // global_batch_size) + 1


def labelled_step_examples(step: int, *, seed: int, examples: np.ndarray,
                           global_batch_size: int
                          ) -> tuple[np.ndarray, np.ndarray]:
  """(split indices, epoch of each row) of the global batch of `step`.

  examples: the split indices the protocol trains on (a label subset or
  the whole split), read as one stream of per-epoch permutations.
  """
  num_examples = len(examples)
  positions = step * global_batch_size + np.arange(global_batch_size)
  epochs, offsets = np.divmod(positions, num_examples)
  rows = np.empty(global_batch_size, np.int64)
  for epoch in np.unique(epochs):  # at most two: a batch <= the examples
    here = epochs == epoch
    rows[here] = epoch_permutation(seed, int(epoch), num_examples)[
        offsets[here]]
  return examples[rows], epochs


# ---- evaluation ------------------------------------------------------------------


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  return -(-num_examples // global_batch_size)


def eval_batch_examples(batch: int, *, num_examples: int,
                        global_batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(example indices, mask) of eval batch `batch`; padding rows masked out."""
  positions = batch * global_batch_size + np.arange(global_batch_size)
  mask = positions < num_examples
  return np.where(mask, positions, 0), mask


# ---- this process's rows -----------------------------------------------------------


def process_slice(global_batch_size: int, process_index: int,
                  process_count: int) -> slice:
  """Rows of each global batch that process `process_index` loads."""
  if global_batch_size % process_count:
    raise ValueError(f"Batch size {global_batch_size} is not divisible by "
                     f"the {process_count} processes.")
  per_process = global_batch_size // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


def local_rows(mesh: jax.sharding.Mesh, global_batch_size: int) -> slice:
  """This process's rows, checked against what its devices hold."""
  if global_batch_size % mesh.size:
    raise ValueError(f"Batch size {global_batch_size} is not divisible by "
                     f"the {mesh.size} devices of the mesh.")
  process_index = jax.process_index()
  rows = process_slice(global_batch_size, process_index, jax.process_count())
  index_map = mesh_lib.batch_sharding(mesh).addressable_devices_indices_map(
      (global_batch_size,))
  held = sorted(s[0].indices(global_batch_size)[:2] for s in index_map.values())
  if (held[0][0], held[-1][1]) != (rows.start, rows.stop) or any(
      a[1] != b[0] for a, b in zip(held, held[1:])):
    raise ValueError(
        f"Process {process_index} devices hold rows {held} of the "
        f"batch, not the contiguous block {rows}: build the mesh with "
        "mio_jax.mesh.make_data_mesh(), which orders devices by process.")
  return rows
