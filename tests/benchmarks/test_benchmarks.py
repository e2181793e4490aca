"""Each benchmark script runs in quick mode and prints JSON lines with its fields."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import mio_jax

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
COMMON_FIELDS = frozenset({"benchmark", "load_avg_1m", "cpu_count", "backend"})


def test_cpu_convolutions_are_not_handed_to_ynnpack():
  # mio_jax sets CPU_FUSION_FLAG at import (docs/performance.md): a
  # ResNet-sized convolution would otherwise become a "__ynn_fusion".
  assert mio_jax.CPU_FUSION_FLAG in os.environ["XLA_FLAGS"]
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  hlo = conv.lower(jax.ShapeDtypeStruct((64, 32, 32, 64), jnp.float32),
                   jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32)
                  ).compile().as_text()
  assert "convolution(" in hlo and "__ynn_fusion" not in hlo


def test_elementwise_chain_is_not_fused_into_a_transpose():
  # What the "+eltwise" part of CPU_FUSION_FLAG is for: the chain goes to a
  # YNNPACK fusion and the transpose only copies (8x faster here).
  def chain_then_transpose(a, b):
    return jnp.transpose(jax.nn.relu(a * 2.0 + b), (3, 1, 2, 0))
  spec = jax.ShapeDtypeStruct((64, 32, 32, 64), jnp.float32)
  hlo = jax.jit(chain_then_transpose).lower(spec, spec).compile().as_text()
  assert "__ynn_fusion" in hlo, hlo


def _run(script: str, *args: str,
         fields: frozenset = COMMON_FIELDS) -> list[dict]:
  """Runs benchmarks/<script>; every stdout line must be JSON with `fields`."""
  result = subprocess.run(
      [sys.executable, str(BENCHMARKS / script), *args], capture_output=True,
      text=True, timeout=300, env=dict(os.environ), check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line for line in result.stdout.splitlines() if line.strip()]
  assert lines, result.stderr[-3000:]
  records = [json.loads(line) for line in lines]  # fails on any non-JSON line
  for record in records:
    assert fields <= record.keys(), record
  return records


def test_train_step_benchmark_quick():
  records = _run("train_step.py", "--quick", "--devices=1,2")
  peak, *steps = records
  assert peak["benchmark"] == "matmul_peak" and peak["gflop_per_s"] > 0
  assert [r["devices"] for r in steps] == [1, 2]
  for record in steps:
    assert record["benchmark"] == "train_step"
    assert record["images_per_s"] > 0 and record["step_s"] > 0
    assert record["gflop_per_image"] > 0
    assert 0 < record["fraction_of_matmul_peak"] < 2
    # What benchmarks/accelerator.py sets beside the chip's bandwidth.
    assert record["bytes_accessed_per_device"] > 0
  # The step's FLOPs hardly depend on the device count: the per-device
  # program's count times the devices (the replicated optimizer update is
  # counted once per device, a few percent for this tiny model).
  assert steps[0]["flops_per_step"] == pytest.approx(
      steps[1]["flops_per_step"], rel=0.15)


def test_loss_benchmark_quick():
  records = _run("loss.py", "--quick")
  *measurements, summary = records
  forms = {(r["n"], r["form"]) for r in measurements}
  assert forms == {(128, "dense"), (128, "chunked"), (512, "dense"),
                   (512, "chunked")}
  for record in measurements:
    assert record["benchmark"] == "loss_forward_backward"
    assert record["time_ms"] > 0 and record["peak_mib"] > 0
  dense = {r["n"]: r["peak_mib"] for r in measurements if r["form"] == "dense"}
  chunked = {r["n"]: r["peak_mib"] for r in measurements
             if r["form"] == "chunked"}
  assert chunked[512] < dense[512] / 2  # the point of chunking
  assert summary["benchmark"] == "loss_memory_budget"
  assert summary["first_n_dense_over_budget"] == 512
  assert summary["chunked_within_budget_at_that_n"]


def test_loss_benchmark_times_the_split_loss_on_devices():
  records = _run("loss.py", "--sizes=64", "--block_size=16", "--repeats=1",
                 "--devices=2")
  *measurements, _ = records
  assert {(r["form"], r["anchors"]) for r in measurements} == {
      (form, anchors) for form in ("dense", "chunked")
      for anchors in ("jit_sharded", "split")}
  for record in measurements:
    assert record["devices"] == 2
    assert record["time_ms"] > 0 and record["peak_mib"] > 0


def test_conv_benchmark_quick():
  records = _run("conv.py", "--quick")
  assert [r["part"] for r in records] == ["forward", "input_gradient",
                                          "weight_gradient"]
  for record in records:
    assert record["benchmark"] == "conv3x3" and record["gflop_per_s"] > 0
    assert record["ynnpack_fusion"] is False  # mio_jax's XLA:CPU setting


def test_step_profile_quick_accounts_for_the_step():
  records = _run("step_profile.py", "--quick")
  classes = [r for r in records if "op" not in r and "output_shape" not in r]
  kinds = {r["op_class"] for r in classes}
  assert {"conv forward", "conv input gradient",
          "conv weight gradient"} <= kinds, kinds
  assert sum(r["ms"] for r in classes) == pytest.approx(
      classes[0]["sum_of_ops_ms"], abs=0.1 * len(classes))
  # One thread: the ops' own times are most of the step (the rest is the
  # executor between them).
  assert 0.3 * classes[0]["step_ms"] < classes[0]["sum_of_ops_ms"]
  # The ops' events and the executor's wait are timed apart: on a loaded
  # machine (two test workers on two cores) the ops' sum came to 1.06x a
  # 3 ms step once (0.47-0.95x in eight runs beside two busy loops).
  assert classes[0]["sum_of_ops_ms"] <= 1.2 * classes[0]["step_ms"]
  for record in records:
    if (record["op_class"].startswith("conv ") and "output_shape" in record
        and "op" not in record):
      assert record["gflop_per_s"] > 0


def test_step_profile_finds_every_weight_gradient():
  # Also where a map is smaller than a 3x3 window (resnet_tiny at 4 px
  # reaches 1x1): one weight gradient per forward convolution.
  records = _run("step_profile.py", "--quick", "--image_size=4")
  ops = {r["op_class"]: r["ops"] for r in records
         if "op" not in r and "output_shape" not in r}
  assert ops["conv weight gradient"] == ops["conv forward"], ops


def test_input_pipeline_benchmark_small():
  records = _run("input_pipeline.py", "--quick", "--sizes=32")
  assert [(r["mode"], r["stage"]) for r in records] == [
      ("host_colour", "host"), ("host_colour", "device"),
      ("on_device", "host"), ("on_device", "device"),
      ("on_device", "device_augment")]
  for record in records:
    assert record["benchmark"] == "pretrain_input_pipeline"
    assert record["images_per_s"] > 0 and record["images_per_cpu_s"] > 0


@pytest.mark.slow
def test_input_pipeline_benchmark_reads_jpeg_array_records():
  records = _run("input_pipeline.py", "--quick", "--sizes=224",
                 "--modes=on_device")
  assert [r["stage"] for r in records] == ["host", "device", "device_augment"]
  assert all("ArrayRecord" in r["data"] and r["images_per_s"] > 0
             for r in records)


@pytest.mark.slow  # four processes compiling: about 3.5 minutes on 2 busy cores
def test_accelerator_check_writes_one_json_in_quick_mode(tmp_path):
  out = tmp_path / "accelerator.json"
  result = subprocess.run(
      [sys.executable, str(BENCHMARKS / "accelerator.py"), "--quick",
       f"--out={out}"], capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["device"]["platform"] == "cpu"
  assert [p["status"] for p in report["parts"]] == ["ok"] * len(report["parts"])
  steps = [r for p in report["parts"] for r in p["records"]
           if r.get("benchmark") == "train_step"]
  assert {r["dtype"] for r in steps} == {"bfloat16", "float32"}
  for record in steps:
    assert record["achieved_tflop_per_s"] > 0
    assert record["mfu"] is None  # a CPU has no entry in mio_jax.chips
    assert "unknown chip 'cpu', MFU not reported" in record["mfu_not_reported"]
  assert any(r.get("benchmark", "").endswith("input_pipeline")
             for p in report["parts"] for r in p["records"])


def _accelerator_module():
  sys.path.insert(0, str(BENCHMARKS))
  try:
    import accelerator  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(BENCHMARKS))
  return accelerator


def _step_record(dtype, matmul_precision=None):
  return {"benchmark": "train_step", "dtype": dtype, "devices": 2,
          "flops_per_step": 2 * 49.45e12, "step_s": 1.0,
          "matmul_precision": matmul_precision}


def test_mfu_says_which_arithmetic_it_is_against():
  accelerator = _accelerator_module()
  records = [_step_record("bfloat16"), _step_record("float32"),
             _step_record("float32", "highest")]
  accelerator._with_mfu(records, "NVIDIA H100 80GB HBM3")
  assert [(r["mfu_against"], r["mfu"]) for r in records] == [
      ("bfloat16", 0.05), ("tfloat32", 0.1), ("float32", 0.7381)]
  assert records[1]["peak_tflop_per_s"] == 2 * 494.5


def test_mfu_of_an_unknown_chip_is_not_reported():
  accelerator = _accelerator_module()
  records = [_step_record("bfloat16")]
  accelerator._with_mfu(records, "NVIDIA L40S")
  assert records[0]["mfu"] is None and "mfu_against" not in records[0]
  assert records[0]["mfu_not_reported"].startswith(
      "unknown chip 'NVIDIA L40S', MFU not reported")
