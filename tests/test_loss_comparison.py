"""The loss comparison: grid, validation split, statistics, report, guard;
end to end a tiny sweep on digits (slow: about 2 min on 2 busy cores)."""
import dataclasses
import json
import pathlib

import numpy as np
import pytest
from scipy import stats

import tiny
from mio_jax import config_base
from mio_jax import loss_comparison as compare

REPO = pathlib.Path(__file__).resolve().parents[1]
LOSSES = ("mio", "nt_xent")
METRICS = [key for key, _ in compare.PROBE_COLUMNS]


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


# ---- the grid ------------------------------------------------------------------


def test_each_loss_gets_the_product_of_the_grid_keys_it_takes():
  base = config_base.base_config()
  grids = compare.grid_points(
      ["temperature:0.1,0.2", "negative_temperature:0.5,1",
       "optimizer.base_lr:0.001", "nt_xent:temperature:0.05,0.1"],
      ["mio", "nt_xent"], base)
  assert grids["mio"] == [
      {"temperature": t, "negative_temperature": n, "optimizer.base_lr": 0.001}
      for t in (0.1, 0.2) for n in (0.5, 1)]
  # nt_xent takes no negative_temperature; its own temperature grid wins.
  assert grids["nt_xent"] == [{"temperature": t, "optimizer.base_lr": 0.001}
                              for t in (0.05, 0.1)]
  assert compare.grid_points([""], ["dcl"], base) == {"dcl": [{}]}
  assert compare.point_name(grids["mio"][1]) == (
      "temperature=0.1,negative_temperature=1,optimizer.base_lr=0.001")
  assert compare.point_name({}) == compare.BASE_POINT


@pytest.mark.parametrize("spec, match", [
    ("temperature", "KEY:V1"),
    ("temprature:0.1", "not a config key"),
    ("optimizer.bse_lr:0.1", "not a config key"),
    ("temperature:abc", "wrong type"),
    ("temperature:0.1,0.1", "distinct"),
    ("nt_xent:negative_temperature:0.5", "takes no negative_temperature"),
    ("infonce:temperature:0.1", "not compared"),
    ("seed:1,2", "sets seed itself"),
])
def test_a_bad_grid_is_one_error_naming_it(spec, match):
  with pytest.raises(compare.ComparisonRequestError, match=match) as error:
    compare.grid_points([spec], list(LOSSES), config_base.base_config())
  assert "\n" not in str(error.value)


# ---- statistics and report -----------------------------------------------------


def fake_summary(losses, seeds, grid=(0.2, 0.5)):
  """What run_comparison returns, with made-up numbers."""
  rng = np.random.default_rng(0)
  run = lambda: {**{k: float(rng.uniform(0.5, 1)) for k in METRICS},
                 "online_knn": {"steps": [5, 10],
                                "values": rng.uniform(size=2).tolist()}}
  runs = {loss: {str(s): run() for s in seeds} for loss in losses}
  random_init = {str(s): run() for s in seeds}
  by_loss = {loss: list(r.values()) for loss, r in runs.items()}
  selection = {loss: [{"name": f"temperature={t}", "point": {"temperature": t},
                       "score": float(rng.uniform())} for t in grid]
               for loss in losses}
  return {
      "settings": {"losses": list(losses), "seeds": list(seeds),
                   "reference": losses[-1], "select_by": "knn_top1",
                   "selection_seeds": [0], "steps": 10, "batch_size": 256,
                   "hessian_subsets": [],
                   "validation": {"num_train": 1350, "num_validation": 150,
                                  "split": "train[1350:1500]"}},
      "selected": {loss: compare.select(selection[loss])["point"]
                   for loss in losses},
      "selection": selection,
      "test": compare.summarize(by_loss),
      "random_init": compare.summarize(
          {"r": list(random_init.values())})["r"],
      "paired": compare.paired_to_reference(by_loss, losses[-1]),
      compare.GAINS: compare.gains_over_random_init(
          by_loss, list(random_init.values())),
      "runs": {"selection": {}, "test": runs, "random_init": random_init},
  }


