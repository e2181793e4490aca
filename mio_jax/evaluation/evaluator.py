"""Evaluation of a frozen encoder on a data set: features once, then protocols.

`evaluate` is what the end of a run calls; `online_knn_hook` is the kNN
monitor during pretraining. Both extract the eval train and test splits'
features once (sharded, see `features`) and hand them to the frozen-feature
protocols they are given (`protocols`; by name: `modes.runs`).
"""
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mio_jax import data
from mio_jax import plots
from mio_jax.evaluation import encoder
from mio_jax.evaluation import features as features_lib
from mio_jax.evaluation import protocols as protocols_lib
from mio_jax.evaluation.features import Features

EncodeFn = Callable[[Mapping[str, Any], jax.Array], jax.Array]


def _split_features(encode_fn: EncodeFn, variables, config, mesh: Mesh,
                    split: str, num_examples: int) -> Features:
  batch_size = int(config.eval.batch_size)
  return features_lib.extract_features(
      encode_fn, variables, data.eval_batches(config, mesh, split),
      num_batches=-(-num_examples // batch_size))


def _plot_embedding(test: Features, out_png: str, *, max_points: int,
                    seed: int) -> None:
  """t-SNE of at most `max_points` test examples, drawn in the split's order.

  Every process takes part in fetching the sample; the main one plots.
  """
  _, rows = features_lib.dataset_order(test)
  keep = np.arange(len(rows))
  if len(rows) > max_points:
    keep = np.sort(np.random.default_rng(seed).choice(
        len(rows), size=max_points, replace=False))
  x, y = features_lib.take_to_host(test, rows[keep])
  if jax.process_index() == 0:
    plots.plot_embedding(x, y, out_png, max_points=max_points, seed=seed)


def _evaluate(encode_fn: EncodeFn, variables, *,
              config: ml_collections.ConfigDict, mesh: Mesh,
              protocols: Mapping[str, protocols_lib.FeatureProtocol],
              embedding_png: Optional[str]) -> dict[str, float]:
  info = data.dataset_info(config)
  train, test = (_split_features(encode_fn, variables, config, mesh, split,
                                 info.num_eval_examples[split])
                 for split in ("train", "test"))
  results = {}
  for name, protocol in protocols.items():
    for key, value in protocol(train, test, num_classes=info.num_classes,
                               settings=config[name],
                               seed=int(config.seed)).items():
      results[f"{name}_{key}"] = float(value)
  if embedding_png and config.eval.embedding_plot_points > 0:
    _plot_embedding(test, embedding_png,
                    max_points=int(config.eval.embedding_plot_points),
                    seed=int(config.seed))
  return results


def evaluate(variables: Mapping[str, Any], *, model: nn.Module,
             config: ml_collections.ConfigDict, mesh: Mesh,
             protocols: Mapping[str, protocols_lib.FeatureProtocol],
             embedding_png: Optional[str] = None) -> dict[str, float]:
  """Evaluates the frozen encoder `model` with `variables` by `protocols`.

  Args:
    variables: {"params", "batch_stats"} of the encoder (replicated).
    model: the `models.Encoder` they belong to.
    config: the run's config (dataset, eval.*, each protocol's section, seed).
    mesh: the data mesh; features stay sharded over it.
    protocols: {name: the frozen-feature protocol}, run in this order
      (`modes.runs(names, modes.FROZEN_FEATURES)` from names).
    embedding_png: if set (and eval.embedding_plot_points > 0), where the
      main process writes a t-SNE of a sample of the test features.

  Returns:
    {"<protocol>_<result>": value}, e.g. "knn_top1", "feature_probe_top5",
    "fewshot_top1_std".

  Raises:
    InvalidValueError: a bad eval.* value.
  """
  return _evaluate(encoder.make_encode_fn(model, mesh), variables,
                   config=config, mesh=mesh, protocols=protocols,
                   embedding_png=embedding_png)


def online_knn_hook(config: ml_collections.ConfigDict, mesh: Mesh,
                    model: nn.Module
                    ) -> Callable[[int, Any], Optional[dict[str, float]]]:
  """hook(step, state) -> {"online_knn_top1"} every online_eval_every_steps, else None.

  `state` has .params and .batch_stats. The encoder is compiled once, for
  every call of the hook.
  """
  every = int(config.online_eval_every_steps)
  encode_fn = encoder.make_encode_fn(model, mesh)

  def hook(step: int, state) -> Optional[dict[str, float]]:
    if every <= 0 or step % every:
      return None
    results = _evaluate(
        encode_fn, {"params": state.params, "batch_stats": state.batch_stats},
        config=config, mesh=mesh,
        protocols={"knn": protocols_lib.knn_protocol}, embedding_png=None)
    return {"online_knn_top1": results["knn_top1"]}

  return hook
