"""The TPU budget: the record, the 2 % rule, and (slow, with libtpu) the
guarded steps compiled against it."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from mio_jax.aot import budget
from mio_jax.aot import programs
from mio_jax.aot import topology

REPO = pathlib.Path(__file__).resolve().parents[2]


def _entry(hbm_bytes=100_000, peak_bytes=50_000):
  return budget.Entry(
      name="step", config="configs/imagenet1k.py", topology="v4-8",
      program="pretrain",
      figures={"hbm_bytes": budget.Figure(hbm_bytes, "why"),
               "peak_bytes": budget.Figure(peak_bytes, "why")})


@pytest.mark.parametrize("measured, over", [
    ({"hbm_bytes": 102_000, "peak_bytes": 51_000}, []),  # +2 %: allowed
    ({"hbm_bytes": 60_000, "peak_bytes": 20_000}, []),  # smaller: fine
    ({"hbm_bytes": 102_001, "peak_bytes": 50_000}, ["hbm_bytes"]),
    ({"hbm_bytes": 100_000, "peak_bytes": 51_001}, ["peak_bytes"]),
    ({"hbm_bytes": 108_000, "peak_bytes": 60_000}, ["hbm_bytes",
                                                    "peak_bytes"]),
])
def test_a_figure_more_than_two_percent_over_the_record_fails(measured, over):
  lines = budget.over_budget(_entry(), measured)
  assert [line.split(": ")[1].split(" ")[0] for line in lines] == over
  for line in lines:
    assert line.startswith("step: ") and "\n" not in line


def test_the_check_reports_every_program_and_every_problem():
  entries = [_entry(), _entry(hbm_bytes=50_000)]
  emitted = []
  problems = budget.check_all(
      entries, measure_fn=lambda e: {"hbm_bytes": 80_000, "peak_bytes": 50_000},
      emit=emitted.append)
  assert len(emitted) == 2 and len(problems) == 1
  assert emitted[1]["hbm_bytes"] == 80_000
  assert emitted[1]["hbm_bytes_recorded"] == 50_000
  assert emitted[1]["hbm_bytes_change"] == pytest.approx(0.6)
  assert "+60.0%" in problems[0]
  json.dumps(emitted)


def test_the_record_gives_each_figure_a_reason():
  entries = budget.load()
  assert {e.name for e in entries} == {"imagenet1k_resnet50_pretrain_v4-8",
                                      "imagenet1k_vit_b16_pretrain_v4-8"}
  for entry in entries:
    assert (REPO / entry.config).is_file()
    assert entry.program in programs.NAMES
    topology.parse(entry.topology)
    for name in budget.FIGURES:
      figure = entry.figures[name]
      assert figure.value > 0 and len(figure.reason) > 20, (entry.name, name)


@pytest.mark.slow
@pytest.mark.skipif(topology.libtpu_path() is None,
                    reason="libtpu is not installed (make libtpu): the TPU "
                    "budget needs it to compile the guarded steps")
def test_the_guarded_steps_stay_within_the_tpu_budget():
  result = subprocess.run(
      [sys.executable, "benchmarks/tpu_budget.py"], cwd=REPO,
      capture_output=True, text=True, timeout=3600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  print(result.stdout)  # the new figures, beside the recorded ones
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(result.stdout.splitlines()) == len(budget.load())


def test_the_command_prints_the_figures_and_fails_over_budget(tmp_path):
  record = {"programs": {"step": {
      "config": "configs/imagenet1k.py", "topology": "v4-8",
      "program": "pretrain",
      "hbm_bytes": {"value": 100, "reason": "why"},
      "peak_bytes": {"value": 100, "reason": "why"}}}}
  path = tmp_path / "budget.json"
  path.write_text(json.dumps(record))
  code = ("import runpy, sys; from mio_jax.aot import budget; "
          "budget.measure = lambda entry, log: {'hbm_bytes': 103, "
          "'peak_bytes': 100}; sys.argv = ['tpu_budget', '--record=%s']; "
          "runpy.run_path('benchmarks/tpu_budget.py', run_name='__main__')"
          % path)
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 1, result.stderr[-2000:]
  line = json.loads(result.stdout)
  assert (line["hbm_bytes"], line["hbm_bytes_recorded"]) == (103, 100)
  over = [l for l in result.stderr.splitlines() if l.startswith("over budget")]
  assert over == ["over budget: step: hbm_bytes per chip grew +3.0% over the "
                  "record (103 against 100 bytes; the budget allows +2%)"]
