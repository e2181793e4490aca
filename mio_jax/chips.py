"""The accelerator chips mio_jax knows: peak FLOP/s, HBM, bandwidth, layout.

One table for the whole project: the compile check (`mio_jax.aot`) takes
its roofline from it, and `benchmarks/accelerator.py` its MFU peak. Each
row names its source; a value quoted from memory rather than read from
that source in this repository's history is listed in the row's
`from_memory`.

Conventions:
  * Peak FLOP/s are dense (no sparsity), per chip, by compute dtype.
    float32 on a TPU runs as several bfloat16 passes and has no published
    peak: `peak_flops` gives bfloat16's for it.
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
  # Lowercase substrings of `jax.Device.device_kind` that mean this chip.
  device_kinds: tuple[str, ...]
  peak_tflops: Mapping[str, float]  # dense, per chip, by compute dtype
  hbm_gib: float  # documented HBM capacity per chip
  hbm_gb_per_s: float  # documented HBM bandwidth per chip (1e9 B/s)
  cores_per_chip: int  # TensorCores (TPU); 1 for a GPU
  source: str
  hbm_usable_gib: Optional[float] = None  # the compiler's limit (TPU)
  from_memory: tuple[str, ...] = ()  # fields not checked against `source`

  def peak_flops(self, dtype: str = "bfloat16") -> float:
    """Peak FLOP/s of one chip for `dtype` (bfloat16's when none is given)."""
    return 1e12 * self.peak_tflops.get(dtype, self.peak_tflops["bfloat16"])

  @property
  def hbm_limit_gib(self) -> float:
    """What one program may use: the compiler's limit, else the capacity."""
    return self.hbm_usable_gib or self.hbm_gib

  @property
  def hbm_bytes_per_s(self) -> float:
    return 1e9 * self.hbm_gb_per_s


# Matched in this order: more specific device kinds first ("TPU v5 lite"
# before "TPU v5", which is what a v5p reports).
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
    Chip("NVIDIA H200", ("h200",), {"bfloat16": 989.0, "float32": 67.0},
         hbm_gib=141, hbm_gb_per_s=4800, cores_per_chip=1,
         source="NVIDIA H200 data sheet (same SMs as H100 SXM)",
         from_memory=("peak_tflops", "hbm_gib", "hbm_gb_per_s")),
    Chip("NVIDIA H100 SXM", ("h100",), {"bfloat16": 989.0, "float32": 67.0},
         hbm_gib=80, hbm_gb_per_s=3350, cores_per_chip=1,
         source="NVIDIA H100 data sheet (SXM5; 1,979 TFLOP/s bf16 is with "
         "sparsity)", from_memory=("peak_tflops", "hbm_gib", "hbm_gb_per_s")),
    Chip("NVIDIA A100", ("a100",), {"bfloat16": 312.0, "float32": 19.5},
         hbm_gib=80, hbm_gb_per_s=2039, cores_per_chip=1,
         source="NVIDIA A100 data sheet (SXM 80 GB)",
         from_memory=("peak_tflops", "hbm_gib", "hbm_gb_per_s")),
    Chip("NVIDIA L4", ("l4",), {"bfloat16": 121.0, "float32": 30.3},
         hbm_gib=24, hbm_gb_per_s=300, cores_per_chip=1,
         source="NVIDIA L4 data sheet",
         from_memory=("peak_tflops", "hbm_gib", "hbm_gb_per_s")),
)


def find(device_kind: str) -> Optional[Chip]:
  """The chip whose device kind `device_kind` is (jax's), or None."""
  kind = device_kind.lower()
  for chip in CHIPS:
    if any(key in kind for key in chip.device_kinds):
      return chip
  return None


def by_name(name: str) -> Chip:
  """The chip called `name` (e.g. "TPU v4"); KeyError if there is none."""
  for chip in CHIPS:
    if chip.name == name:
      return chip
  raise KeyError(f"no chip {name!r}; known: "
                 f"{', '.join(c.name for c in CHIPS)}")


def peak_flops(device_kind: str, dtype: str = "bfloat16") -> Optional[float]:
  """Peak FLOP/s of one chip of `device_kind` for `dtype`, None if unknown."""
  chip = find(device_kind)
  return None if chip is None else chip.peak_flops(dtype)
