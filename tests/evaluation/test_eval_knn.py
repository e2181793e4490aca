"""Weighted kNN on sharded features: streamed blocks, merged top-k."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dense_reference
from eval_data import clusters, sharded
from mio_jax import mesh as mesh_lib
from mio_jax.evaluation import knn
from mio_jax.evaluation import knn_classify


def _reference_votes(train_x, train_y, query_x, *, k, temperature,
                     num_classes):
  """Brute-force numpy kNN votes: sum of exp(cos / T) over the k nearest."""
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  sims = unit(query_x) @ unit(train_x).T
  votes = np.zeros((len(query_x), num_classes))
  for row in range(len(query_x)):
    for neighbour in np.argsort(-sims[row])[:k]:
      votes[row, train_y[neighbour]] += np.exp(sims[row, neighbour] /
                                               temperature)
  return votes


def test_knn_votes_match_bruteforce_reference():
  rng = np.random.default_rng(3)
  train_x = rng.normal(size=(20, 5))
  train_y = rng.integers(0, 4, size=20)
  query_x = rng.normal(size=(6, 5))
  query_y = rng.integers(0, 4, size=6)
  expected = _reference_votes(train_x, train_y, query_x, k=7,
                              temperature=0.1, num_classes=4)
  train, test = sharded(train_x, train_y, query_x, query_y)
  # 24 train rows, 3 per device, in blocks of 16 (2 per device: the last
  # overlaps the first) and one query per chunk: every streaming path.
  votes = np.asarray(knn.knn_class_votes(
      train, test, num_classes=4, k=7, temperature=0.1, block_size=16,
      chunk_size=1))[:6]
  # Rows are rescaled by the nearest neighbour's weight: compare shares.
  np.testing.assert_allclose(votes / votes.sum(1, keepdims=True),
                             expected / expected.sum(1, keepdims=True),
                             rtol=1e-4, atol=1e-6)
  # And the end-to-end accuracy agrees with the reference's argmax.
  result = knn_classify(train, test, num_classes=4, k=7, temperature=0.1,
                        chunk_size=4)
  assert result["top1"] == np.mean(expected.argmax(1) == query_y)


def test_knn_clustered_data_is_correct_across_padded_chunks():
  x, y = clusters(10, 30, 8, spread=0.05, seed=4)
  # 100 test examples, 13 per device in chunks of 4: the last is padded.
  result = knn_classify(*sharded(x[:200], y[:200], x[200:], y[200:]),
                        num_classes=10, k=5, temperature=0.07, chunk_size=4)
  assert result == {"top1": 1.0, "top5": 1.0}


def test_knn_small_temperature_does_not_overflow():
  x, y = clusters(3, 20, 4, spread=0.1, seed=5)
  result = knn_classify(*sharded(x, y, x, y), num_classes=3, k=10,
                        temperature=1e-3)
  assert result["top1"] == 1.0


def test_knn_neighbour_search_is_not_a_full_sort():
  """XLA:CPU must keep top_k as its TopK call (a full sort was 14x slower)."""
  mesh = mesh_lib.make_data_mesh()
  train, test = sharded(np.zeros((1000, 8)), np.zeros(1000, int),
                        np.zeros((128, 8)), np.zeros(128, int), mesh=mesh)
  compiled = knn._hit_counts.lower(
      train, test, jnp.float32(0.1), k=50, num_classes=10, block_size=512,
      chunk_size=16, mesh=mesh).compile().as_text()
  assert " sort(" not in compiled


def test_knn_rejects_k_larger_than_train_set():
  x = np.ones((5, 3), np.float32)
  with pytest.raises(ValueError, match="knn.k"):
    knn_classify(*sharded(x, np.zeros(5, int), x, np.zeros(5, int)),
                 num_classes=2, k=6, temperature=0.1)


@pytest.mark.parametrize("devices", [1, 8])
def test_streamed_knn_gives_the_dense_accuracies_exactly(devices):
  """Same accuracies as today's dense kNN on fixed random data.

  Overlapping clusters, so that many queries are near a decision boundary;
  the streamed form (blocks of 128 rows, chunks of 32 queries, the split
  padded on 8 devices) must still agree exactly.
  """
  x, y = clusters(20, 60, 24, spread=0.4, seed=9)  # 1,200 rows
  train_x, train_y, test_x, test_y = x[:1003], y[:1003], x[1003:], y[1003:]
  mesh = mesh_lib.make_data_mesh(jax.devices()[:devices])
  for k, temperature in ((20, 0.07), (200, 0.5)):
    dense = dense_reference.knn_classify(
        train_x, train_y, test_x, test_y, num_classes=20, k=k,
        temperature=temperature)
    assert 0.2 < dense["top1"] < 0.9  # neither trivial nor saturated
    streamed = knn_classify(
        *sharded(train_x, train_y, test_x, test_y, mesh=mesh),
        num_classes=20, k=k, temperature=temperature, block_size=128,
        chunk_size=32)
    assert streamed == dense
