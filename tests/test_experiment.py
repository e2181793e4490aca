"""experiment: SIGTERM during the final evaluation ends it within seconds."""
import os
import signal
import time

import pytest

from mio_jax import config_base
from mio_jax import experiment


def test_sigterm_during_the_final_evaluation_exits_cleanly_at_once(
    tmp_path, monkeypatch, capsys):
  abandoned = []

  def slow_evaluation(variables, **kwargs):  # minutes on ImageNet
    del variables, kwargs
    try:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(60)
    finally:
      abandoned.append(True)

  monkeypatch.setattr(experiment.evaluator, "evaluate", slow_evaluation)
  config = config_base.base_config()
  config.model.name = "resnet_tiny"
  config.mode = "knn_eval"
  start = time.monotonic()
  with pytest.raises(SystemExit) as exit_info:
    experiment._evaluate(config, str(tmp_path), None, {})  # pylint: disable=protected-access
  assert exit_info.value.code == 0
  assert time.monotonic() - start < 10 and abandoned == [True]
  assert f"Preempted; what was saved is in {tmp_path}" in capsys.readouterr().out
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
