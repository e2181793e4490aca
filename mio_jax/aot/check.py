"""Compile a config's steps for a TPU slice; HBM per chip and a roofline.

`check(config, tpu_slice, devices=...)` validates the config as training
does (`config_validation.validate_config` with the slice's chip count),
builds each program of `programs` on a mesh of the slice's devices,
compiles it and reads XLA's figures per chip:

  * memory (`compiled.memory_analysis()`): peak = arguments + temporaries
    + outputs - aliased (donated state), plus what extraction keeps
    resident. It fits when the TPU compiler accepts the program (it
    refuses one that cannot fit with RESOURCE_EXHAUSTED, and near the limit
    it rematerialises activations, so the plan can reach a little past the
    "available HBM" its refusals name, `chips.Chip.hbm_usable_gib`) and
    what is kept resident fits beside it;
  * cost (`compiled.cost_analysis()`): "flops" and "bytes accessed" of one
    chip's program per step. The roofline bound on a step's time is
    max(FLOPs / peak FLOP/s, bytes / HBM bandwidth): no step can be faster,
    whatever the input pipeline. (XLA's "optimal_seconds" is negative on
    libtpu 0.0.42.1 and is not used.)

A program that does not fit (the TPU compiler refuses it with
RESOURCE_EXHAUSTED, or what its process keeps resident does not fit beside
its peak in the usable HBM) gets the largest
global batch that fits: a line through the measured (batch, bytes) points,
checked by compiling at its estimate, at most `search_compiles` times.
Every figure is a bound from the compiler's counts, not a measurement.
"""
import dataclasses
import math
import re
import time
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections

from mio_jax import chips
from mio_jax import errors
from mio_jax import mesh as mesh_lib
from mio_jax.aot import programs as programs_lib
from mio_jax.aot import topology

GIB = 2**30


class DoesNotFitError(errors.UserError, RuntimeError):
  """A step needs more HBM per chip than the slice's chips have."""


class OutOfMemory(Exception):
  """The TPU compiler refused a program: it does not fit in HBM.

  required_bytes: what the message says the program's temporaries need
  (None if it names no figure); available_bytes: the HBM it had.
  """

  def __init__(self, message: str, required_bytes: Optional[int] = None,
               available_bytes: Optional[int] = None):
    super().__init__(message)
    self.required_bytes = required_bytes
    self.available_bytes = available_bytes


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# libtpu 0.0.42.1: "...the total memory required for HLO temporaries
# (26.50G) exceeds available HBM (15.75G)"; older releases: "Used 20.5G of
# 15.48G hbm".
_OOM_PATTERNS = (
    re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds "
               r"available HBM \(([\d.]+)([KMGT])\)"),
    re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"),
)


def out_of_memory(message: str) -> OutOfMemory:
  """An OutOfMemory with the figures of a RESOURCE_EXHAUSTED message."""
  first = message.strip().splitlines()[0] if message.strip() else message
  for pattern in _OOM_PATTERNS:
    match = pattern.search(message)
    if match:
      need, need_unit, have, have_unit = match.groups()
      return OutOfMemory(first, int(float(need) * _UNITS[need_unit]),
                         int(float(have) * _UNITS[have_unit]))
  return OutOfMemory(first)


@dataclasses.dataclass(frozen=True)
class Compiled:
  """What one compile tells about one chip's program."""
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  flops: float
  bytes_accessed: float

  @property
  def peak_bytes(self) -> int:
    return (self.argument_bytes + self.temp_bytes + self.output_bytes
            - self.alias_bytes)


Compiler = Callable[[jax.stages.Lowered], Compiled]


