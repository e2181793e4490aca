"""Tests of mio_jax.cli.distributed_flags: names, defaults, precedence."""
import subprocess
import sys

from absl import flags
import pytest

from mio_jax import distributed
from mio_jax import errors
from mio_jax.cli import distributed_flags


@pytest.fixture
def flag_values():
  """A fresh FlagValues with the distributed flags, parsed from argv."""
  values = flags.FlagValues()
  distributed_flags.define_flags(values)
  return lambda *argv: (values(["prog", *argv]), values)[1]


def test_flags_keep_the_names_and_defaults_users_have(flag_values):
  values = flag_values()
  assert {name: values[name].default for name in values} == {
      "coordinator_address": None, "num_processes": None, "process_id": None,
      "distributed_init_timeout": 300, "distributed_heartbeat_timeout": 60,
      "distributed_shutdown_timeout": 60}
  assert (distributed_flags.settings_from_flags({}, values)
          == distributed.DistributedSettings())


def test_flags_given_override_environment_and_defaults_do_not(flag_values):
  values = flag_values("--process_id=1", "--distributed_init_timeout=30")
  env = {"MIO_COORDINATOR_ADDRESS": "10.0.0.1:1234", "MIO_NUM_PROCESSES": "4",
         "MIO_PROCESS_ID": "3", "MIO_DISTRIBUTED_HEARTBEAT_TIMEOUT": "7"}
  assert distributed_flags.settings_from_flags(env, values) == (
      distributed.DistributedSettings(
          coordinator_address="10.0.0.1:1234", num_processes=4, process_id=1,
          initialization_timeout=30, heartbeat_timeout=7))


def test_a_flag_given_at_its_default_value_still_wins(flag_values):
  values = flag_values("--distributed_heartbeat_timeout=60")
  settings = distributed_flags.settings_from_flags(
      {"MIO_DISTRIBUTED_HEARTBEAT_TIMEOUT": "7"}, values)
  assert settings.heartbeat_timeout == 60


def test_bad_environment_value_is_a_user_error(flag_values):
  with pytest.raises(errors.UserError, match="MIO_PROCESS_ID='one'"):
    distributed_flags.settings_from_flags({"MIO_PROCESS_ID": "one"},
                                          flag_values())


def test_importing_distributed_defines_no_flags():
  code = ("from absl import flags; import mio_jax.distributed; "
          "print(sorted(n for n in flags.FLAGS if 'process' in n "
          "or 'coordinator' in n or 'distributed' in n))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120, check=True)
  assert result.stdout.strip() == "[]"
