r"""Fine-tuning on digits: the MIO-pretrained encoder against random init.

    python benchmarks/finetune_digits.py --out=/tmp/finetune_digits \
        [--seeds=0,1,2] [--label_fraction=0.1] [--pretrain_epochs=12] \
        [--finetune_epochs=30] [--base_lr=0.05]

For each seed s: pretrain configs/digits.py with seed s in
OUT/pretrain_seed<s> (resumed, so an existing finished run is reused),
then fine-tune the whole network on the same stratified 10% of the labels
(149 of the 1,500 training images, drawn from seed s) twice, with the same
recipe and number of steps: from that encoder
(OUT/finetune_mio_lr<base_lr>_seed<s>) and from a random initialisation
seeded by s (OUT/finetune_random_lr<base_lr>_seed<s>). Prints one JSON
object per run and a final one with the mean and standard deviation
(ddof=1) of test top-1 per arm and of their per-seed difference, then a
Markdown table.
"""
import argparse
import json
import os
import pathlib
import statistics
import sys

_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="folder for the workdirs")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--label_fraction", type=float, default=0.1)
  parser.add_argument("--pretrain_epochs", type=int, default=12,
                      help="configs/digits.py's num_epochs (12)")
  parser.add_argument("--finetune_epochs", type=float, default=None,
                      help="default: SimCLR's (30 at 10%% of the labels)")
  parser.add_argument("--base_lr", type=float, default=0.05,
                      help="both arms' fine-tuning lr = base_lr * batch / "
                      "256 (default: SimCLR's 0.05)")
  return parser.parse_args()


def _config(seed: int, args: argparse.Namespace, **overrides):
  from mio_jax import config_base  # pylint: disable=g-import-not-at-top
  config = config_base.load_config_file(_ROOT / "configs" / "digits.py")
  config.seed = seed
  config.num_epochs = args.pretrain_epochs
  config.finetune.label_fraction = args.label_fraction
  config.finetune.epochs = args.finetune_epochs
  config.finetune.base_lr = args.base_lr
  for key, value in overrides.items():
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
  return config


def main() -> None:
  args = _parse_args()
  sys.path.insert(0, str(_ROOT))
  # pylint: disable=g-import-not-at-top
  from mio_jax import config_validation
  from mio_jax import experiment
  import jax
  # pylint: enable=g-import-not-at-top
  seeds = [int(s) for s in args.seeds.split(",")]
  top1 = {"mio": [], "random": []}
  for seed in seeds:
    pretrain_dir = os.path.join(args.out, f"pretrain_seed{seed}")
    config = _config(seed, args, mode="pretrain")
    config_validation.validate_config(config, device_count=jax.device_count())
    experiment.train_and_evaluate(config, pretrain_dir)
    for arm, init_from in (("mio", pretrain_dir), ("random", "")):
      config = _config(seed, args, mode="finetune",
                       **{"finetune.init_from": init_from})
      workdir = os.path.join(args.out,
                             f"finetune_{arm}_lr{args.base_lr:g}_seed{seed}")
      results = experiment.train_and_evaluate(config, workdir)
      top1[arm].append(results["finetune_top1"])
      print(json.dumps({"seed": seed, "init": arm, **results}), flush=True)
  gains = [m - r for m, r in zip(top1["mio"], top1["random"])]
  spread = lambda xs: statistics.stdev(xs) if len(xs) > 1 else float("nan")
  summary = {
      "label_fraction": args.label_fraction, "seeds": seeds,
      "pretrain_epochs": args.pretrain_epochs, "base_lr": args.base_lr,
      **{f"{arm}_top1_mean": statistics.mean(v) for arm, v in top1.items()},
      **{f"{arm}_top1_std": spread(v) for arm, v in top1.items()},
      "gain_mean": statistics.mean(gains), "gain_std": spread(gains),
  }
  print(json.dumps(summary), flush=True)
  print(f"| init | test top-1 (mean ± std, {len(seeds)} seeds) |")
  print("| --- | --- |")
  for arm, label in (("mio", "MIO-pretrained"), ("random", "random")):
    print(f"| {label} | {100 * summary[f'{arm}_top1_mean']:.1f} ± "
          f"{100 * summary[f'{arm}_top1_std']:.1f} |")
  print(f"| difference | {100 * summary['gain_mean']:.1f} ± "
        f"{100 * summary['gain_std']:.1f} |")


if __name__ == "__main__":
  main()
