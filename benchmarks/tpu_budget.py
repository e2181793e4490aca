r"""The TPU budget check: compile the guarded steps, compare with the record.

    python benchmarks/tpu_budget.py [--record=benchmarks/tpu_budget.json]
    make tpu-budget

Compiles every program of the record (`mio_jax.aot.budget`: the ImageNet-1K
ResNet-50 and ViT-B/16 pretraining steps on a v4-8) with libtpu, on this
machine, and prints one JSON line per program: HBM bytes accessed and the
peak memory per chip per step, beside the recorded figures. Exits with
status 1 and one line per figure that grew more than 2 % over the record;
with status 2 and one line when libtpu is missing (`make libtpu`). A change
of the record is made on purpose, in the same commit, with the reason.
Takes minutes per program (ResNet-50: 5-20 min on 2 loaded cores).
"""
import argparse
import json
import sys

import jax

# Only the compile-only TPU devices are wanted: JAX must not start a TPU
# backend from libtpu at its first use.
jax.config.update("jax_platforms", "cpu")

# pylint: disable=g-import-not-at-top,wrong-import-position
from mio_jax import errors
from mio_jax.aot import budget


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--record", default=str(budget.RECORD))
  args = parser.parse_args()
  log = lambda line: print(line, file=sys.stderr, flush=True)
  try:
    problems = budget.check_all(
        budget.load(args.record),
        measure_fn=lambda entry: budget.measure(entry, log=log),
        emit=lambda line: print(json.dumps(line), flush=True))
  except errors.UserError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  for line in problems:
    print(f"over budget: {line}", file=sys.stderr)
  if problems:
    print(f"If the growth is on purpose, record the new figures in "
          f"{args.record} with the reason, in the same commit.",
          file=sys.stderr)
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
