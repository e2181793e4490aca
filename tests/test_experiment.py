"""experiment: the modes table drives one run; SIGTERM ends an evaluation at once."""
import os
import signal
import time

import pytest

from mio_jax import config_base
from mio_jax import encoder_sources
from mio_jax import errors
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
      experiment.encoder_sources, "load_encoder",
      lambda source, config, mesh: encoder_sources.LoadedEncoder(
          source, 3, {}))
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
  expected = {"pretrain": None, "all": None, "finetune": encoder_sources.RANDOM}
  if mode in expected:
    assert (source if source is None else source.kind) == expected[mode]
  else:  # the evaluations: this workdir's latest step
    assert source == encoder_sources.EncoderSource(encoder_sources.WORKDIR,
                                                   str(tmp_path), None)
  config.eval.encoder_file = "/x/encoder.msgpack"
  config.finetune.init_from = str(tmp_path / "pretrained")
  config.finetune.init_step = 40
  source = modes.encoder_source(config, str(tmp_path))
  if mode in ("pretrain", "all"):  # they evaluate the encoder they train
    assert source is None
  elif mode == "finetune":
    assert source == encoder_sources.EncoderSource(
        encoder_sources.WORKDIR, str(tmp_path / "pretrained"), 40)
  else:
    assert source == encoder_sources.EncoderSource(encoder_sources.FILE,
                                                   "/x/encoder.msgpack")


def test_one_table_names_every_protocol_and_how_it_runs():
  from mio_jax import supervised  # pylint: disable=g-import-not-at-top
  from mio_jax.evaluation import protocols  # pylint: disable=g-import-not-at-top
  assert list(modes.PROTOCOLS) == ["knn", "fewshot", "feature_probe",
                                   "linear_eval", "finetune"]
  for name, protocol in modes.PROTOCOLS.items():
    assert protocol.name == name
    if protocol.kind == modes.FROZEN_FEATURES:
      assert protocol.run is getattr(protocols, f"{name}_protocol")
    else:
      assert protocol.kind == modes.TRAINED
      assert protocol.run is getattr(supervised, name)
  # Each evaluation mode runs the protocol it is named after.
  for mode, spec in modes.MODES.items():
    assert set(spec.protocols) <= set(modes.PROTOCOLS)
    if mode in modes.PROTOCOLS:
      assert spec.protocols == (mode,)
    elif mode.endswith("_eval"):
      assert spec.protocols == (mode.removesuffix("_eval"),)


def test_a_modes_runs_of_one_kind_keep_its_order():
  names = modes.MODES["all"].protocols + ("finetune",)
  assert list(modes.runs(names, modes.FROZEN_FEATURES)) == [
      "knn", "fewshot", "feature_probe"]
  assert list(modes.runs(names, modes.TRAINED)) == ["finetune"]


def test_unknown_protocol_is_a_user_error_listing_the_known_ones():
  with pytest.raises(errors.InvalidValueError) as error:
    modes.runs(("knn", "linear"), modes.FROZEN_FEATURES)  # the probe's old name
  message = str(error.value)
  assert "'linear'" in message
  for name in modes.PROTOCOLS:
    assert repr(name) in message
  with pytest.raises(TypeError, match=r"\('knn',\)"):
    modes.runs("knn", modes.FROZEN_FEATURES)
