from mio_jax import config_base
from mio_jax.cli import demo


def test_summary_table_shows_both_arms_and_the_paired_change():
  cell = {"mean": 0.9, "std": 0.01}
  change = {"mean": 0.05, "std": 0.02}
  keys = ("feature_probe_top1", "knn_top1", "fewshot_top1")
  summary = {name: {key: cell for key in keys}
             for name in ("mio", "random_init")}
  summary["paired_change"] = {key: change for key in keys}
  table = demo.summary_table(summary, config_base.base_config(), [0, 1, 2])
  assert table.count("0.900 ± 0.010") == 6
  assert table.count("+0.050 ± 0.020") == 3
  assert "seeds [0, 1, 2]" in table
