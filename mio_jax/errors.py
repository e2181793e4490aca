"""The exceptions a user can cause, as one family.

The library raises them with a message that names the bad value and the
fix; the command line (`mio_jax.cli`) prints that message as one line and
exits with status 2. Any other exception is a bug of ours and keeps its
traceback.
"""
import difflib


class UserError(Exception):
  """A problem the user caused and can fix (bad input, missing files)."""


class InvalidValueError(UserError, ValueError):
  """A setting with an impossible value.

  `key` is the setting's name relative to its owner (e.g. "stem" for the
  model); `mio_jax.config_validation` reports it under its config path
  ("config.model.stem", fix "--config.model.stem=..."). `fix` may name the
  setting as "{key}", filled in with whichever name is shown.
  """

  def __init__(self, key: str, value, problem: str, fix: str = ""):
    self.key, self.value, self.problem, self.fix = key, value, problem, fix
    super().__init__(self.describe(key))

  def describe(self, shown_key: str, fix_key: str = "") -> str:
    """The message with the setting called `shown_key` (and in the fix,
    `fix_key`, default the same)."""
    message = f"{shown_key}={self.value!r} {self.problem}"
    if not self.fix:
      return message
    return f"{message}; {self.fix.replace('{key}', fix_key or shown_key)}"


def check_one_of(key: str, value, valid) -> None:
  """Raises InvalidValueError unless `value` is in `valid` (listed in it).

  The fix suggests the valid value closest to a misspelt one.
  """
  valid = tuple(valid)
  if value not in valid:
    names = [str(v) for v in valid]
    closest = difflib.get_close_matches(str(value), names, n=1)
    raise InvalidValueError(
        key, value, f"is not one of {', '.join(map(repr, valid))}",
        "use e.g. {key}=" + (closest or names)[0])


def check_positive(key: str, value, *, allow_zero: bool = False) -> None:
  """Raises InvalidValueError unless value > 0 (>= 0 with allow_zero)."""
  bound = ">= 0" if allow_zero else "> 0"
  if value is None or (value < 0 if allow_zero else value <= 0):
    raise InvalidValueError(key, value, f"must be {bound}",
                            "set {key} to a value " + bound)
