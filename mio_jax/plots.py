"""Every figure mio_jax draws: training curves, t-SNE of features, Hessian
spectra, the loss comparison's accuracy curves.

The training curves hold one quantity per axis: pretraining's, each trained
classifier's (the online probe, linear_eval, finetune: their loss on a loss
axis, accuracies on [0, 1]) and the evaluations' test accuracies.

Uses matplotlib's object API with the Agg canvas (`Figure.savefig`), so no
display and no global pyplot state are needed. Paths may be local or gs://
(read and written through etils.epath, like the rest of the workdir).
"""
import dataclasses
import io
import json
import math
from typing import Any, Mapping, Optional, Sequence

from etils import epath

from matplotlib.figure import Figure
import numpy as np
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from mio_jax.metric_logging import EVAL_PREFIX


@dataclasses.dataclass(frozen=True)
class Panel:
  """One axis of the training-curve figure: one quantity, its curves."""
  title: str
  names: tuple[str, ...]  # the metrics drawn, as logged
  ylabel: str
  xlabel: str = "step"
  fraction: bool = False  # an accuracy: the axis spans [0, 1]


# The pretraining step's metrics (train step, losses.pair_metrics), one
# quantity per panel: (title, y label, metric names, fraction).
PRETRAINING_PANELS = (
    ("loss", "loss", ("loss",), False),
    ("learning rate", "learning rate", ("learning_rate",), False),
    ("cosine similarity of pairs", "cosine similarity",
     ("pos_sim", "neg_sim"), False),
    ("pair classification accuracy", "accuracy",
     ("pair_accuracy", "pos_accuracy", "neg_accuracy"), True),
    ("mutual information estimate", "nats", ("mi_estimate",), False),
    ("gradient norm", "gradient norm", ("grad_norm",), False),
    ("throughput", "images/s", ("images_per_sec",), False),
)
# A trained classifier's metrics, logged as "<name>_<metric>": the online
# probe inside pretraining, linear_eval and finetune (loop.run's `name`).
CLASSIFIER_PANELS = (
    ("loss (cross-entropy)", "loss", ("loss", "val_loss"), False),
    ("accuracy", "accuracy", ("top1", "val_top1"), True),
    ("learning rate", "learning rate", ("learning_rate",), False),
    ("gradient norm", "gradient norm", ("grad_norm",), False),
    ("throughput", "images/s", ("images_per_sec",), False),
)
# The online probe trains inside pretraining: its steps are pretraining's.
ONLINE_PROBE = "online_probe"
ACCURACY_SUFFIXES = ("_top1", "_top5")


def read_metrics(metrics_jsonl_path: str) -> dict[str, tuple[np.ndarray,
                                                             np.ndarray]]:
  """{name: (steps, values)} sorted by step, from a metrics.jsonl file.

  A step logged twice (re-run after a resume from an older checkpoint) keeps
  its latest value.
  """
  by_name: dict[str, dict[int, float]] = {}
  with epath.Path(metrics_jsonl_path).open() as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{metrics_jsonl_path}:{line_number} is not JSON "
                         f"({e}); was the file truncated?") from e
      step = record.pop("step")
      for name, value in record.items():
        by_name.setdefault(name, {})[step] = value
  return {name: (np.array(sorted(values)),
                 np.array([values[s] for s in sorted(values)], np.float64))
          for name, values in by_name.items()}


def _classifiers(metric_names) -> list[str]:
  """The names of the classifiers trained in the file: "<name>_loss" logged
  (not a validation loss, not an evaluation result)."""
  return sorted({n.removesuffix("_loss") for n in metric_names
                 if n.endswith("_loss") and not n.endswith("_val_loss")
                 and not n.startswith(EVAL_PREFIX)})


