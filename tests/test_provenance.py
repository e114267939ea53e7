"""Where results came from: the data files a run read (with checksums) in summary.json, the
ledger's provenance record, remote paths refused, and a closed pipe that is not an error."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from bn import cli, config as bn_config, experiment, loop, provenance
from tests.test_data import write_idx_set

REPO = Path(__file__).resolve().parents[1]


def test_collect_names_code_packages_machine_and_data(tmp_path):
  write_idx_set(tmp_path / "idx", gz=True)
  from bn import data

  ds = data.load("mnist", source="idx", data_dir=str(tmp_path / "idx"))
  rec = provenance.collect([ds], argv=["reproduce", "--quick"], backend="cpu (cpu x 1)")
  assert rec["command"] == "bn reproduce --quick"
  assert rec["packages"]["jax"] and rec["packages"]["python"] and "cpus" in rec["machine"] and rec["date"]
  assert rec["git_commit"] is None or (len(rec["git_commit"]) == 40 and rec["git_dirty"] in (True, False))
  (d,) = rec["datasets"]
  assert d["name"] == "mnist" and d["source"] == "idx" and len(d["files"]) == 4
  for f in d["files"]:
    assert f["sha256"] == hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest() and f["size"] == os.path.getsize(f["path"])


def test_summary_records_the_data_files_read(tmp_path):
  write_idx_set(tmp_path / "idx", gz=False, n_train=64, n_test=16)
  c = bn_config.base()
  c.data.update(name="mnist", source="idx", data_dir=str(tmp_path / "idx"), train_eval_size=32)
  c.model.update(widths=(8,))
  c.train.update(steps=4, batch_size=16, eval_every=4, checkpoint_every=4)
  s = loop.train_workdir(experiment.from_config(c), tmp_path / "w", progress=False)
  files = {Path(f["path"]).name: f for f in s["data_files"]}
  assert set(files) == {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}
  for f in files.values():
    assert f["sha256"] == hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest()


def test_remote_paths_are_refused_before_anything_runs(tmp_path, capsys):
  assert cli.main(["train", "--config", "ioffe_mlp", "--workdir", "gs://bucket/run", "--config.train.steps=1"]) == 2
  err = capsys.readouterr().err
  assert "--workdir gs://bucket/run: remote paths are not supported" in err and "Traceback" not in err
  assert cli.main(["reproduce", "--tiny", "--out", "s3://bucket/ledger", "--no-progress"]) == 2
  assert "--out s3://bucket/ledger: remote paths" in capsys.readouterr().err


def test_a_closed_pipe_is_not_an_error():
  """`bn train --print-config | head -1`: the reader closes the pipe early; bn says nothing on stderr."""
  p = subprocess.Popen([sys.executable, "-m", "bn", "train", "--config", "ioffe_mlp", "--print-config"], cwd=REPO,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
  p.stdout.readline()
  p.stdout.close()  # as `head -1` does
  err = p.stderr.read().decode()
  assert p.wait(timeout=120) == 0 and "error" not in err and "Traceback" not in err, err


def test_tensorboard_event_files_follow_the_metrics(tmp_path):
  c = bn_config.base()
  c.seeds = (0, 1)
  c.data.update(source="synthetic", synthetic_shape=(4, 4, 1), synthetic_sizes=(128, 32), train_eval_size=32)
  c.model.update(widths=(8,))
  c.train.update(steps=4, batch_size=16, eval_every=2, checkpoint_every=2, tensorboard=True)
  loop.train_workdir(experiment.from_config(c), tmp_path / "w", progress=False)
  for run in (0, 1):
    (event,) = (tmp_path / "w" / "tensorboard" / f"run{run}").glob("events.out.tfevents.*")
    raw = event.read_bytes()
    assert all(k.encode() in raw for k in loop.TB_FIELDS if not k.startswith("val_"))  # one scalar per metrics.jsonl field
    assert b"val_loss" not in raw  # no validation split in this config: no validation curve


def tensorboard_points(logdir: Path, tag: str) -> list[tuple[int, float]]:
  """The ``(step, value)`` points of ``tag`` that TensorBoard shows: the event files in name order, a
  SessionLog START at step s hiding the earlier points at steps >= s (its EventAccumulator's purge)."""
  import struct

  from tensorboardX.proto import event_pb2

  points = []
  for f in sorted(logdir.glob("events.out.tfevents.*")):
    raw, i = f.read_bytes(), 0
    while i < len(raw):  # TFRecord: length (u64), its crc (u32), data, its crc (u32)
      (n,) = struct.unpack("<Q", raw[i:i + 8])
      e = event_pb2.Event.FromString(raw[i + 12:i + 12 + n])
      i += 12 + n + 4
      if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START:
        points = [p for p in points if p[0] < e.step]
      for v in e.summary.value:
        if v.tag == tag:
          points.append((e.step, v.simple_value))
  return points


def test_tensorboard_keeps_every_point_across_a_resume(tmp_path):
  import json
  import shutil

  c = bn_config.base()
  c.data.update(source="synthetic", synthetic_shape=(4, 4, 1), synthetic_sizes=(128, 32), train_eval_size=32)
  c.model.update(widths=(8,))
  c.train.update(steps=6, batch_size=16, eval_every=2, checkpoint_every=2, tensorboard=True)
  exp, wd = experiment.from_config(c), tmp_path / "w"
  assert loop.train_workdir(exp, wd, progress=False, stop_after=4) == {"stopped_at": 4}
  shutil.rmtree(wd / "checkpoints" / "4")  # killed before step 4's checkpoint: the resume starts at 2, step 4's point is written again
  loop.train_workdir(exp, wd, progress=False)
  assert len(list((wd / "tensorboard" / "run0").glob("events.out.tfevents.*"))) == 2  # the resume's file does not overwrite the first
  rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  got = tensorboard_points(wd / "tensorboard" / "run0", "test_loss")
  assert [s for s, _ in got] == [2, 4, 6]  # the checkpoint step's point kept, step 4's once
  assert [v for _, v in got] == [np.float32(r["test_loss"]) for r in rows]


def git(cwd, *args):
  subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True)


def test_the_commit_of_a_clone_an_installed_package_and_neither(tmp_path):
  clone = tmp_path / "clone"
  (clone / "bn").mkdir(parents=True)
  (clone / "bn" / "__init__.py").write_text("")
  git(clone, "init", "-q")
  git(clone, "add", ".")
  git(clone, "commit", "-qm", "x")
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
  assert provenance.git_state(package=clone / "bn", direct_url={}) == (head, False)  # running from a clone
  (clone / "bn" / "__init__.py").write_text("x = 1")
  assert provenance.git_state(package=clone / "bn", direct_url={}) == (head, True)
  # installed (site-packages inside a project's git repository, which is not bn's checkout)
  site = tmp_path / "project" / "venv" / "site-packages"
  (site / "bn").mkdir(parents=True)
  git(tmp_path / "project", "init", "-q")
  assert provenance.git_state(package=site / "bn", direct_url={}) == (None, None)
  assert provenance.git_state(package=site / "bn", direct_url={"url": "https://github.com/o/bn", "vcs_info": {
      "vcs": "git", "commit_id": "a" * 40}}) == ("a" * 40, None)  # pip install git+https://...: pip's record
  assert provenance.git_state(package=site / "bn", direct_url={"url": clone.as_uri(), "dir_info": {}}) == (head, True)  # pip install CLONE
  assert provenance.git_state(package=site / "bn", direct_url={"url": (tmp_path / "gone").as_uri(), "dir_info": {}}) == (None, None)
