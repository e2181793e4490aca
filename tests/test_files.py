import pytest
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


def test_write_json_killed_mid_write_leaves_the_previous_file_whole(
    tmp_path, monkeypatch):
  path = tmp_path / "results.json"
  files.write_json(path, {"kept": 1})
  path_type = type(epath.Path(path))
  write_text = path_type.write_text

  def write_half_then_fail(self, text, *args, **kwargs):
    write_text(self, text[:len(text) // 2], *args, **kwargs)
    raise OSError("disk full")

  monkeypatch.setattr(path_type, "write_text", write_half_then_fail)
  with pytest.raises(OSError):
    files.write_json(path, {"replaced": 2})
  monkeypatch.undo()
  assert files.read_json(path) == {"kept": 1}


def test_write_json_keeps_the_key_order_when_asked(tmp_path):
  path = tmp_path / "x.json"
  files.write_json(path, {"b": 1, "a": 2}, sort_keys=False)
  assert list(files.read_json(path)) == ["b", "a"]
  assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_failed_block_removes_only_the_empty_directories_it_created(
    tmp_path):
  existing = tmp_path / "runs"
  existing.mkdir()
  with pytest.raises(ValueError):
    with files.removed_if_left_empty(existing / "new" / "run"):
      files.ensure_dir(existing / "new" / "run")
      raise ValueError("a mistake")
  assert list(tmp_path.iterdir()) == [existing]
  assert not any(existing.iterdir())
  with pytest.raises(ValueError):
    with files.removed_if_left_empty(existing / "kept"):
      files.write_json(existing / "kept" / "x.json", {})
      raise ValueError("a mistake after writing")
  assert (existing / "kept" / "x.json").exists()
  with files.removed_if_left_empty(existing / "ok"):
    files.ensure_dir(existing / "ok")
  assert (existing / "ok").is_dir()  # no failure: kept, even empty
