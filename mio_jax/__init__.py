"""mio_jax: MIO self-supervised binary contrastive learning in JAX/Flax."""
import importlib.metadata
import os

# XLA:CPU in jaxlib 0.10 hands convolutions to YNNPACK ("ynn_fusion"). On
# the 2-core AVX-512 machine of docs/performance.md its 3x3 convolutions ran
# at 150 GFLOP/s forward and 35 GFLOP/s for the weight gradient, XLA's own
# (Eigen) convolutions at 280 and 134: the ResNet-18 train step is ~1.4x
# faster with this flag. It only affects the CPU backend and must be in
# XLA_FLAGS before JAX starts its backends, hence here, at package import.
# Set only for the jaxlib series where it was measured (an unknown XLA flag
# is a fatal error), and never over a value the user chose.
CPU_CONVOLUTION_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def _prefer_eigen_cpu_convolutions() -> None:
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in flags:
    return
  try:
    jaxlib_version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return
  if jaxlib_version.startswith("0.10."):
    os.environ["XLA_FLAGS"] = f"{flags} {CPU_CONVOLUTION_FLAG}".strip()


_prefer_eigen_cpu_convolutions()
