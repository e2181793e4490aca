"""What `python -m mio_jax.main` runs: a mode of `modes.MODES`, top to bottom.

`train_and_evaluate(config, workdir)` is importable; the tests and the
demo call it. For config.mode it
  1. gets the encoder: pretrains it here (`pretraining.setup`, then
     `loop.train`) or loads the one the modes table names
     (`encoder_sources.load_encoder`);
  2. runs the mode's FROZEN_FEATURES protocols (`modes.PROTOCOLS`) on it,
     on features extracted once for all of them (`evaluation`);
  3. runs each of the mode's TRAINED protocols on it (`supervised`);
  4. adds its results to `eval_results.json` (`eval_results.merge`), writes
     the metrics and the training curves.
One `loop.PreemptionWatch` covers all of it: the loops save and exit on
SIGTERM, and the evaluations between them are abandoned within seconds.
"""
import os
from typing import Any, Callable, Dict, Mapping

import ml_collections
from absl import logging

from mio_jax import data
from mio_jax import distributed
from mio_jax import encoder_sources
from mio_jax import eval_results
from mio_jax import files
from mio_jax import loop
from mio_jax import mesh as mesh_lib
from mio_jax import metric_logging
from mio_jax import models
from mio_jax import modes
from mio_jax import plots
from mio_jax import pretraining
from mio_jax import recipe
from mio_jax.evaluation import evaluator

RESULTS_FILE = "eval_results.json"


def _pretrain(config, workdir, mesh, *, logger: metric_logging.MetricLogger,
              preemption: loop.PreemptionWatch
             ) -> encoder_sources.LoadedEncoder:
  facts = recipe.DataFacts.of(data.dataset_info(config),
                              identity=data.prepared_identity(config))
  training = pretraining.setup(config, mesh, facts, workdir=workdir)
  hooks = []
  if config.online_eval_every_steps > 0:
    hooks.append(evaluator.online_knn_hook(
        config, mesh, models.build_model(config.model, dtype=config.dtype)))
  state = loop.train(training, logger=logger, hooks=hooks,
                     preemption=preemption)
  step = int(state.step)
  return encoder_sources.LoadedEncoder(
      encoder_sources.EncoderSource(encoder_sources.WORKDIR, workdir, step),
      step, state.variables)


def _evaluate(config, workdir, mesh, encoder: encoder_sources.LoadedEncoder,
              protocols: Mapping[str, Callable[..., Dict[str, float]]]
             ) -> Dict[str, float]:
  return evaluator.evaluate(
      encoder.variables,
      model=models.build_model(config.model, dtype=config.dtype), config=config,
      mesh=mesh, protocols=protocols,
      embedding_png=os.path.join(workdir, "embedding_tsne.png"))


def _run_mode(config, workdir, mesh, *, logger, preemption
             ) -> tuple[int, Dict[str, Any]]:
  """(the step the results belong to, results) of config.mode."""
  mode = modes.MODES[config.mode]
  source = modes.encoder_source(config, workdir)
  if source is None:
    encoder = _pretrain(config, workdir, mesh, logger=logger,
                        preemption=preemption)
  else:
    encoder = encoder_sources.load_encoder(source, config, mesh)
  step, results = encoder.step, {}
  frozen = modes.runs(mode.protocols, modes.FROZEN_FEATURES)
  if frozen:  # their features are extracted once for all of them
    with preemption.interruptible():
      results.update(_evaluate(config, workdir, mesh, encoder, frozen))
  for run in modes.runs(mode.protocols, modes.TRAINED).values():
    step, trained = run(config, workdir, mesh, encoder, logger=logger,
                        preemption=preemption)
    results.update(trained)
  return step, results


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Dict[str, float]:
  """Runs `config.mode` in `workdir`; returns the evaluation results."""
  mesh = mesh_lib.make_data_mesh()
  data.ensure_prepared(config)
  main_process = distributed.is_main_process()
  logger = metric_logging.MetricLogger(
      workdir, total_steps=0, is_main_process=main_process,
      wandb=metric_logging.wandb_settings(config))
  try:
    with loop.PreemptionWatch() as preemption:
      step, results = _run_mode(config, workdir, mesh, logger=logger,
                                preemption=preemption)
    if results:
      logger.log_eval(step, results)
      if main_process:
        path = os.path.join(workdir, RESULTS_FILE)
        files.write_json(path, eval_results.merge(
            files.read_json(path), step, results,
            tuple(modes.PROTOCOLS)),
                         sort_keys=False)
  except loop.Preempted:
    # An evaluation was abandoned: what it needs (the pretrained step, the
    # supervised checkpoints) is saved already.
    print(f"Preempted; what was saved is in {workdir}. Rerun the same "
          "command to continue.", flush=True)
    raise SystemExit(0) from None
  finally:
    logger.close()
  if main_process:
    plots.plot_training_curves(os.path.join(workdir, "metrics.jsonl"),
                               os.path.join(workdir, "training_curves.png"))
  logging.info("Results: %s", results)
  return results
