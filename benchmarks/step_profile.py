r"""Where the train step's time goes, by op class, on one CPU thread.

    taskset -c 0 python benchmarks/step_profile.py [--model=resnet18] \
        [--batch_size=32] [--steps=2] [--quick]

Runs pretraining's step (`pretraining.setup`, as benchmarks/train_step.py) under
`jax.profiler` and sums each compiled op's trace events per step, grouped
by class: convolutions forward / input gradient / weight gradient (with
their FLOPs and GFLOP/s), YNNPACK fusions (elementwise chains and the
convolutions XLA hands them), transposes and copies, other XLA fusions,
reductions. Prints one JSON object per class, then one per convolution
shape, then the largest single ops.

One thread (`--xla_cpu_multi_thread_eigen=false`, set here; pin the process
to one core with taskset) because XLA:CPU's trace attributes an op's time
only on the thread that runs it: with several threads, convolutions hand
work to a pool the trace does not attribute, and ops that run concurrently
overlap. On one thread the per-op times add up to the step time (the
record says how closely), so the classes can be compared with a
`torch.profiler` table of the public PyTorch code on one thread
(benchmarks/peer_step_profile.py).
"""
import argparse
import collections
import gzip
import json
import os
import re
import sys
import tempfile


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet18")
  parser.add_argument("--image_size", type=int,
                      help="default 32 (8 with --quick)")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--width_multiplier", type=float, default=1.0)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--top", type=int, default=10,
                      help="also print the N largest single ops")
  parser.add_argument("--quick", action="store_true",
                      help="resnet_tiny at 8 px, batch 8: seconds")
  return parser.parse_args()


ARGS = _parse_args()
# Before jax starts its CPU backend; mio_jax adds its own flag after this.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_multi_thread_eigen=false").strip()

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
from bench_util import emit, step_config, synthetic_facts
from mio_jax import mesh as mesh_lib
from mio_jax import synthetic
from mio_jax import pretraining