def cost_analysis(compiled: jax.stages.Compiled) -> dict[str, float]:
  """XLA's cost analysis of a compiled program (per device): "flops",
  "bytes accessed", ...; {} where the backend gives none (a compile-only
  GPU client, jax-cuda12 0.10.2: zeros then leave the roofline unset)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  return dict(cost or {})


def xla_compile(lowered: jax.stages.Lowered) -> Compiled:
  """Compiles `lowered`; raises OutOfMemory when the compiler refuses it."""
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" in str(e):
      raise out_of_memory(str(e)) from None
    raise
  memory = compiled.memory_analysis()
  cost = cost_analysis(compiled)
  return Compiled(argument_bytes=int(memory.argument_size_in_bytes),
                  output_bytes=int(memory.output_size_in_bytes),
                  alias_bytes=int(memory.alias_size_in_bytes),
                  temp_bytes=int(memory.temp_size_in_bytes),
                  flops=float(cost.get("flops", 0.0)),
                  bytes_accessed=float(cost.get("bytes accessed", 0.0)))


# ---- one program ---------------------------------------------------------------


@dataclasses.dataclass
class StepReport:
  """One program on one slice: memory, roofline, the whole run's length."""
  program: str
  batch_key: str
  batch_size: int  # global
  compile_s: float
  fits: bool
  peak_per_chip_gib: float  # arguments + temporaries + outputs - aliased + resident
  arguments_gib: float
  temporaries_gib: float
  outputs_gib: float
  aliased_gib: float
  resident_gib: float
  flops_per_step: Optional[float] = None  # per chip
  bytes_per_step: Optional[float] = None  # per chip, HBM bytes accessed
  step_time_bound_s: Optional[float] = None
  bound: Optional[str] = None  # "flops" | "hbm_bytes": which term is larger
  images_per_s_bound: Optional[float] = None  # global
  mfu_bound: Optional[float] = None
  steps: int = 0  # of the config's whole run of this program
  run_hours_bound: Optional[float] = None
  run_chip_hours_bound: Optional[float] = None
  # The largest global batch that fits: found by compiling when this one
  # does not fit (checked True once a compile confirmed it), else an
  # estimate from this compile's figures (temporaries grow with the batch).
  largest_batch: Optional[int] = None
  largest_batch_checked: bool = False
  compiler_message: Optional[str] = None  # the compiler's refusal, if any


def roofline(flops: float, bytes_accessed: float, chip: chips.Chip, *,
             batch_size: int) -> dict[str, Any]:
  """The roofline bound of one step from its per-chip FLOPs and HBM bytes.

  step_time_bound_s = max(FLOPs / peak bf16 FLOP/s, bytes / HBM bandwidth);
  bound: which of the two is larger ("flops" or "hbm_bytes");
  images_per_s_bound = batch_size (global) / that time; mfu_bound: the
  model FLOP utilisation at that time (1.0 when FLOP-bound).
  """
  flop_s = flops / chip.peak_flops("bfloat16")
  byte_s = bytes_accessed / chip.hbm_bytes_per_s
  seconds = max(flop_s, byte_s)
  return {"flops_per_step": flops, "bytes_per_step": bytes_accessed,
          "step_time_bound_s": seconds if seconds > 0 else None,
          "bound": (None if seconds <= 0 else
                    "flops" if flop_s >= byte_s else "hbm_bytes"),
          "images_per_s_bound": batch_size / seconds if seconds > 0 else None,
          "mfu_bound": flop_s / seconds if seconds > 0 else None}


def _roofline(report: "StepReport", compiled: Compiled, chip: chips.Chip,
              num_chips: int) -> None:
  for key, value in roofline(compiled.flops, compiled.bytes_accessed, chip,
                             batch_size=report.batch_size).items():
    setattr(report, key, value)
  if report.step_time_bound_s:
    report.run_hours_bound = report.steps * report.step_time_bound_s / 3600
    report.run_chip_hours_bound = report.run_hours_bound * num_chips


@dataclasses.dataclass(frozen=True)
class _Attempt:
  """One compile at one batch: its need per chip, or the refusal."""
  batch_size: int
  need_bytes: int
  fits: bool
  compiled: Optional[Compiled] = None
  refusal: Optional[OutOfMemory] = None
  seconds: float = 0.0


