"""cli.compare's usage errors: one line, exit status 2, nothing written
(the library's other request errors: tests/test_loss_comparison.py)."""
import pathlib
import subprocess
import sys

import pytest

import child_env

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("flag, message", [
    ("--grid=temprature:0.1,0.2", "--grid key 'temprature' is not a config key"),
    ("--reference=infonce", "--reference=infonce is not among --losses"),
])
def test_a_bad_flag_is_one_line_and_exit_status_2(tmp_path, flag, message):
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "-m", "mio_jax.cli.compare", f"--out={out}", flag,
       f"--config.dataset.data_dir={tmp_path / 'tfds'}"],
      cwd=REPO, env=child_env.child_env(1), capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0], result.stderr
  assert "Traceback" not in result.stderr
  assert not out.exists() and not (tmp_path / "tfds").exists()
