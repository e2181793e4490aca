"""The loss comparison: report files, summary, request checks; end to end
on a tiny digits setting (slow: ~2 min on 2 busy cores)."""
import json
import pathlib

import numpy as np
import pytest

import tiny
from mio_jax import config_base
from mio_jax import loss_comparison as compare

REPO = pathlib.Path(__file__).resolve().parents[1]
LOSSES = ("mio", "nt_xent")
HESSIAN_OPTIONS = {"top_k": 1, "lanczos_steps": 2, "num_probes": 1,
                   "batch_size": 16}
LAMBDA = compare.lambda_max_key("projector")


def tiny_digits_config(data_dir):
  """resnet_tiny on 16 px digits, batch 64: the plumbing, not accuracy."""
  config = tiny.tiny_config(
      config_base.load_config_file(REPO / "configs" / "digits.py"),
      **{"dataset.data_dir": str(data_dir), "dataset.image_size": 16})
  config.batch_size = 64
  config.eval.batch_size = 128
  config.feature_probe.epochs = 2
  config.fewshot.trials = 2
  return config


def fake_results(losses, seeds):
  """What run_comparison returns, with made-up numbers."""
  rng = np.random.default_rng(0)
  def run(trained):
    values = {k: float(rng.uniform()) for k in ("knn_top1", "fewshot_top1",
                                                 "feature_probe_top1")}
    if trained:
      values.update({LAMBDA: float(rng.uniform(1, 100))},
                    online_knn={"steps": [5, 10],
                                "values": rng.uniform(size=2).tolist()})
    return values
  runs = {loss: {str(s): run(True) for s in seeds} for loss in losses}
  random_init = {str(s): run(False) for s in seeds}
  settings = {"losses": list(losses), "seeds": list(seeds), "steps": 10,
              "batch_size": 256, "temperature": 0.5,
              "hessian": HESSIAN_OPTIONS, "hessian_subsets": ["projector"]}
  by_loss = {k: list(v.values()) for k, v in runs.items()}
  summary = compare.summarize(
      {**by_loss, compare.RANDOM_INIT: list(random_init.values())})
  gains = compare.gains_over_random_init(by_loss, list(random_init.values()))
  return {"settings": settings, "summary": summary, "runs": runs,
          compare.RANDOM_INIT: random_init, compare.GAINS: gains}


def table_rows(out):
  """Row names of the main table, and all lines of table.md."""
  lines = (out / compare.TABLE_NAME).read_text().splitlines()
  rows = []
  for line in lines[2:]:
    if not line.startswith("|"):
      break
    rows.append(line.split("|")[1].strip())
  return rows, lines


def test_report_has_a_row_per_loss_and_the_plot(tmp_path):
  results = fake_results(("mio", "bce", "dcl"), seeds=(0, 1, 2))
  compare.write_report(str(tmp_path), results)
  rows, lines = table_rows(tmp_path)
  assert rows == ["mio", "bce", "dcl", compare.RANDOM_INIT]
  mio_knn = results["summary"]["mio"]["knn_top1"]
  assert f"| mio | {mio_knn['mean']:.3f} ± {mio_knn['std']:.3f} |" in lines[2]
  assert lines[5].endswith("| – |")  # random init has no Hessian
  mio_gain = results[compare.GAINS]["mio"]["fewshot_top1"]
  assert any(line.startswith("| mio | ") and
             f"{mio_gain['mean']:+.3f} ± {mio_gain['std']:.3f}" in line
             for line in lines[7:])
  assert (tmp_path / compare.PLOT_NAME).read_bytes()[:4] == b"\x89PNG"
  assert json.loads((tmp_path / compare.RESULTS_NAME).read_text()) == results


def test_plot_refuses_curves_logged_at_different_steps(tmp_path):
  results = fake_results(("mio",), seeds=(0, 1))
  results["runs"]["mio"]["1"]["online_knn"]["steps"] = [5, 11]
  with pytest.raises(ValueError, match="different steps"):
    compare.write_report(str(tmp_path), results)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
  base = tiny_digits_config(tmp_path_factory.mktemp("tfds"))
  out = tmp_path_factory.mktemp("compare")
  results = compare.run_comparison(base, str(out), losses=LOSSES, seeds=(0,),
                                   steps=2, eval_every=1,
                                   hessian_options=HESSIAN_OPTIONS,
                                   hessian_subsets=("projector",))
  return base, out, results


