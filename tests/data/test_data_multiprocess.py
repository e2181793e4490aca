"""Two real JAX processes read the same global batches as one process.

Each process (2 CPU devices, gloo collectives) builds the digits pipeline
over a 4-device mesh and saves the rows its devices hold; together they must
equal the single-process (8-device) batch of the same step.
"""
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

import child_env
import mio_jax.data as data
from mio_jax import mesh as mesh_lib
from mio_jax.data import pipeline
from test_pipeline import digits_config

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_STEP = 3

# One process: its rows of pretraining step _STEP and of the first eval batch.
_PROCESS_SCRIPT = r"""
import sys
import jax
import numpy as np
process_id, port, data_dir, out = sys.argv[1:5]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                           num_processes=2, process_id=int(process_id))
import mio_jax.data as data
from mio_jax import mesh as mesh_lib
sys.path.insert(0, "tests/data")
from test_pipeline import digits_config
config = digits_config(data_dir)
mesh = mesh_lib.make_data_mesh()
assert mesh.size == 4 and jax.process_count() == 2
batches = {
    "pretrain": next(data.pretrain_batches(config, mesh, start_step=%d)),
    "eval": next(data.eval_batches(config, mesh, "test")),
}
saved = {}
for kind, batch in batches.items():
  for key, array in batch.items():
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start)
    saved[f"{kind}/{key}"] = np.concatenate(
        [np.asarray(s.data) for s in shards])
    saved[f"{kind}/{key}/start"] = shards[0].index[0].start
np.savez(out, **saved)
""" % _STEP


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_see_the_single_process_batches(tmp_path):
  data.prepare_digits(str(tmp_path))
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": child_env.xla_flags(2),
         "PYTHONPATH": str(_ROOT)}
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-c", _PROCESS_SCRIPT, str(i), str(port),
       str(tmp_path), str(tmp_path / f"p{i}.npz")],
      cwd=_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
           for i in range(2)]
  for proc in procs:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
  parts = [np.load(tmp_path / f"p{i}.npz") for i in range(2)]

  pipeline.load_source.cache_clear()
  config = digits_config(str(tmp_path))
  mesh = mesh_lib.make_data_mesh()  # 8 devices, one process
  reference = {
      "pretrain": next(data.pretrain_batches(config, mesh, start_step=_STEP)),
      "eval": next(data.eval_batches(config, mesh, "test")),
  }
  for kind, batch in reference.items():
    for key, array in batch.items():
      name = f"{kind}/{key}"
      assert [int(p[f"{name}/start"]) for p in parts] == [
          0, array.shape[0] // 2]
      np.testing.assert_array_equal(
          np.concatenate([p[name] for p in parts]), np.asarray(array),
          err_msg=name)
