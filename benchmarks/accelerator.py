r"""The accelerator check: self-check, train step and input pipeline, one JSON.

    python benchmarks/accelerator.py [--out=accelerator.json] [--quick]
    make bench-accelerator                     # the same, on a GPU or TPU host

Runs, each as its own process (a crash or a hang of one part is recorded
and the rest still runs, each under a time limit):
  1. `python -m mio_jax.cli.selfcheck`: the loss checks on these devices;
  2. `benchmarks/train_step.py`: ResNet-18 at 32 px and ResNet-50 at 224 px
     (LARS, several batch sizes, bfloat16 and float32) and ViT-B/16 at
     224 px (AdamW, bfloat16), on every local device;
  3. `benchmarks/input_pipeline.py` at 32 and 224 px (both modes).
and writes one JSON: the device, every record, and for each train-step
record its model FLOP utilisation (MFU) against the chip's peak from the
project's chip table (`mio_jax.chips.matmul_peak`), with the arithmetic
that peak counts (`mfu_against`: a float32 step's matmuls run as TF32 on
recent NVIDIA GPUs unless jax_default_matmul_precision is the highest),
or null and `mfu_not_reported` saying why (a chip not in the table), and,
beside the measured images/s, the roofline bound of the same compiled step
(`compile_bound`: the FLOPs and HBM bytes XLA counts for the program
train_step.py timed, against the chip's peaks, as `python -m
mio_jax.cli.tpu_compile` computes it ahead of time), so the two can be
compared. The full run is planned to
take under 10 minutes on one accelerator host; `--quick` (tiny models,
seconds) is what the tests run on the CPU.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent

# (model, stem, image size, batch sizes per device, optimizer, dtypes,
# seconds allowed per dtype): with the self-check's 60 s and the pipeline's
# 80 s, at most 590 s in all.
FULL_STEPS = (
    ("resnet18", "cifar", 32, (128, 512), "lars", ("bfloat16", "float32"), 70),
    ("resnet50", "imagenet", 224, (64, 128), "lars", ("bfloat16", "float32"),
     110),
    ("vit_base", None, 224, (128,), "adamw", ("bfloat16",), 90),
)
QUICK_STEPS = (("resnet_tiny", "cifar", 8, (8,), "lars",
                ("bfloat16", "float32"), 120),)


def _json_lines(text: str) -> list[dict[str, Any]]:
  records = []
  for line in text.splitlines():
    if line.startswith("{"):
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return records


def _run(name: str, command: list[str], timeout_s: float) -> dict[str, Any]:
  """Runs one part; its JSON lines, its status and its last output lines."""
  start = time.monotonic()
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
  try:
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=timeout_s, check=False)
    status = "ok" if result.returncode == 0 else f"exit {result.returncode}"
    output = result.stdout + result.stderr
  except subprocess.TimeoutExpired as timeout:
    status = f"timed out after {timeout_s:.0f} s"
    output = ((timeout.stdout or b"").decode(errors="replace")
              + (timeout.stderr or b"").decode(errors="replace"))
  print(f"[accelerator] {name}: {status} ({time.monotonic() - start:.0f} s)",
        flush=True)
  return {"name": name, "status": status,
          "seconds": round(time.monotonic() - start, 1),
          "records": _json_lines(output),
          "output_tail": output.strip().splitlines()[-15:]}


def _device() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.local_devices()
  return {"platform": devices[0].platform,
          "device_kind": devices[0].device_kind,
          "local_devices": len(devices), "jax": jax.__version__}


def _with_mfu(records: list[dict[str, Any]], device_kind: str) -> None:
  """Adds achieved TFLOP/s, the devices' peak and MFU to train-step records.

  The MFU is against the peak of the arithmetic the step's matmuls ran in
  (`mfu_against`); where there is none, it is null and `mfu_not_reported`
  says why.
  """
  from mio_jax import chips  # pylint: disable=g-import-not-at-top
  for record in records:
    if record.get("benchmark") != "train_step":
      continue
    achieved = record["flops_per_step"] / record["step_s"]
    record["achieved_tflop_per_s"] = round(achieved / 1e12, 3)
    try:
      peak = chips.matmul_peak(device_kind, record.get("dtype", "bfloat16"),
                               record.get("matmul_precision"))
    except chips.PeakUnknownError as e:
      record.update(peak_tflop_per_s=None, mfu=None, mfu_not_reported=str(e))
      continue
    all_chips = peak.flops * record["devices"]
    record.update(peak_tflop_per_s=all_chips / 1e12,
                  mfu=round(achieved / all_chips, 4),
                  mfu_against=peak.arithmetic)


def _compile_bound(record: dict[str, Any]) -> dict[str, Any]:
  """The roofline bound of a train-step record's step on these chips.

  From the FLOPs and HBM bytes of the step as benchmarks/train_step.py
  compiled it (XLA's cost analysis) against the chip's peak and bandwidth,
  as `python -m mio_jax.cli.tpu_compile` computes it ahead of time.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from mio_jax import chips
  from mio_jax.aot import check
  chip = chips.find(jax.local_devices()[0].device_kind)
  if chip is None:
    return {"skipped": "no figures for this device kind in mio_jax.chips"}
  bound = check.roofline(record["flops_per_step"] / record["devices"],
                         record["bytes_accessed_per_device"], chip,
                         batch_size=record["batch_size"])
  return {**bound, "chip": chip.name,
          "measured_images_per_s": record["images_per_s"],
          "measured_over_bound": (
              None if not bound["images_per_s_bound"] else round(
                  record["images_per_s"] / bound["images_per_s_bound"], 4))}


def _with_compile_bounds(records: list[dict[str, Any]]) -> None:
  """Adds `compile_bound` to each train-step record."""
  for record in records:
    if record.get("benchmark") != "train_step":
      continue
    record["compile_bound"] = bound = _compile_bound(record)
    if "images_per_s_bound" in bound and bound["images_per_s_bound"]:
      print(f"[accelerator] {record['model']} {record['image_size']}px "
            f"{record['dtype']} batch {record['batch_size']}: measured "
            f"{record['images_per_s']:,.0f} images/s, compile bound "
            f"{bound['images_per_s_bound']:,.0f} ({bound['bound']}-bound)",
            flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="accelerator.json")
  parser.add_argument("--quick", action="store_true",
                      help="tiny models and data: seconds, for the CPU test")
  args = parser.parse_args()
  device = _device()
  python = sys.executable
  num_devices = device["local_devices"]
  parts = [("selfcheck", [python, "-m", "mio_jax.cli.selfcheck",
                          f"--images_per_device={4 if args.quick else 16}"],
            60)]
  for model, stem, size, per_device, optimizer, dtypes, seconds in (
      QUICK_STEPS if args.quick else FULL_STEPS):
    batches = ",".join(str(b * num_devices) for b in per_device)
    for dtype in dtypes:
      command = [python, str(HERE / "train_step.py"), f"--model={model}",
                 f"--image_size={size}", f"--optimizer={optimizer}",
                 f"--batch_sizes={batches}", f"--dtype={dtype}",
                 f"--devices={num_devices}", "--repeats=3",
                 "--steps_per_repeat=5"] + ([f"--stem={stem}"] if stem else [])
      if args.quick:
        command = [python, str(HERE / "train_step.py"), "--quick",
                   f"--dtype={dtype}"]
      parts.append((f"train_step {model} {size}px {dtype}", command, seconds))
  parts.append(("input_pipeline", [python, str(HERE / "input_pipeline.py")]
                + (["--quick", "--sizes=32"] if args.quick
                   else ["--sizes=32,224", "--steps=10"]), 80))

  started = time.monotonic()
  results = [_run(name, command, timeout) for name, command, timeout in parts]
  for result in results:
    _with_mfu(result["records"], device["device_kind"])
  _with_compile_bounds([r for result in results for r in result["records"]])
  from mio_jax import chips  # pylint: disable=g-import-not-at-top
  report = {"device": device, "quick": args.quick,
            "seconds": round(time.monotonic() - started, 1),
            "peaks_tflops": {c.name: dict(c.peak_tflops) for c in chips.CHIPS},
            "parts": results}
  pathlib.Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
  print(f"[accelerator] wrote {args.out} ({report['seconds']:.0f} s)")
  if any(r["status"] != "ok" for r in results):
    sys.exit(1)


if __name__ == "__main__":
  main()