_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(")


def _dims(shape: str) -> list[int]:
  return [int(d) for d in re.findall(r"\d+", shape.split("{")[0].split("[", 1)[1])]


def _instructions(hlo: str) -> dict[str, tuple[str, str, str]]:
  """name -> (opcode, shape, line) of the entry computation's instructions;
  a fusion's line has its fused computation's body appended."""
  bodies = {}
  for match in re.finditer(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo,
                           re.M | re.S):
    bodies[match.group(1)] = match.group(2)
  found = {}
  for line in hlo[hlo.index("ENTRY"):].splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      called = re.search(r"calls=%?([\w.\-]+)", line)
      body = bodies.get(called.group(1), "") if called else ""
      found[match.group(1)] = (match.group(3), match.group(2),
                               line + "\n" + body)
  return found


def _kernel(line: str, instructions) -> list[int]:
  """The dimensions of a convolution's second operand (its kernel)."""
  operands = re.search(r"convolution\(([^)]*)\)", line).group(1).split(", ")
  return _dims(instructions[operands[1].lstrip("%")][1])


def forward_kernel_shapes(instructions) -> set[tuple[int, ...]]:
  """The kernels of the forward convolutions, as sorted dimensions: what a
  weight gradient outputs (in whichever layout XLA chose)."""
  return {tuple(sorted(_kernel(line.split("\n")[0], instructions)))
          for name, (opcode, _, line) in instructions.items()
          if opcode == "convolution" and name.startswith("conv_general_dilated")}


def _convolution_flops(line: str, instructions) -> int:
  """2 x output elements x (window taps x input features) of a convolution."""
  line = line.split("\n")[0]
  output = _dims(_INSTRUCTION.match(line).group(2))
  kernel = _kernel(line, instructions)
  kernel_labels = re.search(r"dim_labels=\w+_(\w+)->", line).group(1)
  flops = 2
  for size in output:
    flops *= size
  for label, size in zip(kernel_labels, kernel):
    if label.isdigit() or label == "i":
      flops *= size
  return flops


def classify(name: str, instructions,
             kernel_shapes: set[tuple[int, ...]]) -> tuple[str, str]:
  """(class, detail) of one compiled op; kernel_shapes: forward_kernel_shapes."""
  opcode, shape, line = instructions[name]
  line = line if opcode == "fusion" else line.split("\n")[0]
  if opcode == "convolution":
    # XLA names the forward convolutions after the jax op; the backward ones
    # are its transposes, and a weight gradient outputs a kernel.
    if name.startswith("conv_general_dilated"):
      kind = "conv forward"
    elif tuple(sorted(_dims(shape))) in kernel_shapes:
      kind = "conv weight gradient"
    else:
      kind = "conv input gradient"
    return kind, shape.split("{")[0]
  if '"__ynn_fusion"' in line:
    return ("ynnpack fusion with a convolution" if " convolution(" in line
            else "ynnpack elementwise/reduce fusion"), ""
  if opcode in ("copy", "transpose") or "transpose" in name or "copy" in name:
    return "transpose/copy", ""
  if opcode == "dot" or "dot" in name:
    return "dot", ""
  if "reduce" in name:
    return "xla reduce fusion", ""
  return "other xla fusion", ""


def main(args: argparse.Namespace) -> None:
  if args.quick:
    args.model, args.batch_size, args.steps = "resnet_tiny", 8, 1
    args.width_multiplier = 0.5
  args.image_size = args.image_size or (8 if args.quick else 32)
  config = step_config(args, args.batch_size)
  mesh = mesh_lib.make_data_mesh(jax.devices()[:1])
  # As a real run (and benchmarks/train_step.py): the online probe on.
  training = pretraining.setup(config, mesh, synthetic_facts(config.batch_size))
  state = training.initial_state()
  batch = synthetic.synthetic_batch(config, mesh, 0)
  compiled = training.lower().compile()
  instructions = _instructions(compiled.as_text())
  kernel_shapes = forward_kernel_shapes(instructions)
  holder = [state]

  def step():
    holder[0], metrics = compiled(holder[0], batch)
    return metrics

  for _ in range(2):
    jax.block_until_ready(step())
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for _ in range(args.steps):
      jax.block_until_ready(step())
    jax.profiler.stop_trace()
    trace_file = next(os.path.join(root, f) for root, _, files in
                      os.walk(trace_dir) for f in files
                      if f.endswith(".trace.json.gz"))
    events = json.load(gzip.open(trace_file))["traceEvents"]

  op_ms = collections.Counter()
  step_ms = 0.0
  for event in events:
    if event.get("ph") != "X":
      continue
    if event["name"] in instructions:
      op_ms[event["name"]] += event["dur"] / 1e3 / args.steps
    elif event["name"].startswith("ThunkExecutor::Execute (wait"):
      step_ms += event["dur"] / 1e3 / args.steps
  by_class, flops, by_shape, ops = (collections.Counter(), collections.Counter(),
                                    collections.Counter(), collections.Counter())
  for name, ms in op_ms.items():
    kind, detail = classify(name, instructions, kernel_shapes)
    by_class[kind] += ms
    ops[kind] += 1
    if kind.startswith("conv "):
      conv_flops = _convolution_flops(instructions[name][2], instructions)
      flops[kind] += conv_flops
      by_shape[(kind, detail)] += ms
      flops[(kind, detail)] += conv_flops
  total = sum(by_class.values())
  common = {"benchmark": "step_profile", "model": args.model,
            "batch_size": args.batch_size, "dtype": args.dtype,
            "threads": 1, "step_ms": round(step_ms, 1),
            "sum_of_ops_ms": round(total, 1)}
  for kind, ms in by_class.most_common():
    record = {**common, "op_class": kind, "ops": ops[kind], "ms": round(ms, 1),
              "share": round(ms / total, 3)}
    if flops[kind]:
      record.update(gflop=round(flops[kind] / 1e9, 2),
                    gflop_per_s=round(flops[kind] / ms / 1e6, 1))
    emit(record)
  for (kind, shape), ms in by_shape.most_common():
    emit({**common, "op_class": kind, "output_shape": shape,
          "ms": round(ms, 1), "gflop": round(flops[(kind, shape)] / 1e9, 2),
          "gflop_per_s": round(flops[(kind, shape)] / ms / 1e6, 1)})
  for name, ms in op_ms.most_common(args.top):
    emit({**common, "op": name,
          "op_class": classify(name, instructions, kernel_shapes)[0],
          "output_shape": instructions[name][1].split("{")[0],
          "ms": round(ms, 2)})


if __name__ == "__main__":
  sys.exit(main(ARGS))
