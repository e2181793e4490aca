"""Helpers shared by the benchmark scripts: timing, machine load, JSON lines.

Every benchmark prints one JSON object per measurement (`emit`) with the
machine's load average next to the numbers: on a shared host, wall-clock
times measured under load are pessimistic, so CPU time is reported too.
"""
import json
import os
import resource
import statistics
import time
from typing import Any, Callable

import jax


def load_average() -> float:
  """The 1-minute load average (runnable processes), or -1 if unknown."""
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return -1.0


def _process_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def time_repeats(fn: Callable[[], Any], *, repeats: int,
                 calls_per_repeat: int = 1) -> dict[str, float]:
  """Median wall and CPU seconds per call of `fn` over `repeats` repeats.

  `fn` must already be compiled (call it once before). Each repeat times
  `calls_per_repeat` calls and waits for the last result; the CPU time is
  that of this whole process (all its threads), so on 2 cores a fully
  parallel call has cpu_s close to 2 * wall_s on an idle machine.
  """
  walls, cpus = [], []
  for _ in range(repeats):
    cpu_start, start = _process_cpu_seconds(), time.perf_counter()
    for _ in range(calls_per_repeat):
      result = fn()
    jax.block_until_ready(result)
    walls.append((time.perf_counter() - start) / calls_per_repeat)
    cpus.append((_process_cpu_seconds() - cpu_start) / calls_per_repeat)
  return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
          "wall_s_min": min(walls)}


def cost_flops(compiled: jax.stages.Compiled) -> float:
  """FLOPs of one call of a compiled program, from XLA's cost analysis.

  With several devices the program is the per-device (SPMD partition) one,
  so callers multiply by the device count for the whole step.
  """
  from mio_jax.aot import check  # pylint: disable=g-import-not-at-top
  return float(check.cost_analysis(compiled)["flops"])


def memory_bytes(compiled: jax.stages.Compiled) -> dict[str, int]:
  """XLA's static memory plan of a compiled program (per device), in bytes.

  peak = temporaries + arguments + outputs (an upper bound on what the
  program holds at once; aliased/donated buffers are not subtracted).
  """
  stats = compiled.memory_analysis()
  temp = int(stats.temp_size_in_bytes)
  argument = int(stats.argument_size_in_bytes)
  output = int(stats.output_size_in_bytes)
  return {"temp": temp, "argument": argument, "output": output,
          "peak": temp + argument + output}


# Pretraining batches per epoch of the benchmarks' configs: with 10 epochs
# it sets a learning-rate schedule as a real run has one.
STEPS_PER_EPOCH = 1000


def step_config(args, batch_size: int):
  """The pretraining config the step benchmarks time (train_step.py,
  step_profile.py): args.model at args.image_size (CIFAR stem below 64 px),
  args.dtype, LARS unless args.optimizer says otherwise; --quick runs get a
  small projector."""
  # pylint: disable=g-import-not-at-top
  from mio_jax import config_base
  config = config_base.base_config()
  config.model.name = args.model
  config.model.stem = getattr(args, "stem", None) or (
      "cifar" if args.image_size < 64 else "imagenet")
  config.model.width_multiplier = args.width_multiplier
  if args.quick:
    config.model.projector_hidden_dim = 64
    config.model.projector_output_dim = 16
  config.dataset.image_size = args.image_size
  config.batch_size = batch_size
  config.dtype = args.dtype
  config.optimizer.name = getattr(args, "optimizer", "lars")
  config.loss_block_size = getattr(args, "loss_block_size", None)
  config.total_steps = 10 * STEPS_PER_EPOCH
  return config


def synthetic_facts(batch_size: int):
  """The data facts of the step benchmarks' synthetic batches: an epoch of
  STEPS_PER_EPOCH batches, labels of synthetic.NUM_CLASSES classes (so the
  online probe is on, as in a real run)."""
  # pylint: disable=g-import-not-at-top
  from mio_jax import recipe
  from mio_jax import synthetic
  return recipe.DataFacts(num_examples=STEPS_PER_EPOCH * batch_size,
                          num_classes=synthetic.NUM_CLASSES)


def emit(record: dict[str, Any]) -> None:
  """Prints one measurement as a JSON line, with the load and the machine."""
  record = {**record, "load_avg_1m": load_average(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__,
            "backend": jax.default_backend()}
  print(json.dumps(record), flush=True)


def matmul_peak(size: int = 2048, repeats: int = 5) -> dict[str, float]:
  """Achieved float32 GFLOP/s of a (size x size) @ (size x size) matmul.

  The practical peak of this machine for dense float32 work, measured in
  the same process as the benchmark it is compared with (one device).
  """
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (size, size), jax.numpy.float32)
  b = jax.random.normal(key_b, (size, size), jax.numpy.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(matmul(a, b))
  timing = time_repeats(lambda: matmul(a, b), repeats=repeats)
  flops = 2.0 * size**3
  return {"size": size, "gflop_per_s": flops / timing["wall_s_min"] / 1e9,
          "gflop_per_s_median": flops / timing["wall_s"] / 1e9}
