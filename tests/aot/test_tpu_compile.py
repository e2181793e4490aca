"""The TPU compile check: topology table, programs, roofline, not-fit search.

The default tests need no libtpu: the programs are built on CPU devices
(conftest: 8 fake ones) standing in for a slice's chips, and a fake
compile returns figures from each program's batch. The slow test compiles
a tiny model with libtpu for real (skipped where it is not installed).
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import tiny
from mio_jax import chips
from mio_jax import config_validation
from mio_jax.aot import check
from mio_jax.aot import programs
from mio_jax.aot import topology

REPO = pathlib.Path(__file__).resolve().parents[2]
GIB = 2**30

# ---- the topology table -------------------------------------------------------


@pytest.mark.parametrize("name, chip, libtpu_name, chips_, hosts, per_host", [
    ("v4-8", "TPU v4", "v4:2x2x1", 4, 1, 4),
    ("v4-32", "TPU v4", "v4:2x2x4", 16, 4, 4),
    ("v4-128", "TPU v4", "v4:4x4x4", 64, 16, 4),
    ("v5p-8", "TPU v5p", "v5p:2x2x1", 4, 1, 4),
    ("v5litepod-1", "TPU v5e", "v5e:1x1", 1, 1, 1),
    ("v5litepod-8", "TPU v5e", "v5e:2x4", 8, 1, 8),  # one VM of 8 chips
    ("v5litepod-16", "TPU v5e", "v5e:4x4", 16, 4, 4),  # VMs of 4 chips
    ("v6e-8", "TPU v6e", "v6e:2x4", 8, 1, 8),
    ("v6e-256", "TPU v6e", "v6e:16x16", 256, 64, 4),
])
def test_accelerator_types_map_to_libtpu_topologies_and_hosts(
    name, chip, libtpu_name, chips_, hosts, per_host):
  tpu_slice = topology.parse(name)
  assert tpu_slice.chip.name == chip
  assert tpu_slice.topology == libtpu_name
  assert (tpu_slice.chips, tpu_slice.hosts, tpu_slice.chips_per_host) == (
      chips_, hosts, per_host)
  # One device per chip: v4 and v5p as megacore (two TensorCores).
  assert tpu_slice.chip_config == ("megacore" if chip in ("TPU v4", "TPU v5p")
                                   else "default")


def test_an_unknown_type_lists_the_known_ones():
  with pytest.raises(topology.UnknownTopologyError) as raised:
    topology.parse("v9-8")
  message = str(raised.value)
  assert "\n" not in message
  for known in ("v4-8", "v4-128", "v5litepod-8", "v5p-8", "v6e-8"):
    assert known in message
  with pytest.raises(topology.UnknownTopologyError, match="v5litepod-8"):
    topology.parse("v5e-8")  # gcloud's name for v5e is v5litepod


def test_libtpu_is_found_beside_the_venv_or_as_a_package(tmp_path, monkeypatch):
  monkeypatch.setattr(topology.importlib.util, "find_spec", lambda name: None)
  assert topology.libtpu_path(str(tmp_path)) is None
  with pytest.raises(topology.LibtpuMissingError) as raised:
    topology.require_libtpu(str(tmp_path))
  assert topology.LIBTPU_REQUIREMENT in str(raised.value)
  assert "make libtpu" in str(raised.value)
  library = tmp_path / "libtpu" / "libtpu" / "libtpu.so"
  library.parent.mkdir(parents=True)
  library.write_bytes(b"")
  assert topology.libtpu_path(str(tmp_path)) == str(library)


def test_the_libtpu_pin_is_the_one_the_makefile_installs():
  pinned = (REPO / "requirements-libtpu.txt").read_text().split()
  assert topology.LIBTPU_REQUIREMENT in pinned
  makefile = (REPO / "Makefile").read_text()
  # Beside the packages, not into them: JAX would try a TPU at start-up.
  assert (f"--target $(VENV)/{topology.LIBTPU_DIR} -r requirements-libtpu.txt"
          in makefile)


# ---- the chip table -------------------------------------------------------------


def test_one_chip_table_serves_the_benchmark():
  text = (REPO / "benchmarks" / "accelerator.py").read_text()
  assert "PEAK_TFLOPS" not in text and "from mio_jax import chips" in text
  assert chips.find("TPU v5 lite").peak_flops() == 197e12
  assert chips.find("TPU v5").peak_flops() == 459e12  # what a v5p reports
  assert chips.find("TPU v6 lite").peak_flops() == 918e12
  assert chips.find("Some CPU") is None
  fields = {f.name for f in chips.dataclasses.fields(chips.Chip)}
  for chip in chips.CHIPS:
    assert chip.source
    assert set(chip.from_memory) <= fields
    if chip.name.startswith("TPU"):
      assert chip.source.startswith("https://cloud.google.com/tpu/docs/")
      assert not chip.from_memory
      assert chip.hbm_usable_gib < chip.hbm_gib + 1


# ---- programs and the check, with a fake compile ---------------------------------


def tiny_config(**overrides):
  return tiny.tiny_config(**{
      "dataset.name": "cifar10", "model.width_multiplier": 1.0,
      "batch_size": 64, "eval.batch_size": 32, "linear_eval.batch_size": 32,
      "finetune.batch_size": 32, **overrides})


V4_8 = topology.parse("v4-8")
USABLE = int(V4_8.chip.hbm_usable_gib * GIB)


def _global_batch(lowered) -> int:
  """The batch of a lowered step: the leading size of its image inputs."""
  return max(a.shape[0] for a in jax.tree.leaves(lowered.in_avals)
             if len(a.shape) == 4)


def fake_compile(lowered, *, chips_=4):
  """1 GiB of temporaries per image on a chip, 0.5 GiB of arguments, 0.5
  GiB of outputs of which 0.25 alias (donated) arguments."""
  per_chip = _global_batch(lowered) // chips_
  temp = per_chip * GIB
  if temp > USABLE:
    raise check.out_of_memory(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
        f"required for HLO temporaries ({temp / GIB:.2f}G) exceeds available "
        f"HBM ({USABLE / GIB:.2f}G).")
  # Outputs and aliases differ, so that the peak's formula must use both.
  return check.Compiled(argument_bytes=GIB // 2, output_bytes=GIB // 2,
                        alias_bytes=GIB // 4, temp_bytes=temp,
                        flops=2e12 * per_chip, bytes_accessed=1e10 * per_chip)


def _check(config, names=("pretrain",), search_compiles=3):
  return check.check(config, V4_8, devices=jax.devices()[:4], names=names,
                     compile_fn=fake_compile, search_compiles=search_compiles,
                     log=lambda line: None)


def test_the_report_holds_memory_and_the_roofline_bound():
  report = _check(tiny_config(batch_size=64))
  assert (report.topology, report.chips, report.hosts) == ("v4-8", 4, 1)
  assert report.hbm_per_chip_gib == 32 and report.hbm_usable_gib == 30.75
  step = report.steps["pretrain"]
  assert step.fits and step.batch_size == 64
  # 16 images per chip: 16 GiB temporaries + 0.5 arguments + 0.5 outputs
  # - 0.25 of them aliased.
  assert step.peak_per_chip_gib == pytest.approx(16.75)
  flop_s, byte_s = 32e12 / 275e12, 16e10 / 1200e9
  assert step.step_time_bound_s == pytest.approx(max(flop_s, byte_s))
  assert step.bound == "hbm_bytes"  # 0.133 s of bytes > 0.116 s of FLOPs
  assert step.images_per_s_bound == pytest.approx(64 / byte_s)
  assert step.mfu_bound == pytest.approx(flop_s / byte_s)
  # The whole run: cifar10's 50,000 images, 781 steps per epoch, 200 epochs.
  assert step.steps == 781 * 200
  assert step.run_hours_bound == pytest.approx(step.steps * byte_s / 3600)
  assert report.run_chip_hours_bound == pytest.approx(4 * step.run_hours_bound)
  # Headroom from the one compile: the line from the 0.5 GiB of arguments at
  # batch 0 through 16.75 GiB at batch 64 meets 30.75 GiB at 119.1: 116.
  assert step.largest_batch == 116 and not step.largest_batch_checked
  json.dumps(report.to_json())  # JSON as is
  assert "pretrain" in check.table(report)
  assert check.does_not_fit_message(report) is None


def test_a_step_that_does_not_fit_gets_the_largest_batch_that_does():
  report = _check(tiny_config(batch_size=256))
  step = report.steps["pretrain"]
  assert not step.fits and step.flops_per_step is None
  assert "exceeds available HBM" in step.compiler_message
  # 30 images per chip fit (30 GiB of temporaries), 31 do not (31 > 30.75).
  assert (step.largest_batch, step.largest_batch_checked) == (120, True)
  message = check.does_not_fit_message(report)
  assert "\n" not in message
  assert message.startswith("the config does not fit a v4-8: the pretrain step "
                            "(batch_size=256) needs 64.")
  assert "--config.batch_size=120" in message
  assert "30.75 GiB a TPU v4 chip has usable" in message


def test_a_batch_of_65536_ends_in_the_one_line_does_not_fit():
  # Lowered for real (the pair metrics' counts pass int32 above 23,170
  # images: a traceback before), compiled by the fake.
  report = _check(tiny_config(batch_size=65_536,
                              **{"dataset.name": "imagenet1k"}))
  message = check.does_not_fit_message(report)
  assert "\n" not in message
  assert message.startswith("the config does not fit a v4-8: the pretrain step "
                            "(batch_size=65536) needs ")
  assert message.endswith("--config.batch_size=120")


def test_what_the_compiler_accepts_fits_unless_resident_bytes_do_not():
  # Near the limit libtpu rematerialises: it accepted a plan of 15.98 GiB
  # for a v5e chip whose refusals name 15.75 GiB available.
  def squeezed(lowered):
    return check.Compiled(argument_bytes=GIB // 2, output_bytes=0,
                          alias_bytes=0, temp_bytes=USABLE, flops=1e12,
                          bytes_accessed=1e10)
  report = check.check(tiny_config(), V4_8, devices=jax.devices()[:4],
                       names=("pretrain", "extract"), compile_fn=squeezed,
                       log=lambda line: None)
  assert report.steps["pretrain"].peak_per_chip_gib > V4_8.chip.hbm_usable_gib
  assert report.steps["pretrain"].fits
  # The features extraction keeps on the chips need room beside the program.
  assert not report.steps["extract"].fits


def test_without_compiles_to_spare_the_largest_batch_is_an_estimate():
  step = _check(tiny_config(batch_size=256), search_compiles=0).steps["pretrain"]
  assert not step.largest_batch_checked
  assert step.largest_batch % 4 == 0 and 100 <= step.largest_batch <= 124
  assert "(estimated, not compiled)" in check.does_not_fit_message(
      _check(tiny_config(batch_size=256), search_compiles=0))


def test_the_batch_must_split_over_the_slices_chips_as_in_training():
  # 4 chips: batch 66 is refused by the same check training runs.
  with pytest.raises(config_validation.ConfigError, match="config.batch_size=66"):
    _check(tiny_config(batch_size=66))


def test_every_program_is_built_at_its_configured_batch():
  config = tiny_config(**{"eval.batch_size": 48, "linear_eval.batch_size": 40,
                          "finetune.batch_size": 24})
  report = _check(config, names=programs.NAMES)
  assert {name: s.batch_size for name, s in report.steps.items()} == {
      "pretrain": 64, "extract": 48, "linear_eval": 40, "finetune": 24}
  assert report.steps["extract"].resident_gib > 0  # the features kept


def test_programs_lower_the_training_steps_with_their_inputs():
  mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4],
                       axis_types=(jax.sharding.AxisType.Auto,))
  for on_device, views in ((False, np.float32), (True, np.uint8)):
    config = tiny_config(**{"augment.on_device": on_device})
    program = programs.build("pretrain", config, mesh)
    state, batch = program.lower().in_avals[0]
    assert batch["view1"].dtype == views and batch["view1"].shape == (64, 8, 8, 3)
    # The online probe (on by default) is part of the state and step.
    assert state.probe is not None
  finetune = programs.build("finetune", tiny_config(), mesh).lower()
  state, frozen, batch = finetune.in_avals[0]
  assert frozen is None and "backbone" in state.params
  linear = programs.build("linear_eval", tiny_config(), mesh).lower()
  state, frozen, batch = linear.in_avals[0]
  assert frozen is not None and set(state.params) == {"kernel", "bias"}


def test_linear_evaluation_counts_the_steps_of_its_train_split():
  mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4],
                       axis_types=(jax.sharding.AxisType.Auto,))
  steps = [programs.build("linear_eval", tiny_config(**{
      "linear_eval.epochs": 1.0, "linear_eval.train_split": split}), mesh).steps
           for split in ("", "train[:80%]")]
  # CIFAR-10's 50,000 training images, or the first 40,000: n // 32 + 1.
  assert steps == [1563, 1251]


@pytest.mark.parametrize("message, need, have", [
    ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required "
     "for HLO temporaries (26.50G) exceeds available HBM (15.75G).", 26.5, 15.75),
    ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory "
     "in memory space hbm. Used 20.50G of 15.48G hbm.", 20.5, 15.48),
])
def test_the_compilers_refusal_is_read(message, need, have):
  refusal = check.out_of_memory(message)
  assert refusal.required_bytes == int(need * GIB)
  assert refusal.available_bytes == int(have * GIB)


# ---- the command ----------------------------------------------------------------


def _command(*args, libtpu_missing=False):
  code = ("import runpy, sys; sys.argv[0] = 'tpu_compile'; "
          + ("from mio_jax.aot import topology; "
             "topology.libtpu_path = lambda prefix=None: None; "
             if libtpu_missing else "")
          + "runpy.run_module('mio_jax.cli.tpu_compile', run_name='__main__')")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, libtpu_missing, expected", [
    (["--topology=v9-8"], False, r"^error: --topology='v9-8' is not a known "
     r"Cloud TPU accelerator type; known: v4-8, .*v5litepod-8, .*v6e-8"),
    (["--topology=v4-8"], True, r"^error: compiling for a TPU needs libtpu, "
     r"which is not installed; install it with: make libtpu \(or: "
     r"\.venv/bin/pip install --no-deps --upgrade --target \.venv/libtpu "
     r"libtpu==0\.0\.42\.1\)$"),
])
def test_the_command_fails_in_one_line(args, libtpu_missing, expected):
  result = _command("--config=configs/cifar10.py", *args,
                    libtpu_missing=libtpu_missing)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and re.match(expected, lines[0]), result.stderr[-2000:]
  assert "Traceback" not in result.stderr


# ---- for real, with libtpu --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(topology.libtpu_path() is None,
                    reason="libtpu is not installed (make libtpu)")
def test_a_tiny_model_compiles_for_v4_8_and_v5litepod_8(tmp_path):
  tiny = ["--config.model.name=resnet_tiny", "--config.dataset.image_size=8",
          "--config.batch_size=64", "--config.eval.batch_size=64",
          "--config.linear_eval.batch_size=64",
          "--config.finetune.batch_size=32", "--config.dtype=bfloat16"]
  for name, hosts, per_host in (("v4-8", 1, 4), ("v5litepod-8", 1, 8)):
    out = tmp_path / f"{name}.json"
    result = subprocess.run(
        [sys.executable, "-m", "mio_jax.cli.tpu_compile",
         "--config=configs/cifar10.py", f"--topology={name}", f"--out={out}",
         *tiny], cwd=REPO, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    # The program is compiled for the real slice's hosts: a v5litepod-8 is
    # one VM of 8 chips (libtpu's default would make it 2 of 4).
    assert (report["hosts"], report["chips_per_host"]) == (hosts, per_host)
    assert set(report["steps"]) == set(programs.NAMES)
    for step in report["steps"].values():
      assert step["fits"] and 0 < step["peak_per_chip_gib"] < 1
      assert step["flops_per_step"] > 0 and step["bytes_per_step"] > 0
      assert step["step_time_bound_s"] > 0 and 0 < step["mfu_bound"] <= 1
    assert "pretrain" in result.stdout and "Traceback" not in result.stderr


def test_the_accelerator_benchmark_puts_the_bound_beside_images_per_s(
    monkeypatch):
  sys.path.insert(0, str(REPO / "benchmarks"))
  try:
    import accelerator  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(REPO / "benchmarks"))
  # As on a TPU v4 host: the chip's figures for these (CPU) devices.
  monkeypatch.setattr(chips, "find", lambda kind: chips.by_name("TPU v4"))
  # benchmarks/train_step.py's record: the step's XLA counts (two devices).
  record = {"benchmark": "train_step", "model": "resnet_tiny",
            "image_size": 8, "batch_size": 8, "devices": 2, "dtype": "float32",
            "flops_per_step": 4e9, "bytes_accessed_per_device": 1e8,
            "images_per_s": 100.0}
  accelerator._with_compile_bounds([record])  # pylint: disable=protected-access
  bound = record["compile_bound"]
  assert bound["chip"] == "TPU v4" and bound["flops_per_step"] == 2e9
  assert bound["images_per_s_bound"] == pytest.approx(
      8 / max(bound["flops_per_step"] / 275e12,
              bound["bytes_per_step"] / 1200e9))
  assert bound["measured_over_bound"] == pytest.approx(
      100 / bound["images_per_s_bound"], abs=1e-4)
