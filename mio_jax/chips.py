"""The accelerator chips mio_jax knows: peak FLOP/s, HBM, bandwidth, layout.

One table for the whole project: the compile check (`mio_jax.aot`) takes
its roofline from it, and `benchmarks/accelerator.py` its MFU peak. Each
row names its source; a value quoted from memory rather than read from
that source in this repository's history is listed in the row's
`from_memory`.

Conventions:
  * Peak FLOP/s are dense (no sparsity), per chip, by the arithmetic the
    matmul units run: "bfloat16", "tfloat32" (NVIDIA's TensorFloat-32
    tensor cores) or "float32". Which one a float32 matmul runs depends on
    `jax_default_matmul_precision` (`matmul_peak` says which it counts
    against): on these NVIDIA GPUs TF32 unless the precision is the
    highest; on a TPU bfloat16 passes (one by default), with no float32
    peak of its own.
  * A device kind (`jax.Device.device_kind`) is matched whole, never by a
    part of it: an "NVIDIA L40S" is not an "NVIDIA L4", nor an "H100 PCIe"
    or "H100 NVL" (other clocks and memory) an "H100 80GB HBM3" (SXM). A
    kind not listed has no figures (`matmul_peak` refuses it) rather than
    a neighbour's.
  * A "chip" is what JAX shows as one device on TPU v5e/v6e and on a GPU,
    and on TPU v4/v5p in megacore mode (two TensorCores as one device,
    how JAX runs them by default).
  * `hbm_usable_gib` is what libtpu's compiler (libtpu 0.0.42.1) reports
    as "available HBM" when a program does not fit, measured by compiling
    a program too large for each chip (docs/performance.md, "Compiled for
    the TPU"); it differs from the documented capacity by up to 1.3 GiB
    (below it on v4, v5e and v6e, above the rounded 95 GiB of v5p).
"""
import dataclasses
from typing import Mapping, Optional


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip's figures."""
  name: str  # as the docs call it, e.g. "TPU v5e"
  # `jax.Device.device_kind`s (lowercase, whole) that mean this chip.
  device_kinds: tuple[str, ...]
  peak_tflops: Mapping[str, float]  # dense, per chip, by matmul arithmetic
  hbm_gib: float  # documented HBM capacity per chip
  hbm_gb_per_s: float  # documented HBM bandwidth per chip (1e9 B/s)
  cores_per_chip: int  # TensorCores (TPU); 1 for a GPU
  source: str
  hbm_usable_gib: Optional[float] = None  # the compiler's limit (TPU)
  from_memory: tuple[str, ...] = ()  # fields not checked against `source`

  def peak_flops(self, arithmetic: str = "bfloat16") -> float:
    """Peak FLOP/s of one chip's matmuls in `arithmetic` (KeyError if none)."""
    return 1e12 * self.peak_tflops[arithmetic]

  @property
  def hbm_limit_gib(self) -> float:
    """What one program may use: the compiler's limit, else the capacity."""
    return self.hbm_usable_gib or self.hbm_gib

  @property
  def hbm_bytes_per_s(self) -> float:
    return 1e9 * self.hbm_gb_per_s


CHIPS: tuple[Chip, ...] = (
    Chip("TPU v6e", ("tpu v6 lite", "tpu v6e"), {"bfloat16": 918.0},
         hbm_gib=32, hbm_gb_per_s=1640, cores_per_chip=1,
         hbm_usable_gib=31.25,
         # An older copy of the same page gives 1600 GBps.
         source="https://cloud.google.com/tpu/docs/v6e"),
    Chip("TPU v5e", ("tpu v5 lite", "tpu v5e"), {"bfloat16": 197.0},
         hbm_gib=16, hbm_gb_per_s=819, cores_per_chip=1,
         hbm_usable_gib=15.75, source="https://cloud.google.com/tpu/docs/v5e"),
    Chip("TPU v5p", ("tpu v5p", "tpu v5"), {"bfloat16": 459.0},
         hbm_gib=95, hbm_gb_per_s=2765, cores_per_chip=2,
         hbm_usable_gib=95.74,
         # Read on its copy at docs.cloud.google.com/tpu/docs/v5p-training.
         source="https://cloud.google.com/tpu/docs/v5p"),
    Chip("TPU v4", ("tpu v4",), {"bfloat16": 275.0}, hbm_gib=32,
         hbm_gb_per_s=1200, cores_per_chip=2,
         hbm_usable_gib=30.75, source="https://cloud.google.com/tpu/docs/v4"),
    Chip("NVIDIA H200", ("nvidia h200",),
         {"bfloat16": 989.0, "tfloat32": 494.5, "float32": 67.0},
         hbm_gib=141, hbm_gb_per_s=4800, cores_per_chip=1,
         source="NVIDIA H200 data sheet (same SMs as H100 SXM)",
         from_memory=("peak_tflops", "hbm_gib", "hbm_gb_per_s")),
    Chip("NVIDIA H100 SXM", ("nvidia h100 80gb hbm3",),
         {"bfloat16": 989.0, "tfloat32": 494.5, "float32": 67.0},
         hbm_gib=80, hbm_gb_per_s=3350, cores_per_chip=1,
         source="NVIDIA H100 data sheet (SXM5; 1,979 TFLOP/s bf16 is with "
         "sparsity, 989 TF32)", from_memory=("peak_tflops", "hbm_gib", "hbm_gb_per_s")),
    Chip("NVIDIA A100", ("nvidia a100-sxm4-80gb",),
         {"bfloat16": 312.0, "tfloat32": 156.0, "float32": 19.5},
         hbm_gib=80, hbm_gb_per_s=2039, cores_per_chip=1,
         source="NVIDIA A100 data sheet (SXM 80 GB)",
         from_memory=("peak_tflops", "hbm_gib", "hbm_gb_per_s")),
    Chip("NVIDIA L4", ("nvidia l4",),
         {"bfloat16": 121.0, "tfloat32": 60.0, "float32": 30.3},
         hbm_gib=24, hbm_gb_per_s=300, cores_per_chip=1,
         source="NVIDIA L4 data sheet",
         from_memory=("peak_tflops", "hbm_gib", "hbm_gb_per_s")),
)


