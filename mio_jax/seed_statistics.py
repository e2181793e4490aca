"""Results over seeds, and against each seed's random initialisation.

One place for what the demo and the loss comparison report: mean and
sample standard deviation over seeds, the untrained encoder of a seed
evaluated like the trained one, the change from it paired by seed (the
random-init accuracy varies between seeds about as much as the losses
differ; pairing removes that part), and a paired difference with its
Student-t confidence interval. One value has no spread: its std and
interval are None, and `format_mean_std` prints "(n=1)" instead of a
"± 0.000" that would claim one.
"""
from typing import Any, Mapping, Optional, Sequence

import ml_collections
import numpy as np
from scipy import stats

from mio_jax import encoder_sources
from mio_jax import models
from mio_jax import modes

CONFIDENCE = 0.95


def mean_std(values: Sequence[float]) -> dict[str, Any]:
  """{"mean", "std", "n"}: sample standard deviation (ddof=1; None for one)."""
  values = np.asarray(values, np.float64)
  return {"mean": float(values.mean()),
          "std": float(values.std(ddof=1)) if len(values) > 1 else None,
          "n": len(values)}


def paired_change(runs: Sequence[Mapping[str, float]],
                  baselines: Sequence[Mapping[str, float]],
                  key: str) -> dict[str, Any]:
  """mean_std of run[key] - baseline[key], the i-th run against the i-th."""
  return mean_std([run[key] - base[key] for run, base in zip(runs, baselines)])


def paired_difference(values: Sequence[float], references: Sequence[float],
                      confidence: float = CONFIDENCE) -> dict[str, Any]:
  """The mean of values[i] - references[i] with its two-sided t-interval.

  The i-th value and reference share a seed. The interval is
  mean ± t_{(1+confidence)/2, n-1} · s / sqrt(n), s the sample std of the
  per-seed differences; None (with std) for a single pair.

  Returns:
    {"mean_diff", "std", "n", "ci95_low", "ci95_high"} (the interval keys are
    named for the default confidence).
  """
  if len(values) != len(references) or not len(values):
    raise ValueError(f"need equally many values and references, at least "
                     f"one; got {len(values)} and {len(references)}.")
  differences = mean_std(np.subtract(values, references))
  low = high = None
  if differences["std"] is not None:
    n = differences["n"]
    half = (stats.t.ppf((1 + confidence) / 2, df=n - 1)
            * differences["std"] / np.sqrt(n))
    low, high = differences["mean"] - half, differences["mean"] + half
  return {"mean_diff": differences["mean"], "std": differences["std"],
          "n": differences["n"],
          "ci95_low": None if low is None else float(low),
          "ci95_high": None if high is None else float(high)}


def format_mean_std(cell: Optional[Mapping[str, Any]], spec: str = ".3f",
                    signed: bool = False) -> str:
  """"0.912 ± 0.013" from a mean_std cell; "0.912 (n=1)"; "–" for None."""
  if cell is None:
    return "–"
  mean = f"{cell['mean']:{'+' if signed else ''}{spec}}"
  if cell["std"] is None:
    return f"{mean} (n={cell['n']})"
  return f"{mean} ± {cell['std']:{spec}}"


def random_init_results(config: ml_collections.ConfigDict, mesh, *,
                        protocols: Sequence[str]) -> dict[str, Any]:
  """config's encoder at its random initialisation (seed config.seed), evaluated.

  The same variables pretraining starts from (`models.initial_variables`).
  protocols: names of frozen-feature protocols (`modes.PROTOCOLS`).
  """
  # Imported here: the evaluator reads data sets (TensorFlow).
  from mio_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  encoder = encoder_sources.load_encoder(
      encoder_sources.EncoderSource(encoder_sources.RANDOM), config, mesh)
  return evaluator.evaluate(
      encoder.variables,
      model=models.build_model(config.model, dtype=config.dtype),
      config=config, mesh=mesh,
      protocols=modes.runs(protocols, modes.FROZEN_FEATURES))
