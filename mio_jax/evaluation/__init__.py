"""Evaluation of a frozen encoder: features kept sharded, then protocols.

  evaluator.evaluate(variables, *, model, config, mesh, protocols,
                     embedding_png) -> {"knn_top1": ..., ...}
  evaluator.online_knn_hook(config, mesh, model) -> hook(step, state)
  make_encode_fn(model, mesh) -> (variables, images) -> features
  protocols.knn_protocol, fewshot_protocol, feature_probe_protocol (a
    linear classifier on centre-crop features: fast): the frozen-feature
    protocols, named in the one table of protocols, `modes.PROTOCOLS`
  Features, extract_features, features_from_arrays: the sharded features
  knn_classify, feature_probe_classify, fewshot_probe: the protocols' numerics

`evaluator` reads the data sets (and so imports TensorFlow); it is not
imported here, so the numerics stay light: `from mio_jax.evaluation import
evaluator`.
"""
from mio_jax.evaluation.encoder import make_encode_fn
from mio_jax.evaluation.features import Features
from mio_jax.evaluation.features import extract_features
from mio_jax.evaluation.feature_probe import feature_probe_classify
from mio_jax.evaluation.features import from_arrays as features_from_arrays
from mio_jax.evaluation.fewshot import fewshot_probe
from mio_jax.evaluation.knn import knn_classify
from mio_jax.evaluation.protocols import FeatureProtocol

__all__ = [
    "FeatureProtocol", "Features",
    "extract_features", "feature_probe_classify", "features_from_arrays",
    "fewshot_probe", "knn_classify", "make_encode_fn",
]
