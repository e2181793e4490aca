"""evaluate / online_knn_hook end to end: digits, a tiny encoder, 8 devices."""
import types

import numpy as np
import pytest

import dense_reference
import tiny
from eval_data import random_variables
from mio_jax import data
from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax import modes
from mio_jax.evaluation import evaluator
from mio_jax.evaluation import make_encode_fn


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """(config, model, variables, mesh): resnet_tiny at 8 px on digits."""
  config = tiny.tiny_config(
      **{"dataset.data_dir": str(tmp_path_factory.mktemp("tfds"))})
  config.eval.batch_size = 256  # 1,500 train: 6 batches, the last padded
  config.feature_probe.epochs = 3
  config.fewshot.trials = 2
  config.knn.k = 20
  config.eval.embedding_plot_points = 40
  model = models.build_model(config.model)
  variables = random_variables(model, image_size=8, seed=0)
  return config, model, variables, mesh_lib.make_data_mesh()


def _dense_features(config, model, variables, mesh, split):
  """Today's path: every valid row gathered to the host, in split order."""
  encode = make_encode_fn(model, mesh)
  xs, ys = [], []
  for batch in data.eval_batches(config, mesh, split):
    keep = np.asarray(batch["mask"])
    xs.append(np.asarray(encode(variables, batch["image"]))[keep])
    ys.append(np.asarray(batch["label"])[keep])
  return np.concatenate(xs), np.concatenate(ys)


def test_evaluate_runs_every_protocol_and_matches_the_dense_knn(
    tiny_run, tmp_path):
  config, model, variables, mesh = tiny_run
  png = tmp_path / "tsne.png"
  results = evaluator.evaluate(variables, model=model, config=config,
                               mesh=mesh, protocols=modes.runs(
                                   ("knn", "fewshot", "feature_probe"),
                                   modes.FROZEN_FEATURES),
                               embedding_png=str(png))
  assert set(results) == {"knn_top1", "knn_top5", "fewshot_top1",
                          "fewshot_top1_std", "feature_probe_top1",
                          "feature_probe_top5"}
  assert all(isinstance(v, float) for v in results.values())
  assert 0.2 < results["knn_top1"] <= 1.0  # 10 classes: chance is 0.1
  assert png.stat().st_size > 0
  train_x, train_y = _dense_features(config, model, variables, mesh, "train")
  test_x, test_y = _dense_features(config, model, variables, mesh, "test")
  assert (len(train_x), len(test_x)) == (1500, 297)
  dense = dense_reference.knn_classify(
      train_x, train_y, test_x, test_y, num_classes=10, k=20,
      temperature=config.knn.temperature)
  assert {"top1": results["knn_top1"], "top5": results["knn_top5"]} == dense


def test_online_knn_hook_runs_on_its_steps_only(tiny_run):
  config, model, variables, mesh = tiny_run
  config = config.copy_and_resolve_references()
  config.online_eval_every_steps = 5
  hook = evaluator.online_knn_hook(config, mesh, model)
  state = types.SimpleNamespace(params=variables["params"],
                                batch_stats=variables["batch_stats"])
  assert hook(3, state) is None
  online = hook(10, state)
  assert set(online) == {"online_knn_top1"}
  assert online["online_knn_top1"] == evaluator.evaluate(
      variables, model=model, config=config, mesh=mesh,
      protocols=modes.runs(("knn",), modes.FROZEN_FEATURES))["knn_top1"]
