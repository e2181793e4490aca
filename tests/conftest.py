"""Test environment: 8 fake CPU devices, CPU only, quiet TensorFlow.

These must be set before JAX or TensorFlow are imported anywhere, which is
why they live at the top of conftest.py. The compiler settings (and why)
are in child_env.py, which subprocess-starting tests share.
"""
import atexit
import os
import pathlib
import shutil
import sys
import tempfile

# Shared test helpers (pretrain_runner, multiprocess_runner, child_env) live
# in tests/; tests in its subfolders import them by name.
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import child_env  # pylint: disable=g-import-not-at-top,wrong-import-position

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " " + child_env.xla_flags(8)).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# One fresh compilation cache per session, removed at its end. pytest-xdist
# workers inherit the controller's folder (PYTEST_XDIST_WORKER is set in
# them), so they share it too.
if "PYTEST_XDIST_WORKER" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="mio_jax_test_compilation_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.update(child_env.COMPILATION_CACHE)
