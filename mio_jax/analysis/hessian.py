r"""Hessian eigenspectrum of the pretraining loss at a checkpoint, per loss.

    python -m mio_jax.cli.hessian --config=configs/digits.py \
        --workdir=runs/digits [--losses=mio,bce,nt_xent,dcl] [--top_k=5] \
        [--params=all|projector|backbone] [--batch_size=64] [--data=pipeline]

Restores the latest checkpoint of `workdir`, fixes one batch
(the batch of the checkpoint's step), and for each loss computes, at the
same parameters on the same batch, the top-k Hessian eigenvalues (ARPACK on
Hessian-vector products) and the spectral density (stochastic Lanczos
quadrature). BatchNorm runs in train mode with the batch's statistics, i.e.
the loss exactly as the train step optimises it; the updated running
averages are discarded. Writes `<workdir>/hessian/hessian.json` and
`<workdir>/hessian/hessian_spectrum.png`. See docs/analysis.md.
"""
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mio_jax import checkpointing
from mio_jax import errors
from mio_jax import files
from mio_jax import losses as losses_lib
from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax import pretraining
from mio_jax import plots
from mio_jax.analysis import spectrum

# Top-level parameter groups of the encoder (`models.Encoder`) by name.
PARAM_SUBSETS: dict[str, Optional[tuple[str, ...]]] = {
    "all": None,
    "projector": ("projector",),
    "backbone": ("backbone",),
}
DATA_SOURCES = ("pipeline", "synthetic")
OUTPUT_SUBDIR = "hessian"
JSON_NAME = "hessian.json"
PNG_NAME = "hessian_spectrum.png"


class AnalysisRequestError(errors.UserError, ValueError):
  """A bad argument to the analysis, found before any work is done."""


def _choice(kind: str, value: str, valid: Sequence[str]) -> str:
  if value not in valid:
    raise AnalysisRequestError(
        f"Unknown {kind} {value!r}; valid: {', '.join(valid)}.")
  return value


def make_pair_loss(config: ml_collections.ConfigDict,
                   name: str) -> tuple[Callable[..., jax.Array], dict[str, Any]]:
  """The loss `name` with the config's values of its options, and those."""
  options = losses_lib.config_options(name, config)
  return losses_lib.make_loss(name, **options), options


def training_loss_fn(model: models.Encoder, batch_stats: Any,
                     batch: Mapping[str, jax.Array],
                     pair_loss: Callable[..., jax.Array], *,
                     bn_views: str = "joint") -> Callable[[Any], jax.Array]:
  """params -> the pretraining loss on `batch` (`pretraining.training_objective`).

  BatchNorm runs in train mode over both views of the batch, exactly as in
  the train step; the running averages it would update are discarded.
  """
  return lambda params: pretraining.training_objective(
      model, params, batch_stats, batch, pair_loss, bn_views=bn_views)[0]


def analyze_loss(loss_fn: Callable[[Any], jax.Array], params: Any, *,
                 top_k: int, which: str = "LA", lanczos_steps: int = 64,
                 num_probes: int = 2, seed: int = 0) -> dict[str, Any]:
  """Loss value, top-k eigenvalues and SLQ density of one loss at `params`."""
  hessian = spectrum.flat_hessian(loss_fn, params)
  start = time.perf_counter()
  top = spectrum.top_eigenvalues(hessian, top_k, which=which, seed=seed)
  quadrature = spectrum.slq_quadrature(hessian, num_probes=num_probes,
                                       lanczos_steps=lanczos_steps, seed=seed)
  grid, density = spectrum.gaussian_density(quadrature)
  # Hutchinson: n * mean over probes of v^T H v = sum_j w_j theta_j.
  trace = hessian.dim * float(np.mean(np.sum(quadrature.nodes
                                             * quadrature.weights, axis=1)))
  return {
      "loss": float(jax.jit(loss_fn)(params)),
      "top_eigenvalues": top.tolist(),
      "trace_estimate": trace,
      "density": {"grid": grid.tolist(), "values": density.tolist()},
      "quadrature": {"nodes": quadrature.nodes.tolist(),
                     "weights": quadrature.weights.tolist()},
      "seconds": time.perf_counter() - start,
  }


def _fixed_batch(config: ml_collections.ConfigDict, mesh: Mesh, step: int,
                 batch_size: int, data_source: str) -> dict[str, jax.Array]:
  """The training batch of `step`, cut to its first `batch_size` images."""
  if data_source == "pipeline":
    # pylint: disable=g-import-not-at-top
    from mio_jax import data
    from mio_jax.data import augment_recipe
    from mio_jax.data import device_augment
    # pylint: enable=g-import-not-at-top
    batch = next(data.pretrain_batches(config, mesh, start_step=step))
    if config.augment.on_device:  # the host left the colour ops to the step
      info = data.dataset_info(config)
      augment_fn = device_augment.batch_augmenter(
          seed=int(config.seed),
          params=augment_recipe.AugmentParams.from_config(config),
          mean=info.mean, std=info.std)
      batch = jax.jit(augment_fn)(batch, step)
  else:
    from mio_jax import synthetic  # pylint: disable=g-import-not-at-top
    batch = synthetic.synthetic_batch(config, mesh, step)
  return jax.jit(lambda b: jax.tree.map(lambda x: x[:batch_size], b),
                 out_shardings=mesh_lib.batch_sharding(mesh))(batch)


