"""Figures of a run: training curves from metrics.jsonl, t-SNE of features.

Uses matplotlib's object API with the Agg canvas (`Figure.savefig`), so no
display and no global pyplot state are needed. Paths may be local or gs://
(read and written through tf.io.gfile, like the rest of the workdir).
"""
import io
import json
import math
from typing import Optional

from matplotlib.figure import Figure
import numpy as np
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from mio_jax.metric_logging import EVAL_PREFIX

# Panels of the training-curve figure: (title, metric names drawn in it).
# Names are those of the train step and losses.pair_metrics; a panel with
# none of its metrics in the file is left out.
TRAINING_PANELS = (
    ("loss", ("loss",)),
    ("learning rate", ("learning_rate",)),
    ("cosine similarity of pairs", ("pos_sim", "neg_sim")),
    ("pair classification accuracy",
     ("pair_accuracy", "pos_accuracy", "neg_accuracy")),
    ("mutual information estimate (nats)", ("mi_estimate",)),
    ("gradient norm", ("grad_norm",)),
    ("throughput (images/s)", ("images_per_sec",)),
)
# Metrics of the evaluation panel: results logged with this prefix by
# MetricLogger.log_eval, or by pretraining hooks (online kNN monitor), except
# standard deviations over trials, which are not accuracies.
ONLINE_PREFIX = "online_"


def read_metrics(metrics_jsonl_path: str) -> dict[str, tuple[np.ndarray,
                                                             np.ndarray]]:
  """{name: (steps, values)} sorted by step, from a metrics.jsonl file.

  A step logged twice (re-run after a resume from an older checkpoint) keeps
  its latest value.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  by_name: dict[str, dict[int, float]] = {}
  with tf.io.gfile.GFile(metrics_jsonl_path) as f:
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


def curve_panels(metric_names) -> list[tuple[str, list[str]]]:
  """(title, names) of the panels with at least one of `metric_names`."""
  panels = [(title, [n for n in names if n in metric_names])
            for title, names in TRAINING_PANELS]
  eval_names = sorted(
      n for n in metric_names if n.startswith((EVAL_PREFIX, ONLINE_PREFIX))
      and not n.endswith("_std"))
  panels.append(("evaluation", eval_names))
  return [(title, names) for title, names in panels if names]


def plot_training_curves(metrics_jsonl_path: str, out_png: str) -> None:
  """Loss, learning rate, pair metrics, throughput and eval results vs step."""
  metrics = read_metrics(metrics_jsonl_path)
  panels = curve_panels(metrics)
  if not panels:
    raise ValueError(f"{metrics_jsonl_path} holds no metrics to plot.")

  columns = min(2, len(panels))
  rows = math.ceil(len(panels) / columns)
  figure = Figure(figsize=(6 * columns, 3.5 * rows), layout="constrained")
  axes = figure.subplots(rows, columns, squeeze=False).ravel()
  for axis, (title, names) in zip(axes, panels):
    for name in names:
      steps, values = metrics[name]
      axis.plot(steps, values, marker="o" if len(steps) < 20 else None,
                label=name.removeprefix(EVAL_PREFIX))
    if title == "learning rate":
      axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axis.set_title(title)
    axis.set_xlabel("step")
    axis.grid(alpha=0.3)
    if len(names) > 1 or title == "evaluation":
      axis.legend(fontsize="small")
  for axis in axes[len(panels):]:
    axis.set_visible(False)
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


def _save_png(figure: Figure, out_png: str) -> None:
  """Renders to memory, then writes through tf.io.gfile (local or gs://)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100)
  with tf.io.gfile.GFile(out_png, "wb") as f:
    f.write(buffer.getvalue())
