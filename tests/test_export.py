import json

import jax
import numpy as np
import pytest

from mio_jax import export
from mio_jax import mesh as mesh_lib
from mio_jax import train
from pretrain_runner import (assert_trees_equal, open_checkpointer, tiny_config,
                             tiny_run)


@pytest.mark.parametrize("model", ["resnet_tiny", "vit_test"])
def test_export_and_load_back_the_backbone(tmp_path, model):
  config = tiny_config(model)
  state = jax.tree.map(lambda x: x + 1, train.init_state(tiny_run(model)))
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
  checkpointer.save(train.init_state(tiny_run()))
  checkpointer.close()
  out = str(tmp_path / "encoder.msgpack")
  export.export_encoder(str(tmp_path), config, out)
  other = tiny_config()
  other.model.width_multiplier = 1.0
  with pytest.raises(export.ExportError, match="model.width_multiplier=0.5"):
    export.encoder_variables(out, other, mesh_lib.make_data_mesh())
  with pytest.raises(export.ExportError, match="no exported encoder"):
    export.load_encoder(str(tmp_path / "missing.msgpack"))
