from mio_jax import config_base
from mio_jax.cli import demo


def test_summary_is_mean_and_sample_std_over_seeds():
  assert demo.mean_std([0.9, 0.8, 0.7]) == {
      "mean": 0.8000000000000002, "std": 0.10000000000000003}
  assert demo.mean_std([0.5]) == {"mean": 0.5, "std": 0.0}
  cell = {"mean": 0.9, "std": 0.01}
  summary = {name: {key: cell for key in ("linear_top1", "knn_top1",
                                          "fewshot_top1")}
             for name in ("mio", "random_init")}
  table = demo.summary_table(summary, config_base.base_config(), [0, 1, 2])
  assert table.count("0.900 ± 0.010") == 6
  assert "seeds [0, 1, 2]" in table
