r"""Time and memory of the pair loss, forward + backward, dense and chunked.

    python benchmarks/loss.py [--sizes=256,512,...,16384] [--dim=128] \
        [--block_size=256] [--memory_budget_mib=1024] [--devices=1] [--quick]

For each N (images per batch; 2N embeddings of dimension d) and each form
(dense: all (2N, 2N) logits at once; chunked: `block_size` images at a
time, `losses.make_loss(..., block_size=...)`), prints one JSON object:
the median time of `jax.value_and_grad` with respect to both views, and
XLA's static memory plan of that compiled program (`memory_analysis()`:
peak = temporaries + arguments + outputs; not process RSS). Programs whose
planned peak exceeds --max_run_mib are compiled and sized but not run (a
dense N = 16384 plans more than 20 GiB). A last object names the N from
which the dense loss exceeds --memory_budget_mib while the chunked one fits.

--devices=D > 1 splits the CPU into D fake devices (XLA_FLAGS; they share
the same cores) and times each form twice on a batch sharded over them:
`make_loss(..., mesh=)`, which splits the anchors over the devices
("anchors": "split"), and the same loss without the mesh under jit
("anchors": "jit_sharded", what XLA makes of the global-batch function);
with one device "anchors" is "one_device".
Memory is then per device, and block_size must divide N / D.
"""
import argparse
import os
import sys

# Importing jax does not start its backends, so XLA_FLAGS set after the
# arguments are parsed (--devices) still apply.
from mio_jax import losses


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default=",".join(
      str(256 * 2**i) for i in range(7)), help="N, images per batch")
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--loss", default="mio", choices=list(losses.LOSSES))
  parser.add_argument("--block_size", type=int, default=256)
  parser.add_argument("--memory_budget_mib", type=float, default=1024)
  parser.add_argument("--max_run_mib", type=float, default=4096,
                      help="do not run programs planning more than this")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--devices", type=int, default=1,
                      help="> 1: fake CPU devices, split vs jit-sharded")
  parser.add_argument("--quick", action="store_true",
                      help="N = 128, 512 with blocks of 64: seconds")
  args = parser.parse_args()
  if args.quick:
    args.sizes, args.block_size, args.repeats = "128,512", 64, 2
    # Between the streamed (5 MiB) and the dense (13 MiB) plan at N = 512.
    args.memory_budget_mib = 6.0
  return args


ARGS = _parse_args()
if ARGS.devices > 1:
  # Must be set before jax initialises its CPU backend.
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={ARGS.devices}")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp

from bench_util import emit, memory_bytes, time_repeats
from mio_jax import mesh as mesh_lib

MIB = 2**20


def measure(args: argparse.Namespace, num_images: int, block_size, *,
            data_mesh, loss_mesh) -> dict:
  """One record; inputs sharded over data_mesh (None: one device), the
  loss built with mesh=loss_mesh."""
  loss_fn = losses.make_loss(args.loss, temperature=0.5, block_size=block_size,
                             mesh=loss_mesh)
  key1, key2 = jax.random.split(jax.random.key(num_images))
  u1 = jax.random.normal(key1, (num_images, args.dim), jnp.float32)
  u2 = u1 + 0.5 * jax.random.normal(key2, (num_images, args.dim), jnp.float32)
  if data_mesh is not None:
    u1, u2 = jax.device_put((u1, u2), mesh_lib.batch_sharding(data_mesh))
  compiled = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1))).lower(
      u1, u2).compile()
  memory = memory_bytes(compiled)
  record = {
      "benchmark": "loss_forward_backward", "loss": args.loss,
      "n": num_images, "dim": args.dim,
      "form": "dense" if block_size is None else "chunked",
      "block_size": block_size, "devices": args.devices,
      "anchors": ("one_device" if data_mesh is None else
                  "split" if loss_mesh is not None else "jit_sharded"),
      "peak_mib": round(memory["peak"] / MIB, 2),
      "temp_mib": round(memory["temp"] / MIB, 2),
      "memory_source": "XLA memory_analysis: temp + argument + output",
      "within_budget": memory["peak"] <= args.memory_budget_mib * MIB,
      "memory_budget_mib": args.memory_budget_mib,
      "time_ms": None, "cpu_ms": None,
  }
  if memory["peak"] > args.max_run_mib * MIB:
    record["skipped"] = f"planned peak above --max_run_mib={args.max_run_mib}"
    return record
  jax.block_until_ready(compiled(u1, u2))
  timing = time_repeats(lambda: compiled(u1, u2), repeats=args.repeats)
  record.update(time_ms=round(1e3 * timing["wall_s"], 3),
                cpu_ms=round(1e3 * timing["cpu_s"], 3),
                repeats=args.repeats)
  return record


def main(args: argparse.Namespace) -> None:
  mesh = (mesh_lib.make_data_mesh(jax.devices()[:args.devices])
          if args.devices > 1 else None)
  records = []
  for num_images in (int(n) for n in args.sizes.split(",")):
    forms = [None]
    if (num_images % (args.block_size * args.devices) == 0
        and num_images > args.block_size):
      forms.append(args.block_size)
    for block_size in forms:
      for loss_mesh in dict.fromkeys((None, mesh)):  # jit-sharded, split
        records.append(measure(args, num_images, block_size, data_mesh=mesh,
                               loss_mesh=loss_mesh))
        emit(records[-1])
  over = [r["n"] for r in records if r["form"] == "dense"
          and r["anchors"] != "jit_sharded" and not r["within_budget"]]
  first_over = min(over, default=None)
  chunked_fits = any(r["n"] == first_over and r["form"] == "chunked"
                     and r["anchors"] != "jit_sharded" and r["within_budget"]
                     for r in records)
  emit({"benchmark": "loss_memory_budget", "loss": args.loss,
        "dim": args.dim, "memory_budget_mib": args.memory_budget_mib,
        "block_size": args.block_size,
        "first_n_dense_over_budget": first_over,
        "chunked_within_budget_at_that_n": chunked_fits})


if __name__ == "__main__":
  sys.exit(main(ARGS))
