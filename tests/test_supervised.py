"""Augmented linear evaluation and fine-tuning (mio_jax/supervised/) on digits."""
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evaluation.eval_data import random_variables
import tiny
from mio_jax import checkpointing
from mio_jax import config_base
from mio_jax import encoder_sources
from mio_jax import errors
from mio_jax import experiment
from mio_jax import loop
from mio_jax import mesh as mesh_lib
from mio_jax import models
from mio_jax import supervised
from mio_jax.supervised import early_stopping
from mio_jax.supervised import task as task_lib
from mio_jax import pretraining
from mio_jax import resume_guard
from mio_jax import data


def tiny_config(data_dir) -> "config_base.ml_collections.ConfigDict":
  """resnet_tiny on 8 px digits; fine-tuning on 10% of the labels (149)."""
  c = tiny.tiny_config(**{
      "dataset.data_dir": str(data_dir), "dataset.prefetch": 1,
      "model.projector_hidden_dim": 16, "model.projector_output_dim": 8})
  c.eval.batch_size = 304  # the 297 test images in one padded batch
  c.linear_eval.batch_size = 64
  c.linear_eval.epochs = 0.2  # 23 steps per epoch: 5 steps
  c.finetune.batch_size = 32  # 4 steps per epoch of the 149 labelled images
  c.finetune.epochs = 1.5  # 7 steps: 149 * 1.5 // 32 + 1
  c.log_every_steps = 2
  c.checkpoint_every_steps = 2
  c.keep_checkpoints = 5
  return c


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config = tiny_config(tmp_path_factory.mktemp("tfds"))
  mesh = mesh_lib.make_data_mesh()
  model = models.build_model(config.model)
  variables = jax.device_put(random_variables(model, image_size=8, seed=0),
                             mesh_lib.replicated_sharding(mesh))
  return config, mesh, variables


class ListLogger:
  """Keeps what the loop logs; raises at `crash_at` (a simulated crash)."""

  def __init__(self, crash_at=None):
    self.lines, self.crash_at = [], crash_at
    self.started = []

  def start(self, name, total_steps):
    self.started.append((name, total_steps))

  def log(self, step, metrics):
    self.lines.append((step, dict(metrics)))
    if step == self.crash_at:
      raise RuntimeError("crash")

  def close(self):
    pass


def _encoder(variables, step=7,
             source=encoder_sources.EncoderSource(encoder_sources.RANDOM)):
  return encoder_sources.LoadedEncoder(source, step, variables)


def test_linear_eval_trains_the_head_only_and_reports_top1_top5(setup,
                                                                tmp_path):
  config, mesh, variables = setup
  logger = ListLogger()
  step, results = supervised.linear_eval(config, str(tmp_path), mesh,
                                         _encoder(variables), logger=logger)
  assert step == 7  # the results belong to the encoder's step
  assert set(results) == {"linear_eval_top1", "linear_eval_top5"}
  assert 0.0 <= results["linear_eval_top1"] <= results["linear_eval_top5"] <= 1
  steps = [step for step, _ in logger.lines]
  assert steps == [2, 4, 5]  # SimCLR's count: 1500 * 0.2 // 64 + 1
  assert all(np.isfinite(m["linear_eval_loss"]) for _, m in logger.lines)
  assert logger.started == [("linear_eval", 5)]  # progress: step N/5, ETA
  digest = _encoder(variables).identity()["digest"]
  folder = tmp_path / "linear_eval" / f"random_{digest}"
  assert (folder / "checkpoints" / "5").exists()
  # Other variables are another encoder: a run of their own beside it.
  other = jax.tree.map(lambda x: x * 1.01, variables)
  supervised.linear_eval(config, str(tmp_path), mesh, _encoder(other),
                         logger=ListLogger())
  assert len(list((tmp_path / "linear_eval").iterdir())) == 2
  # The same variables reached by another path resume the finished head.
  moved = _encoder(variables, source=encoder_sources.EncoderSource(
      encoder_sources.FILE, "elsewhere"))
  assert supervised.linear_eval(config, str(tmp_path), mesh, moved,
                                logger=logger) == (step, results)
  # A head of other settings in the encoder's folder is refused, every
  # differing setting named.
  changed = config.copy_and_resolve_references()
  changed.linear_eval.base_lr = 0.5
  changed.linear_eval.momentum = 0.5
  with pytest.raises(checkpointing.CheckpointMismatchError) as err:
    supervised.linear_eval(changed, str(tmp_path), mesh, _encoder(variables),
                           logger=logger)
  assert "config.linear_eval.base_lr=" in str(err.value)
  assert "config.linear_eval.momentum=0.9, this run has 0.5" in str(err.value)
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match="encoder.step=7, this run has 8"):
    supervised.linear_eval(config, str(tmp_path), mesh,
                           _encoder(variables, step=8), logger=logger)


