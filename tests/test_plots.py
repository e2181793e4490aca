"""Tests of the figures: they are written as non-empty PNG files."""
import json

import numpy as np
import pytest

from mio_jax import plots

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
  data = path.read_bytes()
  assert len(data) > 1000
  assert data.startswith(_PNG_SIGNATURE)


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_read_metrics_keeps_latest_value_of_a_rerun_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  _write_jsonl(path, [{"step": 2, "loss": 3.0}, {"step": 4, "loss": 2.0},
                      {"step": 3, "loss": 9.0},  # resumed from step 2
                      {"step": 4, "loss": 1.0, "eval/top1": 0.5}])
  metrics = plots.read_metrics(str(path))
  np.testing.assert_array_equal(metrics["loss"][0], [2, 3, 4])
  np.testing.assert_array_equal(metrics["loss"][1], [3.0, 9.0, 1.0])
  np.testing.assert_array_equal(metrics["eval/top1"][0], [4])


def _panels(metric_names):
  return {p.title: p for p in plots.curve_panels(metric_names)}


def test_curve_panels_group_metrics():
  panels = _panels(
      {"loss", "pos_sim", "neg_sim", "grad_norm", "eval/knn_top1",
       "eval/fewshot_top1_std", "online_knn_top1", "unplotted"})
  assert {title: p.names for title, p in panels.items()} == {
      "loss": ("loss",), "cosine similarity of pairs": ("pos_sim", "neg_sim"),
      "gradient norm": ("grad_norm",),
      "evaluation (test split)": ("eval/knn_top1", "online_knn_top1")}


def test_each_panel_holds_one_quantity_and_accuracies_span_0_to_1():
  """The online probe's loss (about 2.5) is not drawn on an accuracy axis."""
  panels = _panels({"loss", "online_probe_loss", "online_probe_top1",
                    "online_knn_top1", "pair_accuracy", "eval/knn_top1"})
  assert panels["online_probe: loss (cross-entropy)"].names == (
      "online_probe_loss",)
  assert panels["online_probe: accuracy"].names == ("online_probe_top1",)
  assert panels["evaluation (test split)"].names == ("eval/knn_top1",
                                                    "online_knn_top1")
  for panel in panels.values():
    assert panel.fraction == panel.names[0].endswith(("top1", "accuracy"))
    assert all(n.endswith("loss") for n in panel.names) == (
        panel.ylabel == "loss")


def test_the_trained_protocols_curves_are_plotted_in_their_workdir():
  finetune = _panels({"finetune_loss", "finetune_learning_rate",
                      "finetune_grad_norm", "finetune_images_per_sec",
                      "finetune_params_finite", "eval/finetune_top1"})
  assert {title: p.names for title, p in finetune.items()} == {
      "finetune: loss (cross-entropy)": ("finetune_loss",),
      "finetune: learning rate": ("finetune_learning_rate",),
      "finetune: gradient norm": ("finetune_grad_norm",),
      "finetune: throughput": ("finetune_images_per_sec",),
      "evaluation (test split)": ("eval/finetune_top1",)}
  assert finetune["finetune: learning rate"].xlabel == "finetune step"
  # The public code's recipe also logs a validation split.
  linear = _panels({"linear_eval_loss", "linear_eval_val_loss",
                    "linear_eval_val_top1", "eval/linear_eval_top1"})
  assert linear["linear_eval: loss (cross-entropy)"].names == (
      "linear_eval_loss", "linear_eval_val_loss")
  assert linear["linear_eval: accuracy"].names == ("linear_eval_val_top1",)
  assert linear["evaluation (test split)"].names == ("eval/linear_eval_top1",)


def test_legends_lie_below_their_axes_not_over_the_curves():
  steps = np.arange(1, 11)
  metrics = {name: (steps, np.linspace(0.1, 0.9, 10)) for name in
             ("pos_sim", "neg_sim", "eval/knn_top1", "eval/knn_top5")}
  figure = plots.training_curves_figure(metrics)
  figure.draw_without_rendering()
  legends = 0
  for axis in figure.axes:
    legend = axis.get_legend()
    if legend is not None:
      legends += 1
      assert legend.get_window_extent().y1 <= axis.get_window_extent().y0
  assert legends == 2


def test_plot_training_curves_writes_png(tmp_path):
  path = tmp_path / "metrics.jsonl"
  records = [{"step": s, "loss": 5.0 / s, "learning_rate": 0.1 * s,
              "pos_sim": 0.5, "neg_sim": 0.0, "pair_accuracy": 0.9,
              "mi_estimate": 1.0, "images_per_sec": float("nan") if s == 1
              else 100.0} for s in range(1, 30)]
  records.append({"step": 29, "eval/knn_top1": 0.8, "eval/fewshot_top1_std": 0.1})
  records.append({"step": 20, "online_knn_top1": 0.7})
  _write_jsonl(path, records)
  out = tmp_path / "curves.png"
  plots.plot_training_curves(str(path), str(out))
  _assert_png(out)


def test_plot_training_curves_rejects_empty_file(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("")
  with pytest.raises(ValueError, match="no metrics"):
    plots.plot_training_curves(str(path), str(tmp_path / "x.png"))


def test_plot_embedding_writes_png(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 40)
  features = rng.normal(size=(120, 8)) + 3 * np.eye(8)[labels]
  out = tmp_path / "tsne.png"
  plots.plot_embedding(features, labels, str(out), max_points=60, seed=0)
  _assert_png(out)