@pytest.mark.slow
def test_writes_table_json_and_plot(comparison):
  _, out, results = comparison
  rows, table = table_rows(out)
  assert rows == [*LOSSES, compare.RANDOM_INIT]
  assert all(line.count("±") == len(compare.PROBE_COLUMNS) + 1
             for line in table[2:4])
  assert (out / compare.PLOT_NAME).read_bytes()[:4] == b"\x89PNG"
  assert json.loads((out / compare.RESULTS_NAME).read_text()) == json.loads(
      json.dumps(results))
  for loss in LOSSES:
    run = results["runs"][loss]["0"]
    for key in ("knn_top1", "fewshot_top1", "feature_probe_top1"):
      assert 0.0 <= run[key] <= 1.0
    assert np.isfinite(run[LAMBDA]) and run[LAMBDA] > 0
    # One online kNN point per step, the last one equal to the final kNN.
    assert run["online_knn"]["steps"] == [1, 2]
    assert run["online_knn"]["values"][-1] == pytest.approx(run["knn_top1"])
    hessian = json.loads((out / loss / "seed0" / "hessian_projector" /
                          "hessian.json").read_text())
    assert list(hessian["losses"]) == [loss]
    assert hessian["step"] == 2 and hessian["params_subset"] == "projector"


@pytest.mark.slow
def test_rerun_reuses_runs_adds_subsets_and_refuses_other_settings(comparison):
  base, out, results = comparison
  logs = []
  again = compare.run_comparison(base, str(out), losses=LOSSES, seeds=(0,),
                                 steps=2, eval_every=1,
                                 hessian_options=HESSIAN_OPTIONS,
                                 hessian_subsets=("projector", "backbone"),
                                 log=logs.append)
  assert sum("reusing" in line for line in logs) == len(LOSSES) + 1
  for loss in LOSSES:
    before, after = results["runs"][loss]["0"], again["runs"][loss]["0"]
    assert after == {**after, **before}  # nothing recomputed
    assert after[compare.lambda_max_key("backbone")] > 0
  assert "λ_max (backbone)" in (out / compare.TABLE_NAME).read_text()
  with pytest.raises(ValueError, match="steps"):
    compare.run_comparison(base, str(out), losses=LOSSES, seeds=(0,), steps=3,
                           eval_every=1, hessian_options=HESSIAN_OPTIONS)


@pytest.mark.parametrize("kwargs, match", [
    ({"losses": ("mio", "infonce")}, "infonce"),
    ({"seeds": ()}, "seed"),
    ({"hessian_subsets": ("head",)}, "head"),
    ({"steps": 25, "eval_every": 10}, "multiple"),
])
def test_bad_requests_fail_before_any_work(tmp_path, kwargs, match):
  base = tiny_digits_config(tmp_path / "tfds")
  with pytest.raises(ValueError, match=match):
    compare.run_comparison(base, str(tmp_path / "out"), **kwargs)
  assert not (tmp_path / "out").exists()


def test_a_run_keeps_every_probe_column():
  results = {"knn_top1": 0.5, "fewshot_top1": 0.4, "fewshot_top1_std": 0.01,
             "feature_probe_top1": 0.6, "feature_probe_top5": 0.9,
             "online_knn_top1": 0.3}
  kept = compare.protocol_results(results)
  assert {key for key, _ in compare.PROBE_COLUMNS} <= set(kept)
  assert "online_knn_top1" not in kept  # the curve is stored on its own


def test_gains_are_paired_by_seed():
  runs = {"mio": [{"knn_top1": 0.8, "fewshot_top1": 0.5, "feature_probe_top1": 0.9},
                  {"knn_top1": 0.9, "fewshot_top1": 0.5, "feature_probe_top1": 0.9}]}
  init = [{"knn_top1": 0.7, "fewshot_top1": 0.6, "feature_probe_top1": 0.9},
          {"knn_top1": 0.9, "fewshot_top1": 0.6, "feature_probe_top1": 0.9}]
  gains = compare.gains_over_random_init(runs, init)["mio"]
  assert gains["knn_top1"]["mean"] == pytest.approx(0.05)
  assert gains["knn_top1"]["std"] == pytest.approx(np.std([0.1, 0.0], ddof=1))
  assert gains["fewshot_top1"]["mean"] == pytest.approx(-0.1)
  assert gains["fewshot_top1"]["std"] == pytest.approx(0.0)


def test_summary_is_mean_and_sample_std_over_seeds():
  runs = {"mio": [{"knn_top1": 0.8, LAMBDA: 10.0},
                  {"knn_top1": 0.9, LAMBDA: 30.0}],
          "bce": [{"knn_top1": 0.5}]}
  summary = compare.summarize(runs)
  assert summary["mio"]["knn_top1"]["mean"] == pytest.approx(0.85)
  assert summary["mio"]["knn_top1"]["std"] == pytest.approx(np.std([0.8, 0.9],
                                                                    ddof=1))
  assert summary["mio"][LAMBDA] == {"mean": 20.0,
                                          "std": pytest.approx(14.142, 1e-4),
                                          "n": 2}
  assert summary["bce"] == {"knn_top1": {"mean": 0.5, "std": 0.0, "n": 1}}