def curve_panels(metric_names) -> list[Panel]:
  """The panels with at least one of `metric_names`: pretraining's, each
  trained classifier's, and the evaluations' accuracies (test split)."""
  metric_names = set(metric_names)
  specs = [("", "", spec) for spec in PRETRAINING_PANELS]
  classifiers = _classifiers(metric_names)
  # The online probe first: it trains with pretraining, at its steps.
  for name in sorted(classifiers, key=lambda name: name != ONLINE_PROBE):
    xlabel = "step" if name == ONLINE_PROBE else f"{name} step"
    specs += [(f"{name}_", xlabel, spec) for spec in CLASSIFIER_PANELS]
  panels = []
  for prefix, xlabel, (title, ylabel, names, fraction) in specs:
    found = tuple(prefix + n for n in names if prefix + n in metric_names)
    if found:
      panels.append(Panel(f"{prefix.removesuffix('_')}{': ' if prefix else ''}"
                          f"{title}", found, ylabel, xlabel or "step",
                          fraction))
  # Evaluations of the encoder and online kNN: test-split accuracies
  # (not the standard deviations over few-label trials).
  evaluations = tuple(sorted(
      n for n in metric_names if n.endswith(ACCURACY_SUFFIXES)
      and (n.startswith(EVAL_PREFIX) or not any(
          n.startswith(f"{c}_") for c in classifiers))))
  if evaluations:
    panels.append(Panel("evaluation (test split)", evaluations, "accuracy",
                        fraction=True))
  return panels


def training_curves_figure(metrics: Mapping[str, tuple[np.ndarray,
                                                       np.ndarray]]) -> Figure:
  """The figure of `read_metrics`'s curves, one panel per `curve_panels`,
  legends below their axes (never over the last points)."""
  panels = curve_panels(metrics)
  if not panels:
    raise ValueError("no metrics to plot")
  columns = min(2, len(panels))
  rows = math.ceil(len(panels) / columns)
  figure = Figure(figsize=(6 * columns, 3.8 * rows), layout="constrained")
  axes = figure.subplots(rows, columns, squeeze=False).ravel()
  for axis, panel in zip(axes, panels):
    for name in panel.names:
      steps, values = metrics[name]
      axis.plot(steps, values, marker="o" if len(steps) < 20 else None,
                label=name.removeprefix(EVAL_PREFIX))
    if panel.fraction:
      axis.set_ylim(-0.02, 1.02)  # markers at 0 or 1 stay whole
    elif "learning rate" in panel.title:
      axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axis.set_title(panel.title)
    axis.set_xlabel(panel.xlabel)
    axis.set_ylabel(panel.ylabel)
    axis.grid(alpha=0.3)
    if len(panel.names) > 1 or panel.title.startswith("evaluation"):
      axis.legend(fontsize="small", loc="upper center", frameon=False,
                  bbox_to_anchor=(0.5, -0.22), ncol=min(3, len(panel.names)))
  for axis in axes[len(panels):]:
    axis.set_visible(False)
  return figure


def plot_training_curves(metrics_jsonl_path: str, out_png: str) -> None:
  """The workdir's curves (`training_curves_figure`) as a PNG."""
  metrics = read_metrics(metrics_jsonl_path)
  try:
    figure = training_curves_figure(metrics)
  except ValueError:
    raise ValueError(f"{metrics_jsonl_path} holds no metrics to plot.") from None
  _save_png(figure, out_png)


def plot_embedding(features: np.ndarray, labels: np.ndarray, out_png: str, *,
                   max_points: int, seed: int,
                   title: Optional[str] = None) -> None:
  """A 2-D t-SNE of `features` (cosine metric), points coloured by label.

  At most `max_points` examples, drawn uniformly without replacement with
  `seed` (which also seeds t-SNE), so the figure is reproducible.
  """
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels)
  if len(features) != len(labels) or len(features) < 2:
    raise ValueError(f"need >= 2 features with one label each; got "
                     f"{len(features)} features, {len(labels)} labels.")
  rng = np.random.default_rng(seed)
  if len(features) > max_points:
    keep = np.sort(rng.choice(len(features), size=max_points, replace=False))
    features, labels = features[keep], labels[keep]
  # sklearn requires perplexity < number of points.
  perplexity = min(30.0, max(1.0, (len(features) - 1) / 3))
  # One OpenMP thread: sklearn's Barnes-Hut t-SNE busy-waits in OpenMP, and
  # on a busy host that is pathological (297 points: 30 s with 2 threads vs
  # 1.6 s with 1 on a loaded 2-core machine; ~2,000 points take ~20 s).
  with threadpool_limits(limits=1, user_api="openmp"):
    embedded = TSNE(n_components=2, perplexity=perplexity, metric="cosine",
                    init="pca", random_state=seed).fit_transform(features)

  classes = np.unique(labels)
  colormap = "tab10" if len(classes) <= 10 else (
      "tab20" if len(classes) <= 20 else "turbo")
  figure = Figure(figsize=(7, 6), layout="constrained")
  axis = figure.subplots()
  scatter = axis.scatter(embedded[:, 0], embedded[:, 1], s=6,
                         c=np.searchsorted(classes, labels), cmap=colormap,
                         vmin=-0.5, vmax=len(classes) - 0.5)
  if len(classes) <= 20:
    handles, _ = scatter.legend_elements(num=None)
    axis.legend(handles, [str(c) for c in classes], title="class",
                fontsize="small", loc="center left", bbox_to_anchor=(1, 0.5))
  axis.set_title(title or f"t-SNE of {len(features)} features")
  axis.set_xticks([])
  axis.set_yticks([])
  _save_png(figure, out_png)


