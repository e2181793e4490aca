"""experiment: the modes table drives one run; SIGTERM ends an evaluation at once."""
import os
import signal
import time

import pytest

from mio_jax import config_base
from mio_jax import experiment
from mio_jax import modes


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
  monkeypatch.setattr(experiment.data, "ensure_prepared", lambda config: None)
  monkeypatch.setattr(
      experiment.modes, "load_encoder",
      lambda source, config, mesh: modes.Encoder(source, 3, {}))
  config = config_base.base_config()
  config.model.name = "resnet_tiny"
  config.mode = "knn_eval"
  start = time.monotonic()
  with pytest.raises(SystemExit) as exit_info:
    experiment.train_and_evaluate(config, str(tmp_path))
  assert exit_info.value.code == 0
  assert time.monotonic() - start < 10 and abandoned == [True]
  assert f"Preempted; what was saved is in {tmp_path}" in capsys.readouterr().out
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
  assert not (tmp_path / experiment.RESULTS_FILE).exists()


@pytest.mark.parametrize("mode", sorted(modes.MODES))
def test_every_mode_names_where_its_encoder_comes_from(mode, tmp_path):
  config = config_base.base_config()
  config.mode = mode
  source = modes.encoder_source(config, str(tmp_path))
  expected = {"pretrain": None, "all": None, "finetune": modes.RANDOM}
  if mode in expected:
    assert (source if source is None else source.kind) == expected[mode]
  else:  # the evaluations: this workdir's latest step
    assert source == modes.EncoderSource(modes.WORKDIR, str(tmp_path), None)
  config.eval.encoder_file = "/x/encoder.msgpack"
  config.finetune.init_from = str(tmp_path / "pretrained")
  config.finetune.init_step = 40
  source = modes.encoder_source(config, str(tmp_path))
  if mode in ("pretrain", "all"):  # they evaluate the encoder they train
    assert source is None
  elif mode == "finetune":
    assert source == modes.EncoderSource(modes.WORKDIR,
                                         str(tmp_path / "pretrained"), 40)
  else:
    assert source == modes.EncoderSource(modes.FILE, "/x/encoder.msgpack")
