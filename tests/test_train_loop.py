import os
import pathlib
import signal
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import child_env
from mio_jax import checkpointing
from mio_jax import loop
from mio_jax import synthetic
from mio_jax import train
from pretrain_runner import open_checkpointer, tiny_config, tiny_run

TOTAL_STEPS = 6
RUNNER = pathlib.Path(__file__).parent / "pretrain_runner.py"


class _RecordingLogger:

  def __init__(self):
    self.logged = []

  def log(self, step, metrics):
    self.logged.append((step, metrics))

  def close(self):
    pass


def _pretrain(workdir, run=None, hooks=(), batches_fn=None, logger=None):
  run = tiny_run(total_steps=TOTAL_STEPS) if run is None else run
  if batches_fn is None:
    batches_fn = lambda start: synthetic.synthetic_batches(
        run.config, run.mesh, start_step=start)
  return train.pretrain(run, str(workdir), batches_fn=batches_fn,
                        logger=logger or _RecordingLogger(), hooks=hooks)


def _host(state):
  return jax.tree.map(np.asarray, jax.device_get(state))


def _assert_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def uninterrupted_of(tmp_path_factory):
  """model -> final state of its uninterrupted TOTAL_STEPS-step run (saves
  at 2, 4, 6), trained on first use."""
  states = {}

  def final_state(model):
    if model not in states:
      logger = _RecordingLogger()
      state = _pretrain(tmp_path_factory.mktemp("uninterrupted"),
                        run=tiny_run(model, total_steps=TOTAL_STEPS),
                        logger=logger)
      assert [step for step, _ in logger.logged] == [5, 6]  # every 5 + last
      # Every log line, the first included, carries a measured throughput.
      for _, metrics in logger.logged:
        assert 0 < metrics["images_per_sec"] < float("inf")
      states[model] = _host(state)
    return states[model]

  return final_state


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_of):
  return uninterrupted_of("resnet_tiny")


def test_uninterrupted_run_trains_and_saves(uninterrupted, tmp_path):
  assert int(uninterrupted.step) == TOTAL_STEPS
  fresh = train.init_state(tiny_run(total_steps=TOTAL_STEPS))
  kernel = lambda s: np.asarray(s.params["projector"]["dense2"]["kernel"])
  assert not np.allclose(kernel(fresh), kernel(uninterrupted))


@pytest.mark.parametrize("model", ["resnet_tiny", "vit_test"])
def test_resume_after_a_crash_is_bit_identical(uninterrupted_of, tmp_path,
                                               model):
  def crash_at_step_5(step, state):
    if step == 5:
      raise RuntimeError("simulated crash")

  run = tiny_run(model, total_steps=TOTAL_STEPS)
  with pytest.raises(RuntimeError, match="simulated crash"):
    _pretrain(tmp_path, run=run, hooks=[crash_at_step_5])
  assert open_checkpointer(tmp_path, tiny_config(model)).latest_step() == 4
  resumed = _pretrain(tmp_path, run=run)  # resumes at 4, trains steps 5, 6
  _assert_identical(_host(resumed), uninterrupted_of(model))


def test_sigterm_saves_the_current_step_and_exits_cleanly(uninterrupted,
                                                          tmp_path):
  def sigterm_at_step_3(step, state):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(SystemExit) as exit_info:
    _pretrain(tmp_path, hooks=[sigterm_at_step_3])
  assert exit_info.value.code == 0
  checkpointer = open_checkpointer(tmp_path, tiny_config())
  assert checkpointer.all_steps() == [2, 3]
  checkpointer.close()
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
  _assert_identical(_host(_pretrain(tmp_path)), uninterrupted)


# Step 2 is caught by the deferred check (after step 3 is dispatched), step 3
# at once because its result (step 4) would be saved.
@pytest.mark.parametrize("bad_step", [2, 3])
def test_non_finite_loss_stops_naming_the_step(tmp_path, bad_step):
  run = tiny_run(total_steps=TOTAL_STEPS)
  config = run.config

  def batches_with_nan(start):
    for step, batch in enumerate(
        synthetic.synthetic_batches(config, run.mesh, start_step=start), start):
      if step == bad_step:
        batch["view1"] = batch["view1"] * np.nan
      yield batch

  with pytest.raises(loop.NonFiniteLossError, match=f"at step {bad_step}:"):
    _pretrain(tmp_path, run=run, batches_fn=batches_with_nan)
  # The last good checkpoint (step 2) is kept; no NaN state was saved.
  checkpointer = open_checkpointer(tmp_path, config)
  assert checkpointer.all_steps() == [2]
  restored = checkpointer.restore(train.init_state(run))
  checkpointer.close()
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree.leaves(restored.params))


def _finished_steps(workdir):
  directory = checkpointing.checkpoint_dir(str(workdir))
  return [step for step in checkpointing.saved_steps(str(workdir))
          if (directory / str(step) / "commit_success.txt").exists()]


