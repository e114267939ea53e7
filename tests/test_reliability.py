"""Nothing silently wrong after a resume, a mismatched workdir or a bad input.

One uninterrupted reference run (module fixture, in this process) is the yardstick: runs of the
same config interrupted every way we know -- SIGKILLs of a real ``bn train`` at named points
(``BN_TEST_KILL_AT``, deterministic: the process kills itself there), a disk that fills while
metrics are written (``BN_TEST_ENOSPC_AT``), corrupt checkpoints, a finished run extended to
more steps -- must end with the same ``metrics.jsonl``, ``probes.jsonl`` and ``summary.json``
(wall-clock fields aside). A persistent compilation cache (module fixture) lets the
subprocesses and the resumed runs load the programs the reference compiled.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from bn import artifacts, cli, config, experiment, ledger, loop
from bn.errors import RunError, UsageError
from run_helpers import REPO, bn_train_command, config_maker

pytestmark = pytest.mark.usefixtures("compile_cache")

STEPS, EVERY, PROBE_EVERY = 400, 100, 200

# Probes every 200 steps, checkpoints every 100: most checkpoints fall between probe points.
CFG = '''"""Reliability tests: MLP 64-16-10, BN, SGD; two seeds in one program; cheap probes."""

from bn.config import base


def get_config():
  c = base()
  c.name = "rel"
  c.seeds = (0, 1)
  c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), synthetic_sizes=(512, 128), train_eval_size=128)
  c.model.update(name="mlp", widths=(16,), act="relu", init_std=None)
  c.norm.update(kind="batch")
  c.optimizer.update(name="sgd", lr=0.1)
  c.train.update(steps=400, batch_size=32, eval_every=100, checkpoint_every=100, eval_chunk=128, target_accuracy=0.9)
  c.probes.update(every=200, batch_size=64, kinds=("act",), eval_batch_size=32)
  return c
'''
WALL = {"wall_time", "wall_time_s", "compile_time_s", "steps_per_s", "run_steps_per_s", "probe_time_s", "probe_compile_time_s",
        "git_commit"}  # wall-clock fields, and the commit (others may commit while the suite runs)


# ----------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory):
  p = tmp_path_factory.mktemp("configs") / "rel.py"
  p.write_text(CFG)
  return p


@pytest.fixture(scope="module")
def cfg(cfg_path):
  return config_maker(cfg_path)


@pytest.fixture(scope="module")
def reference(cfg, tmp_path_factory):
  """The uninterrupted run: ``(workdir, summary)``."""
  wd = tmp_path_factory.mktemp("ref") / "w"
  return wd, loop.train_workdir(experiment.from_config(cfg()), wd, progress=False)


def copy_of(wd, dst, *, drop=()):
  shutil.copytree(wd, dst)
  for name in drop:
    p = dst / name
    shutil.rmtree(p) if p.is_dir() else p.unlink()
  return dst


def lines(path):
  return [{k: v for k, v in json.loads(line).items() if k not in WALL} for line in Path(path).read_text().splitlines()]


def same_summary(a, b):
  a, b = ({k: v for k, v in s.items() if k not in WALL} for s in (a, b))
  assert a == b


def assert_same_results(wd, ref):
  for name in ("metrics.jsonl", "probes.jsonl"):
    assert lines(wd / name) == lines(ref / name), name
  same_summary(json.loads((wd / "summary.json").read_text()), json.loads((ref / "summary.json").read_text()))


def committed_steps(wd):
  return sorted(int(p.name) for p in (Path(wd) / "checkpoints").iterdir() if p.name.isdigit())


def bn_train(cfg_path, wd, cache, *extra, env=None):
  """`bn train` as a real process (the compilation cache shared with this one)."""
  cmd, e = bn_train_command(cfg_path, wd, cache, *extra, drop_env=(loop.KILL_ENV, loop.ENOSPC_ENV), env=env)
  return subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=300)


def error_lines(stderr):
  assert "Traceback" not in stderr, stderr
  return [line for line in stderr.splitlines() if ": error:" in line]


def file_times(wd):
  """Every file's modification time, but the lock's (directories change under the writability check)."""
  return {p: p.stat().st_mtime_ns for p in Path(wd).rglob("*") if p.is_file() and p.name != ".bn-lock"}


def corrupt(step_dir: Path):
  for p in step_dir.rglob("*"):
    if p.is_file():
      p.write_bytes(b"\x00garbage")


# ----------------------------------------------------------------------------- fault injection: kill -9 at named points


def test_kills_at_every_point_then_rerun_equal_an_uninterrupted_run(cfg_path, reference, compile_cache, tmp_path):
  """One workdir through a kill after the step-0 probe (before any checkpoint), a disk that fills
  while metrics are appended, a kill during a checkpoint write, and a kill after the final
  checkpoint (before summary.json); the final rerun matches the reference exactly."""
  ref, _ = reference
  wd = tmp_path / "w"

  r = bn_train(cfg_path, wd, compile_cache, env={loop.KILL_ENV: "probes:0"})
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
  assert {x["step"] for x in lines(wd / "probes.jsonl")} == {0} and not committed_steps(wd)

  r = bn_train(cfg_path, wd, compile_cache, env={loop.ENOSPC_ENV: "metrics:300"})  # a disk that fills
  assert r.returncode == 1, r.stderr[-3000:]
  (err,) = error_lines(r.stderr)
  assert err.startswith("bn train: error:") and "metrics.jsonl" in err and "No space left on device" in err and "re-run" in err
  assert committed_steps(wd) == [100, 200]
  assert not (wd / "metrics.jsonl").read_text().endswith("\n")  # a half-written last line

  r = bn_train(cfg_path, wd, compile_cache, env={loop.KILL_ENV: "checkpoint:300"})  # during a checkpoint write
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
  assert "resuming from the checkpoint of step 200" in r.stderr
  assert committed_steps(wd) == [100, 200] and any(".orbax-checkpoint-tmp" in p.name for p in (wd / "checkpoints").iterdir())
  assert [x["step"] for x in lines(wd / "metrics.jsonl")][-2:] == [300, 300]  # rows past the checkpoint, dropped on resume

  r = bn_train(cfg_path, wd, compile_cache, env={loop.KILL_ENV: "checkpointed:400"})  # final state saved, no summary yet
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
  assert committed_steps(wd) == [300, 400] and not (wd / "summary.json").exists()

  r = bn_train(cfg_path, wd, compile_cache)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "run 0 seed 0 lr 0.1: test acc" in r.stdout
  assert "cpu backend" in r.stderr and "from synthetic" in r.stderr and "2 runs x 400 steps" in r.stderr  # the start-up line
  assert_same_results(wd, ref)
  probe_steps = [x["step"] for x in lines(wd / "probes.jsonl")]
  assert probe_steps == [s for s in range(0, STEPS + 1, PROBE_EVERY) for _ in (0, 1)]  # each point once

  r = bn_train(cfg_path, wd, compile_cache)  # finished: says so, writes nothing
  assert r.returncode == 0 and "is complete (400 steps); nothing to train" in r.stderr, r.stderr


# ----------------------------------------------------------------------------- resume in process


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(cfg, reference, tmp_path, capsys):
  ref, _ = reference
  wd = copy_of(ref, tmp_path / "w", drop=("summary.json",))
  corrupt(wd / "checkpoints" / "400")
  loop.train_workdir(experiment.from_config(cfg()), wd, progress=False, log=lambda line: print(line, file=sys.stderr))
  err = capsys.readouterr().err
  assert "warning: checkpoint" in err and "400" in err and "resuming from the older checkpoint of step 300" in err
  assert_same_results(wd, ref)
  assert committed_steps(wd) == [300, 400]


def test_no_usable_checkpoint_is_a_run_error_naming_what_to_delete(cfg, reference, tmp_path):
  ref, _ = reference
  wd = copy_of(ref, tmp_path / "w", drop=("summary.json",))
  for step in committed_steps(wd):
    corrupt(wd / "checkpoints" / str(step))
  before = (wd / "metrics.jsonl").read_text()
  with pytest.raises(RunError, match="no usable checkpoint") as e:
    loop.train_workdir(experiment.from_config(cfg()), wd, progress=False)
  assert f"Delete {(wd / 'checkpoints').absolute()}" in str(e.value)
  assert (wd / "metrics.jsonl").read_text() == before and committed_steps(wd) == [300, 400]


def test_extend_a_finished_run_equals_one_longer_run(cfg, reference, tmp_path, capsys):
  ref, _ = reference
  wd = tmp_path / "w"
  short = loop.train_workdir(experiment.from_config(cfg(train__steps=200)), wd, progress=False)
  assert short["steps"] == 200 and committed_steps(wd)[-1] == 200  # the final state is saved
  with pytest.raises(config.ConfigError, match=r"train\.steps: 200 \(workdir\) vs 400 \(this run\).*--extend"):
    loop.train_workdir(experiment.from_config(cfg()), wd, progress=False)
  loop.train_workdir(experiment.from_config(cfg()), wd, progress=True, extend=True)
  assert "compiling the" in capsys.readouterr().err  # said before compiling (progress output)
  assert_same_results(wd, ref)
  assert json.loads((wd / "config.json").read_text())["config"]["train"]["steps"] == STEPS


def test_extension_is_refused_where_it_would_not_equal_one_longer_run(cfg):
  base_ = experiment.from_config(cfg()).config
  grown = lambda c, **t: {**c, "train": {**c["train"], **t}}  # noqa: E731
  assert loop.extension_problem(base_, grown(base_, steps=800)) is None
  cosine = {**base_, "optimizer": {**base_["optimizer"], "schedule": "cosine"}}
  assert "cosine schedule depends on train.steps" in loop.extension_problem(cosine, grown(cosine, steps=800))
  assert "can only grow" in loop.extension_problem(base_, grown(base_, steps=200))
  assert "between evaluation points" in loop.extension_problem(grown(base_, steps=450), grown(base_, steps=900))
  assert "between probe points" in loop.extension_problem(grown(base_, steps=300), grown(base_, steps=800))


def test_restore_loads_a_workdir(reference):
  ref, summary = reference
  r = loop.restore(ref)
  assert r.step == STEPS and r.summary == summary and r.config == json.loads((ref / "config.json").read_text())["config"]
  assert [x["seed"] for x in r.runs] == [0, 1] and len(r.params) == len(r.batch_stats) == 2
  assert r.metrics == [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
  for i in (0, 1):
    for a, b in zip(jax.tree.leaves(r.params[i]), jax.tree.leaves(r.state["params"])):
      np.testing.assert_array_equal(a, b[i])
    assert set(r.batch_stats[i]["layer0"]["norm"]["bn"]) == {"mean", "var"}
  assert int(r.state["step"][0]) == STEPS


# ----------------------------------------------------------------------------- a workdir belongs to one run


def test_a_workdir_in_use_is_refused_naming_the_pid_and_a_killed_holder_blocks_nothing(cfg, reference, tmp_path):
  """A second process on a workdir is refused (the first's pid named, nothing written); once the
  holder is killed with SIGKILL, its lock file left behind, the run resumes."""
  ref, _ = reference
  wd = copy_of(ref, tmp_path / "w", drop=("summary.json",))
  holder = subprocess.Popen(
      [sys.executable, "-c", "import pathlib, sys, time\nfrom bn import workdir\nwith workdir.lock(pathlib.Path(sys.argv[1])):\n"
       "  print('locked', flush=True)\n  time.sleep(600)", str(wd)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    files = file_times(wd)
    with pytest.raises(UsageError, match=rf"is in use by another bn process \(pid {holder.pid};"):
      loop.train_workdir(experiment.from_config(cfg()), wd, progress=False)
    assert file_times(wd) == files
  finally:
    holder.kill()  # SIGKILL: the kernel drops its lock
    holder.wait()
  assert (wd / ".bn-lock").read_text().strip() == str(holder.pid)  # a stale lock file...
  loop.train_workdir(experiment.from_config(cfg()), wd, progress=False)  # ...blocks nothing
  assert_same_results(wd, ref)


def test_lock_is_held_for_the_run(tmp_path):
  from bn import workdir

  wd = tmp_path / "new" / "w"
  with workdir.lock(wd) as path:
    assert path == wd / ".bn-lock" and path.read_text() == f"{os.getpid()}\n"
    with pytest.raises(UsageError, match=f"pid {os.getpid()}"):  # flock: another open file, refused even here
      with workdir.lock(wd):
        pass
  with workdir.lock(wd):  # released
    pass


def test_a_foreign_workdir_is_refused_naming_its_files(cfg_path, tmp_path, capsys):
  """A user's own metrics.jsonl and probes.jsonl (no config.json, no checkpoint) are not bn's: refused
  (exit 2, named) instead of deleted and replaced."""
  wd = tmp_path / "mine"
  wd.mkdir()
  for name in ("metrics.jsonl", "probes.jsonl", "notes.txt"):
    (wd / name).write_text('{"step": 1, "mine": true}\n')
  assert cli.main(["train", "--config", str(cfg_path), "--workdir", str(wd), "--no-progress"]) == 2
  (err,) = error_lines(capsys.readouterr().err)
  assert "holds files that no bn run of a config wrote (metrics.jsonl, notes.txt, probes.jsonl;" in err
  assert sorted(p.name for p in wd.iterdir()) == ["metrics.jsonl", "notes.txt", "probes.jsonl"]
  assert all(p.read_text() == '{"step": 1, "mine": true}\n' for p in wd.iterdir())


@pytest.mark.parametrize("damage", ["emptied", "cut", "doubled"])
def test_metrics_rows_missing_up_to_the_checkpoint_are_refused_not_summarized(cfg, reference, tmp_path, damage):
  """Resuming from the checkpoint of step 300 needs every run's rows at 100, 200, 300: an emptied,
  cut or doubled metrics.jsonl is refused (naming the file and the fix), nothing changed."""
  ref, _ = reference
  wd = copy_of(ref, tmp_path / "w", drop=("summary.json", "checkpoints/400"))
  text = (wd / "metrics.jsonl").read_text()
  rows = text.splitlines(keepends=True)
  (wd / "metrics.jsonl").write_text({"emptied": "", "cut": "".join(rows[2:]), "doubled": text + text}[damage])
  files = file_times(wd)
  with pytest.raises(RunError, match=r"metrics\.jsonl holds \d+ rows up to step 300, but the checkpoint of step 300 needs 6 .*"
                                     r"delete .*checkpoints to train again"):
    loop.train_workdir(experiment.from_config(cfg()), wd, progress=False)
  assert file_times(wd) == files


def test_a_failed_checkpoint_save_drops_what_its_threads_print(capfd):
  """A save that fails on a full disk: orbax's and tensorstore's threads printed ~60 lines of
  tracebacks to file descriptor 2 above bn's one line; they are dropped, a good save's output kept."""
  from bn import workdir

  with pytest.raises(RuntimeError):
    with workdir.stderr_unless_failed():
      os.write(2, b"Traceback (most recent call last): RuntimeError: Event loop is closed\n")
      raise RuntimeError("disk full")
  with workdir.stderr_unless_failed():
    os.write(2, b"kept\n")
  assert capfd.readouterr().err == "kept\n"


def test_progress_numbers_when_every_run_diverged_warn_nothing():
  from bn import records

  rows = [{"batch_loss": None, "test_accuracy": 0.1, "diverged": True}, {"batch_loss": float("nan"), "test_accuracy": 0.1, "diverged": True}]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # numpy's "Mean of empty slice" was a RuntimeWarning
    got = records.progress_numbers(rows)
  assert np.isnan(got["loss"]) and np.isnan(got["test_acc"])
  assert records.progress_numbers([{"batch_loss": 1.0, "test_accuracy": 0.5, "diverged": False}]) == {"loss": 1.0, "test_acc": 0.5}


# ----------------------------------------------------------------------------- mismatched workdirs


def test_checkpoints_of_another_config_are_refused_without_config_json(cfg, reference, tmp_path):
  ref, _ = reference
  wd = copy_of(ref, tmp_path / "w", drop=("config.json", "summary.json"))
  files = {p: p.stat().st_mtime_ns for p in wd.rglob("*")}
  with pytest.raises(config.ConfigError, match=r"checkpoints of a different config \(optimizer\.lr: 0\.1 \(checkpoint\) vs 0\.5 \(this run\)\)"):
    loop.train_workdir(experiment.from_config(cfg(optimizer__lr=0.5)), wd, progress=False)
  assert {p: p.stat().st_mtime_ns for p in wd.rglob("*")} == files  # nothing written


def test_config_mismatch_names_the_keys(cfg, reference):
  ref, _ = reference
  c = cfg(optimizer__lr=0.5, norm__kind="none")
  with pytest.raises(config.ConfigError) as e:
    loop.train_workdir(experiment.from_config(c), ref, progress=False)
  msg = str(e.value)
  assert "optimizer.lr: 0.1 (workdir) vs 0.5 (this run)" in msg and "norm.kind: 'batch' (workdir) vs 'none' (this run)" in msg


def test_finished_workdir_says_it_is_complete(cfg_path, reference, capsys):
  ref, summary = reference
  files = {p: p.stat().st_mtime_ns for p in ref.rglob("*")}
  assert cli.main(["train", "--config", str(cfg_path), "--workdir", str(ref), "--no-progress"]) == 0
  assert "is complete (400 steps); nothing to train" in capsys.readouterr().err
  assert {p: p.stat().st_mtime_ns for p in ref.rglob("*")} == files


def test_bn_report_on_a_training_workdir_is_refused(reference, capsys):
  ref, _ = reference
  assert cli.main(["report", str(ref)]) == 2
  err = capsys.readouterr().err
  assert "is not the output directory of `bn reproduce` but a `bn train` workdir" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- bad inputs: refused before anything is written


@pytest.mark.parametrize("override, key", [
    ("--config.train.steps=-5", "train.steps"), ("--config.train.steps=0", "train.steps"),
    ("--config.train.batch_size=0", "train.batch_size"), ("--config.train.eval_every=0", "train.eval_every"),
    ("--config.train.eval_chunk=0", "train.eval_chunk"), ("--config.train.checkpoint_every=0", "train.checkpoint_every"),
    ("--config.seeds=()", "seeds"), ("--config.probes.every=150", "probes.every"),
    # issue 26: values that trained before, the key named now
    ("--config.norm.r_max=0.5", "norm.r_max"), ("--config.norm.d_max=-1.0", "norm.d_max"),
    ("--config.seeds=(0.5,1.7)", "seeds"), ("--config.seeds=(3,3)", "seeds"), ("--config.seeds=(2147483648,)", "seeds"),
    ("--config.optimizer.momentum=5.0", "optimizer.momentum"), ("--config.optimizer.decay_steps=(-10,)", "optimizer.decay_steps"),
    ("--config.optimizer.warmup=-100", "optimizer.warmup"), ("--config.train.target_accuracy=5.0", "train.target_accuracy"),
    ("--config.model.widths=(0,)", "model.widths"), ("--config.model.widths=(-5,)", "model.widths"),
    ("--config.model.init_std=abc", "model.init_std"), ("--config.data.split_seed=-1", "data.split_seed"),
])
def test_bad_values_are_refused_before_anything_is_written(cfg_path, tmp_path, capsys, override, key):
  wd = tmp_path / "new" / "w"
  assert cli.main(["train", "--config", str(cfg_path), "--workdir", str(wd), "--no-progress", override]) == 2
  (err,) = error_lines(capsys.readouterr().err)
  assert f"--config.{key}=" in err
  assert not (tmp_path / "new").exists()


def test_a_bad_value_through_a_real_process_is_one_line_and_exit_2(cfg_path, compile_cache, tmp_path):
  r = bn_train(cfg_path, tmp_path / "new" / "w", compile_cache, "--config.norm.kind=renorm", "--config.norm.r_max=0.5")
  assert r.returncode == 2, r.stderr[-3000:]
  (err,) = error_lines(r.stderr)
  assert "--config.norm.r_max=0.5 must be a number >= 1" in err and not (tmp_path / "new").exists()


@pytest.mark.parametrize("args, message", [
    (["--tiny", "--dataset", "bogus"], "--dataset bogus does not apply to --tiny"),
    (["--tiny", "--only", ""], "--only '' names an empty experiment"),
    (["--tiny", "--only", "ioffe,"], "names an empty experiment"),
])
def test_reproduce_flags_it_would_ignore_are_refused(tmp_path, capsys, args, message):
  assert cli.main(["reproduce", *args, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
  (err,) = error_lines(capsys.readouterr().err)
  assert message in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["null", "[]", '"x"'])
def test_json_of_the_wrong_type_is_one_line(cfg_path, tmp_path, capsys, text):
  wd = tmp_path / "w"
  wd.mkdir()
  (wd / "config.json").write_text(text)
  assert cli.main(["train", "--config", str(cfg_path), "--workdir", str(wd), "--no-progress"]) == 2
  (err,) = error_lines(capsys.readouterr().err)
  assert f"{wd / 'config.json'} was not written by bn" in err and sorted(p.name for p in wd.iterdir()) == ["config.json"]
  out = tmp_path / "out"
  out.mkdir()
  (out / "ledger.json").write_text(text)
  assert cli.main(["reproduce", "--tiny", "--out", str(out), "--no-progress"]) == 2
  (err,) = error_lines(capsys.readouterr().err)
  assert f"{out / 'ledger.json'} holds a JSON" in err and (out / "ledger.json").read_text() == text
  assert cli.main(["report", str(out)]) == 2
  (err,) = error_lines(capsys.readouterr().err)
  assert f"{out / 'ledger.json'} is not a ledger record" in err


def test_bench_out_that_is_a_file_or_read_only_is_refused(tmp_path, capsys, read_only):
  f = tmp_path / "file"
  f.write_text("x")
  assert cli.main(["bench", "--tiny", "--out", str(f)]) == 2
  (err,) = error_lines(capsys.readouterr().err)
  assert "--out" in err and "is a file, not a directory" in err and f.read_text() == "x"
  d = tmp_path / "ro"
  d.mkdir()
  read_only(d)
  assert cli.main(["bench", "--tiny", "--out", str(d)]) == 2
  (err,) = error_lines(capsys.readouterr().err)
  assert "cannot write in" in err and list(d.iterdir()) == []


def test_a_workdir_that_is_a_file(cfg_path, tmp_path, capsys):
  f = tmp_path / "file"
  f.write_text("x")
  assert cli.main(["train", "--config", str(cfg_path), "--workdir", str(f), "--no-progress"]) == 2
  assert "is a file, not a directory" in capsys.readouterr().err
  assert cli.main(["train", "--config", str(cfg_path), "--workdir", str(f / "sub"), "--no-progress"]) == 2
  assert "is a file, not a directory" in capsys.readouterr().err and f.read_text() == "x"


@pytest.fixture
def read_only(monkeypatch):
  """Makes a directory refuse new files: chattr +i where the filesystem allows (a real EROFS-like
  refusal, even for root), else a check that fails as on a read-only filesystem."""
  made = []

  def make(d: Path):
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0:
      made.append(d)
      return
    real = artifacts.tempfile.mkstemp

    def refuse(*a, dir=None, **k):
      if dir is not None and Path(dir).resolve() == d.resolve():
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(d))
      return real(*a, dir=dir, **k)

    monkeypatch.setattr(artifacts.tempfile, "mkstemp", refuse)

  yield make
  for d in made:
    subprocess.run(["chattr", "-i", str(d)], check=True)


def test_an_unwritable_workdir_is_refused_before_training(cfg, reference, tmp_path, read_only):
  ref, _ = reference
  wd = copy_of(ref, tmp_path / "w", drop=("summary.json",))
  (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines(ref / "metrics.jsonl")[:2]))  # unfinished
  read_only(wd / "checkpoints")
  files = {p: p.stat().st_mtime_ns for p in wd.rglob("*")}
  with pytest.raises(UsageError, match="cannot write in .*checkpoints.*writable directory"):
    loop.train_workdir(experiment.from_config(cfg()), wd, progress=False)
  assert {p: p.stat().st_mtime_ns for p in wd.rglob("*")} == files


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(cfg, tmp_path, monkeypatch):
  monkeypatch.setenv(loop.ENOSPC_ENV, "metrics:100")
  new = tmp_path / "a" / "b"
  with pytest.raises(RunError, match="No space left on device"):
    loop.train_workdir(experiment.from_config(cfg()), new, progress=False)
  assert not (tmp_path / "a").exists()  # the directories it made are gone
  existing = tmp_path / "existing"
  existing.mkdir()
  with pytest.raises(RunError, match="No space left on device"):
    loop.train_workdir(experiment.from_config(cfg()), existing, progress=False)
  assert list(existing.iterdir()) == []  # left as it was (the lock file it took gone too)


def test_damaged_files_name_the_file_and_the_fix(cfg_path, reference, tmp_path, capsys):
  ref, _ = reference
  for name in ("config.json", "summary.json"):
    wd = copy_of(ref, tmp_path / name)
    (wd / name).write_text((wd / name).read_text()[:40])  # truncated
    assert cli.main(["train", "--config", str(cfg_path), "--workdir", str(wd), "--no-progress"]) == 1
    (err,) = error_lines(capsys.readouterr().err)
    assert f"{wd / name}: not valid JSON" in err and "Delete it" in err
  p = tmp_path / "m.jsonl"
  p.write_text('{"step": 1}\n{"step": 2, "x"\n{"step": 3}\n')
  with pytest.raises(artifacts.ArtifactError, match=r"m\.jsonl: line 2 is not valid JSON"):
    artifacts.read_jsonl(p)


def test_jsonl_appends_and_truncation(tmp_path):
  p = tmp_path / "m.jsonl"
  artifacts.append_jsonl(p, [{"step": 1}, {"step": 2}])
  artifacts.append_jsonl(p, [{"step": 3, "x": float("nan")}])
  with open(p, "a") as f:
    f.write('{"step": 4, "y')  # a kill mid-append
  assert artifacts.read_jsonl(p, partial_ok=True) == [{"step": 1}, {"step": 2}, {"step": 3, "x": None}]
  with pytest.raises(artifacts.ArtifactError, match="last line .* is cut short"):
    artifacts.read_jsonl(p)
  assert artifacts.truncate_jsonl(p, lambda r: r["step"] <= 2) == [{"step": 1}, {"step": 2}]
  assert p.read_text() == '{"step": 1}\n{"step": 2}\n'
  assert artifacts.config_diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3, "d": 4}}) == [("a.c", 2, 3), ("a.d", None, 4)]


# ----------------------------------------------------------------------------- the ledger


def test_ledger_out_of_another_mode_is_refused(tmp_path, capsys):
  from bn import claims

  name = claims.experiments()[0]
  out = tmp_path / "out"
  out.mkdir()
  artifacts.write_json(out / "ledger.json", {"mode": "tiny", "dataset": None, "experiments": {name: ["bn", "none"]}})
  before = (out / "ledger.json").read_text()
  assert cli.main(["reproduce", "--quick", "--only", name, "--out", str(out), "--no-progress"]) == 2
  (err,) = error_lines(capsys.readouterr().err)
  assert "holds a `bn reproduce --tiny` ledger, not --quick" in err and "another --out" in err
  assert (out / "ledger.json").read_text() == before and sorted(p.name for p in out.iterdir()) == ["ledger.json"]


@pytest.mark.parametrize("experiment", ["depth_init", "alone", "deep_linear"])  # every experiment that trains nothing
def test_measured_results_of_another_config_are_refused(tmp_path, experiment):
  from bn import measure as bn_measure

  measure = bn_measure.runner(experiment)
  tiny, quick = (ledger.condition_configs(experiment, m)["bn"] for m in ("tiny", "quick"))
  wd = tmp_path / "bn"
  wd.mkdir()
  artifacts.write_json(wd / "config.json", {"config": config.to_dict(tiny)})
  artifacts.write_json(wd / "results.json", {"depths": []})
  assert ledger.measure_condition(measure, tiny, wd, None) == {"depths": []}  # its own results are reused
  with pytest.raises(config.ConfigError, match=r"holds results of a different config \(.*\(workdir\) vs .*\(this run\)"):
    ledger.measure_condition(measure, quick, wd, None)


def test_timings_are_recorded_as_conditions_finish(tmp_path, monkeypatch):
  """A ledger killed in the second experiment keeps the time of the conditions before it."""
  from bn import claims, measure as bn_measure

  first, second = [e for e in claims.experiments() if not bn_measure.measured(e)][:2]
  names = [f"{first}/{c}" for c in ledger.config_module(first).conditions("tiny")]
  calls = []

  def fake_train(exp, workdir, **kw):
    if (workdir / "summary.json").exists():
      return {}
    calls.append(exp.name)
    if len(calls) == len(names) + 1:
      kw["on_eval"](100)  # an evaluation of the condition in progress is recorded at once (a kill -9 keeps it)
      mid = artifacts.read_json(tmp_path / "out" / "timings.json")
      assert mid["conditions"]["running"] == exp.name and second in mid["last_invocation_s"]
      raise KeyboardInterrupt  # as if killed here
    workdir.mkdir(parents=True)
    artifacts.write_json(workdir / "summary.json", {"runs": []})

  monkeypatch.setattr(ledger.loop, "train_workdir", fake_train)
  with pytest.raises(KeyboardInterrupt):
    ledger.run_ledger(tmp_path / "out", "tiny", only=[first, second], progress=False)
  t = artifacts.read_json(tmp_path / "out" / "timings.json")
  assert t["conditions"] == {"trained": names, "skipped": [], "running": calls[-1]} and t["mode"] == "tiny"
  assert set(t["last_invocation_s"]) == {first, second, "total"}  # the interrupted condition's time counts too
  assert t["cumulative_s"]["total"] == t["last_invocation_s"]["total"]
  ledger.run_ledger(tmp_path / "out", "tiny", only=[first], progress=False)  # finished conditions are skipped
  t2 = artifacts.read_json(tmp_path / "out" / "timings.json")
  assert t2["previous"] == t["last_invocation_s"] and t2["conditions"] == {"trained": [], "skipped": names}


def test_bn_report_on_damaged_results(tmp_path, capsys):
  from bn import claims, measure as bn_measure

  out = tmp_path / "out"
  conds = {e: ["x"] for e in claims.experiments()}
  artifacts.write_json(out / "ledger.json", {"mode": "tiny", "dataset": None, "experiments": conds})
  for e in conds:
    d = out / e / "x"
    d.mkdir(parents=True)
    artifacts.write_json(d / "config.json", {"config": {"probes": {"every": 0}}})
    (d / ("results.json" if bn_measure.measured(e) else "summary.json")).write_text('{"runs": [')
  assert cli.main(["report", str(out)]) == 1
  (err,) = error_lines(capsys.readouterr().err)
  assert "not valid JSON" in err and str(out) in err
  for e in conds:
    d = out / e / "x"
    artifacts.write_json(d / ("results.json" if bn_measure.measured(e) else "summary.json"), {"runs": [{"run": 0}]})
    artifacts.write_json(d / "config.json", {"config": {"probes": {"every": 10}}})
    artifacts.write_jsonl(d / "metrics.jsonl", [{"step": 1}])
  assert cli.main(["report", str(out)]) == 1
  (err,) = error_lines(capsys.readouterr().err)
  assert "probes.jsonl is missing although the condition finished" in err and "re-run `bn reproduce`" in err
