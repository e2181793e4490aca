r"""The losses compared in miniature: equal budget and seeds, on digits.

Command: `python -m mio_jax.cli.compare` (its docstring has the flags).

For every (loss, seed) it pretrains the config with that loss and seed
(`experiment.train_and_evaluate`, mode "all": online kNN every `eval_every`
steps, then kNN, few-label and feature probes of the frozen encoder) in
`<out>/<loss>/seed<k>`, then takes the top Hessian eigenvalue of that run's
own loss at its final checkpoint (`hessian.analyze_checkpoint`, on the
training batch of the final step, which depends only on the seed, so every
loss of a seed is measured on the same images). A randomly initialised
encoder of each seed is evaluated the same way as a reference.

Writes `<out>/table.md` (mean ± sample std over seeds), `<out>/results.json`
(every run's numbers and curves) and `<out>/accuracy_vs_step.png` (online
kNN accuracy, mean ± std band per loss). A finished run is reused and an
interrupted one resumes from its checkpoint, so rerunning the command after
a crash loses little; `<out>` is tied to its settings (see SETTINGS_NAME).
"""
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections
from etils import epath

from mio_jax import data
from mio_jax import errors
from mio_jax import experiment
from mio_jax import files
from mio_jax import losses as losses_lib
from mio_jax import mesh as mesh_lib
from mio_jax import modes
from mio_jax import plots
from mio_jax import seed_statistics
from mio_jax.analysis import hessian

# The settings every run of an output directory shares; a rerun with other
# settings would silently mix runs, so it is refused.
SETTINGS_NAME = "comparison_settings.json"
RUN_RESULTS_NAME = "comparison_run.json"
TABLE_NAME = "table.md"
RESULTS_NAME = "results.json"
PLOT_NAME = "accuracy_vs_step.png"
RANDOM_INIT = "random_init"
GAINS = "gain_over_random_init"
# Columns of the table: (key in a run's results, header); then one λ_max
# column per Hessian parameter subset (`table_columns`).
PROBE_COLUMNS = (
    ("knn_top1", "kNN top-1"),
    ("fewshot_top1", "few-label top-1"),
    ("feature_probe_top1", "feature probe top-1 (all labels)"),
)
ONLINE_KNN = "online_knn_top1"
EVAL_PROTOCOLS = modes.MODES["all"].protocols
# λ_max only: one eigenvalue, and the shortest SLQ the analysis accepts
# (its density is not used here).
DEFAULT_HESSIAN_OPTIONS = {"top_k": 1, "lanczos_steps": 1, "num_probes": 1,
                           "batch_size": 64}
# Parameter subsets λ_max is taken over (keys of hessian.PARAM_SUBSETS); the
# projector's is the cheap one (see docs/analysis.md for measured times).
DEFAULT_HESSIAN_SUBSETS = ("projector",)


class ComparisonRequestError(errors.UserError, ValueError):
  """Bad arguments, or an output directory made with other settings."""


def lambda_max_key(subset: str) -> str:
  return f"lambda_max_{subset}"


def table_columns(hessian_subsets: Sequence[str]) -> tuple[tuple[str, str], ...]:
  return PROBE_COLUMNS + tuple(
      (lambda_max_key(subset), f"λ_max ({subset})") for subset in hessian_subsets)


def run_config(base: ml_collections.ConfigDict, *, loss: str, seed: int,
               steps: int, eval_every: int) -> ml_collections.ConfigDict:
  """`base` pretrained with `loss` and `seed` for `steps`, then evaluated."""
  config = base.copy_and_resolve_references()
  config.loss = loss
  config.seed = seed
  config.total_steps = steps
  config.mode = "all"
  config.online_eval_every_steps = eval_every
  # Checkpoints as often as the curve is measured: a crash loses little.
  config.checkpoint_every_steps = eval_every
  config.eval.embedding_plot_points = 0  # t-SNE is not compared here
  return config


