"""TensorFlow loads only where it is used, always through mio_jax.host_tf."""
import ast
import pathlib
import subprocess
import sys

import pytest

import child_env

_PACKAGE = pathlib.Path(__file__).parents[2] / "mio_jax"


@pytest.mark.parametrize("module", [
    "mio_jax.data", "mio_jax.data.indexing", "mio_jax.data.augment_recipe",
    "mio_jax.data.device_augment"])
def test_importing_a_module_without_tf_work_loads_no_tensorflow(module):
  check = (f"import sys, {module}; "
           "assert 'tensorflow' not in sys.modules")
  result = subprocess.run([sys.executable, "-c", check],
                          env=child_env.child_env(1), capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stderr[-2000:]


def test_tensorflow_and_tfds_are_imported_only_by_host_tf():
  # host_tf quiets TensorFlow and hides the GPUs from it; a module importing
  # it directly could load it first, without that.
  direct = []
  for path in sorted(_PACKAGE.rglob("*.py")):
    if path.name == "host_tf.py":
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        direct += [f"{path.relative_to(_PACKAGE)}: import {alias.name}"
                   for alias in node.names
                   if alias.name in ("tensorflow", "tensorflow_datasets")]
  assert not direct


def test_the_package_still_offers_its_names():
  import mio_jax.data as data  # pylint: disable=g-import-not-at-top
  assert "digits" in data.DATASET_NAMES
  assert callable(data.pretrain_batches)
  with pytest.raises(AttributeError, match="no_such_name"):
    data.no_such_name  # pylint: disable=pointless-statement
