import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import child_env
from mio_jax import export
from mio_jax import mesh as mesh_lib
from mio_jax import pretraining
from pretrain_runner import (assert_trees_equal, open_checkpointer, tiny_config,
                             tiny_recipe)


@pytest.mark.parametrize("model", ["resnet_tiny", "vit_test"])
def test_export_and_load_back_the_backbone(tmp_path, model):
  config = tiny_config(model)
  state = jax.tree.map(lambda x: x + 1,
                       pretraining.init_state(tiny_recipe(model)))
  checkpointer = open_checkpointer(tmp_path, config)
  for step in (2, 4):
    checkpointer.save(state.replace(step=np.int32(step)))
  checkpointer.close()
  out = str(tmp_path / "exports" / "encoder.msgpack")

  description = export.export_encoder(str(tmp_path), config, out, step=2)
  assert description["step"] == 2 and description["model"]["name"] == model
  assert json.loads((tmp_path / "exports" / "encoder.msgpack.json").read_text()
                   ) == description
  loaded_description, backbone = export.load_encoder(out)
  assert loaded_description == description
  assert_trees_equal(backbone, {"params": state.params["backbone"],
                           "batch_stats": state.batch_stats["backbone"]})

  step, variables = export.encoder_variables(out, config,
                                             mesh_lib.make_data_mesh())
  assert step == 2
  assert_trees_equal(variables["params"]["backbone"], state.params["backbone"])
  assert_trees_equal(variables["batch_stats"]["backbone"],
                state.batch_stats["backbone"])
  assert all(x.sharding.is_fully_replicated
             for x in jax.tree.leaves(variables))


def test_an_export_of_another_network_is_refused(tmp_path):
  config = tiny_config()
  checkpointer = open_checkpointer(tmp_path, config)
  checkpointer.save(pretraining.init_state(tiny_recipe()))
  checkpointer.close()
  out = str(tmp_path / "encoder.msgpack")
  export.export_encoder(str(tmp_path), config, out)
  other = tiny_config()
  other.model.width_multiplier = 1.0
  with pytest.raises(export.ExportError, match="model.width_multiplier=0.5"):
    export.encoder_variables(out, other, mesh_lib.make_data_mesh())
  with pytest.raises(export.ExportError, match="no exported encoder"):
    export.load_encoder(str(tmp_path / "missing.msgpack"))


def _unwritable_outs(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  outs = {"under a file": str(blocker / "encoder.msgpack"),
          "in /proc": "/proc/encoder.msgpack"}
  if os.geteuid() != 0:  # root writes anywhere but in /proc
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    outs["in a read-only directory"] = str(read_only / "encoder.msgpack")
  return outs


def test_an_out_path_that_cannot_be_written_is_an_export_error(tmp_path):
  config = tiny_config()
  checkpointer = open_checkpointer(tmp_path, config)
  checkpointer.save(pretraining.init_state(tiny_recipe()))
  checkpointer.close()
  for where, out in _unwritable_outs(tmp_path).items():
    with pytest.raises(export.ExportError, match="cannot write the encoder"):
      export.export_encoder(str(tmp_path), config, out)
    assert not os.path.exists(out), where


def test_export_command_reports_an_unwritable_out_in_one_line(tmp_path):
  """Through the command, without --config: the workdir's recorded one."""
  checkpointer = open_checkpointer(tmp_path, tiny_config())
  checkpointer.save(pretraining.init_state(tiny_recipe()))
  checkpointer.close()
  out = "/proc/encoder.msgpack"
  result = subprocess.run(
      [sys.executable, "-m", "mio_jax.cli.export", f"--workdir={tmp_path}",
       f"--out={out}"], cwd=pathlib.Path(__file__).parents[1],
      env=child_env.child_env(1), capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and out in lines[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
