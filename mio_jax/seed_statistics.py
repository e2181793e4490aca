"""Results over seeds, and against each seed's random initialisation.

One place for what the demo and the loss comparison report: mean and
sample standard deviation over seeds, the untrained encoder of a seed
evaluated like the trained one, and the change from it paired by seed
(the random-init accuracy varies between seeds about as much as the
losses differ; pairing removes that part).
"""
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from mio_jax import models
from mio_jax import modes


def mean_std(values: Sequence[float]) -> dict[str, float]:
  """{"mean", "std", "n"}: sample standard deviation (ddof=1; 0 for one)."""
  values = np.asarray(values, np.float64)
  return {"mean": float(values.mean()),
          "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
          "n": len(values)}


def paired_change(runs: Sequence[Mapping[str, float]],
                  baselines: Sequence[Mapping[str, float]],
                  key: str) -> dict[str, float]:
  """mean_std of run[key] - baseline[key], the i-th run against the i-th."""
  return mean_std([run[key] - base[key] for run, base in zip(runs, baselines)])


def random_init_results(config: ml_collections.ConfigDict, mesh, *,
                        protocols: Sequence[str]) -> dict[str, Any]:
  """config's encoder at its random initialisation (seed config.seed), evaluated.

  The same variables pretraining starts from (`models.initial_variables`).
  """
  # Imported here: the evaluator reads data sets (TensorFlow).
  from mio_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  encoder = modes.load_encoder(modes.EncoderSource(modes.RANDOM), config, mesh)
  return evaluator.evaluate(
      encoder.variables,
      model=models.build_model(config.model, dtype=config.dtype),
      config=config, mesh=mesh, protocols=protocols)