def analyze_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                       losses: Sequence[str] = tuple(losses_lib.LOSSES),
                       top_k: int = 5, params_subset: str = "all",
                       batch_size: Optional[int] = None,
                       data_source: str = "pipeline", which: str = "LA",
                       lanczos_steps: int = 64, num_probes: int = 2,
                       seed: int = 0, mesh: Optional[Mesh] = None,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
  """Hessian spectra of each loss at the latest checkpoint of `workdir`.

  All losses are evaluated at the same parameters on the same batch: the
  training batch of the checkpoint's step.

  batch_size: the first images of the step's training batch (default: all of
    config.batch_size); a multiple of the device count.
  data_source: "pipeline" (the real input pipeline, `mio_jax.data`) or
    "synthetic" (`mio_jax.synthetic`, random images: for tests).
  Returns a JSON-ready dict: the settings, and per loss its value, top
  eigenvalues, trace estimate, density and quadrature (see `analyze_loss`).
  One process only: the eigensolvers run on the host.

  Raises AnalysisRequestError (a ValueError) for bad arguments and
  checkpointing.NoCheckpointError without checkpoints, before any heavy work.
  """
  mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
  batch_size = config.batch_size if batch_size is None else batch_size
  # Every argument is checked before the (slow) restore and analysis.
  subset = PARAM_SUBSETS[_choice("params subset", params_subset,
                                 list(PARAM_SUBSETS))]
  _choice("data source", data_source, DATA_SOURCES)
  _choice("eigsh which", which, list(spectrum.EIGSH_WHICH))
  try:
    pair_losses = {name: make_pair_loss(config, name) for name in losses}
  except ValueError as error:
    raise AnalysisRequestError(str(error)) from error
  if not losses or min(top_k, lanczos_steps, num_probes) < 1:
    raise AnalysisRequestError(
        f"Need at least one loss (got {list(losses)}) and top_k ({top_k}), "
        f"lanczos_steps ({lanczos_steps}), num_probes ({num_probes}) >= 1.")
  if not 2 <= batch_size <= config.batch_size or batch_size % mesh.size:
    raise AnalysisRequestError(
        f"batch_size={batch_size} must be in [2, config.batch_size="
        f"{config.batch_size}] and a multiple of the {mesh.size} devices.")
  if jax.process_count() != 1:
    raise AnalysisRequestError(
        "The Hessian analysis runs in one process; got "
        f"{jax.process_count()}. Run it on one host.")
  if data_source == "pipeline":
    from mio_jax import data  # pylint: disable=g-import-not-at-top
    data.ensure_prepared(config)

  architecture = checkpointing.EncoderArchitecture.from_config(config)
  step, variables = checkpointing.restore_variables(workdir, architecture,
                                                    mesh)
  batch = _fixed_batch(config, mesh, step, batch_size, data_source)
  model = architecture.model
  results = {
      "workdir": str(workdir), "step": step, "params_subset": params_subset,
      "batch_size": batch_size, "data_source": data_source,
      "which": which, "top_k": top_k, "lanczos_steps": lanczos_steps,
      "num_probes": num_probes, "seed": seed, "losses": {},
  }
  for name, (pair_loss, options) in pair_losses.items():
    loss_fn = training_loss_fn(model, variables["batch_stats"], batch,
                               pair_loss, bn_views=config.bn_views)
    loss_fn, params = spectrum.restrict_to_subset(loss_fn, variables["params"],
                                                  subset)
    results["num_params"] = int(sum(x.size for x in jax.tree.leaves(params)))
    analysis = analyze_loss(loss_fn, params, top_k=top_k, which=which,
                            lanczos_steps=lanczos_steps,
                            num_probes=num_probes, seed=seed)
    results["losses"][name] = {"options": options, **analysis}
    top = ", ".join(f"{v:.4g}" for v in analysis["top_eigenvalues"])
    log(f"[hessian] {name}: loss {analysis['loss']:.4f}, top eigenvalues "
        f"[{top}], trace ~ {analysis['trace_estimate']:.4g} "
        f"({analysis['seconds']:.1f} s)")
  return results


def save_results(results: Mapping[str, Any], output_dir: str) -> tuple[str, str]:
  """Writes hessian.json and hessian_spectrum.png into output_dir (may be gs://)."""
  directory = files.ensure_dir(output_dir)
  json_path, png_path = directory / JSON_NAME, directory / PNG_NAME
  files.write_json(json_path, results)
  plots.plot_hessian_spectra(results, str(png_path))
  return str(json_path), str(png_path)