def _attempt(program: programs_lib.Program, compile_fn: Compiler,
             usable_bytes: int) -> _Attempt:
  start = time.monotonic()
  try:
    compiled = compile_fn(program.lower())
  except OutOfMemory as refusal:
    # The message gives the temporaries; the arguments come from the shapes.
    need = (refusal.required_bytes or usable_bytes + 1) + (
        program.argument_bytes_per_chip + program.resident_bytes_per_chip)
    return _Attempt(program.batch_size, need, False, refusal=refusal,
                    seconds=time.monotonic() - start)
  # The compiler fits the program itself into HBM (rematerialising
  # activations when it must, at a cost in FLOPs) or refuses it above; its
  # plan may then use a little more than the "available HBM" its refusals
  # name. What the program's process keeps beside it (extraction's
  # features) must fit in what is left.
  need = compiled.peak_bytes + program.resident_bytes_per_chip
  fits = program.resident_bytes_per_chip == 0 or need <= usable_bytes
  return _Attempt(program.batch_size, need, fits, compiled,
                  seconds=time.monotonic() - start)


def _estimate(points: Sequence[_Attempt], fixed_bytes: int, usable_bytes: int,
              multiple: int) -> int:
  """The batch whose need reaches the usable HBM, on a line, rounded down.

  Two points or more: the line through the last two. One point: a line
  through it and `fixed_bytes` at batch 0 (what does not grow with it).
  """
  (b1, n1), (b2, n2) = ((0, fixed_bytes), (points[-1].batch_size,
                                            points[-1].need_bytes))
  if len(points) >= 2 and points[-2].batch_size != points[-1].batch_size:
    b1, n1 = points[-2].batch_size, points[-2].need_bytes
  slope = (n2 - n1) / (b2 - b1) if b2 != b1 else 0
  if slope <= 0:
    return 0
  batch = b1 + (usable_bytes - n1) / slope
  return max(0, int(math.floor(batch / multiple)) * multiple)


def _with_batch(config: ml_collections.ConfigDict, key: str,
                batch_size: int) -> ml_collections.ConfigDict:
  changed = config.copy_and_resolve_references()
  changed.update_from_flattened_dict({key: int(batch_size)})
  return changed


def _batch_multiple(config: ml_collections.ConfigDict, name: str,
                    num_chips: int) -> int:
  """What a program's global batch must be a multiple of on this slice."""
  if name == "pretrain" and config.loss_block_size:
    return num_chips * int(config.loss_block_size)
  return num_chips


def _largest_batch(config, name: str, mesh, info, points: list[_Attempt], *,
                   compile_fn: Compiler, usable_bytes: int, fixed_bytes: int,
                   search_compiles: int, log) -> tuple[Optional[int], bool]:
  """(largest global batch that fits, whether a compile confirmed it).

  Each try compiles at the batch where the line through the last two
  (batch, need) points meets the usable HBM, kept between the largest batch
  known to fit and the smallest known not to; it stops when the line
  points at a batch already known to fit.
  """
  multiple = _batch_multiple(config, name, mesh.size)
  key = programs_lib.BATCH_KEYS[name]
  best = max((p.batch_size for p in points if p.fits), default=None)
  fail = min((p.batch_size for p in points if not p.fits), default=None)

  def estimate() -> int:
    batch = _estimate(points, fixed_bytes, usable_bytes, multiple)
    return batch if fail is None else min(batch, fail - multiple)

  for _ in range(search_compiles):
    batch = estimate()
    if batch < multiple or (best is not None and batch <= best):
      break
    log(f"  {name}: compiling at {key}={batch} to find the largest batch "
        "that fits")
    attempt = _attempt(programs_lib.build(name, _with_batch(config, key, batch),
                                          mesh, info),
                       compile_fn, usable_bytes)
    points.append(attempt)
    if attempt.fits:
      best = max(batch, best or 0)
    else:
      fail = min(batch, fail or batch)
  if best is not None:
    return best, True
  return (estimate() if estimate() >= multiple else None), False


