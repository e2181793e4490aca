import numpy as np
import pytest

from mio_jax import seed_statistics


def test_mean_and_sample_std_over_seeds():
  assert seed_statistics.mean_std([0.9, 0.8, 0.7]) == {
      "mean": 0.8000000000000002, "std": 0.10000000000000003, "n": 3}


def test_one_value_has_no_spread():
  assert seed_statistics.mean_std([0.5]) == {"mean": 0.5, "std": None, "n": 1}
  assert seed_statistics.format_mean_std(seed_statistics.mean_std([0.5])) == (
      "0.500 (n=1)")
  assert seed_statistics.format_mean_std(
      seed_statistics.mean_std([0.5, 0.7]), signed=True) == "+0.600 ± 0.141"
  paired = seed_statistics.paired_difference([0.9], [0.8])
  assert paired["mean_diff"] == pytest.approx(0.1)
  assert paired["ci95_low"] is None and paired["ci95_high"] is None


def test_paired_change_pairs_runs_with_their_own_seed():
  runs = [{"knn_top1": 0.8}, {"knn_top1": 0.9}]
  baselines = [{"knn_top1": 0.7}, {"knn_top1": 0.9}]
  change = seed_statistics.paired_change(runs, baselines, "knn_top1")
  np.testing.assert_allclose([change["mean"], change["std"]],
                             [0.05, np.std([0.1, 0.0], ddof=1)])
  # Unpaired, the spread would include the seeds' own differences.
  swapped = seed_statistics.paired_change(runs, baselines[::-1], "knn_top1")
  assert swapped["std"] != change["std"]


def test_paired_difference_is_a_t_interval_of_the_per_seed_differences():
  # Differences 0.1, 0.0, 0.2: mean 0.1, s = 0.1, t(0.975, 2) = 4.302653.
  paired = seed_statistics.paired_difference([0.8, 0.9, 0.7], [0.7, 0.9, 0.5])
  half = 4.302652729749464 * 0.1 / np.sqrt(3)
  np.testing.assert_allclose(
      [paired["mean_diff"], paired["std"], paired["ci95_low"],
       paired["ci95_high"]], [0.1, 0.1, 0.1 - half, 0.1 + half])
  assert paired["n"] == 3
  with pytest.raises(ValueError, match="equally many"):
    seed_statistics.paired_difference([0.8, 0.9], [0.7])
