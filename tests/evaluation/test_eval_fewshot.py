"""Few-label evaluation: the feature probe on `shots` labels per class."""
import jax
import numpy as np
import pytest

from eval_data import clusters, sharded
from mio_jax import mesh as mesh_lib
from mio_jax.evaluation import fewshot
from mio_jax.evaluation import fewshot_probe


def test_fewshot_selection_takes_exactly_shots_per_class():
  labels = np.repeat(np.arange(4), [10, 7, 5, 12])
  rng = np.random.default_rng(0)
  chosen = fewshot.sample_fewshot_indices(labels, shots=5, num_classes=4,
                                          rng=rng)
  assert len(set(chosen.tolist())) == len(chosen) == 20
  np.testing.assert_array_equal(np.bincount(labels[chosen]), [5, 5, 5, 5])
  again = fewshot.sample_fewshot_indices(
      labels, shots=5, num_classes=4, rng=np.random.default_rng(0))
  np.testing.assert_array_equal(chosen, again)
  other = fewshot.sample_fewshot_indices(
      labels, shots=5, num_classes=4, rng=np.random.default_rng(1))
  assert set(other.tolist()) != set(chosen.tolist())
  with pytest.raises(ValueError, match="class 2 has 5"):
    fewshot.sample_fewshot_indices(labels, shots=6, num_classes=4, rng=rng)


def test_fewshot_probe_is_seeded_and_learns():
  x, y = clusters(5, 60, 16, spread=0.3, seed=6)
  train, test = sharded(x[:200], y[:200], x[200:], y[200:])
  run = lambda seed: fewshot_probe(train, test, num_classes=5, shots=2,
                                   trials=3, seed=seed, epochs=20)
  first = run(0)
  assert first == run(0)
  assert first["top1"] > 0.8
  assert first["top1_std"] >= 0.0
  assert run(1) != first


def test_fewshot_subsets_do_not_depend_on_the_device_count():
  """Subsets are drawn in the split's order; 10 labels = one full batch."""
  x, y = clusters(5, 60, 16, spread=0.6, seed=10)
  results = [
      fewshot_probe(*sharded(x[:200], y[:200], x[200:], y[200:],
                             mesh=mesh_lib.make_data_mesh(devices)),
                    num_classes=5, shots=2, trials=2, seed=0, epochs=20)
      for devices in (jax.devices()[:1], jax.devices())]
  assert results[0]["top1"] == pytest.approx(results[1]["top1"], abs=1e-9)
  assert results[0]["top1_std"] > 0  # the two draws differ