def _save_png(figure: Figure, out_png: str, *, dpi: int = 100) -> None:
  """Renders to memory, then writes through etils.epath (local or gs://)."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=dpi)
  epath.Path(out_png).write_bytes(buffer.getvalue())


def plot_hessian_spectra(results: Mapping[str, Any], out_png: str) -> None:
  """One panel per loss: SLQ density on a log scale, top eigenvalues dashed.

  Log density (as in Ghorbani et al. 2019) shows the few outliers next to
  the bulk near 0; the eigenvalue axis is linear and shared, so the panels
  compare the curvature scales of the losses directly.
  """
  per_loss = results["losses"]
  figure = Figure(figsize=(7, 2.4 * len(per_loss) + 0.6), layout="constrained")
  axes = figure.subplots(len(per_loss), 1, squeeze=False, sharex=True).ravel()
  for axis, (name, analysis) in zip(axes, per_loss.items()):
    grid = np.asarray(analysis["density"]["grid"])
    density = np.asarray(analysis["density"]["values"])
    # Below ~1e-6 of the peak the curve is the tail of the broadening kernel,
    # not spectrum; the floor also keeps zeros off the log scale.
    floor = density.max() * 1e-6
    axis.plot(grid, np.maximum(density, floor), color="C0",
              label="SLQ density")
    for i, value in enumerate(analysis["top_eigenvalues"]):
      axis.axvline(value, color="C3", linestyle="--", linewidth=0.8,
                   label=f"top {results['top_k']} (eigsh)" if i == 0 else None)
    axis.set_yscale("log")
    axis.set_ylim(bottom=floor)
    axis.set_title(f"{name}: loss {analysis['loss']:.3f}, "
                   f"lambda_max {analysis['top_eigenvalues'][0]:.3g}, "
                   f"trace {analysis['trace_estimate']:.3g}", fontsize="medium")
    axis.set_ylabel("density")
    axis.grid(alpha=0.3)
  axes[0].legend(fontsize="small", loc="upper right")
  axes[-1].set_xlabel(
      f"Hessian eigenvalue ({results['params_subset']} parameters, "
      f"{results['num_params']:,}; step {results['step']}, "
      f"batch {results['batch_size']})")
  _save_png(figure, out_png)


def plot_accuracy_vs_step(runs: Mapping[str, Sequence[Mapping[str, Any]]],
                          random_init: Sequence[Mapping[str, Any]],
                          out_png: str) -> None:
  """Online kNN top-1 against step, mean ± std band over seeds, per loss.

  Step 0 is the random initialisation, the same for every loss of a seed.
  """
  figure = Figure(figsize=(6.5, 4), layout="constrained")
  axis = figure.subplots()
  init_values = [run["knn_top1"] for run in random_init]
  for index, (loss, seed_runs) in enumerate(runs.items()):
    curves = [run["online_knn"] for run in seed_runs]
    steps = curves[0]["steps"]
    if any(curve["steps"] != steps for curve in curves):
      raise ValueError(f"{loss}: seeds logged kNN at different steps "
                       f"{[c['steps'] for c in curves]}.")
    # Each seed's curve starts from that seed's random-init accuracy.
    values = np.array([[*init_values[i:i + 1], *curve["values"]]
                       for i, curve in enumerate(curves)])
    x = ([0] if init_values else []) + steps
    mean = values.mean(axis=0)
    std = values.std(axis=0, ddof=1) if len(values) > 1 else 0 * mean
    axis.plot(x, mean, marker="o", markersize=3, color=f"C{index}", label=loss)
    axis.fill_between(x, mean - std, mean + std, color=f"C{index}", alpha=0.2)
  axis.set_xlabel("pretraining step (0: random init)")
  axis.set_ylabel("kNN top-1 (test split)")
  axis.set_title(f"online kNN accuracy, mean ± std over {len(init_values)} "
                 "seed(s)", fontsize="medium")
  axis.grid(alpha=0.3)
  axis.legend()
  _save_png(figure, out_png, dpi=110)


def plot_loss_comparison(summary: Mapping[str, Any], out_png: str) -> None:
  """The loss comparison (`loss_comparison.run_comparison`'s summary).

  Top left: each loss's test accuracy per metric, bars at the mean over
  seeds with ± one sample std. Top right: the difference to the reference
  loss paired by seed, with its 95 % t-interval. Below: one panel per loss,
  its validation score over its grid, the selected point starred.
  """
  settings = summary["settings"]
  losses, reference = settings["losses"], settings["reference"]
  metrics = ("knn_top1", "fewshot_top1", "feature_probe_top1")
  figure = Figure(figsize=(4 * max(3, len(losses)), 7.5), layout="constrained")
  grid = figure.add_gridspec(2, max(2, len(losses)))
  bars = figure.add_subplot(grid[0, :max(1, len(losses) // 2)])
  paired = figure.add_subplot(grid[0, max(1, len(losses) // 2):])
  x = np.arange(len(metrics))
  others = [loss for loss in losses if loss != reference]
  # A loss keeps its colour in every panel.
  color = {loss: f"C{index}" for index, loss in enumerate(losses)}
  for index, loss in enumerate(losses):
    cells = [summary["test"][loss][m] for m in metrics]
    bars.bar(x + index * 0.8 / len(losses), [c["mean"] for c in cells],
             0.8 / len(losses), yerr=[c["std"] or 0 for c in cells],
             capsize=3, color=color[loss], label=loss)
  for index, loss in enumerate(others):
    cells = [summary["paired"][loss][m] for m in metrics]
    means = np.array([c["mean_diff"] for c in cells])
    has_interval = cells[0]["ci95_low"] is not None
    errors = (np.array([[c["mean_diff"] - c["ci95_low"],
                         c["ci95_high"] - c["mean_diff"]] for c in cells]).T
              if has_interval else None)
    paired.bar(x + index * 0.8 / len(others), means, 0.8 / len(others),
               yerr=errors, capsize=3, color=color[loss], label=loss)
  n = len(settings["seeds"])
  for axis, title, count in (
      (bars, f"test top-1, mean ± std over {n} seed(s)", len(losses)),
      (paired, f"minus {reference}, paired by seed "
               f"({'95 % t-interval' if n > 1 else 'one seed: no interval'})",
       len(others))):
    axis.set_xticks(x + 0.4 - 0.4 / max(1, count),
                    ["kNN", "few-label", "feature probe"])
    axis.set_title(title, fontsize="medium")
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize="small", loc="center left", bbox_to_anchor=(1, 0.5))
  low = min(summary["test"][loss][m]["mean"] for loss in losses for m in metrics)
  bars.set_ylim(max(0.0, low - 0.15), 1.0)
  paired.axhline(0, color="black", linewidth=0.8)
  select_by = settings["select_by"]
  for index, loss in enumerate(losses):
    axis = figure.add_subplot(grid[1, index])
    entries = summary["selection"][loss]
    scores = [entry["score"] for entry in entries]
    axis.plot(range(len(entries)), scores, marker="o", color=color[loss])
    chosen = [entry["point"] for entry in entries].index(
        summary["selected"][loss]) if entries else None
    if chosen is not None:
      axis.plot([chosen], [scores[chosen]], marker="*", markersize=14,
                color=color[loss], linestyle="none", label="selected")
      axis.legend(fontsize="small")
    axis.set_xticks(range(len(entries)),
                    [entry["name"].replace(",", "\n") for entry in entries],
                    fontsize="x-small")
    axis.set_title(f"{loss}: validation {select_by}"
                   + ("" if entries else " (one point, not selected)"),
                   fontsize="medium")
    axis.grid(alpha=0.3)
  _save_png(figure, out_png, dpi=100)
