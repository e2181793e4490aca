r"""The public PyTorch MIO code's train step under torch.profiler, by op class.

    taskset -c 0 /tmp/peer/venv/bin/python benchmarks/peer_step_profile.py \
        --peer=/tmp/peer/miossl [--bench_dir=../shared/bench] \
        [--arch=resnet18] [--batch=32] [--threads=1]

The counterpart of benchmarks/step_profile.py for the peer (set up as
../shared/bench/README.md says; run with the peer's venv, which has torch).
The step is built by the shared harness (`peer_torch_mio.build_net`,
`build_optimizer`: the peer's MIONet, MIOLoss and LARS, two views, forward,
backward, update). Prints one JSON object per op class with its self CPU
milliseconds per step, then the largest ops with their input shapes.
"""
import argparse
import collections
import json
import os
import sys


def _op_class(name: str) -> str:
  if name == "aten::convolution_backward":
    return "conv input + weight gradient"
  if name in ("aten::mkldnn_convolution", "aten::convolution",
              "aten::_convolution", "aten::conv2d"):
    return "conv forward"
  if "batch_norm" in name:
    return "batchnorm"
  if name in ("aten::addmm", "aten::mm", "aten::matmul", "aten::linear"):
    return "dot"
  if "threshold" in name or "relu" in name or "clamp" in name:
    return "relu"
  if name.startswith("Optimizer"):
    return "optimizer (own time)"
  return "other"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--peer", required=True,
                      help="checkout holding miossl/ (the peer)")
  parser.add_argument("--bench_dir", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
      "bench"), help="folder of peer_torch_mio.py")
  parser.add_argument("--arch", default="resnet18")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--top", type=int, default=10)
  args = parser.parse_args()
  sys.path[:0] = [os.path.abspath(args.bench_dir), os.path.abspath(args.peer)]
  # pylint: disable=g-import-not-at-top
  import peer_torch_mio
  import torch
  from miossl.losses import MIOLoss
  from torch import profiler

  torch.set_num_threads(args.threads)
  net = peer_torch_mio.build_net(torch, args.arch)
  net.train()
  criterion = MIOLoss(batch_size=args.batch, p_temperature=0.5,
                      n_temperature=0.5, lambda_loss=1.0)
  optimizer, optimizer_step = peer_torch_mio.build_optimizer(
      torch, net, "lars", 1.5)
  generator = torch.Generator().manual_seed(0)
  view1, view2 = (torch.randn(args.batch, 3, 32, 32, generator=generator)
                  for _ in range(2))

  def step():
    optimizer.zero_grad()
    loss = criterion(net(view1), net(view2))
    loss.backward()
    optimizer_step()
    loss.item()

  for _ in range(2):
    step()
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU],
                        record_shapes=True) as trace:
    for _ in range(args.steps):
      step()
  averages = trace.key_averages(group_by_input_shape=True)
  by_class = collections.Counter()
  for entry in averages:
    by_class[_op_class(entry.key)] += entry.self_cpu_time_total / 1e3 / args.steps
  common = {"benchmark": "peer_step_profile", "arch": args.arch,
            "batch": args.batch, "threads": args.threads,
            "sum_of_ops_ms": round(sum(by_class.values()), 1),
            "torch": torch.__version__, "load_avg_1m": os.getloadavg()[0]}
  for kind, ms in by_class.most_common():
    print(json.dumps({**common, "op_class": kind, "ms": round(ms, 1)}))
  largest = sorted(averages, key=lambda e: -e.self_cpu_time_total)[:args.top]
  for entry in largest:
    print(json.dumps({**common, "op": entry.key, "op_class": _op_class(
        entry.key), "input_shapes": str(entry.input_shapes)[:120],
                      "ms": round(entry.self_cpu_time_total / 1e3 / args.steps,
                                  2)}))


if __name__ == "__main__":
  main()
