r"""The losses compared as a reviewer would accept it: each loss's settings
chosen on a validation split, then paired over seeds on the test split.

Command: `python -m mio_jax.cli.compare` (its docstring has the flags).

1. Selection. A validation split is held out of the labelled training
   split (`data.validation_split`: its last `validation_fraction`, the same
   on every run). Every point of each loss's grid (`grid_points`) is
   pretrained on the rest with each selection seed, at the same budget, in
   `<out>/selection/<loss>/<point>/seed<k>`
   (`experiment.train_and_evaluate`, mode "all"). Its probes (kNN,
   few-label, feature probe) fit on the rest's labels and are scored on the
   validation split, whose labels serve only that score; the test split is
   not read. The point of the best mean `select_by` score over the
   selection seeds is chosen (the first in grid order on a tie).
2. Test. The chosen point of every loss is pretrained on the whole training
   split with each of `seeds` in `<out>/test/<loss>/<point>/seed<k>` and
   evaluated on the test split, as is each seed's randomly initialised
   encoder (`<out>/random_init/seed<k>`). Optionally λ_max, the top Hessian
   eigenvalue of the run's own loss at its final checkpoint
   (`hessian.analyze_checkpoint`, on the final step's training batch, which
   depends only on the seed).
3. Report. Per metric, each loss's mean ± sample std over seeds, and its
   difference to the reference loss paired by seed with a 95 % t-interval:
   `<out>/summary.json` (SUMMARY_NAME; its keys in docs/analysis.md),
   `<out>/table.md`, `<out>/comparison.png` (bars with intervals, the
   selection curve of every loss) and `<out>/accuracy_vs_step.png` (online
   kNN of the test runs).

A sweep can be left running: every run keeps `comparison_run.json` once
finished and a rerun skips it; an interrupted run resumes from its
checkpoint; progress lines count the whole sweep with an ETA.
`<out>/comparison_settings.json` ties `<out>` to its settings (see
`_check_settings`).
"""
import dataclasses
import itertools
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections
from etils import epath

from mio_jax import config_validation
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
from mio_jax.data import validation_split

SETTINGS_NAME = "comparison_settings.json"
RUN_RESULTS_NAME = "comparison_run.json"
TABLE_NAME = "table.md"
SUMMARY_NAME = "summary.json"
PLOT_NAME = "comparison.png"
CURVES_PLOT_NAME = "accuracy_vs_step.png"
SELECTION, TEST, RANDOM_INIT = "selection", "test", "random_init"
GAINS = "gain_over_random_init"
# Columns of the tables: (key in a run's results, header); then one λ_max
# column per Hessian parameter subset (`table_columns`).
PROBE_COLUMNS = (
    ("knn_top1", "kNN top-1"),
    ("fewshot_top1", "few-label top-1"),
    ("feature_probe_top1", "feature probe top-1 (all labels)"),
)
METRIC_NAMES = dict(PROBE_COLUMNS)
ONLINE_KNN = "online_knn_top1"
EVAL_PROTOCOLS = modes.MODES["all"].protocols
# λ_max only: one eigenvalue, and the shortest SLQ the analysis accepts
# (its density is not used here).
DEFAULT_HESSIAN_OPTIONS = {"top_k": 1, "lanczos_steps": 1, "num_probes": 1,
                           "batch_size": 64}
# Keys the comparison sets for every run itself: no grid may vary them.
RUN_KEYS = ("loss", "seed", "total_steps", "mode", "online_eval_every_steps",
            "checkpoint_every_steps")
# Keys some loss takes (`losses.LOSSES[...].options`): a grid over one
# applies to the losses that take it only (negative_temperature: mio, bce).
LOSS_OPTION_KEYS = frozenset(
    key for entry in losses_lib.LOSSES.values() for key in entry.options)
BASE_POINT = "config"  # name of a grid point that changes nothing


class ComparisonRequestError(errors.UserError, ValueError):
  """Bad arguments, or an output directory made with other settings."""


def lambda_max_key(subset: str) -> str:
  return f"lambda_max_{subset}"


