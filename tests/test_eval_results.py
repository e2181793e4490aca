"""eval_results.json keeps every protocol's result at every step."""
from mio_jax import eval_results

PROTOCOLS = ("knn", "fewshot", "feature_probe", "linear_eval", "finetune")


def test_results_of_other_protocols_and_steps_are_kept():
  first = eval_results.merge(None, 40, {"knn_top1": 0.9, "knn_top5": 1.0,
                                        "fewshot_top1": 0.7,
                                        "fewshot_top1_std": 0.1}, PROTOCOLS)
  assert first == {"fewshot@step_40": {"top1": 0.7, "top1_std": 0.1},
                   "knn@step_40": {"top1": 0.9, "top5": 1.0}}
  second = eval_results.merge(first, 10, {"knn_top1": 0.5}, PROTOCOLS)
  third = eval_results.merge(second, 40, {"linear_eval_top1": 0.95},
                             PROTOCOLS)
  assert third == {**first, "knn@step_10": {"top1": 0.5},
                   "linear_eval@step_40": {"top1": 0.95}}


def test_a_rerun_replaces_only_its_own_entry():
  stored = {"knn@step_40": {"top1": 0.9, "top5": 1.0},
            "knn@step_10": {"top1": 0.5, "top5": 0.9}}
  merged = eval_results.merge(stored, 40, {"knn_top1": 0.8, "knn_top5": 0.99},
                              PROTOCOLS)
  assert merged == {"knn@step_10": {"top1": 0.5, "top5": 0.9},
                    "knn@step_40": {"top1": 0.8, "top5": 0.99}}


def test_entries_are_ordered_by_protocol_then_step_as_a_number():
  merged = None
  for step in (100, 20, 3):
    merged = eval_results.merge(merged, step, {"knn_top1": 0.5,
                                               "feature_probe_top1": 0.6},
                                PROTOCOLS)
  assert list(merged) == [
      "feature_probe@step_3", "feature_probe@step_20", "feature_probe@step_100",
      "knn@step_3", "knn@step_20", "knn@step_100"]


def test_an_earlier_builds_file_is_read_as_its_entries():
  earlier = {"step": 6, "feature_probe_top1": 0.9, "knn_top1": 0.8}
  merged = eval_results.merge(earlier, 8, {"knn_top1": 0.85}, PROTOCOLS)
  assert merged == {"feature_probe@step_6": {"top1": 0.9},
                    "knn@step_6": {"top1": 0.8}, "knn@step_8": {"top1": 0.85}}