def check_program(config: ml_collections.ConfigDict, name: str, mesh, info, *,
                  chip: chips.Chip, compile_fn: Compiler = xla_compile,
                  search_compiles: int = 3, log=print) -> StepReport:
  """Compiles program `name` of `config` on `mesh`; its StepReport."""
  program = programs_lib.build(name, config, mesh, info)
  usable = int(chip.hbm_limit_gib * GIB)
  first = _attempt(program, compile_fn, usable)
  compiled = first.compiled
  gib = lambda b: b / GIB
  report = StepReport(
      program=name, batch_key=program.batch_key,
      batch_size=program.batch_size, compile_s=round(first.seconds, 1),
      fits=first.fits, peak_per_chip_gib=gib(first.need_bytes),
      arguments_gib=gib(compiled.argument_bytes if compiled
                        else program.argument_bytes_per_chip),
      temporaries_gib=gib(compiled.temp_bytes if compiled else (
          first.refusal.required_bytes or 0)),
      outputs_gib=gib(compiled.output_bytes if compiled else 0),
      aliased_gib=gib(compiled.alias_bytes if compiled else 0),
      resident_gib=gib(program.resident_bytes_per_chip), steps=program.steps,
      compiler_message=first.refusal and str(first.refusal))
  if compiled is not None:
    _roofline(report, compiled, chip, mesh.size)
  if first.fits:
    # No compile: the line through this point and the fixed bytes.
    estimate = _estimate([first], compiled.argument_bytes
                         + program.resident_bytes_per_chip, usable,
                         _batch_multiple(config, name, mesh.size))
    report.largest_batch = max(estimate, program.batch_size)
  else:
    fixed = (compiled.argument_bytes if compiled
             else program.argument_bytes_per_chip) + program.resident_bytes_per_chip
    report.largest_batch, report.largest_batch_checked = _largest_batch(
        config, name, mesh, info, [first], compile_fn=compile_fn,
        usable_bytes=usable, fixed_bytes=fixed,
        search_compiles=search_compiles, log=log)
  return report


# ---- the whole check -------------------------------------------------------------


@dataclasses.dataclass
class Report:
  """A config compiled for one slice."""
  config: str
  topology: str  # the accelerator type, gcloud's name
  libtpu_topology: str
  chip: str
  chips: int
  hosts: int
  chips_per_host: int
  hbm_per_chip_gib: float
  hbm_usable_gib: float
  peak_bf16_tflops: float
  hbm_gb_per_s: float
  chip_source: str
  chip_figures_from_memory: list[str]
  dtype: str
  augment_on_device: bool
  steps: dict[str, StepReport]
  run_hours_bound: Optional[float]  # pretraining's whole run
  run_chip_hours_bound: Optional[float]
  compile_s: float
  jax_version: str = jax.__version__
  libtpu: str = topology.LIBTPU_REQUIREMENT

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @property
  def not_fitting(self) -> list[StepReport]:
    return [s for s in self.steps.values() if not s.fits]


def check(config: ml_collections.ConfigDict, tpu_slice: topology.TpuSlice, *,
          devices: Sequence[jax.Device], names: Sequence[str] = programs_lib.NAMES,
          config_name: str = "", compile_fn: Compiler = xla_compile,
          search_compiles: int = 3, log=print) -> Report:
  """Compiles the programs `names` of `config` for `tpu_slice`'s `devices`.

  devices: one per chip, e.g. `topology.compile_only_devices(tpu_slice)`.
  Raises config_validation.ConfigError for a config that training would
  refuse on this many chips.
  """
  # Imported here: they load TensorFlow (data) and the whole training stack.
  from mio_jax import config_validation  # pylint: disable=g-import-not-at-top
  from mio_jax import data  # pylint: disable=g-import-not-at-top
  for name in names:
    errors.check_one_of("programs", name, programs_lib.NAMES)
  config_validation.validate_config(config, device_count=len(devices))
  hosts = len({d.process_index for d in devices})
  mesh = mesh_lib.make_data_mesh(devices)
  info = data.dataset_info(config)
  chip = tpu_slice.chip
  start = time.monotonic()
  steps = {}
  for name in names:
    log(f"  compiling {name} at {programs_lib.BATCH_KEYS[name]}="
        f"{config[programs_lib.BATCH_KEYS[name]]} ...")
    steps[name] = check_program(config, name, mesh, info, chip=chip,
                                compile_fn=compile_fn,
                                search_compiles=search_compiles, log=log)
  pretrain = steps.get("pretrain")
  return Report(
      config=config_name, topology=tpu_slice.accelerator_type,
      libtpu_topology=tpu_slice.topology, chip=chip.name,
      chips=len(devices), hosts=hosts, chips_per_host=len(devices) // hosts,
      hbm_per_chip_gib=chip.hbm_gib,
      hbm_usable_gib=chip.hbm_limit_gib,
      peak_bf16_tflops=chip.peak_tflops["bfloat16"],
      hbm_gb_per_s=chip.hbm_gb_per_s, chip_source=chip.source,
      chip_figures_from_memory=list(chip.from_memory), dtype=str(config.dtype),
      augment_on_device=bool(config.augment.on_device), steps=steps,
      run_hours_bound=pretrain and pretrain.run_hours_bound,
      run_chip_hours_bound=pretrain and pretrain.run_chip_hours_bound,
      compile_s=round(time.monotonic() - start, 1))



