"""What the compile check lowers is the very step `main` trains (STYLE 18).

For each training, `experiment.train_and_evaluate` is run on 8 px digits
until it hands its `loop.Training` to the loop; there the step is lowered
on what the loop would feed it (the initial state, the constants, the data
pipeline's first batch) and compared with the program `aot.programs`
builds for the same config, which the TPU compile check compiles.
"""
import jax
import pytest

from evaluation.eval_data import random_variables
from mio_jax import config_base
from mio_jax import data
from mio_jax import encoder_sources
from mio_jax import experiment
from mio_jax import loop
from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax.aot import programs


class _Handed(Exception):
  """Raised by the spy once the loop was given its Training."""

  def __init__(self, training):
    super().__init__()
    self.training = training


def _tiny_digits(data_dir, mode):
  c = config_base.base_config()
  c.mode = mode
  c.dataset.data_dir = str(data_dir)
  c.dataset.image_size = 8
  c.dataset.prefetch = 1
  c.model.name = "resnet_tiny"
  c.model.width_multiplier = 0.25
  c.model.projector_hidden_dim = 16
  c.model.projector_output_dim = 8
  c.batch_size = 32
  c.total_steps = 3
  c.linear_eval.batch_size = 64
  c.finetune.batch_size = 32
  # A subset whose size the compile check knows without reading labels
  # (a label fraction's stratified subset rounds per class).
  c.finetune.labels_per_class = 10
  return c


def _lowered_by_main(config, workdir, monkeypatch):
  """The step `main` trains, lowered on the arguments the loop gives it."""

  def spy(training, **kwargs):
    del kwargs
    raise _Handed(training)

  monkeypatch.setattr(loop, "train", spy)
  mesh = mesh_lib.make_data_mesh()
  variables = jax.device_put(
      random_variables(models.build_model(config.model), image_size=8, seed=0),
      mesh_lib.replicated_sharding(mesh))
  monkeypatch.setattr(
      experiment.encoder_sources, "load_encoder",
      lambda source, config, mesh: encoder_sources.LoadedEncoder(
          source, 3, variables))
  with pytest.raises(_Handed) as handed:
    experiment.train_and_evaluate(config, str(workdir))
  training = handed.value.training
  batch = next(training.batches(0))
  return training, training.step.lower(training.initial_state(),
                                       *training.constants, batch)


@pytest.mark.parametrize("mode,program", [("pretrain", "pretrain"),
                                          ("linear_eval", "linear_eval"),
                                          ("finetune", "finetune")])
def test_the_compile_check_lowers_the_step_main_trains(mode, program,
                                                       tmp_path, monkeypatch):
  config = _tiny_digits(tmp_path / "tfds", mode)
  training, by_main = _lowered_by_main(config, tmp_path / "run", monkeypatch)
  checked = programs.build(program, config, training.mesh,
                           data.dataset_info(config))
  assert checked.steps == training.num_steps
  assert checked.lower().as_text() == by_main.as_text()