def test_each_pretraining_step_gets_its_own_folder_and_old_ones_resume(
    tmp_path):
  source = encoder_sources.EncoderSource(encoder_sources.WORKDIR, "W", 40)
  encoder = _encoder({}, step=40, source=source)
  identity = {"digest": "abc"}
  assert supervised.encoder_folder(str(tmp_path), "linear_eval", encoder,
                                   identity) == str(
                                       tmp_path / "linear_eval" / "step_000040")
  # A folder of an earlier build holding this encoder's run is used on.
  legacy = checkpointing.checkpoint_dir(str(tmp_path / "linear_eval"))
  legacy.mkdir(parents=True)
  resume_guard.files.write_json(legacy / resume_guard.METADATA_FILE, {
      "format": resume_guard.FORMAT, "settings": {"encoder.digest": "abc"}})
  assert supervised.encoder_folder(str(tmp_path), "linear_eval", encoder,
                                   identity) == str(tmp_path / "linear_eval")
  assert supervised.encoder_folder(
      str(tmp_path), "linear_eval", encoder, {"digest": "def"}).endswith(
          "step_000040")


def test_linear_eval_step_uses_the_frozen_backbone_in_eval_mode(setup):
  """Running statistics, not the batch's, and no update of them."""
  config, mesh, variables = setup
  task = task_lib.make_task(config, mesh, "linear_eval", num_examples=64,
                            num_classes=10, epochs=1.0)
  frozen = task_lib.frozen_backbone(task, variables)
  # Statistics far from a batch's, so a train-mode pass would differ.
  frozen["batch_stats"] = jax.tree.map(lambda x: x + 0.5,
                                       frozen["batch_stats"])
  images = jax.random.normal(jax.random.key(1), (64, 8, 8, 3))
  labels = jnp.arange(64) % 10
  state = task_lib.init_state(task, variables)
  assert state.batch_stats is None  # nothing of the backbone is trained
  head = {"kernel": jax.random.normal(jax.random.key(2),
                                      state.params["kernel"].shape),
          "bias": jnp.zeros_like(state.params["bias"])}
  logits, stats = task_lib._logits(  # pylint: disable=protected-access
      task, head, None, frozen, images, train=True)
  features = task.backbone.apply(frozen, images, train=False)
  np.testing.assert_allclose(logits, features @ head["kernel"], rtol=1e-5,
                             atol=1e-5)
  assert stats is None
  # One step moves the head only.
  sharding = mesh_lib.batch_sharding(mesh)
  batch = {"image": jax.device_put(images, sharding),
           "label": jax.device_put(labels.astype(jnp.int32), sharding)}
  before = jax.device_get(frozen)
  new_state, _ = task_lib.make_train_step(task)(
      task_lib.init_state(task, variables), frozen, batch)
  assert not np.allclose(jax.device_get(new_state.params["kernel"]), 0)
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(frozen))


def _fit(config, mesh, variables, workdir, logger):
  """Fine-tunes `variables` in workdir as `main` does; (state, setup)."""
  made = supervised.setup("finetune", config, mesh, data.dataset_info(config),
                          _encoder(variables), workdir=str(workdir))
  return loop.train(made.training, logger=logger), made


def _saved(made):
  return checkpointing.saved_steps(made.training.folder)


def test_finetune_resume_after_a_crash_is_bit_identical(setup, tmp_path,
                                                       capsys):
  config, mesh, variables = setup
  whole, made = _fit(config, mesh, variables, tmp_path / "whole", ListLogger())
  assert made.task.total_steps == 7  # SimCLR's count: 149 * 1.5 // 32 + 1
  with pytest.raises(RuntimeError, match="crash"):  # after step 4's log,
    _fit(config, mesh, variables, tmp_path / "crashed",
         ListLogger(crash_at=4))  # before step 4 is saved
  made = supervised.setup("finetune", config, mesh, data.dataset_info(config),
                          _encoder(variables), workdir=str(tmp_path / "crashed"))
  assert _saved(made) == [2]
  capsys.readouterr()
  resumed, made = _fit(config, mesh, variables, tmp_path / "crashed",
                       ListLogger())
  assert int(resumed.step) == 7
  assert "Resumed finetune from" in capsys.readouterr().out
  # A rerun of the finished run trains nothing and says so.
  logger = ListLogger()
  _fit(config, mesh, variables, tmp_path / "crashed", logger)
  assert not logger.lines
  assert "Finetune is finished (step 7 of 7" in capsys.readouterr().out
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(whole.params),
               jax.device_get(resumed.params))
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(whole.batch_stats),
               jax.device_get(resumed.batch_stats))
  # The backbone moved: fine-tuning trains the whole network.
  moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: not np.array_equal(a, b),
      jax.device_get(whole.params["backbone"]),
      jax.device_get(variables["params"]["backbone"])))
  assert all(moved)