def test_report_writes_summary_tables_and_plots(tmp_path):
  summary = fake_summary(("mio", "bce", "nt_xent"), seeds=(0, 1, 2))
  compare.write_report(str(tmp_path), summary)
  table = (tmp_path / compare.TABLE_NAME).read_text()
  mio = summary["test"]["mio"]["knn_top1"]
  assert f"| mio | {mio['mean']:.3f} ± {mio['std']:.3f} |" in table
  paired = summary["paired"]["bce"]["fewshot_top1"]
  assert (f"{paired['mean_diff']:+.3f} [{paired['ci95_low']:+.3f}, "
          f"{paired['ci95_high']:+.3f}]") in table
  chosen = compare.point_name(summary["selected"]["mio"])
  assert f"| mio | {chosen} | " in table and f"**{chosen}: " in table
  for name in (compare.PLOT_NAME, compare.CURVES_PLOT_NAME):
    assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
  stored = json.loads((tmp_path / compare.SUMMARY_NAME).read_text())
  assert stored == json.loads(json.dumps(summary))
  assert set(stored["paired"]["mio"]["knn_top1"]) >= {
      "mean_diff", "ci95_low", "ci95_high"}


def test_one_seed_reports_no_spread(tmp_path):
  summary = fake_summary(LOSSES, seeds=(0,))
  compare.write_report(str(tmp_path), summary)
  table = (tmp_path / compare.TABLE_NAME).read_text()
  assert not [row for row in table.splitlines()
              if row.startswith("|") and "±" in row]
  assert f"{summary['test']['mio']['knn_top1']['mean']:.3f} (n=1)" in table
  assert summary["paired"]["mio"]["knn_top1"]["ci95_low"] is None


def test_selection_takes_the_best_score_and_the_first_of_a_tie():
  scored = [{"name": "a", "score": 0.5}, {"name": "b", "score": 0.7},
            {"name": "c", "score": 0.7}]
  assert compare.select(scored)["name"] == "b"


def test_runs_are_paired_with_the_reference_of_their_own_seed():
  runs = {"mio": [{k: v for k in METRICS} for v in (0.80, 0.90, 0.86)],
          "nt_xent": [{k: v for k in METRICS} for v in (0.70, 0.88, 0.80)]}
  paired = compare.paired_to_reference(runs, "nt_xent")
  assert set(paired) == {"mio"}
  differences = np.array([0.10, 0.02, 0.06])
  half = stats.t.ppf(0.975, 2) * differences.std(ddof=1) / np.sqrt(3)
  np.testing.assert_allclose(
      [paired["mio"]["knn_top1"][k] for k in
       ("mean_diff", "ci95_low", "ci95_high")],
      [0.06, 0.06 - half, 0.06 + half])


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


def test_a_run_keeps_every_probe_column():
  results = {"knn_top1": 0.5, "fewshot_top1": 0.4, "fewshot_top1_std": 0.01,
             "feature_probe_top1": 0.6, "feature_probe_top5": 0.9,
             "online_knn_top1": 0.3}
  kept = compare.protocol_results(results)
  assert set(METRICS) <= set(kept)
  assert "online_knn_top1" not in kept  # the curve is stored on its own


# ---- the settings guard ----------------------------------------------------------


def settings(steps=30, grid=("temperature=0.1",)):
  return {"runs": {"steps": steps, "config": {"a": 1}},
          "choice": {"grid": {"mio": list(grid)}, "select_by": "knn_top1"}}


def test_an_out_refuses_a_changed_grid_unless_allowed_and_a_budget_always(
    tmp_path):
  compare._check_settings(tmp_path, settings(), allow_changes=False)
  compare._check_settings(tmp_path, settings(), allow_changes=False)
  wider = settings(grid=("temperature=0.1", "temperature=0.2"))
  with pytest.raises(compare.ComparisonRequestError,
                     match="differing: grid.*--allow_changes"):
    compare._check_settings(tmp_path, wider, allow_changes=False)
  compare._check_settings(tmp_path, wider, allow_changes=True)
  with pytest.raises(compare.ComparisonRequestError,
                     match="differing: steps.*fresh --out"):
    compare._check_settings(tmp_path, {**wider, "runs": settings(40)["runs"]},
                            allow_changes=True)


@pytest.mark.parametrize("kwargs, match", [
    ({"losses": ("mio", "infonce")}, "infonce"),
    ({"seeds": ()}, "seed"),
    ({"hessian_subsets": ("head",)}, "head"),
    ({"steps": 25, "eval_every": 10}, "multiple"),
    ({"reference": "dcl", "losses": LOSSES}, "reference"),
    ({"select_by": "linear_top1"}, "select_by"),
    ({"validation_fraction": 1.0}, "validation_fraction"),
    ({"grid": ("temperature:-1",)}, "temperature"),
])
def test_bad_requests_fail_before_any_work(tmp_path, kwargs, match):
  base = tiny_digits_config(tmp_path / "tfds")
  with pytest.raises(ValueError, match=match):
    compare.run_comparison(base, str(tmp_path / "out"), **kwargs)
  assert not (tmp_path / "out").exists()
  assert not (tmp_path / "tfds").exists()


