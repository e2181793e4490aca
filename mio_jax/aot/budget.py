"""The TPU budget: what the key pretraining steps may cost a chip.

`benchmarks/tpu_budget.json` records, for each guarded program (a config's
step compiled for a slice, e.g. the ImageNet-1K ResNet-50 pretraining step
on a v4-8), the two figures a model change can silently worsen, per chip:

  * `hbm_bytes`: XLA's HBM bytes accessed per step (`cost_analysis()`),
    which bounds the step's time on every TPU (docs/performance.md);
  * `peak_bytes`: the memory plan's peak (`memory_analysis()`), which
    decides the largest batch that fits;

each with a `reason`: what the figure is and why it is what it is.
`measure` compiles the programs with libtpu; `over_budget` names every
figure that grew by more than `TOLERANCE` over the record. A change of the
record is made on purpose, in the commit that causes it, with its reason.
The command is `benchmarks/tpu_budget.py` (`make tpu-budget`).
"""
import dataclasses
import json
import pathlib
from typing import Callable, Mapping, Sequence

import jax

from mio_jax import config_base
from mio_jax.aot import check
from mio_jax.aot import topology

REPO = pathlib.Path(__file__).resolve().parents[2]
RECORD = REPO / "benchmarks" / "tpu_budget.json"
TOLERANCE = 0.02  # growth over the record that fails
FIGURES = ("hbm_bytes", "peak_bytes")  # per chip per step


@dataclasses.dataclass(frozen=True)
class Figure:
  """One recorded figure and why it is what it is."""
  value: int
  reason: str


@dataclasses.dataclass(frozen=True)
class Entry:
  """One guarded program: a config's step compiled for a slice."""
  name: str
  config: str  # path relative to the repository
  topology: str  # gcloud's accelerator type, e.g. "v4-8"
  program: str  # one of aot.programs.NAMES
  figures: Mapping[str, Figure]  # keyed by FIGURES


def load(path: pathlib.Path = RECORD) -> list[Entry]:
  """The entries of a budget file."""
  entries = []
  for name, entry in json.loads(pathlib.Path(path).read_text())[
      "programs"].items():
    entries.append(Entry(
        name=name, config=entry["config"], topology=entry["topology"],
        program=entry["program"],
        figures={f: Figure(int(entry[f]["value"]), entry[f]["reason"])
                 for f in FIGURES}))
  return entries


def figures(step: check.StepReport) -> dict[str, int]:
  """The budget's figures of one compiled step."""
  return {"hbm_bytes": int(step.bytes_per_step),
          "peak_bytes": int(round(step.peak_per_chip_gib * check.GIB))}


def measure(entry: Entry, *, log: Callable[[str], None] = print
            ) -> dict[str, int]:
  """Compiles `entry`'s program with libtpu; its figures per chip.

  Needs `jax_platforms=cpu` set before JAX starts (as the tpu_compile
  command does). Raises topology.LibtpuMissingError without libtpu and
  check.DoesNotFitError when the step no longer fits its slice.
  """
  tpu_slice = topology.parse(entry.topology)
  devices = topology.compile_only_devices(
      tpu_slice, libtpu=topology.require_libtpu())
  config = config_base.load_config_file(REPO / entry.config)
  report = check.check(config, tpu_slice, devices=devices,
                       names=(entry.program,), config_name=entry.config,
                       search_compiles=0, log=log)
  message = check.does_not_fit_message(report)
  if message:
    raise check.DoesNotFitError(message)
  return figures(report.steps[entry.program])


def over_budget(entry: Entry, measured: Mapping[str, int], *,
                tolerance: float = TOLERANCE) -> list[str]:
  """One line per figure of `measured` more than `tolerance` over the
  record (empty when the step is within its budget)."""
  lines = []
  for name in FIGURES:
    recorded = entry.figures[name].value
    if measured[name] > recorded * (1 + tolerance):
      lines.append(
          f"{entry.name}: {name} per chip grew {measured[name] / recorded - 1:+.1%}"
          f" over the record ({measured[name]:,} against {recorded:,} bytes; "
          f"the budget allows +{tolerance:.0%})")
  return lines


def report_line(entry: Entry, measured: Mapping[str, int]) -> dict:
  """What the command prints per program: measured beside recorded."""
  line = {"program": entry.name, "config": entry.config,
          "topology": entry.topology, "step": entry.program,
          "jax": jax.__version__,
          "libtpu": topology.LIBTPU_REQUIREMENT}
  for name in FIGURES:
    recorded = entry.figures[name].value
    line[name] = measured[name]
    line[f"{name}_recorded"] = recorded
    line[f"{name}_change"] = round(measured[name] / recorded - 1, 4)
  return line


def check_all(entries: Sequence[Entry], *,
              measure_fn: Callable[[Entry], Mapping[str, int]],
              emit: Callable[[dict], None]) -> list[str]:
  """Measures every entry, emits its report line; every over-budget line."""
  problems = []
  for entry in entries:
    measured = measure_fn(entry)
    emit(report_line(entry, measured))
    problems += over_budget(entry, measured)
  return problems
