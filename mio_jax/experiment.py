"""What `python -m mio_jax.main` runs: pretraining, then evaluation.

`train_and_evaluate(config, workdir)` is importable; the tests and the
demo call it. It only glues the pieces: the data set (`data`), the run
(`run.build_run`), the training loop (`train.pretrain`), the checkpoint
(`checkpointing.restore_variables`), the evaluators (`evaluation`) and
the supervised protocols (`supervised`: augmented linear evaluation,
fine-tuning).
"""
import os
from typing import Any, Callable, Dict

import ml_collections
from absl import logging

from mio_jax import checkpointing
from mio_jax import data
from mio_jax import distributed
from mio_jax.evaluation import evaluator
from mio_jax import export
from mio_jax import files
from mio_jax import mesh as mesh_lib
from mio_jax import metric_logging
from mio_jax import models
from mio_jax import plots
from mio_jax import run as run_lib
from mio_jax import supervised
from mio_jax import train

# The frozen-feature protocols (`evaluation.protocols`: features extracted
# once) each config.mode runs after pretraining or restoring.
MODE_PROTOCOLS = {
    "pretrain": (),
    "all": ("knn", "fewshot", "linear"),
    "feature_probe_eval": ("linear",),
    "knn_eval": ("knn",),
    "fewshot_eval": ("fewshot",),
    "linear_eval": (),
    "finetune": (),
}
# "linear_eval" (augmented linear evaluation of the restored encoder) and
# "finetune" (from config.finetune.init_from, not from this workdir's
# checkpoints) train a classifier with `supervised` instead.
MODES = tuple(MODE_PROTOCOLS)
RESULTS_FILE = "eval_results.json"


def _pretrain(config, workdir, mesh, logger) -> tuple[int, Dict[str, Any]]:
  info = data.dataset_info(config)
  run = run_lib.build_run(
      config, mesh, steps_per_epoch=data.pretrain_steps_per_epoch(config),
      num_classes=info.num_classes, normalization=(info.mean, info.std))
  logger.total_steps = run.total_steps
  hooks = []
  if config.online_eval_every_steps > 0:
    hooks.append(evaluator.online_knn_hook(config, mesh, run.model))
  state = train.pretrain(run, workdir, logger=logger, hooks=hooks)
  return int(state.step), state.variables


def _preemptible(work: Callable[[], Any], workdir: str) -> Any:
  """work(), abandoned within seconds on SIGTERM (exit 0).

  For evaluations and the supervised protocols after pretraining: what they
  need is saved already (the pretrained step; their own checkpoints).
  """
  try:
    with train.PreemptionWatch() as preemption, preemption.interruptible():
      return work()
  except train.Preempted:
    print(f"Preempted; what was saved is in {workdir}. Rerun the same "
          "command to continue.", flush=True)
    raise SystemExit(0) from None


def _evaluate(config, workdir, mesh, variables) -> Dict[str, float]:
  """The frozen encoder under config.mode's protocols; SIGTERM-safe."""
  model = models.build_model(config.model, dtype=config.dtype)
  return _preemptible(lambda: evaluator.evaluate(
      variables, model=model, config=config, mesh=mesh,
      protocols=MODE_PROTOCOLS[config.mode],
      embedding_png=os.path.join(workdir, "embedding_tsne.png")), workdir)


def _encoder(config, workdir, mesh, logger) -> tuple[int, Dict[str, Any]]:
  """(step, variables) of the encoder to evaluate: pretrained now or restored."""
  if config.mode in ("pretrain", "all"):
    return _pretrain(config, workdir, mesh, logger)
  if config.eval.encoder_file:
    return export.encoder_variables(config.eval.encoder_file, config, mesh)
  return checkpointing.restore_variables(workdir, config, mesh,
                                         step=config.eval.step)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Dict[str, float]:
  """Runs `config.mode` in `workdir`; returns the evaluation results."""
  mesh = mesh_lib.make_data_mesh()
  data.ensure_prepared(config)
  main_process = distributed.is_main_process()
  logger = metric_logging.MetricLogger(
      workdir, total_steps=0, is_main_process=main_process,
      wandb=metric_logging.wandb_settings(config))
  results = {}
  try:
    if config.mode == "finetune":
      # "step": fine-tuning steps (the encoder is config.finetune.init_from).
      step, results = _preemptible(lambda: supervised.finetune(
          config, workdir, mesh, logger=logger), workdir)
    else:
      step, variables = _encoder(config, workdir, mesh, logger)
      logger.total_steps = max(logger.total_steps, step)
      if MODE_PROTOCOLS[config.mode]:
        results = _evaluate(config, workdir, mesh, variables)
      if config.mode == "linear_eval":
        results = _preemptible(lambda: supervised.linear_eval(
            config, workdir, mesh, variables, encoder_step=step,
            logger=logger), workdir)
    if results:
      logger.log_eval(step, results)
      if main_process:
        files.write_json(os.path.join(workdir, RESULTS_FILE),
                         {"step": step, **results})
  finally:
    logger.close()
  if main_process:
    plots.plot_training_curves(os.path.join(workdir, "metrics.jsonl"),
                               os.path.join(workdir, "training_curves.png"))
  logging.info("Results: %s", results)
  return results
