r"""Throughput of the pretraining train step (`mio_jax.pretraining`) on this machine.

    python benchmarks/train_step.py [--model=resnet18] [--image_size=32] \
        [--batch_sizes=32,128] [--devices=1] [--repeats=5] [--quick]
    python benchmarks/train_step.py --model=resnet50 --stem=imagenet \
        --image_size=224 --batch_sizes=32

Prints one JSON object first with the float32 matmul peak of this machine,
then one per (device count, batch size): source images per second (each
with two views, forward + backward + optimizer update), the median step
time after compilation, the FLOPs XLA's cost analysis counts for the step,
the achieved FLOP/s and its fraction of the matmul peak measured in the same
run. The batch is a fixed synthetic one already on the devices, so the
input pipeline is not part of it (see benchmarks/input_pipeline.py).
"""
import argparse
import os
import sys


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet18")
  parser.add_argument("--stem", default=None,
                      help="cifar | imagenet (default: cifar below 64 px)")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--width_multiplier", type=float, default=1.0)
  parser.add_argument("--batch_sizes", default="32,128",
                      help="global batch sizes (source images per step)")
  parser.add_argument("--devices", default="1",
                      help="device counts; > 1 splits the CPU into fake "
                      "devices (XLA_FLAGS), which share the same cores")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--optimizer", default="lars")
  parser.add_argument("--loss_block_size", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps_per_repeat", type=int, default=2)
  parser.add_argument("--breakdown", action="store_true",
                      help="also time the forward pass and forward + backward "
                      "(no optimizer update, no metrics) of the same step")
  parser.add_argument("--quick", action="store_true",
                      help="resnet_tiny at 8 px, batch 8: seconds")
  args = parser.parse_args()
  if args.quick:
    args.model, args.image_size, args.batch_sizes = "resnet_tiny", 8, "8"
    args.width_multiplier, args.repeats, args.steps_per_repeat = 0.5, 2, 1
  return args


ARGS = _parse_args()
_DEVICE_COUNTS = [int(d) for d in ARGS.devices.split(",")]
if max(_DEVICE_COUNTS) > 1:
  # Must be set before jax initialises its CPU backend.
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={max(_DEVICE_COUNTS)}")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
from bench_util import cost_flops, emit, matmul_peak, memory_bytes, step_config, synthetic_facts, time_repeats
from mio_jax import mesh as mesh_lib
from mio_jax import pretraining
from mio_jax import recipe
from mio_jax import synthetic
from mio_jax.aot import check

def measure(args, config, mesh, peak_gflop_s: float) -> dict:
  # The step `main` trains (pretraining.setup), with the online probe on
  # as in a real run (synthetic labels have NUM_CLASSES).
  training = pretraining.setup(config, mesh, synthetic_facts(config.batch_size))
  state = training.initial_state()
  batch = synthetic.synthetic_batch(config, mesh, 0)
  compiled = training.lower().compile()
  step_flops = cost_flops(compiled) * mesh.size
  bytes_per_device = check.cost_analysis(compiled).get("bytes accessed", 0.0)
  planned_bytes = memory_bytes(compiled)["peak"]  # per device
  holder = [state]

  def run_step():
    holder[0], metrics = compiled(holder[0], batch)
    return metrics

  jax.block_until_ready(run_step())  # warm-up: first-call allocations
  timing = time_repeats(run_step, repeats=args.repeats,
                        calls_per_repeat=args.steps_per_repeat)
  images_per_s = config.batch_size / timing["wall_s"]
  achieved = step_flops / timing["wall_s"] / 1e9
  return {
      "benchmark": "train_step", "model": config.model.name,
      "stem": config.model.stem, "image_size": config.dataset.image_size,
      "width_multiplier": config.model.width_multiplier,
      "batch_size": config.batch_size, "devices": mesh.size,
      "dtype": config.dtype, "optimizer": config.optimizer.name,
      # How float32 matmuls ran (None: JAX's default, TF32 on recent GPUs).
      "matmul_precision": jax.config.jax_default_matmul_precision,
      "loss_block_size": config.loss_block_size,
      "online_probe": state.probe is not None,
      "images_per_s": round(images_per_s, 2),
      "views_per_s": round(2 * images_per_s, 2),
      "step_s": round(timing["wall_s"], 4),
      "step_cpu_s": round(timing["cpu_s"], 4),
      "images_per_cpu_s": round(config.batch_size / timing["cpu_s"], 2),
      "gflop_per_image": round(step_flops / config.batch_size / 1e9, 3),
      "flops_per_step": step_flops,
      "bytes_accessed_per_device": bytes_per_device,
      "achieved_gflop_per_s": round(achieved, 1),
      "matmul_peak_gflop_per_s": round(peak_gflop_s, 1),
      "fraction_of_matmul_peak": round(achieved / peak_gflop_s, 3),
      "planned_peak_gib_per_device": round(planned_bytes / 2**30, 3),
      "repeats": args.repeats, "steps_per_repeat": args.steps_per_repeat,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def measure_parts(args, config, mesh) -> dict:
  """Seconds of the forward pass and of forward + backward of the step's loss.

  Same model, batch and loss as the train step
  (`pretraining.training_objective`),
  without the optimizer update and the metrics: the differences to the full
  step time say what those cost.
  """
  parts = recipe.build_recipe(config, mesh, synthetic_facts(config.batch_size))
  state = pretraining.init_state(parts)
  batch = synthetic.synthetic_batch(config, mesh, 0)

  def loss(params):
    return pretraining.training_objective(parts.model, params,
                                          state.batch_stats, batch,
                                          parts.loss_fn)[0]

  timed = {"forward": jax.jit(loss), "forward_backward": jax.jit(
      jax.value_and_grad(loss))}
  record = {"benchmark": "train_step_breakdown", "model": config.model.name,
            "image_size": config.dataset.image_size,
            "batch_size": config.batch_size, "devices": mesh.size}
  for name, fn in timed.items():
    jax.block_until_ready(fn(state.params))
    timing = time_repeats(lambda fn=fn: fn(state.params), repeats=args.repeats)
    record[f"{name}_s"] = round(timing["wall_s"], 4)
    record[f"{name}_cpu_s"] = round(timing["cpu_s"], 4)
  return record


def main(args: argparse.Namespace) -> None:
  peak = matmul_peak(size=512 if args.quick else 2048)
  emit({"benchmark": "matmul_peak", "dtype": "float32", **peak})
  for device_count in _DEVICE_COUNTS:
    mesh = mesh_lib.make_data_mesh(jax.devices()[:device_count])
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
      config = step_config(args, batch_size)
      emit(measure(args, config, mesh, peak["gflop_per_s"]))
      if args.breakdown:
        emit(measure_parts(args, config, mesh))


if __name__ == "__main__":
  sys.exit(main(ARGS))
