"""Which examples each step reads (mio_jax/data/indexing.py)."""
import numpy as np
import pytest

from mio_jax.data import indexing


def test_process_slices_cover_batch_without_overlap():
  rows = [indexing.process_slice(16, p, 2) for p in (0, 1)]
  covered = np.concatenate([np.arange(16)[r] for r in rows])
  np.testing.assert_array_equal(covered, np.arange(16))
  with pytest.raises(ValueError, match="not divisible"):
    indexing.process_slice(15, 0, 2)


def test_each_pretraining_epoch_is_a_permutation_and_epochs_differ():
  n, b = 50, 8
  steps = indexing.steps_per_epoch(n, b)
  assert steps == 6
  epochs = []
  for epoch in range(2):
    seen = [indexing.pretrain_step_examples(epoch * steps + s, seed=0,
                                            num_examples=n,
                                            global_batch_size=b)
            for s in range(steps)]
    assert all(e == epoch for _, e in seen)
    indices = np.concatenate([i for i, _ in seen])
    assert len(np.unique(indices)) == steps * b  # no repeats in an epoch
    epochs.append(indices)
  assert not np.array_equal(epochs[0], epochs[1])


def test_a_batch_larger_than_the_data_is_one_line_naming_the_key():
  with pytest.raises(indexing.BatchTooLargeError,
                     match=r"^config.batch_size=8 is larger than the 4 "
                     r"examples in the pretraining split; .*--config.batch_size=4$"):
    indexing.steps_per_epoch(4, 8)
  with pytest.raises(indexing.BatchTooLargeError,
                     match="config.finetune.batch_size=64 is larger than the "
                     "50 labelled"):
    indexing.check_batch(50, 64, key="config.finetune.batch_size",
                         what="labelled training examples")


def test_labelled_steps_stream_every_example_epochs_times():
  examples = np.arange(100, 150)  # 50 examples, batch 16
  num_steps = indexing.labelled_num_steps(50, 2.0, 16)
  assert num_steps == 50 * 2 // 16 + 1 == 7  # SimCLR's count
  batches = [indexing.labelled_step_examples(step, seed=3, examples=examples,
                                             global_batch_size=16)
             for step in range(num_steps)]
  rows = np.concatenate([b for b, _ in batches])
  epochs = np.concatenate([e for _, e in batches])
  # Nothing dropped: the first 100 stream positions are two whole epochs,
  # and batches cross the epoch boundaries (positions 48..63, 96..111).
  for epoch in (0, 1):
    np.testing.assert_array_equal(np.sort(rows[epochs == epoch][:50]),
                                  examples)
  assert set(batches[3][1]) == {0, 1} and set(batches[6][1]) == {1, 2}
  assert not np.array_equal(rows[:50], rows[50:100])  # reshuffled per epoch
  # A step's batch depends on (seed, step) only.
  again, _ = indexing.labelled_step_examples(5, seed=3, examples=examples,
                                             global_batch_size=16)
  np.testing.assert_array_equal(again, batches[5][0])


def test_eval_indices_cover_every_example_once_across_processes():
  n, b = 37, 8
  seen = []
  for batch in range(indexing.num_eval_batches(n, b)):
    indices, mask = indexing.eval_batch_examples(batch, num_examples=n,
                                                 global_batch_size=b)
    for p in (0, 1):
      rows = indexing.process_slice(b, p, 2)
      seen.extend(indices[rows][mask[rows]])
  np.testing.assert_array_equal(np.sort(seen), np.arange(n))