def test_sigterm_saves_the_current_step_and_exits_0(setup, tmp_path):
  config, mesh, variables = setup

  class SigtermAtStep2(ListLogger):

    def log(self, step, metrics):
      super().log(step, metrics)
      if step == 2:
        os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(SystemExit) as exit_info:
    _fit(config, mesh, variables, tmp_path, SigtermAtStep2())
  assert exit_info.value.code == 0
  # Received while step 2 was logged: step 2 is saved, nothing after it.
  folder = next((tmp_path / "finetune").iterdir())
  assert checkpointing.saved_steps(str(folder)) == [2]


def test_a_non_finite_step_stops_the_run(setup, tmp_path):
  config, mesh, variables = setup
  config = config.copy_and_resolve_references()
  config.finetune.base_lr = 1e30
  with pytest.raises(loop.NonFiniteLossError):
    _fit(config, mesh, variables, tmp_path, ListLogger())
  folder = next((tmp_path / "finetune").iterdir())
  assert checkpointing.saved_steps(str(folder)) == []


@pytest.mark.parametrize("key,value", [
    ("label_fraction", 0.0), ("label_fraction", 1.5), ("batch_size", 0),
    ("momentum", 1.0), ("crop_scale", (0.5, 0.2)), ("init_step", 3)])
def test_bad_finetune_settings_name_the_key(key, value):
  section = config_base.base_config().finetune
  section[key] = value
  with pytest.raises(errors.InvalidValueError) as error:
    supervised.check_finetune_config(section)
  assert error.value.key == key


def test_finetune_epochs_follow_simclr_unless_set():
  config = config_base.base_config()
  config.finetune.label_fraction = 0.01
  assert supervised.epochs(config, "finetune") == 60
  config.finetune.label_fraction = 0.1
  assert supervised.epochs(config, "finetune") == 30
  config.finetune.epochs = 5.0
  assert supervised.epochs(config, "finetune") == 5


