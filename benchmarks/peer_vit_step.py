r"""The ViT pretraining step in PyTorch (timm's ViT), the CPU peer of ours.

    /tmp/peer/venv/bin/python benchmarks/peer_vit_step.py \
        [--arch=vit_small_patch16_224] [--batch=32] [--threads=2] [--repeats=3]

The counterpart of `benchmarks/train_step.py --model=vit_small
--image_size=224 --optimizer=adamw` (run with the torch venv of
../shared/bench/README.md, plus `pip install timm`): timm's ViT without a
head (class-token features after the final LayerNorm), the public MIO
code's projector (Linear-BN-ReLU, Linear-BN: 2048 hidden, 128 out), the
MIO pairwise sigmoid loss (docs: ../shared/MIO_LOSS.md, tau 0.5) on both
views in one forward pass (BatchNorm over both, as our "joint" views),
AdamW without decay on biases, norms and embeddings, float32. Prints one
JSON object: images/s (source images, two views each), seconds per step
(median), the load. Nothing is copied from timm: it only builds the model.
"""
import argparse
import json
import math
import os
import statistics
import time


def mio_loss(torch, u1, u2, temperature: float = 0.5):
  """The 'mio' variant of ../shared/MIO_LOSS.md (lambda = 0)."""
  z = torch.nn.functional.normalize(torch.cat([u1, u2]), dim=1)
  n2 = z.shape[0]
  logits = z @ z.T / temperature
  partner = torch.arange(n2).roll(n2 // 2)
  positive = logits[torch.arange(n2), partner]
  negatives = torch.ones(n2, n2, dtype=torch.bool)
  negatives[torch.arange(n2), torch.arange(n2)] = False
  negatives[torch.arange(n2), partner] = False
  masked = logits.masked_fill(~negatives, -math.inf)
  repel = torch.nn.functional.softplus(
      torch.logsumexp(masked, dim=1) - math.log(n2 - 2))
  return (torch.nn.functional.softplus(-positive) + repel).mean()


def build(torch, timm, arch: str):
  backbone = timm.create_model(arch, pretrained=False, num_classes=0)
  nn = torch.nn
  projector = nn.Sequential(
      nn.Linear(backbone.num_features, 2048, bias=False), nn.BatchNorm1d(2048),
      nn.ReLU(), nn.Linear(2048, 128, bias=False), nn.BatchNorm1d(128))
  net = nn.Sequential(backbone, projector)
  no_decay = [p for name, p in net.named_parameters()
              if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))]
  decay = [p for p in net.parameters() if all(p is not q for q in no_decay)]
  optimizer = torch.optim.AdamW(
      [{"params": decay, "weight_decay": 0.05},
       {"params": no_decay, "weight_decay": 0.0}], lr=1.5e-4)
  return net, optimizer


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arch", default="vit_small_patch16_224")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  # pylint: disable=g-import-not-at-top
  import timm
  import torch

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  net, optimizer = build(torch, timm, args.arch)
  net.train()
  view1, view2 = (torch.randn(args.batch, 3, args.image_size, args.image_size)
                  for _ in range(2))

  def step():
    optimizer.zero_grad(set_to_none=True)
    projections = net(torch.cat([view1, view2]))
    loss = mio_loss(torch, *projections.split(args.batch))
    loss.backward()
    optimizer.step()
    return loss.item()

  step()  # warm-up: first-call allocations
  walls, cpus = [], []
  for _ in range(args.repeats):
    cpu, start = time.process_time(), time.perf_counter()
    step()
    walls.append(time.perf_counter() - start)
    cpus.append(time.process_time() - cpu)
  wall = statistics.median(walls)
  print(json.dumps({
      "benchmark": "peer_vit_step", "arch": args.arch, "batch_size": args.batch,
      "image_size": args.image_size, "threads": args.threads,
      "images_per_s": round(args.batch / wall, 2), "step_s": round(wall, 3),
      "step_cpu_s": round(statistics.median(cpus), 3),
      "repeats": args.repeats, "torch": torch.__version__,
      "timm": timm.__version__, "load_avg_1m": round(os.getloadavg()[0], 2)}),
        flush=True)


if __name__ == "__main__":
  main()
