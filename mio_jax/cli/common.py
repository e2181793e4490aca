"""What every command shares: flag parsing and errors as one line.

A problem the user can fix (`errors.UserError`, a bad flag or config
override) ends the command with `error: <one line>` on stderr and exit
status 2; anything else is a bug of ours and keeps its traceback.
"""
import functools
import re
import sys
from typing import Callable, Optional, Sequence

from absl import app
from absl import flags

USAGE_EXIT_CODE = 2


def usage_error(message: str) -> None:
  """Prints `error: message` (one line) and exits with status 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(USAGE_EXIT_CODE)


def _flag_value(argv: Sequence[str], name: str) -> Optional[str]:
  """The value argv gives flag `name` (the last one, as absl), or None."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    match = re.match(rf"^--?{re.escape(name)}(=(?P<value>.*))?$", arg)
    if match and match["value"] is not None:
      value = match["value"]
    elif match and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _use_recorded_config(argv: Sequence[str],
                         workdir_flags: Sequence[str]) -> None:
  """Without --config, the config recorded in a workdir the command reads
  becomes --config's value (overrides still apply); none recorded: one line,
  exit 2. workdir_flags: in order, the flags that may name such a workdir."""
  if "config" not in flags.FLAGS or any(
      re.match(r"^--?config(=|$)", arg) for arg in argv[1:]):
    return
  workdirs = [value for value in (_flag_value(argv, name)
                                  for name in workdir_flags) if value]
  if not workdirs:
    return  # the command's own "--config is required"
  # Imported here: it loads JAX and Orbax, which --help must not wait for.
  from mio_jax import recorded_config  # pylint: disable=g-import-not-at-top
  for workdir in workdirs:
    if recorded_config.recorded_config(workdir) is not None:
      print("No --config given: using the config recorded in "
            f"{recorded_config.metadata_path(workdir)}", flush=True)
      flags.FLAGS.set_default("config",
                              f"{recorded_config.__file__}:{workdir}")
      return
  usage_error(f"--config is required: {' and '.join(workdirs)} holds no "
              "recorded config (no checkpoint saved yet); e.g. "
              "--config=configs/digits.py")


def parse_flags(argv: Sequence[str],
                config_from: Sequence[str] = ()) -> Sequence[str]:
  """absl's parser, with one-line errors instead of tracebacks.

  config_from: flags naming a trained workdir whose recorded config is
  --config when none is given (`_use_recorded_config`).
  """
  try:
    _use_recorded_config(argv, config_from)
    return flags.FLAGS(argv)
  except flags.Error as e:
    usage_error(f"{e}. See --helpfull for the flags.")
  except (KeyError, AttributeError) as e:
    # ml_collections raises these for an override of a key that does not
    # exist; its message carries a did-you-mean suggestion.
    message = str(e.args[0] if e.args else e).strip("'\"").replace("\\n", " ")
    usage_error(f"unknown config key in a --config.* override: {message}. "
                "All keys and defaults are in mio_jax/config_base.py.")
  except Exception as e:  # pylint: disable=broad-except
    # Loading a config file runs user code: whatever it raises is a usage error.
    usage_error(f"could not load --config: {type(e).__name__}: {e}")


def config_value(holder: flags.FlagHolder, example: str = "configs/digits.py"):
  """The ConfigDict of a --config flag, or one line and exit 2 if it is bad.

  ml_collections reports a config file that does not exist or does not load
  only when the config is first used, with a multi-line error.
  """
  config = holder.value
  if config is None:
    usage_error(f"--{holder.name} is required, e.g. --{holder.name}={example}")
  try:
    config.keys()
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()
    usage_error(f"could not load --{holder.name}: {reason}")
  return config


def run_command(main: Callable[[Sequence[str]], None], *,
                config_from: Sequence[str] = ()) -> None:
  """absl's app.run with one-line errors for everything a user can fix.

  config_from: flags (e.g. "workdir") that name a trained workdir whose
  recorded config the command uses when --config is not given.
  """

  def guarded_main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      usage_error(f"unexpected arguments {list(argv[1:])}; flags look like "
                  "--key=value")
    # Imported here, not at the top: `--help` must not wait for JAX.
    from mio_jax import console  # pylint: disable=g-import-not-at-top
    from mio_jax import errors  # pylint: disable=g-import-not-at-top
    console.quiet_library_logs()
    try:
      main(argv)
    except errors.UserError as e:
      usage_error(str(e))

  app.run(guarded_main, flags_parser=functools.partial(
      parse_flags, config_from=config_from))
