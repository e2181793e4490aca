"""Evaluation of a frozen encoder: feature extraction, linear probe, kNN, few-shot."""
from mio_jax.evaluation.features import extract_features
from mio_jax.evaluation.fewshot import fewshot_probe
from mio_jax.evaluation.knn import knn_classify
from mio_jax.evaluation.linear import linear_probe

__all__ = ["extract_features", "fewshot_probe", "knn_classify", "linear_probe"]
