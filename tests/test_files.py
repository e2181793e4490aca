from etils import epath

from mio_jax import files


def test_ensure_dir_creates_nested_dirs_and_is_idempotent(tmp_path):
  directory = files.ensure_dir(tmp_path / "a" / "b")
  assert isinstance(directory, epath.Path) and directory.is_dir()
  assert files.ensure_dir(str(directory)) == directory


def test_json_round_trip_and_missing_file(tmp_path):
  path = tmp_path / "sub" / "x.json"
  assert files.read_json(path) is None
  files.write_json(path, {"b": (1, 2), "a": None})
  assert files.read_json(path) == {"a": None, "b": [1, 2]}
  assert path.read_text().endswith("\n")
  assert files.as_stored({"t": (1, (2,))}) == {"t": [1, [2]]}
