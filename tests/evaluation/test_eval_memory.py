"""XLA's memory plan for evaluation at ImageNet scale fits a 16 GiB chip.

Runs benchmarks/eval_memory.py at its defaults (1.28M x 2048 train
features, 50k test queries, 1,000 classes, 8 devices): it compiles every
evaluation program on abstract sharded inputs, allocating nothing.
"""
import json
import os
import pathlib
import subprocess
import sys

import child_env

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "eval_memory.py"
GIB = 2**30 / 2**20  # in MiB


def test_imagenet_evaluation_plans_under_16_gib_per_device():
  # The script sets its own 8 devices.
  env = dict(os.environ, XLA_FLAGS=child_env.XLA_TEST_FLAGS)
  result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True,
                          text=True, timeout=300, env=env, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  *programs, budget = [json.loads(line) for line in result.stdout.splitlines()]
  by_name = {record["program"]: record for record in programs}
  assert set(by_name) == {"extract_write", "knn", "probe_stats",
                          "probe_epoch", "probe_score", "fewshot_take"}
  for record in programs:
    assert record["devices"] == 8 and record["train_examples"] == 1_281_167
    assert record["peak_mib"] < 16 * GIB, record
  assert budget["within_budget"] and budget["largest_peak_gib"] < 16
  # Each device holds an eighth of the 10.5 GB of train features: they are
  # sharded, not gathered (a replicated copy would be 9.8 GiB per device).
  train_features_mib = 1_281_536 * 2048 * 4 / 2**20 / 8
  for name in ("knn", "probe_epoch", "fewshot_take"):
    assert train_features_mib <= by_name[name]["argument_mib"] < (
        1.1 * train_features_mib)
  # Streamed: no (queries x 1.28M) similarity matrix (29 GiB per device).
  assert by_name["knn"]["temp_mib"] < 1 * GIB
  assert by_name["probe_epoch"]["temp_mib"] < 1 * GIB
