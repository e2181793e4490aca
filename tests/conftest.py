"""Test environment: 8 fake CPU devices, CPU only, quiet TensorFlow.

These must be set before JAX or TensorFlow are imported anywhere, which is
why they live at the top of conftest.py.
"""
import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# Shared test helpers (pretrain_runner, multiprocess_runner) live in tests/;
# tests in its subfolders import them by name.
sys.path.insert(0, str(pathlib.Path(__file__).parent))