def table_columns(hessian_subsets: Sequence[str]) -> tuple[tuple[str, str], ...]:
  return PROBE_COLUMNS + tuple(
      (lambda_max_key(subset), f"λ_max ({subset})") for subset in hessian_subsets)


# ---- the grid ----------------------------------------------------------------


def _parse_value(text: str) -> Any:
  """"0.1" -> 0.1, "3" -> 3, "true" -> True, else the text."""
  for parse in (int, float):
    try:
      return parse(text)
    except ValueError:
      pass
  return {"true": True, "false": False}.get(text.lower(), text)


def _with_values(base: ml_collections.ConfigDict,
                 point: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `base` with the dotted keys of `point` set.

  Raises ComparisonRequestError for an unknown key or a value of the wrong
  type (the locked ConfigDict's own checks).
  """
  config = base.copy_and_resolve_references()
  for key, value in point.items():
    *sections, name = key.split(".")
    node = config
    for section in sections:
      node = node.get(section)
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      raise ComparisonRequestError(
          f"--grid key {key!r} is not a config key; grid keys are config "
          "keys (mio_jax/config_base.py), e.g. temperature, "
          "negative_temperature, optimizer.base_lr")
    try:
      node[name] = value
    except TypeError as e:
      raise ComparisonRequestError(
          f"--grid {key}={value!r} has the wrong type ({e})") from None
  return config


def parse_grid_spec(spec: str) -> tuple[Optional[str], str, list[Any]]:
  """"[loss:]key:v1,v2,..." -> (loss or None, key, values)."""
  fields = spec.split(":")
  if len(fields) not in (2, 3) or not all(f.strip() for f in fields):
    raise ComparisonRequestError(
        f"--grid={spec!r} is not KEY:V1,V2,... or LOSS:KEY:V1,V2,...; e.g. "
        "--grid=temperature:0.1,0.2,0.5 or --grid=mio:negative_temperature:0.5,1")
  loss = fields[0].strip() if len(fields) == 3 else None
  key, values = fields[-2].strip(), [v.strip() for v in fields[-1].split(",")]
  if "" in values or len(set(values)) != len(values):
    raise ComparisonRequestError(
        f"--grid={spec!r} needs distinct, non-empty values")
  return loss, key, [_parse_value(v) for v in values]


def grid_points(specs: Sequence[str], losses: Sequence[str],
                base: ml_collections.ConfigDict
               ) -> dict[str, list[dict[str, Any]]]:
  """{loss: [point]}: every combination of the grid's values, per loss.

  specs: "KEY:V1,V2,..." for every loss that takes KEY (a loss option such
    as negative_temperature only for the losses that take it; any other
    config key, e.g. optimizer.base_lr, for all), or "LOSS:KEY:V1,..." for
    one loss, replacing a spec of the same key for all. The points are the
    product of the keys' values in the order the keys were first given;
    a loss without any key has one point, {}, the base config.
  Raises ComparisonRequestError for a bad spec, key or value.
  """
  common, per_loss = {}, {loss: {} for loss in losses}
  for spec in filter(None, specs):  # "--grid=": no grid
    loss, key, values = parse_grid_spec(spec)
    if key in RUN_KEYS:
      raise ComparisonRequestError(
          f"--grid={spec!r}: the comparison sets {key} itself; grid over "
          "settings of the runs, e.g. temperature")
    if loss is None:
      common[key] = values
      continue
    if loss not in per_loss:
      raise ComparisonRequestError(
          f"--grid={spec!r} names loss {loss!r}, which is not compared "
          f"(--losses: {', '.join(losses)})")
    if key in LOSS_OPTION_KEYS and key not in losses_lib.LOSSES[loss].options:
      raise ComparisonRequestError(
          f"--grid={spec!r}: loss {loss} takes no {key} (it takes "
          f"{', '.join(losses_lib.LOSSES[loss].options)})")
    per_loss[loss][key] = values
  grids = {}
  for loss in losses:
    axes = {key: values for key, values in {**common, **per_loss[loss]}.items()
            if key not in LOSS_OPTION_KEYS
            or key in losses_lib.LOSSES[loss].options}
    grids[loss] = [dict(zip(axes, combination))
                   for combination in itertools.product(*axes.values())]
    for point in grids[loss]:
      _with_values(base, point)  # every key and value is settable
  return grids


def point_name(point: Mapping[str, Any]) -> str:
  """"temperature=0.2,optimizer.base_lr=0.001"; BASE_POINT for {}.

  Also the folder of the point's runs.
  """
  if not point:
    return BASE_POINT
  return ",".join(f"{key}={value}" for key, value in point.items()
                 ).replace("/", "_")


# ---- one run -------------------------------------------------------------------


def run_config(base: ml_collections.ConfigDict, *, loss: str, seed: int,
               steps: int, eval_every: int,
               point: Mapping[str, Any] = ()) -> ml_collections.ConfigDict:
  """`base` with the grid `point`, pretrained with `loss` and `seed` for
  `steps`, then evaluated."""
  config = _with_values(base, dict(point))
  config.loss = loss
  config.seed = seed
  config.total_steps = steps
  config.mode = "all"
  config.online_eval_every_steps = eval_every
  # Checkpoints as often as the curve is measured: a crash loses little.
  config.checkpoint_every_steps = eval_every
  config.eval.embedding_plot_points = 0  # t-SNE is not compared here
  return config


def selection_config(base: ml_collections.ConfigDict,
                     held_out: validation_split.HeldOut
                     ) -> ml_collections.ConfigDict:
  """`base` reading only the splits of `held_out`: pretraining and the
  probes' fit without the validation examples, the probes' score on them."""
  config = base.copy_and_resolve_references()
  config.dataset.pretrain_split = held_out.pretrain
  config.dataset.eval_train_split = held_out.train
  config.dataset.eval_test_split = held_out.validation
  return config


def _online_curve(workdir: epath.Path) -> dict[str, list[float]]:
  steps, values = plots.read_metrics(
      str(workdir / "metrics.jsonl")).get(ONLINE_KNN, ([], []))
  return {"steps": [int(s) for s in steps], "values": [float(v) for v in values]}


def protocol_results(results: Mapping[str, Any]) -> dict[str, Any]:
  """The results of the EVAL_PROTOCOLS ("knn_top1", "feature_probe_top5", ...)."""
  return {k: v for k, v in results.items()
          if any(k.startswith(f"{protocol}_") for protocol in EVAL_PROTOCOLS)}


def is_finished(workdir: epath.Path) -> bool:
  return (workdir / RUN_RESULTS_NAME).exists()


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


def measure_random_init(config: ml_collections.ConfigDict,
                        workdir: epath.Path, *, mesh) -> dict[str, Any]:
  """Probe accuracies of the seed's untrained encoder (step 0 of every loss)."""
  path = workdir / RUN_RESULTS_NAME
  done = files.read_json(path)
  if done is not None:
    return done
  run = seed_statistics.random_init_results(config, mesh,
                                            protocols=EVAL_PROTOCOLS)
  files.write_json(path, run)
  return run


class _Progress:
  """One line per run of the whole sweep: its place, and an ETA from the
  runs trained so far in this invocation (finished ones are skipped)."""

  def __init__(self, total: int, log: Callable[[str], None]):
    self.total, self.log = total, log
    self.start = time.perf_counter()
    self.done = self.trained = 0

  def skip(self, finished: int) -> None:
    """Counts `finished` runs of the sweep as done before this invocation."""
    self.done += finished
    if finished:
      self.log(f"[compare] {finished} finished run(s) skipped: "
               f"{self.done} of {self.total} done.")

  def run(self, label: str, workdir: epath.Path, measure: Callable[[], Any]):
    """measure(), announced with the sweep's progress unless finished
    (counted by `skip`)."""
    if is_finished(workdir):
      return measure()
    elapsed = time.perf_counter() - self.start
    left = self.total - self.done
    eta = (f"ETA {_duration(elapsed / self.trained * left)}" if self.trained
           else "ETA after the first run")
    self.log(f"[compare] run {self.done + 1}/{self.total}: {label} "
             f"({left} left, {_duration(elapsed)} so far, {eta})")
    result = measure()
    self.done += 1
    self.trained += 1
    return result


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


# ---- statistics ----------------------------------------------------------------


def summarize(runs: Mapping[str, Sequence[Mapping[str, Any]]],
              hessian_subsets: Sequence[str] = ()
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


def paired_to_reference(runs: Mapping[str, Sequence[Mapping[str, Any]]],
                        reference: str) -> dict[str, dict[str, dict]]:
  """{loss: {metric: paired_difference}} of every loss but the reference.

  runs: {loss: [run of seed k]} in the same seed order for every loss.
  """
  return {loss: {key: seed_statistics.paired_difference(
                     [run[key] for run in seed_runs],
                     [run[key] for run in runs[reference]])
                 for key, _ in PROBE_COLUMNS}
          for loss, seed_runs in runs.items() if loss != reference}


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


def select(scored: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
  """The entry of the highest "score" (the first of equal ones)."""
  return max(scored, key=lambda entry: entry["score"])  # max keeps the first


# ---- report --------------------------------------------------------------------


def _spec(key: str) -> str:
  return ".3f" if key.endswith("top1") else ".4g"


def _format_paired(cell: Mapping[str, Any], key: str) -> str:
  spec = _spec(key)
  mean = f"{cell['mean_diff']:+{spec}}"
  if cell["ci95_low"] is None:
    return f"{mean} (n={cell['n']})"
  return f"{mean} [{cell['ci95_low']:+{spec}}, {cell['ci95_high']:+{spec}}]"


def format_table(summary: Mapping[str, Any]) -> str:
  """table.md: the selection, the test table, the paired differences and
  the change from random init; `summary` as `run_comparison` returns it."""
  settings = summary["settings"]
  select_by = settings["select_by"]
  losses = settings["losses"]
  held_out = settings["validation"]
  lines = [
      f"Selected on a validation split ({held_out['num_validation']} of the "
      f"{held_out['num_validation'] + held_out['num_train']} labelled "
      f"training images, `{held_out['split']}`), by "
      f"{METRIC_NAMES[select_by]}, mean over seed(s) "
      f"{settings['selection_seeds']}:", "",
      f"| loss | selected | validation {METRIC_NAMES[select_by]} per grid "
      "point (selected in bold) |", "| --- | --- | --- |"]
  for loss in losses:
    chosen = point_name(summary["selected"][loss])
    points = ", ".join(
        (f"**{entry['name']}: {entry['score']:.3f}**"
         if entry["name"] == chosen else
         f"{entry['name']}: {entry['score']:.3f}")
        for entry in summary[SELECTION][loss])
    lines.append(f"| {loss} | {chosen} | {points or 'one point, not trained'} |")
  columns = table_columns(settings["hessian_subsets"])
  seeds = settings["seeds"]
  lines += [
      "", f"Test split, each loss at its selected setting: mean ± sample std "
      f"over seed(s) {seeds}; {settings['steps']} steps of batch "
      f"{settings['batch_size']} per run; random_init is the untrained "
      "encoder.", "",
      "| loss | " + " | ".join(h for _, h in columns) + " |",
      "| --- |" + " --- |" * len(columns)]
  rows = {**summary[TEST], RANDOM_INIT: summary[RANDOM_INIT]}
  for row in [*losses, RANDOM_INIT]:
    lines.append(f"| {row} | " + " | ".join(
        seed_statistics.format_mean_std(rows[row].get(key), _spec(key))
        for key, _ in columns) + " |")
  reference = settings["reference"]
  if list(losses) == [reference]:
    lines += ["", f"No difference to report: {reference} is the only loss."]
  else:
    lines += [
        "", f"Difference to {reference}, paired by seed: mean of the per-seed "
        "differences [95 % t-interval]:", "",
        "| loss | " + " | ".join(h for _, h in PROBE_COLUMNS) + " |",
        "| --- |" + " --- |" * len(PROBE_COLUMNS)]
    for loss in losses:
      if loss != reference:
        lines.append(f"| {loss} | " + " | ".join(
            _format_paired(summary["paired"][loss][key], key)
            for key, _ in PROBE_COLUMNS) + " |")
  lines += ["", "Change from the same seed's random init (paired by seed):",
            "", "| loss | " + " | ".join(h for _, h in PROBE_COLUMNS) + " |",
            "| --- |" + " --- |" * len(PROBE_COLUMNS)]
  for loss in losses:
    lines.append(f"| {loss} | " + " | ".join(
        seed_statistics.format_mean_std(summary[GAINS][loss][key], _spec(key),
                                        signed=True)
        for key, _ in PROBE_COLUMNS) + " |")
  return "\n".join(lines) + "\n"


def write_report(out: str, summary: Mapping[str, Any]) -> None:
  """Writes summary.json, table.md and the two plots into `out`."""
  out_path = epath.Path(out)
  files.write_json(out_path / SUMMARY_NAME, summary)
  (out_path / TABLE_NAME).write_text(format_table(summary))
  plots.plot_loss_comparison(summary, str(out_path / PLOT_NAME))
  losses = summary["settings"]["losses"]
  plots.plot_accuracy_vs_step(
      {loss: list(summary["runs"][TEST][loss].values()) for loss in losses},
      list(summary["runs"][RANDOM_INIT].values()),
      str(out_path / CURVES_PLOT_NAME))


# ---- the sweep -----------------------------------------------------------------


def _check_settings(out: epath.Path, settings: Mapping[str, Any], *,
                    allow_changes: bool) -> None:
  """Records the settings of `out`, or refuses to reuse it with others.

  "runs" settings (config, budget, validation split, devices) shape every
  run in `out`: they never change. "choice" settings (grid, selection
  seeds, select_by) change which runs are made and chosen: only with
  allow_changes, keeping the finished runs. The rest (losses, test seeds,
  reference, Hessian subsets) may change freely: runs are added or
  ignored.
  """
  path = out / SETTINGS_NAME
  settings = files.as_stored(settings)
  recorded = files.read_json(path)
  if recorded is not None:
    changed = {part: sorted(k for k in recorded[part].keys()
                            | settings[part].keys()
                            if recorded[part].get(k) != settings[part].get(k))
               for part in ("runs", "choice")}
    if changed["runs"]:
      raise ComparisonRequestError(
          f"{out} holds runs made with other settings (differing: "
          f"{', '.join(changed['runs'])}; see {path}); every run would "
          "differ: use a fresh --out")
    if changed["choice"] and not allow_changes:
      raise ComparisonRequestError(
          f"{out} holds a sweep with other settings (differing: "
          f"{', '.join(changed['choice'])}; see {path}); pass "
          "--allow_changes to keep its finished runs and run what the new "
          "settings add, or use a fresh --out")
  files.write_json(path, settings)


def _check_request(losses, seeds, selection_seeds, reference, select_by,
                   hessian_subsets, steps, eval_every) -> None:
  invalid = [name for name in losses if name not in losses_lib.LOSSES]
  invalid += [s for s in hessian_subsets if s not in hessian.PARAM_SUBSETS]
  if invalid or not losses or not seeds or not selection_seeds:
    raise ComparisonRequestError(
        f"Need losses from {list(losses_lib.LOSSES)} (got {list(losses)}), "
        f"Hessian subsets from {list(hessian.PARAM_SUBSETS)} (got "
        f"{list(hessian_subsets)}), at least one seed (got {list(seeds)}) "
        f"and one selection seed (got {list(selection_seeds)}).")
  for name, values in (("seeds", seeds), ("selection_seeds", selection_seeds),
                       ("losses", losses)):
    if len(set(values)) != len(values):
      raise ComparisonRequestError(f"--{name} repeats a value: {list(values)}")
  if reference not in losses:
    raise ComparisonRequestError(
        f"--reference={reference} is not among --losses ({', '.join(losses)})")
  errors.check_one_of("select_by", select_by, METRIC_NAMES)
  if steps < 1 or eval_every < 1 or steps % eval_every:
    raise ComparisonRequestError(
        f"steps ({steps}) must be a positive multiple of eval_every "
        f"({eval_every}), so every run's curve ends at its final step.")


def run_comparison(base: ml_collections.ConfigDict, out: str, *,
                   losses: Sequence[str] = tuple(losses_lib.LOSSES),
                   grid: Sequence[str] = (),
                   select_by: str = "knn_top1",
                   validation_fraction: float = 0.1,
                   selection_seeds: Sequence[int] = (0,),
                   seeds: Sequence[int] = (0, 1, 2),
                   reference: str = "nt_xent",
                   steps: int = 30, eval_every: int = 10,
                   hessian_options: Optional[Mapping[str, Any]] = None,
                   hessian_subsets: Sequence[str] = (),
                   allow_changes: bool = False,
                   mesh=None, log: Callable[[str], None] = print
                  ) -> dict[str, Any]:
  """Selects each loss's setting, tests it over seeds, writes the report.

  base: the config every run starts from (its loss, seed and length are
    replaced, and the grid's keys).
  grid: specs of `grid_points` ("temperature:0.1,0.2", "mio:KEY:V1,V2").
  select_by: the validation metric that chooses, a key of METRIC_NAMES.
  validation_fraction: share of the labelled training split held out.
  selection_seeds: the seeds every grid point is trained with; its score is
    the mean over them. seeds: the test runs' seeds.
  reference: the loss every other one is paired with.
  hessian_options: keyword arguments of `hessian.analyze_checkpoint`
    except params_subset (default: DEFAULT_HESSIAN_OPTIONS).
  hessian_subsets: parameter subsets λ_max of the test runs is taken over.
  allow_changes: reuse an `out` made with another grid, selection seeds
    or select_by (see `_check_settings`).
  Returns the JSON written to `<out>/summary.json`.

  Raises:
    ComparisonRequestError (a UserError), before any run: a bad argument
      or grid, an `out` made with other settings; ConfigError for a run
      config that cannot work.
  """
  seeds, selection_seeds = list(seeds), list(selection_seeds)
  _check_request(losses, seeds, selection_seeds, reference, select_by,
                 hessian_subsets, steps, eval_every)
  if not 0 < validation_fraction < 1:
    raise ComparisonRequestError(
        f"--validation_fraction={validation_fraction} must be in (0, 1)")
  grids = grid_points(grid, losses, base)
  mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
  for loss in losses:
    for point in grids[loss]:
      config_validation.validate_config(
          run_config(base, loss=loss, seed=seeds[0], steps=steps,
                     eval_every=eval_every, point=point),
          device_count=mesh.size)
  data.ensure_prepared(base)
  try:
    held_out = validation_split.hold_out_validation(base, validation_fraction)
  except errors.InvalidValueError as e:
    raise ComparisonRequestError(str(e)) from None
  hessian_options = dict(DEFAULT_HESSIAN_OPTIONS if hessian_options is None
                         else hessian_options)
  out_path = epath.Path(out)
  settings = {
      "runs": {"config": base.to_dict(), "steps": steps,
               "eval_every": eval_every,
               "validation_fraction": validation_fraction,
               "num_devices": mesh.size},
      "choice": {"grid": {loss: [point_name(p) for p in grids[loss]]
                          for loss in losses},
                 "selection_seeds": selection_seeds, "select_by": select_by},
  }
  _check_settings(out_path, settings, allow_changes=allow_changes)
  start = time.perf_counter()

  # Single-point grids have nothing to select: no selection runs.
  selection_runs = [(loss, point, seed) for loss in losses
                    if len(grids[loss]) > 1 for point in grids[loss]
                    for seed in selection_seeds]
  selection_dir = lambda loss, point, seed: (
      out_path / SELECTION / loss / point_name(point) / f"seed{seed}")
  test_dir = lambda loss, point, seed: (
      out_path / TEST / loss / point_name(point) / f"seed{seed}")
  progress = _Progress(len(selection_runs) + len(losses) * len(seeds), log)
  progress.skip(sum(is_finished(selection_dir(*run))
                    for run in selection_runs))
  selection_base = selection_config(base, held_out)
  scored = {loss: [] for loss in losses}
  selection_results = {loss: {} for loss in losses}
  for loss in losses:
    if len(grids[loss]) == 1:
      continue
    for point in grids[loss]:
      per_seed = {}
      for seed in selection_seeds:
        workdir = selection_dir(loss, point, seed)
        config = run_config(selection_base, loss=loss, seed=seed, steps=steps,
                            eval_every=eval_every, point=point)
        per_seed[str(seed)] = progress.run(
            f"selection, {loss} at {point_name(point)}, seed {seed}", workdir,
            lambda config=config, workdir=workdir: measure_trained(
                config, workdir, hessian_options=hessian_options,
                hessian_subsets=(), mesh=mesh, log=log))
      selection_results[loss][point_name(point)] = per_seed
      scores = [run[select_by] for run in per_seed.values()]
      scored[loss].append({"name": point_name(point), "point": point,
                           "score": sum(scores) / len(scores)})
  selected = {loss: dict(select(scored[loss])["point"]) if scored[loss]
              else dict(grids[loss][0]) for loss in losses}
  for loss in losses:
    log(f"[compare] selected for {loss}: {point_name(selected[loss])}")

  # Which test runs exist is known once their points are.
  progress.skip(sum(is_finished(test_dir(loss, selected[loss], seed))
                    for loss in losses for seed in seeds))
  random_init, runs = [], {loss: [] for loss in losses}
  # Seed by seed, so that an interrupted comparison has whole seeds done.
  for seed in seeds:
    random_init.append(measure_random_init(
        run_config(base, loss=base.loss, seed=seed, steps=steps,
                   eval_every=eval_every),
        out_path / RANDOM_INIT / f"seed{seed}", mesh=mesh))
    for loss in losses:
      workdir = test_dir(loss, selected[loss], seed)
      config = run_config(base, loss=loss, seed=seed, steps=steps,
                          eval_every=eval_every, point=selected[loss])
      runs[loss].append(progress.run(
          f"test, {loss} at {point_name(selected[loss])}, seed {seed}",
          workdir, lambda config=config, workdir=workdir: measure_trained(
              config, workdir, hessian_options=hessian_options,
              hessian_subsets=hessian_subsets, mesh=mesh, log=log)))

  test_summary = summarize(runs, hessian_subsets)
  summary = {
      "settings": {
          **settings["runs"], **settings["choice"], "losses": list(losses),
          "seeds": seeds, "reference": reference,
          "batch_size": base.batch_size, "hessian": hessian_options,
          "hessian_subsets": list(hessian_subsets),
          "validation": {**dataclasses.asdict(held_out),
                         "split": held_out.validation}},
      "selected": selected,
      SELECTION: scored,
      TEST: test_summary,
      RANDOM_INIT: summarize({RANDOM_INIT: random_init})[RANDOM_INIT],
      "paired": paired_to_reference(runs, reference),
      GAINS: gains_over_random_init(runs, random_init),
      "runs": {SELECTION: selection_results,
               TEST: {loss: dict(zip(map(str, seeds), seed_runs))
                      for loss, seed_runs in runs.items()},
               RANDOM_INIT: dict(zip(map(str, seeds), random_init))},
      "wall_seconds_this_invocation": time.perf_counter() - start,
  }
  write_report(str(out_path), summary)
  log(f"[compare] wrote {out_path / TABLE_NAME}, {out_path / SUMMARY_NAME}, "
      f"{out_path / PLOT_NAME} and {out_path / CURVES_PLOT_NAME} "
      f"({summary['wall_seconds_this_invocation']:.0f} s)")
  return summary
