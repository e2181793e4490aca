"""The chip table: a device kind is matched whole; MFU says its arithmetic."""
import pytest

from mio_jax import chips


@pytest.mark.parametrize("device_kind, name", [
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"),
    ("NVIDIA H200", "NVIDIA H200"),
    ("NVIDIA A100-SXM4-80GB", "NVIDIA A100"),
    ("NVIDIA L4", "NVIDIA L4"),
    ("TPU v5 lite", "TPU v5e"),
    ("TPU v5", "TPU v5p"),
    ("TPU v4", "TPU v4"),
])
def test_a_listed_device_kind_finds_its_chip(device_kind, name):
  assert chips.find(device_kind).name == name


@pytest.mark.parametrize("device_kind", [
    "NVIDIA L40S", "NVIDIA H100 PCIe", "NVIDIA H100 NVL",
    "NVIDIA GH200 480GB", "NVIDIA H200 NVL", "NVIDIA A100-PCIE-40GB", "cpu"])
def test_a_neighbours_device_kind_gets_no_figures(device_kind):
  # Each contains a listed chip's name (L4, H100, H200, A100) but has other
  # peaks or memory: no figures rather than the neighbour's.
  assert chips.find(device_kind) is None
  with pytest.raises(chips.PeakUnknownError,
                     match=f"unknown chip '{device_kind}', MFU not reported"):
    chips.matmul_peak(device_kind, "bfloat16")


@pytest.mark.parametrize("precision, arithmetic, tflops", [
    (None, "tfloat32", 494.5), ("default", "tfloat32", 494.5),
    ("tensorfloat32", "tfloat32", 494.5), ("highest", "float32", 67.0),
    ("float32", "float32", 67.0)])
def test_float32_on_a_gpu_counts_against_tf32_unless_the_highest(
    precision, arithmetic, tflops):
  peak = chips.matmul_peak("NVIDIA H100 80GB HBM3", "float32", precision)
  assert peak == chips.MatmulPeak(tflops * 1e12, arithmetic)


def test_float32_on_a_tpu_counts_against_bfloat16_at_the_default_only():
  assert chips.matmul_peak("TPU v4", "float32") == chips.MatmulPeak(
      275e12, "bfloat16")
  assert chips.matmul_peak("TPU v4", "bfloat16").arithmetic == "bfloat16"
  # 6 bfloat16 passes per matmul: no peak to hold it against.
  with pytest.raises(chips.PeakUnknownError, match="'highest'"):
    chips.matmul_peak("TPU v4", "float32", "highest")


def test_every_gpu_row_has_a_tf32_peak():
  for chip in chips.CHIPS:
    if chip.name.startswith("NVIDIA"):
      assert chip.peak_tflops["tfloat32"] > chip.peak_tflops["float32"]