@pytest.mark.slow  # two subprocesses compiling: 80 s on 2 busy cores
@pytest.mark.parametrize("model", ["resnet_tiny", "vit_test"])
def test_sigkill_mid_run_then_restart_matches_uninterrupted(uninterrupted_of,
                                                            tmp_path, model):
  env = child_env.child_env(8)
  command = [sys.executable, str(RUNNER), str(tmp_path), str(TOTAL_STEPS), "2"]
  # Slow steps (1 s each) leave time to kill between checkpoints 2 and 6.
  run = subprocess.Popen(command + ["1.0", model], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 240
  while not _finished_steps(tmp_path):
    assert run.poll() is None, run.stdout.read().decode()
    assert time.monotonic() < deadline, "no checkpoint within 240 s"
    time.sleep(0.05)
  run.send_signal(signal.SIGKILL)
  run.wait()
  killed_at = _finished_steps(tmp_path)
  assert killed_at and max(killed_at) < TOTAL_STEPS

  restart = subprocess.run(command + ["0", model], env=env,
                           capture_output=True, text=True, timeout=240)
  assert restart.returncode == 0, restart.stdout + restart.stderr
  assert f"at step {max(killed_at)}." in restart.stdout
  checkpointer = open_checkpointer(tmp_path, tiny_config(model))
  assert checkpointer.latest_step() == TOTAL_STEPS
  final = checkpointer.restore(train.init_state(
      tiny_run(model, total_steps=TOTAL_STEPS)))
  checkpointer.close()
  _assert_identical(_host(final), uninterrupted_of(model))


def test_sigterm_during_a_long_hook_saves_within_seconds(tmp_path):
  """The hook (an online kNN on ImageNet: minutes) is abandoned at once."""
  abandoned = []

  def slow_hook_with_sigterm(step, state):
    if step == 3:
      try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
      finally:
        abandoned.append(step)

  start = time.monotonic()
  with pytest.raises(SystemExit) as exit_info:
    _pretrain(tmp_path, hooks=[slow_hook_with_sigterm])
  assert exit_info.value.code == 0
  assert time.monotonic() - start < 45  # not the hook's 60 s
  assert abandoned == [3]
  checkpointer = open_checkpointer(tmp_path, tiny_config())
  assert checkpointer.all_steps() == [2, 3]
  checkpointer.close()


def test_resume_with_a_changed_recipe_stops_naming_the_key(tmp_path):
  _pretrain(tmp_path, run=tiny_run(total_steps=2))
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"config.batch_size=16, this run has 8"):
    _pretrain(tmp_path, run=tiny_run(total_steps=4, batch_size=8))
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"config.total_steps=2, this run has 4.*"
                           r"resume_allow_changes=total_steps"):
    _pretrain(tmp_path, run=tiny_run(total_steps=4))
  # Allowed on purpose: trains on, and the change is recorded.
  state = _pretrain(tmp_path, run=tiny_run(
      total_steps=4, resume_allow_changes="total_steps"))
  assert int(state.step) == 4
  metadata = checkpointing.read_metadata(str(tmp_path))
  assert metadata["changes"] == [
      {"key": "total_steps", "from": 2, "to": 4, "from_step": 2}]
  assert metadata["settings"]["total_steps"] == 4


@flax.struct.dataclass
class _Counter:
  step: jax.Array
  reports: jax.Array


def test_early_stop_is_asked_only_when_after_step_reports(tmp_path):
  """stop() may wait for the device: asked on resume and at reports only."""

  def step_fn(state, batch):
    del batch
    return state.replace(step=state.step + 1), {
        "loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0)}

  def after_step(done, state):  # an "epoch" ends every 3 steps
    if done % 3:
      return state, None
    return state.replace(reports=state.reports + 1), {"reports": done}

  asked = []

  def stop(state):
    asked.append(int(state.step))
    return int(state.reports) >= 2

  def train(directory):
    logger = _RecordingLogger()
    with checkpointing.Checkpointer(str(directory), settings={"test": 1},
                                    keep=2) as checkpointer:
      state = loop.run(
          _Counter(step=jnp.zeros((), jnp.int32),
                   reports=jnp.zeros((), jnp.int32)),
          step_fn, lambda start: iter(lambda: None, 1), num_steps=20,
          images_per_step=1, checkpointer=checkpointer,
          cadence=loop.Cadence(log_every_steps=100,
                               checkpoint_every_steps=100),
          logger=logger, after_step=after_step, stop=stop)
    return state, logger

  state, logger = train(tmp_path)
  assert int(state.step) == 6 and asked == [0, 3, 6]
  assert checkpointing.saved_steps(str(tmp_path)) == [6]
  assert [step for step, m in logger.logged if "loss" in m] == [6]
  asked.clear()
  state, logger = train(tmp_path)  # the resumed run had stopped: no step
  assert int(state.step) == 6 and asked == [6] and not logger.logged