# ---- the validation split --------------------------------------------------------


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  directory = tmp_path_factory.mktemp("tfds")
  data.ensure_prepared(tiny_digits_config(directory))
  return directory


def example_ids(data_dir, split):
  """load_digits rows of a TFDS split expression of the prepared digits."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return {int(x["id"]) for x in tfds.as_numpy(
      tfds.load("digits", split=split, data_dir=str(data_dir)))}


def test_the_validation_split_shares_no_example_with_the_rest(digits_dir):
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  from mio_jax.data import validation_split  # pylint: disable=g-import-not-at-top
  base = tiny_digits_config(digits_dir)
  held_out = validation_split.hold_out_validation(base, 0.1)
  spec = data.dataset_spec(compare.selection_config(base, held_out))
  validation = example_ids(digits_dir, spec.eval_splits["test"])
  fit = example_ids(digits_dir, spec.eval_splits["train"])
  pretrain = example_ids(digits_dir, spec.pretrain_split)
  test = example_ids(digits_dir, data.dataset_spec(base).eval_splits["test"])
  assert len(validation) == held_out.num_validation == 150
  assert not validation & test
  assert not validation & fit and not validation & pretrain
  assert validation | fit == example_ids(digits_dir, "train")
  # The same on every call.
  assert validation_split.hold_out_validation(base, 0.1) == held_out


def test_eval_split_overrides_set_what_the_probes_read(digits_dir):
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  from mio_jax import errors  # pylint: disable=g-import-not-at-top
  config = tiny_digits_config(digits_dir)
  config.dataset.eval_train_split = "train[0:1350]"
  config.dataset.eval_test_split = "train[1350:1500]"
  info = data.dataset_info(config)
  assert info.eval_splits == {"train": "train[0:1350]",
                              "test": "train[1350:1500]"}
  assert info.num_eval_examples == {"train": 1350, "test": 150}
  config.dataset.eval_test_split = "validation"
  with pytest.raises(errors.InvalidValueError, match="eval_test_split"):
    data.dataset_info(config)


# ---- end to end --------------------------------------------------------------------


class Spies:
  """What a sweep trains and what its probes fit on."""

  def __init__(self, monkeypatch):
    from mio_jax import data  # pylint: disable=g-import-not-at-top
    from mio_jax import experiment  # pylint: disable=g-import-not-at-top
    from mio_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
    from mio_jax import modes  # pylint: disable=g-import-not-at-top
    self.trained, self.read, self.fitted = [], [], []
    train_and_evaluate = experiment.train_and_evaluate
    split_features = evaluator._split_features

    def trained(config, workdir):
      self.trained.append(config.copy_and_resolve_references())
      return train_and_evaluate(config, workdir)

    def read(encode_fn, variables, config, mesh, split, num_examples):
      self.read.append((config.dataset.eval_test_split, split,
                        data.dataset_spec(config).eval_splits[split]))
      return split_features(encode_fn, variables, config, mesh, split,
                            num_examples)

    def spy(name, protocol):
      def fit(train, test, **kwargs):
        # The splits the last two reads of the evaluator gave it.
        (held_out, _, train_split), (_, _, test_split) = self.read[-2:]
        self.fitted.append((held_out, name, train_split, train.num_examples,
                            test_split, test.num_examples))
        return protocol(train, test, **kwargs)
      return fit

    monkeypatch.setattr(experiment, "train_and_evaluate", trained)
    monkeypatch.setattr(evaluator, "_split_features", read)
    for name, protocol in list(modes.PROTOCOLS.items()):
      if protocol.kind == modes.FROZEN_FEATURES:
        monkeypatch.setitem(modes.PROTOCOLS, name, dataclasses.replace(
            protocol, run=spy(name, protocol.run)))


# Neither temperature is the config's (0.5), so a test run at the config's
# setting would show.
SWEEP = {"losses": LOSSES, "grid": ("temperature:0.1,1.0",),
         "select_by": "knn_top1", "selection_seeds": (0,), "seeds": (0, 1),
         "reference": "nt_xent", "steps": 2, "eval_every": 2}


@pytest.fixture(scope="module")
def sweep(digits_dir, tmp_path_factory):
  base = tiny_digits_config(digits_dir)
  out = tmp_path_factory.mktemp("compare")
  with pytest.MonkeyPatch.context() as monkeypatch:
    spies = Spies(monkeypatch)
    summary = compare.run_comparison(base, str(out), **SWEEP)
  return base, out, summary, spies


@pytest.mark.slow
def test_selection_picks_the_best_validation_point(sweep):
  _, _, summary, _ = sweep
  for loss in LOSSES:
    scores = {name: np.mean([run["knn_top1"] for run in seed_runs.values()])
              for name, seed_runs in summary["runs"]["selection"][loss].items()}
    assert list(scores) == ["temperature=0.1", "temperature=1.0"]
    assert len(set(scores.values())) == 2  # a tie would prove nothing
    best = max(scores, key=scores.get)
    assert compare.point_name(summary["selected"][loss]) == best


@pytest.mark.slow
def test_test_runs_use_only_the_chosen_settings_on_the_test_split(sweep):
  _, out, summary, spies = sweep
  test_runs = [c for c in spies.trained if c.dataset.eval_test_split is None]
  assert sorted((c.loss, c.seed) for c in test_runs) == sorted(
      (loss, seed) for loss in LOSSES for seed in (0, 1))
  for config in test_runs:
    assert config.temperature == summary["selected"][config.loss]["temperature"]
    assert config.dataset.pretrain_split is None  # the whole training split
  for loss in LOSSES:
    assert [p.name for p in (out / "test" / loss).iterdir()] == [
        compare.point_name(summary["selected"][loss])]


@pytest.mark.slow
def test_no_probe_is_fitted_on_a_validation_label_during_selection(sweep):
  _, _, summary, spies = sweep
  held_out = summary["settings"]["validation"]
  selection = [c for c in spies.trained if c.dataset.eval_test_split]
  assert len(selection) == len(LOSSES) * 2  # two grid points, one seed
  for config in selection:
    assert config.dataset.pretrain_split == held_out["pretrain"]
    assert config.dataset.eval_test_split == held_out["validation"]
  fits = [f for f in spies.fitted if f[0] is not None]
  assert {name for _, name, *_ in fits} == {"knn", "fewshot", "feature_probe"}
  for _, _, train_split, num_train, test_split, num_test in fits:
    assert (train_split, num_train) == (held_out["train"], held_out["num_train"])
    assert (test_split, num_test) == (held_out["validation"],
                                      held_out["num_validation"])
  # The test split is read only after the selection, by the test runs.
  assert all(read[0] is None for read in spies.read[
      next(i for i, r in enumerate(spies.read) if r[0] is None):])


@pytest.mark.slow
def test_paired_interval_is_the_t_interval_of_per_seed_differences(sweep):
  _, _, summary, _ = sweep
  runs = summary["runs"]["test"]
  for key in METRICS:
    differences = [runs["mio"][s][key] - runs["nt_xent"][s][key]
                   for s in ("0", "1")]
    mean = (differences[0] + differences[1]) / 2
    # Two seeds: s = |d0 - d1| / sqrt(2), the interval mean ± t(0.975, 1) s / sqrt(2).
    half = 12.706204736174707 * abs(differences[0] - differences[1]) / 2
    paired = summary["paired"]["mio"][key]
    np.testing.assert_allclose(
        [paired["mean_diff"], paired["ci95_low"], paired["ci95_high"]],
        [mean, mean - half, mean + half], atol=1e-12)


@pytest.mark.slow
def test_a_rerun_trains_nothing_and_reports_the_same(sweep, monkeypatch):
  base, out, summary, _ = sweep
  from mio_jax import experiment  # pylint: disable=g-import-not-at-top
  from mio_jax import seed_statistics  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(experiment, "train_and_evaluate", refuse)
  monkeypatch.setattr(seed_statistics, "random_init_results", refuse)
  logs = []
  again = compare.run_comparison(base, str(out), **SWEEP, log=logs.append)
  drop = lambda s: {k: v for k, v in s.items()
                    if k != "wall_seconds_this_invocation"}
  stored = lambda s: json.loads(json.dumps(drop(s)))
  assert stored(again) == stored(summary)
  assert not any("] run " in line for line in logs)
  with pytest.raises(compare.ComparisonRequestError, match="grid"):
    compare.run_comparison(base, str(out),
                           **{**SWEEP, "grid": ("temperature:0.1,0.3",)})