def find(device_kind: str) -> Optional[Chip]:
  """The chip whose device kind `device_kind` is (jax's, whole), or None."""
  kind = device_kind.strip().lower()
  for chip in CHIPS:
    if kind in chip.device_kinds:
      return chip
  return None


def by_name(name: str) -> Chip:
  """The chip called `name` (e.g. "TPU v4"); KeyError if there is none."""
  for chip in CHIPS:
    if chip.name == name:
      return chip
  raise KeyError(f"no chip {name!r}; known: "
                 f"{', '.join(c.name for c in CHIPS)}")


class PeakUnknownError(LookupError):
  """No peak to measure a model FLOP utilisation (MFU) against."""


@dataclasses.dataclass(frozen=True)
class MatmulPeak:
  """The peak a chip's matmuls reach, and the arithmetic they run in."""
  flops: float  # FLOP/s of one chip
  arithmetic: str  # "bfloat16", "tfloat32" or "float32": what MFU is against


# The arithmetic of a float32 matmul at each `jax_default_matmul_precision`
# (None: not set), from `jax.lax.Precision`'s documentation. GPUs with TF32
# tensor cores use them unless the precision is the highest; a TPU runs 1,
# 3 or 6 bfloat16 passes, which only the default makes a bfloat16 peak.
_GPU_FLOAT32_MATMUL = {
    None: "tfloat32", "default": "tfloat32", "fastest": "tfloat32",
    "bfloat16": "tfloat32", "high": "tfloat32", "tensorfloat32": "tfloat32",
    "highest": "float32", "float32": "float32"}
_TPU_FLOAT32_MATMUL = {
    None: "bfloat16", "default": "bfloat16", "fastest": "bfloat16",
    "bfloat16": "bfloat16"}


def matmul_peak(device_kind: str, dtype: str = "bfloat16",
                matmul_precision: Optional[str] = None) -> MatmulPeak:
  """The peak of one chip of `device_kind` for matmuls of `dtype` operands.

  matmul_precision: `jax.config.jax_default_matmul_precision` of the
  program measured (float32 only). Raises PeakUnknownError ("unknown
  chip, MFU not reported") for a device kind not in `CHIPS`, or a dtype or
  precision whose arithmetic has no peak here.
  """
  chip = find(device_kind)
  if chip is None:
    raise PeakUnknownError(
        f"unknown chip {device_kind!r}, MFU not reported (mio_jax.chips "
        f"knows {', '.join(c.name for c in CHIPS)})")
  if dtype == "bfloat16":
    arithmetic = "bfloat16"
  elif dtype == "float32":
    floats = (_GPU_FLOAT32_MATMUL if "tfloat32" in chip.peak_tflops
              else _TPU_FLOAT32_MATMUL)
    precision = (None if matmul_precision is None
                 else str(matmul_precision).lower())
    if precision not in floats:
      raise PeakUnknownError(
          f"float32 matmuls at jax_default_matmul_precision="
          f"{matmul_precision!r} have no peak on {chip.name}, MFU not "
          "reported")
    arithmetic = floats[precision]
  else:
    raise PeakUnknownError(
        f"no {dtype} matmul peak on {chip.name}, MFU not reported")
  return MatmulPeak(chip.peak_flops(arithmetic), arithmetic)