def _check_settings(out: epath.Path, settings: Mapping[str, Any]) -> None:
  """Records the settings of `out`, or refuses to reuse it with others."""
  path = out / SETTINGS_NAME
  settings = files.as_stored(settings)
  recorded = files.read_json(path)
  if recorded is None:
    files.write_json(path, settings)
  elif recorded != settings:
    changed = sorted(k for k in recorded.keys() | settings.keys()
                     if recorded.get(k) != settings.get(k))
    raise ComparisonRequestError(
        f"{out} holds runs made with other settings (differing: "
        f"{', '.join(changed)}; see {path}). Use another --out, or delete "
        f"{out} to start over.")


def _online_curve(workdir: epath.Path) -> dict[str, list[float]]:
  steps, values = plots.read_metrics(
      str(workdir / "metrics.jsonl")).get(ONLINE_KNN, ([], []))
  return {"steps": [int(s) for s in steps], "values": [float(v) for v in values]}


def protocol_results(results: Mapping[str, Any]) -> dict[str, Any]:
  """The results of the EVAL_PROTOCOLS ("knn_top1", "feature_probe_top5", ...)."""
  return {k: v for k, v in results.items()
          if any(k.startswith(f"{protocol}_") for protocol in EVAL_PROTOCOLS)}


def measure_trained(config: ml_collections.ConfigDict, workdir: epath.Path, *,
              hessian_options: Mapping[str, Any],
              hessian_subsets: Sequence[str], mesh,
              log: Callable[[str], None]) -> dict[str, Any]:
  """Pretrains and evaluates one run, and takes λ_max of its own loss.

  λ_max is measured over each of `hessian_subsets` at the final checkpoint.
  Whatever workdir/RUN_RESULTS_NAME already holds (a finished run, subsets
  measured before) is reused; the rest is computed and added to it.
  Returns the probe accuracies, the online kNN curve, per subset
  `lambda_max_<subset>` and `hessian_<subset>` (loss value on the Hessian's
  batch, parameter count, seconds), and the seconds each part took.
  """
  path = workdir / RUN_RESULTS_NAME
  run = files.read_json(path)
  if run is None:
    start = time.perf_counter()
    results = experiment.train_and_evaluate(config, str(workdir))
    run = protocol_results(results)
    run.update(online_knn=_online_curve(workdir),
               train_eval_seconds=time.perf_counter() - start)
    files.write_json(path, run)
  else:
    log(f"[compare] {workdir}: reusing the finished run.")
  for subset in hessian_subsets:
    if lambda_max_key(subset) in run:
      continue
    start = time.perf_counter()
    analysis = hessian.analyze_checkpoint(
        config, str(workdir), losses=(config.loss,), params_subset=subset,
        seed=config.seed, mesh=mesh, log=log, **hessian_options)
    hessian.save_results(analysis, str(workdir / f"hessian_{subset}"))
    own = analysis["losses"][config.loss]
    run[lambda_max_key(subset)] = own["top_eigenvalues"][0]
    run[f"hessian_{subset}"] = {"loss": own["loss"],
                                "num_params": analysis["num_params"],
                                "seconds": time.perf_counter() - start}
    files.write_json(path, run)
  return run


def measure_random_init(config: ml_collections.ConfigDict, workdir: epath.Path, *,
                    mesh, log: Callable[[str], None]) -> dict[str, Any]:
  """Probe accuracies of the seed's untrained encoder (step 0 of every loss)."""
  path = workdir / RUN_RESULTS_NAME
  done = files.read_json(path)
  if done is not None:
    log(f"[compare] {workdir}: reusing the random-init evaluation.")
    return done
  run = seed_statistics.random_init_results(config, mesh,
                                            protocols=EVAL_PROTOCOLS)
  files.write_json(path, run)
  return run


def summarize(runs: Mapping[str, Sequence[Mapping[str, Any]]],
              hessian_subsets: Sequence[str] = DEFAULT_HESSIAN_SUBSETS
             ) -> dict[str, dict[str, dict[str, float]]]:
  """{row: {column key: {"mean", "std", "n"}}} over the seeds of each row."""
  summary = {}
  for row, seed_runs in runs.items():
    summary[row] = {}
    for key, _ in table_columns(hessian_subsets):
      values = [run[key] for run in seed_runs if key in run]
      if values:
        summary[row][key] = seed_statistics.mean_std(values)
  return summary