# ---- what the command prints ---------------------------------------------------


def _fmt(value: Optional[float], spec: str) -> str:
  return "-" if value is None else format(value, spec)


def table(report: Report) -> str:
  """The report as a short text table."""
  lines = [
      f"{report.config or 'config'} on {report.topology}: {report.chips} x "
      f"{report.chip} ({report.hosts} host(s) x {report.chips_per_host} "
      f"chips; libtpu {report.libtpu_topology}), {report.dtype}, "
      f"augment.on_device={report.augment_on_device}",
      f"per chip: {report.hbm_per_chip_gib:g} GiB HBM ({report.hbm_usable_gib:g} "
      f"usable), {report.peak_bf16_tflops:g} TFLOP/s bf16, "
      f"{report.hbm_gb_per_s:g} GB/s",
      f"{'step':<12}{'batch':>7}{'GiB/chip':>10}{'fits':>6}{'TFLOP':>8}"
      f"{'GB':>8}{'bound':>7}{'step s':>9}{'images/s':>10}{'MFU':>6}"
      f"{'run h':>8}{'chip-h':>9}{'compile s':>11}"]
  for step in report.steps.values():
    lines.append(
        f"{step.program:<12}{step.batch_size:>7}{step.peak_per_chip_gib:>10.2f}"
        f"{'yes' if step.fits else 'NO':>6}"
        f"{_fmt(step.flops_per_step and step.flops_per_step / 1e12, '.3f'):>8}"
        f"{_fmt(step.bytes_per_step and step.bytes_per_step / 1e9, '.1f'):>8}"
        f"{({'flops': 'FLOPs', 'hbm_bytes': 'HBM'}).get(step.bound, '-'):>7}"
        f"{_fmt(step.step_time_bound_s, '.4f'):>9}"
        f"{_fmt(step.images_per_s_bound, ',.0f'):>10}"
        f"{_fmt(step.mfu_bound, '.2f'):>6}{_fmt(step.run_hours_bound, '.2f'):>8}"
        f"{_fmt(step.run_chip_hours_bound, '.1f'):>9}{step.compile_s:>11.1f}")
  lines.append("Bounds from the compiler's counts (per chip: FLOPs / peak, "
               "bytes / HBM bandwidth), not measurements; TFLOP and GB per "
               "chip per step; run h: the config's whole run of that step.")
  return "\n".join(lines)


def does_not_fit_message(report: Report) -> Optional[str]:
  """One line naming each step that does not fit, or None when all fit."""
  parts = []
  for step in report.not_fitting:
    if step.largest_batch:
      checked = "" if step.largest_batch_checked else " (estimated, not compiled)"
      fix = (f"the largest global batch that fits is {step.largest_batch}"
             f"{checked}: --config.{step.batch_key}={step.largest_batch}")
    else:
      fix = "no batch fits on this slice; use a larger slice or chip"
    parts.append(
        f"the {step.program} step ({step.batch_key}={step.batch_size}) needs "
        f"{step.peak_per_chip_gib:.2f} GiB per chip, more than the "
        f"{report.hbm_usable_gib:g} GiB a {report.chip} chip has usable "
        f"({report.hbm_per_chip_gib:g} GiB HBM); {fix}")
  if not parts:
    return None
  return (f"{report.config or 'the config'} does not fit a {report.topology}: "
          + "; ".join(parts))
