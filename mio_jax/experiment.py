"""Pretraining followed by evaluation of the frozen encoder: what `main` runs.

`train_and_evaluate(config, workdir)` is importable and is what the tests and
the demo call; `main.py` only parses flags.
"""
import json
import os
from typing import Dict, Optional

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from mio_jax import checkpointing
from mio_jax import data
from mio_jax import distributed
from mio_jax import mesh as mesh_lib
from mio_jax import metric_logging
from mio_jax import plots
from mio_jax import pretrain as pretrain_lib
from mio_jax import train
from mio_jax.evaluation import features as features_lib
from mio_jax.evaluation import fewshot
from mio_jax.evaluation import knn
from mio_jax.evaluation import linear

EVAL_MODES = {
    "linear_eval": ("linear",),
    "knn_eval": ("knn",),
    "fewshot_eval": ("fewshot",),
    "all": ("knn", "fewshot", "linear"),
    "pretrain": (),
}


def _extract(config, mesh, encode_fn, state, split):
  return features_lib.extract_features(
      encode_fn, state, data.eval_batches(config, mesh, split))


def evaluate_state(config: ml_collections.ConfigDict, state, mesh, *,
                   protocols=("knn", "fewshot", "linear"),
                   embedding_png: Optional[str] = None) -> Dict[str, float]:
  """Evaluates the frozen encoder of `state` with the given protocols.

  Features of the eval train and test splits are extracted once and shared
  by every protocol.
  """
  encode_fn = train.make_encode_fn(config, mesh)
  train_x, train_y = _extract(config, mesh, encode_fn, state, "train")
  test_x, test_y = _extract(config, mesh, encode_fn, state, "test")
  num_classes = data.dataset_info(config).num_classes
  results = {}
  if "knn" in protocols:
    k = min(config.eval.knn_k, len(train_x))
    r = knn.knn_classify(train_x, train_y, test_x, test_y, num_classes=num_classes,
                         k=k, temperature=config.eval.knn_temperature)
    results.update({f"knn_{name}": v for name, v in r.items()})
  if "fewshot" in protocols:
    r = fewshot.fewshot_probe(train_x, train_y, test_x, test_y, num_classes=num_classes,
                              shots=config.eval.fewshot_shots,
                              trials=config.eval.fewshot_trials, seed=config.seed)
    results.update({f"fewshot_{name}": v for name, v in r.items()})
  if "linear" in protocols:
    r = linear.linear_probe(train_x, train_y, test_x, test_y, num_classes=num_classes,
                            epochs=config.eval.linear_epochs,
                            learning_rate=config.eval.linear_lr,
                            weight_decay=config.eval.linear_weight_decay,
                            batch_size=config.eval.linear_batch_size, seed=config.seed)
    results.update({f"linear_{name}": v for name, v in r.items()})
  if (embedding_png and config.eval.embedding_plot_points > 0
      and distributed.is_main_process()):
    plots.plot_embedding(test_x, test_y, embedding_png,
                         max_points=config.eval.embedding_plot_points, seed=config.seed)
  return {k: float(v) for k, v in results.items()}


def _online_knn_hook(config, mesh):
  """kNN accuracy on the eval split every `online_eval_every_steps` steps."""
  every = config.online_eval_every_steps

  def hook(step, state):
    if every <= 0 or step % every:
      return None
    r = evaluate_state(config, state, mesh, protocols=("knn",))
    return {"online_knn_top1": r["knn_top1"]}

  return hook


def _write_json(path, obj):
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Runs `config.mode` in `workdir`; returns the evaluation results."""
  mesh = mesh_lib.make_data_mesh()
  data.ensure_prepared(config)
  steps_per_epoch = data.pretrain_steps_per_epoch(config)
  total = train.total_steps(config, steps_per_epoch)
  main_process = distributed.is_main_process()
  logger = metric_logging.MetricLogger(workdir, total_steps=total,
                                       is_main_process=main_process)
  try:
    if config.mode in ("pretrain", "all"):
      state = pretrain_lib.pretrain(config, workdir, mesh=mesh,
                                    steps_per_epoch=steps_per_epoch, logger=logger,
                                    hooks=[_online_knn_hook(config, mesh)])
    else:
      state = checkpointing.restore_latest_or_fail(config, workdir, mesh,
                                                   steps_per_epoch=steps_per_epoch)
    protocols = EVAL_MODES[config.mode]
    results = {}
    if protocols:
      results = evaluate_state(config, state, mesh, protocols=protocols,
                               embedding_png=os.path.join(workdir, "embedding_tsne.png"))
      step = int(jax.device_get(state.step))
      logger.log_eval(step, results)
      if main_process:
        _write_json(os.path.join(workdir, "eval_results.json"), {"step": step, **results})
  finally:
    logger.close()
  if main_process:
    plots.plot_training_curves(os.path.join(workdir, "metrics.jsonl"),
                               os.path.join(workdir, "training_curves.png"))
  logging.info("Results: %s", results)
  return results