def gains_over_random_init(runs: Mapping[str, Sequence[Mapping[str, Any]]],
                           random_init: Sequence[Mapping[str, Any]]
                          ) -> dict[str, dict[str, dict[str, float]]]:
  """Probe accuracy minus that of the same seed's untrained encoder.

  Paired by seed: the random-init accuracy varies between seeds about as
  much as the losses differ, and the pairing removes that part.
  """
  return {loss: {key: seed_statistics.paired_change(seed_runs, random_init, key)
                 for key, _ in PROBE_COLUMNS}
          for loss, seed_runs in runs.items()}


def _format_cell(cell: Optional[Mapping[str, float]], key: str,
                 signed: bool = False) -> str:
  if cell is None:
    return "–"
  spec = ".3f" if key.endswith("top1") else ".4g"
  return (f"{cell['mean']:{'+' if signed else ''}{spec}} ± "
          f"{cell['std']:{spec}}")


def format_table(summary: Mapping[str, Mapping[str, Mapping[str, float]]],
                 settings: Mapping[str, Any],
                 gains: Optional[Mapping[str, Any]] = None) -> str:
  """Markdown table, one row per loss (and the random-init reference).

  gains: `gains_over_random_init`, shown as a second table.
  """
  columns = table_columns(settings["hessian_subsets"])
  lines = [
      "| loss | " + " | ".join(h for _, h in columns) + " |",
      "| --- |" + " --- |" * len(columns),
  ]
  # In the order the losses were requested (JSON may have sorted them).
  for row in [*settings["losses"], RANDOM_INIT]:
    lines.append(f"| {row} | " + " | ".join(
        _format_cell(summary[row].get(key), key) for key, _ in columns) + " |")
  seeds = settings["seeds"]
  lines.append("")
  lines.append(
      f"Mean ± sample std over {len(seeds)} seed(s) {seeds}; {settings['steps']}"
      f" steps of batch {settings['batch_size']} per run, temperature "
      f"{settings['temperature']}. λ_max: top Hessian eigenvalue of the run's "
      "own loss at its final checkpoint over the given parameters, on the "
      f"first {settings['hessian']['batch_size']} images of the final step's "
      "batch. The random-init row is the untrained encoder.")
  if gains:
    lines += ["", "Change from the same seed's random init (paired by seed):",
              "", "| loss | " + " | ".join(h for _, h in PROBE_COLUMNS) + " |",
              "| --- |" + " --- |" * len(PROBE_COLUMNS)]
    for loss in settings["losses"]:
      lines.append(f"| {loss} | " + " | ".join(
          _format_cell(gains[loss][key], key, signed=True)
          for key, _ in PROBE_COLUMNS) + " |")
  return "\n".join(lines) + "\n"


def write_report(out: str, results: Mapping[str, Any]) -> None:
  """Writes results.json, table.md and accuracy_vs_step.png into `out`.

  results: as `run_comparison` returns it ("settings", "summary", "runs":
  {loss: {seed: run}}, "random_init": {seed: run}, optionally GAINS).
  """
  out_path = epath.Path(out)
  files.write_json(out_path / RESULTS_NAME, results)
  (out_path / TABLE_NAME).write_text(
      format_table(results["summary"], results["settings"],
                   results.get(GAINS)))
  runs = {loss: list(results["runs"][loss].values())
          for loss in results["settings"]["losses"]}
  plots.plot_accuracy_vs_step(runs, list(results[RANDOM_INIT].values()),
                              str(out_path / PLOT_NAME))


