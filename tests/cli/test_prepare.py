"""python -m mio_jax.cli.prepare: the names it takes, its one-line errors."""
import os
import pathlib
import subprocess
import sys

import pytest

from mio_jax.data import registry

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_prepare(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             TF_ENABLE_ONEDNN_OPTS="0")
  return subprocess.run([sys.executable, "-m", "mio_jax.cli.prepare", *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)


def test_help_lists_every_name_it_prepares():
  result = run_prepare("--help")  # absl exits 1 after --help
  help_text = " ".join(result.stdout.split())
  for name in registry.PREPARABLE_NAMES:
    assert name in help_text
  assert "imagenet1k_subset_1pct" in registry.PREPARABLE_NAMES


@pytest.mark.parametrize("args, named", [
    (["--dataset=imagenet1k_subset_10pct"], "ILSVRC2012_img_train.tar"),
    (["--dataset=mnist"], "dataset='mnist' is not"),
])
def test_mistakes_are_one_line_with_status_2(tmp_path, args, named):
  result = run_prepare(*args, f"--data_dir={tmp_path}",
                       f"--manual_dir={tmp_path}")
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and named in lines[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
