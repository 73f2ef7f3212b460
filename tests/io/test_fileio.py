"""Atomic writes: the target is complete or untouched, and no temporary file is left."""

import json
import math
import os

import pytest

from pbrl_jax import fileio


def test_text_bytes_and_json_land_whole(tmp_path):
  path = tmp_path / "sub" / "a.json"
  fileio.atomic_write_json(path, {"é": [1, 2], "x": math.nan}, indent=None)
  assert path.read_text(encoding="utf-8") == '{"é": [1, 2], "x": NaN}\n'
  fileio.atomic_write(path, b"\x00\x01")
  assert path.read_bytes() == b"\x00\x01"
  fileio.atomic_write_jsonl(tmp_path / "r.jsonl", [{"a": 1}, {"b": "ü"}])
  assert [json.loads(l) for l in (tmp_path / "r.jsonl").read_text().splitlines()] == [
      {"a": 1}, {"b": "ü"}]
  assert sorted(os.listdir(tmp_path / "sub")) == ["a.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "keep.json"
  fileio.atomic_write_json(path, {"v": 1})
  with pytest.raises(ValueError):
    fileio.atomic_write_json(path, {"v": math.inf}, allow_nan=False)
  with pytest.raises(TypeError):
    fileio.atomic_write_json(path, {"v": object()})
  assert json.loads(path.read_text()) == {"v": 1}
  assert os.listdir(tmp_path) == ["keep.json"]


def test_savefig_keeps_the_format_of_the_extension(tmp_path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  fileio.atomic_savefig(fig, tmp_path / "p.png")
  fileio.atomic_savefig(fig, tmp_path / "p.svg")
  plt.close(fig)
  assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert b"<svg" in (tmp_path / "p.svg").read_bytes()[:400]
  assert sorted(os.listdir(tmp_path)) == ["p.png", "p.svg"]
