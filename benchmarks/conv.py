r"""Single 3x3 convolutions: forward, input gradient, weight gradient.

    python benchmarks/conv.py [--batch=64] [--dtype=float32] [--quick]
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution \
        python benchmarks/conv.py    # jaxlib's default convolution path

The shapes are ResNet-18 CIFAR's stride-1 3x3 convolutions (32x32x64 to
4x4x512), NHWC/HWIO; the default batch of 64 is the two views of 32 images.
Prints one JSON object per (shape, part) with GFLOP/s of the forward FLOPs
(2 * B * H * W * Cin * Cout * 9; each part does that much work).
docs/performance.md used these to choose the XLA:CPU settings.
"""
import argparse
import os
import sys

import jax
import jax.numpy as jnp

from bench_util import emit, time_repeats

SHAPES = ((32, 64), (16, 128), (8, 256), (4, 512))  # (side, channels)


def _conv(x, w):
  return jax.lax.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def main(args: argparse.Namespace) -> None:
  dtype = jnp.dtype(args.dtype)
  shapes = SHAPES[:1] if args.quick else SHAPES
  for side, channels in shapes:
    keys = jax.random.split(jax.random.key(side), 3)
    x = jax.random.normal(keys[0], (args.batch, side, side, channels), dtype)
    w = (0.05 * jax.random.normal(keys[1], (3, 3, channels, channels))
         ).astype(dtype)
    dy = jax.random.normal(keys[2], x.shape, dtype)
    parts = {
        "forward": (_conv, (x, w)),
        "input_gradient": (
            lambda w, dy: jax.vjp(lambda x: _conv(x, w), x)[1](dy)[0], (w, dy)),
        "weight_gradient": (
            lambda x, dy: jax.vjp(lambda w: _conv(x, w), w)[1](dy)[0], (x, dy)),
    }
    flops = 2 * args.batch * side * side * channels * channels * 9
    for part, (fn, inputs) in parts.items():
      compiled = jax.jit(fn).lower(*inputs).compile()
      jax.block_until_ready(compiled(*inputs))
      timing = time_repeats(lambda c=compiled, i=inputs: c(*i),
                            repeats=args.repeats)
      emit({"benchmark": "conv3x3", "part": part, "batch": args.batch,
            "side": side, "channels": channels, "dtype": args.dtype,
            "ms": round(1e3 * timing["wall_s"], 3),
            "cpu_ms": round(1e3 * timing["cpu_s"], 3),
            "gflop_per_s": round(flops / timing["wall_s"] / 1e9, 1),
            "ynnpack_fusion": "__ynn_fusion" in compiled.as_text(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")})


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--dtype", default="float32",
                      choices=["float32", "bfloat16"])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--quick", action="store_true",
                      help="the 32x32x64 shape at batch 4: seconds")
  parsed = parser.parse_args()
  if parsed.quick:
    parsed.batch, parsed.repeats = 4, 2
  # mio_jax sets the XLA:CPU flag at import, as the trainer sees it.
  import mio_jax  # pylint: disable=g-import-not-at-top,unused-import
  sys.exit(main(parsed))
