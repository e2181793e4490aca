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
      lambda source, config, mesh: modes.LoadedEncoder(source, 3, {}))
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


def test_one_table_names_every_protocol_and_how_it_runs():
  from mio_jax import evaluation  # pylint: disable=g-import-not-at-top
  from mio_jax import supervised  # pylint: disable=g-import-not-at-top
  by_kind = {kind: {name for name, k in modes.PROTOCOL_KINDS.items()
                    if k == kind}
             for kind in (modes.FROZEN_FEATURES, modes.TRAINED)}
  assert by_kind[modes.FROZEN_FEATURES] == set(evaluation.PROTOCOLS)
  assert by_kind[modes.TRAINED] == set(supervised.PROTOCOLS)
  # Each evaluation mode runs the protocol it is named after.
  for mode, spec in modes.MODES.items():
    assert set(spec.protocols) <= set(modes.PROTOCOL_KINDS)
    if mode in modes.PROTOCOL_KINDS:
      assert spec.protocols == (mode,)
    elif mode.endswith("_eval"):
      assert spec.protocols == (mode.removesuffix("_eval"),)
