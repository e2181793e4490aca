"""File access for local and `gs://` paths, through one library (etils.epath).

The workdir and the TFDS data_dir may be buckets; every path mio_jax writes
goes through here or through `epath.Path` directly, never `os.path`/`open`.
"""
import contextlib
import json
import os
import uuid
from typing import Any, Iterator, Optional

from etils import epath


def write_json(path: "str | os.PathLike[str]", obj: Any, *,
               sort_keys: bool = True) -> None:
  """Writes `obj` as indented JSON (with a final newline), atomically.

  The text goes to a temporary file beside `path`, which then replaces it:
  a run killed mid-write leaves the previous file whole. sort_keys=False
  keeps the order of `obj`'s keys.
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.parent / f".{path.name}.{uuid.uuid4().hex}.partial"
  partial.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")
  partial.replace(path)


def as_stored(obj: Any) -> Any:
  """`obj` as it reads back from JSON (tuples become lists): for comparing
  a value with one stored earlier."""
  return json.loads(json.dumps(obj))


def read_json(path: "str | os.PathLike[str]") -> Optional[Any]:
  """The JSON value stored at `path`, or None if there is no such file."""
  path = epath.Path(path)
  return json.loads(path.read_text()) if path.exists() else None


def ensure_dir(path: "str | os.PathLike[str]") -> epath.Path:
  """Creates a directory (local or `gs://...`); a no-op if it exists."""
  directory = epath.Path(path)
  directory.mkdir(parents=True, exist_ok=True)
  return directory


@contextlib.contextmanager
def removed_if_left_empty(path: "str | os.PathLike[str]") -> Iterator[None]:
  """Removes the directories of `path` that did not exist before this block,
  if it fails and leaves them empty: a command that stops on a mistake
  leaves no empty workdir behind. Directories holding anything are kept."""
  missing = []
  directory = epath.Path(path)
  while not directory.exists() and directory != directory.parent:
    missing.append(directory)
    directory = directory.parent
  try:
    yield
  except BaseException:
    for directory in missing:  # deepest first
      if not directory.is_dir() or any(directory.iterdir()):
        break
      directory.rmdir()
    raise