def run_comparison(base: ml_collections.ConfigDict, out: str, *,
                   losses: Sequence[str] = tuple(losses_lib.LOSSES),
                   seeds: Sequence[int] = (0, 1, 2), steps: int = 30,
                   eval_every: int = 10,
                   hessian_options: Optional[Mapping[str, Any]] = None,
                   hessian_subsets: Sequence[str] = DEFAULT_HESSIAN_SUBSETS,
                   mesh=None, log: Callable[[str], None] = print
                  ) -> dict[str, Any]:
  """Runs (or reuses) every (loss, seed) and writes table, JSON and plot.

  base: the config every run starts from (its loss, seed and length are
    replaced); base.temperature is used by every loss.
  hessian_options: keyword arguments of `hessian.analyze_checkpoint`
    except params_subset (default: DEFAULT_HESSIAN_OPTIONS).
  hessian_subsets: parameter subsets λ_max is taken over, one column each.
  Returns the JSON written to `<out>/results.json`.
  """
  invalid = [name for name in losses if name not in losses_lib.LOSSES]
  invalid += [s for s in hessian_subsets if s not in hessian.PARAM_SUBSETS]
  if invalid or not losses or not seeds:
    raise ComparisonRequestError(
        f"Need losses from {list(losses_lib.LOSSES)} (got {list(losses)}), "
        f"Hessian subsets from {list(hessian.PARAM_SUBSETS)} (got "
        f"{list(hessian_subsets)}) and at least one seed (got {list(seeds)}).")
  if steps < 1 or eval_every < 1 or steps % eval_every:
    raise ComparisonRequestError(f"steps ({steps}) must be a positive multiple of "
                     f"eval_every ({eval_every}), so every run's curve ends "
                     "at its final step.")
  hessian_options = dict(DEFAULT_HESSIAN_OPTIONS if hessian_options is None
                         else hessian_options)
  hessian_options.setdefault("batch_size", base.batch_size)
  mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
  out_path = epath.Path(out)
  settings = {
      "config": base.to_dict(), "losses": list(losses), "seeds": list(seeds),
      "steps": steps, "eval_every": eval_every, "batch_size": base.batch_size,
      "temperature": base.temperature, "hessian": hessian_options,
      "hessian_subsets": list(hessian_subsets),
      "num_devices": mesh.size,
  }
  # Only settings that change runs are pinned; adding losses, seeds or
  # Hessian subsets later reuses the finished runs.
  _check_settings(out_path, {k: v for k, v in settings.items()
                             if k not in ("losses", "seeds", "hessian_subsets")})
  start = time.perf_counter()
  if base.dataset.name == "digits":  # built offline in seconds
    data.prepare_digits(base.dataset.data_dir)
  else:
    data.ensure_prepared(base)
  random_init = [
      measure_random_init(run_config(base, loss=base.loss, seed=seed, steps=steps,
                                 eval_every=eval_every),
                      out_path / RANDOM_INIT / f"seed{seed}", mesh=mesh, log=log)
      for seed in seeds]
  runs = {loss: [] for loss in losses}
  # Seed by seed, so that an interrupted comparison has whole seeds done.
  for seed in seeds:
    for loss in losses:
      log(f"[compare] {loss}, seed {seed}")
      config = run_config(base, loss=loss, seed=seed, steps=steps,
                          eval_every=eval_every)
      runs[loss].append(measure_trained(config, out_path / loss / f"seed{seed}",
                                  hessian_options=hessian_options,
                                  hessian_subsets=hessian_subsets, mesh=mesh,
                                  log=log))
  summary = summarize({**runs, RANDOM_INIT: random_init}, hessian_subsets)
  results = {
      "settings": settings, "summary": summary,
      GAINS: gains_over_random_init(runs, random_init),
      "runs": {loss: dict(zip(map(str, seeds), seed_runs))
               for loss, seed_runs in runs.items()},
      RANDOM_INIT: dict(zip(map(str, seeds), random_init)),
      "wall_seconds_this_invocation": time.perf_counter() - start,
      "run_seconds_total": sum(
          r["train_eval_seconds"]
          + sum(r[f"hessian_{subset}"]["seconds"] for subset in hessian_subsets)
          for seed_runs in runs.values() for r in seed_runs),
  }
  write_report(str(out_path), results)
  log(f"[compare] wrote {out_path / TABLE_NAME}, {out_path / RESULTS_NAME} and "
      f"{out_path / PLOT_NAME} ({results['wall_seconds_this_invocation']:.0f} s)")
  return results
