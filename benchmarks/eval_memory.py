r"""XLA's planned memory per device for evaluation at ImageNet scale.

Compiles (never runs) each evaluation program on abstract sharded inputs
(`jax.ShapeDtypeStruct` with a `NamedSharding`, so nothing is allocated)
over --devices fake CPU devices, and prints one JSON object per program
with XLA's memory plan per device (`memory_analysis()`: peak = arguments +
outputs + temporaries, an upper bound; peak_without_alias counts a donated
buffer reused for an output once):

  extract_write   one eval batch written into the train features' buffer
  knn             streamed kNN of the test split against the train split
  probe_stats     the feature probe's standardisation statistics
  probe_epoch     one epoch of the feature probe (one jit, a scan of steps)
  probe_score     the probe's test accuracy
  fewshot_take    copying one few-shot subset out of the train shards

and a last object with the largest of them against --budget_gib (16 GiB:
one v5e chip). Defaults: ImageNet-1k (1,281,167 train / 50,000 test
examples, ResNet-50's 2,048-d features, 1,000 classes) on 8 devices.

  python benchmarks/eval_memory.py           # ImageNet-1k, 8 devices
  python benchmarks/eval_memory.py --quick   # small shapes, seconds

The plan is XLA:CPU's; a TPU's compiler plans its own buffers (and pads
layouts), so treat the figures as estimates of the same program.
"""
import argparse
import functools
import os
import sys


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--train_examples", type=int, default=1_281_167)
  parser.add_argument("--test_examples", type=int, default=50_000)
  parser.add_argument("--dim", type=int, default=2048)
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--eval_batch_size", type=int, default=512)
  parser.add_argument("--knn_k", type=int, default=200)
  parser.add_argument("--probe_batch_size", type=int, default=256)
  parser.add_argument("--fewshot_examples", type=int, default=5_000)
  parser.add_argument("--budget_gib", type=float, default=16.0)
  parser.add_argument("--quick", action="store_true",
                      help="small shapes (a test of the script)")
  args = parser.parse_args(argv)
  if args.quick:
    args.train_examples, args.test_examples, args.dim = 5_000, 1_000, 64
    args.num_classes, args.eval_batch_size, args.knn_k = 10, 64, 20
    args.probe_batch_size = 32
    args.fewshot_examples = 50
  return args


ARGS = _parse(sys.argv[1:])
# Before JAX is imported: this many fake CPU devices.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count="
                           f"{ARGS.devices}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from bench_util import emit, memory_bytes
from mio_jax import mesh as mesh_lib
from mio_jax.evaluation import features as features_lib
from mio_jax.evaluation import knn
from mio_jax.evaluation import feature_probe

GIB = 2**30
MIB = 2**20


def _abstract_features(num_examples: int, *, batch_size: int, dim: int,
                       mesh) -> features_lib.Features:
  """Features as extraction leaves them: whole padded eval batches."""
  rows = -(-num_examples // batch_size) * batch_size
  sharding = NamedSharding(mesh, PartitionSpec(mesh_lib.DATA_AXIS))
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype,
                                                   sharding=sharding)
  return features_lib.Features(
      x=spec((rows, dim), jnp.float32), labels=spec((rows,), jnp.int32),
      valid=spec((rows,), jnp.bool_), position=spec((rows,), jnp.int32),
      num_examples=num_examples)


def _programs(args, mesh):
  """(name, lowered program) for every evaluation program, abstractly."""
  replicated = NamedSharding(mesh, PartitionSpec())
  rows = NamedSharding(mesh, PartitionSpec(mesh_lib.DATA_AXIS))
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=replicated)
  vector = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32,
                                              sharding=replicated)
  train = _abstract_features(args.train_examples, dim=args.dim, mesh=mesh,
                             batch_size=args.eval_batch_size)
  test = _abstract_features(args.test_examples, dim=args.dim, mesh=mesh,
                            batch_size=args.eval_batch_size)
  batch = lambda shape, dtype: jax.ShapeDtypeStruct(
      (args.eval_batch_size,) + shape, dtype, sharding=rows)
  stats = (vector((args.dim,)), vector((args.dim,)))
  params = {"kernel": vector((args.dim, args.num_classes)),
            "bias": vector((args.num_classes,))}
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
  devices = mesh.shape[mesh_lib.DATA_AXIS]
  yield "extract_write", features_lib._write_batch.lower(  # pylint: disable=protected-access
      train, batch((args.dim,), jnp.float32), batch((), jnp.int32),
      batch((), jnp.bool_), scalar(jnp.int32), mesh=mesh)
  yield "knn", knn._hit_counts.lower(  # pylint: disable=protected-access
      train, test, scalar(jnp.float32), k=args.knn_k,
      num_classes=args.num_classes, block_size=knn.DEFAULT_BLOCK_SIZE,
      chunk_size=knn.DEFAULT_CHUNK_SIZE, mesh=mesh)
  yield "probe_stats", feature_probe._standardization_stats.lower(  # pylint: disable=protected-access
      train.x, train.valid)
  rows_per_step = -(-args.probe_batch_size // devices)
  steps_per_epoch = train.x.shape[0] // devices // rows_per_step
  carry = jax.eval_shape(functools.partial(
      feature_probe._initial_carry, feature_dim=args.dim,  # pylint: disable=protected-access
      num_classes=args.num_classes, mesh=mesh))
  carry = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(
      leaf.shape, leaf.dtype, sharding=replicated), carry)
  yield "probe_epoch", feature_probe._train_epoch.lower(  # pylint: disable=protected-access
      carry, train, *stats, key, scalar(jnp.float32), scalar(jnp.float32),
      total_steps=100 * steps_per_epoch,  # the schedule's length only
      rows_per_step=rows_per_step, mesh=mesh)
  yield "probe_score", feature_probe._hit_counts.lower(  # pylint: disable=protected-access
      params, *stats, test, num_classes=args.num_classes)
  subset = -(-args.fewshot_examples // devices) * devices
  yield "fewshot_take", features_lib._take.lower(  # pylint: disable=protected-access
      train, jax.ShapeDtypeStruct((subset,), jnp.int32, sharding=replicated),
      num_examples=args.fewshot_examples, mesh=mesh)


def main() -> None:
  args = ARGS
  mesh = mesh_lib.make_data_mesh()
  assert mesh.size == args.devices, (mesh.size, args.devices)
  sizes = {"devices": args.devices, "train_examples": args.train_examples,
           "test_examples": args.test_examples, "dim": args.dim,
           "num_classes": args.num_classes}
  peaks = {}
  for name, lowered in _programs(args, mesh):
    compiled = lowered.compile()
    memory = memory_bytes(compiled)
    # A donated input's buffer is reused for the output: counted once here.
    memory["alias"] = int(compiled.memory_analysis().alias_size_in_bytes)
    memory["peak_without_alias"] = memory["peak"] - memory["alias"]
    peaks[name] = memory["peak"]
    emit({"benchmark": "eval_memory", "program": name, **sizes,
          **{f"{part}_mib": round(value / MIB, 2)
             for part, value in memory.items()},
          "memory_source": "XLA memory_analysis per device: temp + argument "
                           "+ output"})
  worst = max(peaks, key=peaks.get)
  emit({"benchmark": "eval_memory_budget", **sizes, "largest_program": worst,
        "largest_peak_gib": round(peaks[worst] / GIB, 3),
        "budget_gib": args.budget_gib,
        "within_budget": peaks[worst] <= args.budget_gib * GIB})


if __name__ == "__main__":
  main()
