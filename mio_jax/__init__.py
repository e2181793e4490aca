"""mio_jax: MIO self-supervised binary contrastive learning in JAX/Flax."""
import importlib.metadata
import os

# XLA:CPU in jaxlib 0.10 hands large convolutions to YNNPACK. On the 2-core
# AVX-512 machine of docs/performance.md its 3x3 convolutions ran at 150
# GFLOP/s forward and 35 for the weight gradient, XLA's own (Eigen) ones at
# 280 and 134. The weight-gradient convolutions read activations transposed,
# and XLA fuses the BatchNorm/ReLU/residual chain that produced them into
# that transpose (8x slower than the plain transpose); YNNPACK elementwise
# fusions keep that chain out of it. Together: ResNet-18 train step ~1.4x
# faster, ResNet-50 ~1.5x. CPU backend only; must be in XLA_FLAGS before JAX
# starts its backends, hence here, at package import. Set only for the
# jaxlib series where it was measured (XLA aborts on an unknown flag), and
# never over a value the user chose.
CPU_FUSION_FLAG = (
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,+eltwise")


def _set_cpu_fusion_flag() -> None:
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in flags:
    return
  try:
    jaxlib_version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return
  if jaxlib_version.startswith("0.10."):
    os.environ["XLA_FLAGS"] = f"{flags} {CPU_FUSION_FLAG}".strip()


_set_cpu_fusion_flag()
