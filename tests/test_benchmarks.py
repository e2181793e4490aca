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

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
COMMON_FIELDS = {"benchmark", "load_avg_1m", "cpu_count", "backend"}


def test_cpu_convolutions_are_not_handed_to_ynnpack():
  # mio_jax sets CPU_CONVOLUTION_FLAG at import (docs/performance.md): a
  # ResNet-sized convolution would otherwise become a "__ynn_fusion".
  assert mio_jax.CPU_CONVOLUTION_FLAG in os.environ["XLA_FLAGS"]
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  hlo = conv.lower(jax.ShapeDtypeStruct((64, 32, 32, 64), jnp.float32),
                   jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.float32)
                  ).compile().as_text()
  assert "convolution(" in hlo and "__ynn_fusion" not in hlo


def _run(script: str, *args: str) -> list[dict]:
  """Runs benchmarks/<script> and parses every stdout line as JSON."""
  result = subprocess.run(
      [sys.executable, str(BENCHMARKS / script), *args], capture_output=True,
      text=True, timeout=300, env=dict(os.environ), check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line for line in result.stdout.splitlines() if line.strip()]
  assert lines, result.stderr[-3000:]
  records = [json.loads(line) for line in lines]  # fails on any non-JSON line
  for record in records:
    assert COMMON_FIELDS <= record.keys(), record
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
  # The FLOP count is per image: the same program on 1 or 2 devices.
  assert steps[0]["gflop_per_image"] == pytest.approx(
      steps[1]["gflop_per_image"], rel=0.05)


def test_loss_benchmark_quick():
  records = _run("loss.py", "--quick")
  *measurements, summary = records
  forms = {(r["n"], r["form"]) for r in measurements}
  assert forms == {(64, "dense"), (64, "chunked"), (128, "dense"),
                   (128, "chunked")}
  for record in measurements:
    assert record["benchmark"] == "loss_forward_backward"
    assert record["time_ms"] > 0 and record["peak_mib"] > 0
  dense = {r["n"]: r["peak_mib"] for r in measurements if r["form"] == "dense"}
  chunked = {r["n"]: r["peak_mib"] for r in measurements
             if r["form"] == "chunked"}
  assert chunked[128] < dense[128]  # the point of chunking
  assert summary["benchmark"] == "loss_memory_budget"
  assert summary["first_n_dense_over_budget"] == 128
  assert summary["chunked_within_budget_at_that_n"]


@pytest.mark.slow
def test_input_pipeline_benchmark_small():
  records = _run("input_pipeline.py", "--steps=2", "--warmup=1",
                 "--sizes=32")
  assert {r["stage"] for r in records} == {"host", "device"}
  assert all(r["images_per_s"] > 0 for r in records)
