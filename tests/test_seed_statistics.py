import numpy as np

from mio_jax import seed_statistics


def test_mean_and_sample_std_over_seeds():
  assert seed_statistics.mean_std([0.9, 0.8, 0.7]) == {
      "mean": 0.8000000000000002, "std": 0.10000000000000003, "n": 3}
  assert seed_statistics.mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}


def test_paired_change_pairs_runs_with_their_own_seed():
  runs = [{"knn_top1": 0.8}, {"knn_top1": 0.9}]
  baselines = [{"knn_top1": 0.7}, {"knn_top1": 0.9}]
  change = seed_statistics.paired_change(runs, baselines, "knn_top1")
  np.testing.assert_allclose([change["mean"], change["std"]],
                             [0.05, np.std([0.1, 0.0], ddof=1)])
  # Unpaired, the spread would include the seeds' own differences.
  swapped = seed_statistics.paired_change(runs, baselines[::-1], "knn_top1")
  assert swapped["std"] != change["std"]
