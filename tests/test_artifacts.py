"""Tests for bn.artifacts, against what the files hold afterwards (read back with ``json`` and ``os``, not with the
code under test where it can be avoided): a write is all or nothing and gets ``0o666 & ~umask``; JSON is cleaned
(NaN and inf to null, NumPy to Python); a JSON-lines file cut short by a kill loses only its unterminated last line
when asked, and is otherwise refused naming the file and the line; truncation keeps what it is told to and rewrites
nothing when nothing goes; config differences are listed key by key; remote paths are refused naming the flag.
"""

import json
import os

import numpy as np
import pytest

from bn import artifacts
from bn.errors import UsageError


def test_clean_makes_json_of_nan_inf_and_numpy():
  obj = {1: np.float32(0.5), "a": [np.int64(3), float("nan"), (float("inf"), -float("inf"))], "b": np.arange(3), "c": np.array(2.0)}
  assert artifacts.clean(obj) == {"1": 0.5, "a": [3, None, [None, None]], "b": [0, 1, 2], "c": 2.0}
  assert type(artifacts.clean(np.int32(7))) is int and type(artifacts.clean(np.float64(1.5))) is float


def test_a_write_is_all_or_nothing_with_the_umask_mode(tmp_path):
  path = tmp_path / "sub" / "x.json"
  old = os.umask(0o027)
  try:
    artifacts.write_json(path, {"v": float("nan"), "w": [1, 2]})
  finally:
    os.umask(old)
  assert json.loads(path.read_text()) == {"v": None, "w": [1, 2]}
  assert os.stat(path).st_mode & 0o777 == 0o640  # 0o666 & ~0o027, not mkstemp's 0o600
  with pytest.raises(RuntimeError, match="killed"):
    with artifacts.atomic_file(path) as f:
      f.write("half of a new file")
      raise RuntimeError("killed while writing")
  assert json.loads(path.read_text()) == {"v": None, "w": [1, 2]}  # the old file, untouched
  assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]  # no temporary file left


def test_jsonl_cut_short_loses_only_its_last_line_when_asked(tmp_path):
  path = tmp_path / "m.jsonl"
  artifacts.write_jsonl(path, [{"step": 1}])
  artifacts.append_jsonl(path, [{"step": 2}, {"step": 3, "x": float("inf")}])
  assert path.read_text() == '{"step": 1}\n{"step": 2}\n{"step": 3, "x": null}\n'
  with open(path, "a") as f:
    f.write('{"step": 4, "lo')  # an append cut short by a kill
  assert artifacts.read_jsonl(path, partial_ok=True) == [{"step": 1}, {"step": 2}, {"step": 3, "x": None}]
  with pytest.raises(artifacts.ArtifactError, match=r"m\.jsonl: its last line \(4\) is cut short"):
    artifacts.read_jsonl(path)
  assert artifacts.read_jsonl(tmp_path / "none.jsonl") == []
  (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n{"a": 2}\n')
  with pytest.raises(artifacts.ArtifactError, match=r"bad\.jsonl: line 2 is not valid JSON"):
    artifacts.read_jsonl(tmp_path / "bad.jsonl", partial_ok=True)  # a damaged line inside the file is never dropped
  (tmp_path / "bad.json").write_text('{"a": ')
  with pytest.raises(artifacts.ArtifactError, match=r"bad\.json: not valid JSON"):
    artifacts.read_json(tmp_path / "bad.json")


def test_truncate_keeps_what_it_is_told_and_rewrites_only_when_something_goes(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
  before = os.stat(path).st_ino
  assert artifacts.truncate_jsonl(path, lambda r: True) == [{"step": 1}, {"step": 2}, {"step": 3}]
  assert os.stat(path).st_ino == before  # nothing went: not rewritten
  path.write_text(path.read_text() + '{"step": 4')
  assert artifacts.truncate_jsonl(path, lambda r: r["step"] <= 2) == [{"step": 1}, {"step": 2}]
  assert path.read_text() == '{"step": 1}\n{"step": 2}\n'  # the rows past 2 and the cut line are gone
  assert artifacts.truncate_jsonl(tmp_path / "none.jsonl", lambda r: True) == []


def test_config_diff_lists_every_differing_key():
  old = {"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": "x"}
  new = {"a": 1, "b": {"c": 3, "d": [1, 2], "f": True}, "g": None}
  # old's keys in order (nested ones dotted), then new's own; a missing key reads as None, so g (None) is no difference
  assert artifacts.config_diff(old, new) == [("b.c", 2, 3), ("b.f", None, True), ("e", "x", None)]
  assert artifacts.config_diff(old, old) == []


@pytest.mark.parametrize("path", ["gs://bucket/run", "s3://b/x", "hdfs://h/x", "file:///tmp/x"])
def test_remote_paths_are_refused_naming_the_flag(path):
  with pytest.raises(UsageError, match=f"--workdir {path}: remote paths are not supported"):
    artifacts.check_local_path(path, "--workdir")


@pytest.mark.parametrize("path", ["runs/a", "/tmp/x", "C:/x", "./gs://x", "://x"])
def test_local_paths_pass(path):
  artifacts.check_local_path(path, "--workdir")  # no error: a drive letter or a scheme not at the start is a local path
