"""The test suite's compiler settings, for this process and its subprocesses.

conftest.py applies them to the pytest process; a test that starts Python
subprocesses builds their environment with `child_env(num_devices)` so that
they compile the same way (and share the session's compilation cache).

Two settings, both about compile time, which is most of the suite's time
(a `resnet_tiny` step runs in ~10 ms and compiles in ~10 s):

- `--xla_backend_optimization_level=0`: LLVM code generation at -O0. The
  HLO passes (fusion, sharding, buffer assignment) are the same; only the
  machine code of the fused loops is less optimised. The weight init
  (threefry + erf_inv per parameter) compiled in 14 s at the default level
  and 2.7 s at 0, the train step in 11 s and 6 s, on 2 busy cores.
- the persistent compilation cache in one fresh folder per test session:
  programs that several tests (or subprocesses) build from equal Runs are
  compiled once. It starts empty, so a run of the suite times every compile
  it needs once.
"""
import os

XLA_TEST_FLAGS = "--xla_backend_optimization_level=0"
COMPILATION_CACHE = {
    # JAX_COMPILATION_CACHE_DIR is set by conftest.py (a fresh folder).
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


def xla_flags(num_devices: int) -> str:
  """XLA_FLAGS for `num_devices` fake CPU devices and the test settings."""
  return (f"--xla_force_host_platform_device_count={num_devices} "
          f"{XLA_TEST_FLAGS}")


def child_env(num_devices: int, **updates: str) -> dict[str, str]:
  """os.environ for a subprocess on `num_devices` fake CPU devices."""
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(num_devices),
             TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0")
  env.update(updates)
  return env