@pytest.mark.slow
def test_finetune_mode_end_to_end_writes_results_and_subset(tmp_path):
  """--mode=finetune from random init: results, metrics and subset files."""
  config = tiny_config(tmp_path / "tfds")
  config.mode = "finetune"
  workdir = tmp_path / "run"
  results = experiment.train_and_evaluate(config, str(workdir))
  assert set(results) == {"finetune_top1", "finetune_top5"}
  stored = json.loads((workdir / experiment.RESULTS_FILE).read_text())
  assert stored == {"finetune@step_7": {"top1": results["finetune_top1"],
                                        "top5": results["finetune_top5"]}}
  folder = next((workdir / "finetune").iterdir())  # the random encoder's
  subset = json.loads((folder / "subset.json").read_text())
  assert subset["label_fraction"] == 0.1 and len(subset["indices"]) == 149
  lines = [json.loads(line) for line in
           (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("finetune_loss" in line for line in lines)
  assert any("eval/finetune_top1" in line for line in lines)
  # Rerun: resumes at the last step and only evaluates, same numbers.
  assert experiment.train_and_evaluate(config, str(workdir)) == results


@pytest.mark.slow
def test_linear_eval_mode_end_to_end_on_a_saved_step(setup, tmp_path):
  """--mode=linear_eval restores the workdir's encoder and writes its results."""
  config, mesh, variables = setup
  config = config.copy_and_resolve_references()
  config.mode = "linear_eval"
  workdir = str(tmp_path)
  state = pretraining.TrainState(
      step=jax.numpy.asarray(3, jax.numpy.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state={},
      rng=jax.random.key_data(jax.random.key(0)))
  checkpointer = checkpointing.Checkpointer(
      workdir, record=resume_guard.pretraining_record(config), keep=1)
  checkpointer.save(state)
  checkpointer.close()
  results = experiment.train_and_evaluate(config, workdir)
  assert set(results) == {"linear_eval_top1", "linear_eval_top5"}
  stored = json.loads((tmp_path / experiment.RESULTS_FILE).read_text())
  assert stored["linear_eval@step_3"]["top1"] == results["linear_eval_top1"]


def test_the_step_schedule_decays_per_epoch_inside_streamed_batches():
  config = config_base.base_config()
  section = config.linear_eval
  section.schedule, section.lr_decay, section.lr_scaling = "step", 0.5, "none"
  section.base_lr, section.batch_size = 0.01, 32
  schedule = task_lib.lr_schedule(section, num_examples=100, total_steps=50)
  # Epoch e covers stream positions [100e, 100(e+1)): step 3 (positions
  # 96..127) is still epoch 0's rate, step 4 epoch 1's.
  np.testing.assert_allclose([schedule(s) for s in (0, 3, 4, 7)],
                             [0.01, 0.01, 0.005, 0.0025])
  section.schedule, section.lr_scaling = "cosine", "linear"
  cosine = task_lib.lr_schedule(section, num_examples=100, total_steps=50)
  np.testing.assert_allclose([cosine(0), cosine(50)], [0.01 * 32 / 256, 0.0])


def test_early_stopping_keeps_the_head_of_the_lowest_validation_loss(
    setup, monkeypatch):
  config, mesh, variables = setup
  task = task_lib.make_task(config, mesh, "linear_eval", num_examples=64,
                            num_classes=10, epochs=1.0)
  losses = iter([1.0, 0.5, 0.7, 0.5, 0.9, 0.8])
  monkeypatch.setattr(task_lib, "accuracy", lambda *a, **k: {
      "loss": next(losses), "top1": 0.0, "top5": 0.0})
  after_step = early_stopping.after_step_fn(
      task, None, num_examples=64, validation_batches=lambda: None)
  stopped = early_stopping.stopped_fn(patience=1)
  state = task_lib.init_state(task, variables, best=early_stopping.initial_best(
      task, variables))
  kept = []
  for done in range(1, 13):  # batch 64 of 64 examples: an epoch per step
    state = state.replace(params=jax.tree.map(lambda x: x + 1.0, state.params))
    state, metrics = after_step(done, state)
    kept.append(float(state.best.params["bias"][0]))
    assert metrics["val_epochs_since_best"] == int(state.best.waited)
    if stopped(state):
      break
  # Losses 1.0, 0.5, 0.7, 0.5 (a tie: the later head), 0.9, 0.8: two epochs
  # without a better loss exceed patience 1, so it stops after epoch 6.
  assert kept == [1.0, 2.0, 2.0, 4.0, 4.0, 4.0] and done == 6
  assert int(state.best.waited) == 2


def test_accuracy_compiles_once_per_task(setup, monkeypatch):
  """Early stopping scores the validation split every epoch: one program."""
  config, mesh, variables = setup
  task = task_lib.make_task(config, mesh, "linear_eval", num_examples=64,
                            num_classes=10, epochs=1.0)
  traces = []
  logits = task_lib._logits  # pylint: disable=protected-access
  monkeypatch.setattr(task_lib, "_logits", lambda *a, **k: (
      traces.append(1), logits(*a, **k))[1])
  sharding = mesh_lib.batch_sharding(mesh)
  batch = {"image": jax.device_put(jnp.zeros((16, 8, 8, 3)), sharding),
           "label": jax.device_put(jnp.arange(16) % 10, sharding),
           "mask": jax.device_put(jnp.arange(16) < 12, sharding)}
  state = task_lib.init_state(task, variables)
  frozen = task_lib.frozen_backbone(task, variables)
  for _ in range(3):
    result = task_lib.accuracy(task, state.params, None, frozen, [batch])
  assert len(traces) == 1
  # A zero head: every class ties, the loss is log(10) on the 12 rows.
  np.testing.assert_allclose(result["loss"], np.log(10), rtol=1e-6)


@pytest.mark.slow
def test_public_code_recipe_end_to_end(setup, tmp_path):
  """linear_eval as the public code runs it: validation split, best head."""
  config, mesh, variables = setup
  config = config.copy_and_resolve_references()
  section = config.linear_eval
  section.recipe, section.backbone_bn, section.schedule = (
      "public_code", "batch", "step")
  section.train_split, section.validation_split = "train[:80%]", "train[80%:]"
  section.batch_size, section.epochs, section.patience = 400, 3.0, 0
  logger = ListLogger()
  step, results = supervised.linear_eval(config, str(tmp_path), mesh,
                                         _encoder(variables), logger=logger)
  assert set(results) == {"linear_eval_top1", "linear_eval_top5"}
  validated = [(step, m["linear_eval_val_epochs_since_best"])
               for step, m in logger.lines if "linear_eval_val_loss" in m]
  # 1200 examples, batch 400: epochs end at steps 3, 6 and 9 of 10. With
  # patience 0 the first epoch without a better loss is the last one.
  assert all(since == 0 for _, since in validated[:-1])
  last_step, last_since = validated[-1]
  if last_since:
    assert max(step for step, _ in logger.lines) == last_step
  else:
    assert [step for step, _ in validated] == [3, 6, 9]
