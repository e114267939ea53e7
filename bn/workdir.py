"""A workdir: who may write it, what it holds, and loading it back.

* :class:`Checkpoints`: orbax checkpoints in ``workdir/checkpoints`` (the two newest kept);
* the workdir policy: :func:`inspect_workdir` checks, without writing, that a workdir holds
  this config's run or nothing (:func:`check_writable`, :func:`extension_problem`), and
  :func:`lock` makes it belong to one process for the run;
* :func:`restore` loads a finished or interrupted workdir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from bn import artifacts, experiment as bn_experiment, faults
from bn.config import ConfigError
from bn.errors import RunError, UsageError


# ----------------------------------------------------------------------------- checkpoints


class Restore(NamedTuple):
  step: int | None  # None: no checkpoint
  state: Any  # the restored TrainState (structure of ``like``), or a plain tree without ``like``
  meta: dict  # config, fingerprint, accumulated timings at the checkpoint


@contextlib.contextmanager
def _quiet_absl():
  """orbax logs an ERROR line per unreadable file it meets; the caller reports one line itself."""
  try:
    from absl import logging as absl_logging
  except ImportError:  # pragma: no cover
    yield
    return
  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.FATAL)
  try:
    yield
  finally:
    absl_logging.set_verbosity(level)


@contextlib.contextmanager
def stderr_unless_failed():
  """What the block writes to the process's stderr (file descriptor 2, C++ threads included) is
  passed on when it succeeds and dropped when it raises: a save that fails on a full disk makes
  orbax's and tensorstore's threads print a traceback each, where the caller reports one line."""
  sys.stderr.flush()
  try:
    tmp = tempfile.TemporaryFile()
  except OSError:  # nowhere to hold it (a full /tmp): pass everything on
    yield
    return
  saved = os.dup(2)
  os.dup2(tmp.fileno(), 2)
  ok = False
  try:
    yield
    ok = True
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    if ok:
      tmp.seek(0)
      if text := tmp.read():
        os.write(2, text)
    tmp.close()


class Checkpoints:
  """Orbax checkpoints in ``workdir/checkpoints`` (the two newest kept), each with two items:
  ``state`` (the stacked TrainState) and ``meta`` (JSON: config, fingerprint, step, accumulated timings).

  Saves are synchronous: every save is waited for anyway (a resume point must be complete
  before training goes on), and orbax's async path keeps a process-global operation id that
  concurrent managers (e.g. runs trained in threads) race on. ``read_only`` opens an existing
  directory without creating or cleaning anything."""

  def __init__(self, workdir: Path, *, read_only: bool = False, warn: Callable[[str], None] | None = None):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.dir = (Path(workdir) / "checkpoints").absolute()
    self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    with _quiet_absl():  # read_only: orbax warns that the directory is read-only
      self.mgr = ocp.CheckpointManager(
          self.dir,
          options=ocp.CheckpointManagerOptions(max_to_keep=2, create=not read_only, read_only=read_only,
                                               cleanup_tmp_directories=not read_only, enable_async_checkpointing=False),
      )

  def steps(self) -> list[int]:
    """Committed checkpoint steps, newest first."""
    return sorted(self.mgr.all_steps(), reverse=True)

  def save(self, step: int, state, meta: dict) -> None:
    a = self._ocp.args
    items = {"state": a.StandardSave(state), "meta": a.JsonSave(artifacts.clean(meta))}
    try:
      with faults.kill_before_commit(step), _quiet_absl(), stderr_unless_failed():  # a failure: one line, below
        self.mgr.save(step, args=a.Composite(**items), force=True)
        self.mgr.wait_until_finished()
    except Exception as e:  # a full disk shows as OSError or as a tensorstore error
      raise RunError(f"{self.dir}: saving the checkpoint of step {step} failed ({_first_line(e)}). Free disk space "
                     "(or fix the directory) and re-run the same command: it resumes from the last good checkpoint.") from None

  def meta(self, step: int) -> dict:
    """The JSON item of one checkpoint (raises if unreadable)."""
    with _quiet_absl():
      return dict(self.mgr.restore(step, args=self._ocp.args.Composite(meta=self._ocp.args.JsonRestore())).meta)

  def restore(self, like=None, *, delete_bad: bool = False) -> Restore:
    """The newest usable checkpoint, restored into the structure of ``like`` (arrays or
    ShapeDtypeStructs; None: as saved). A checkpoint that cannot be read
    is skipped with a warning (and with ``delete_bad`` deleted, so training can write that
    step again); none usable raises RunError naming the directory and what to delete."""
    a = self._ocp.args
    to_struct = lambda tree: jax.tree.map(self._ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
    steps = self.steps()
    bad = []
    for step in steps:
      try:
        with _quiet_absl():
          items = {"state": a.StandardRestore(self._local_target(step) if like is None else to_struct(like)), "meta": a.JsonRestore()}
          r = self.mgr.restore(step, args=a.Composite(**items))
        state, meta = r.state, dict(r.meta)
      except Exception as e:  # noqa: BLE001 -- corrupt files show as any of orbax's / tensorstore's errors
        bad.append((step, _first_line(e)))
        continue
      for s, why in bad:
        self.warn(f"warning: checkpoint {self.dir / str(s)} is unreadable ({why}); "
                  f"{'deleted it and ' if delete_bad else ''}resuming from the older checkpoint of step {step}.")
        if delete_bad:
          self.mgr.delete(s)
      return Restore(step, state, meta)
    if bad:
      raise RunError(f"{self.dir}: no usable checkpoint (step {bad[0][0]}: {bad[0][1]}). Delete {self.dir} "
                     "(training then starts over: same results, more time) or the whole workdir, and re-run.")
    return Restore(None, None, {})

  def _local_target(self, step: int):
    """The saved tree as ShapeDtypeStructs on this process's first device: a checkpoint written on a
    mesh (runs or data spread over devices) restores as saved on any device count."""
    tree = self._ocp.StandardCheckpointer().metadata(self.dir / str(step) / "state")
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), getattr(tree, "item_metadata", tree))

  def close(self) -> None:
    self.mgr.close()


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


# ----------------------------------------------------------------------------- the workdir


def config_mismatch(old: dict, new: dict, where) -> list[str]:
  """``["optimizer.lr: 0.5 (workdir) vs 0.1 (this run)", ...]`` for the keys that differ."""
  return [f"{k}: {a!r} ({where}) vs {b!r} (this run)" for k, a, b in artifacts.config_diff(old, new)]


def extension_problem(old: dict, new: dict) -> str | None:
  """Why a run of config ``old`` cannot be trained on to ``new`` (which differs from it in
  ``train.steps`` only) with results equal to one run of ``new``; None if it can."""
  a, b = old["train"]["steps"], new["train"]["steps"]
  if b < a:
    return f"train.steps can only grow (the workdir's run has {a} steps)"
  if old["optimizer"]["schedule"] == "cosine":
    return "the cosine schedule depends on train.steps (the longer run's learning rates differ from the first step on)"
  if a % old["train"]["eval_every"]:
    return (f"the run ended at step {a}, between evaluation points (train.eval_every={old['train']['eval_every']}): "
            "a longer run would not evaluate there")
  if old["probes"]["every"] and a % old["probes"]["every"]:
    return (f"the run ended at step {a}, between probe points (probes.every={old['probes']['every']}): "
            "a longer run would not probe there")
  return None


class WorkdirState(NamedTuple):
  finished: dict | None  # the summary of a finished run of this config
  extending: bool  # config.json records fewer train.steps: the run is trained on (its summary.json goes)


def inspect_workdir(exp: bn_experiment.Experiment, workdir: Path, *, extend: bool = False) -> WorkdirState:
  """Checks what ``workdir`` holds against ``exp`` without writing anything: ``finished`` is the summary
  if it already holds this experiment's results (None when new or resumable). Raises UsageError
  (ConfigError) for a file, or a workdir holding another config's run."""
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise UsageError(f"--workdir {workdir} is a file, not a directory; give a directory (new or holding this run).")
  if not workdir.is_dir():
    return WorkdirState(None, False)
  new = exp.config
  extending = False
  cfg_file = workdir / "config.json"
  recorded = _recorded_config(workdir) if cfg_file.exists() else None
  if recorded is not None and recorded != new:
    diff = artifacts.config_diff(recorded, new)
    keys = "; ".join(config_mismatch(recorded, new, "workdir"))
    if not _steps_only(diff):
      raise ConfigError(f"{workdir} already holds a run of a different config ({keys}); use another --workdir, "
                        f"or delete {workdir} to start over.")
    why = extension_problem(recorded, new)
    if why is not None:
      raise ConfigError(f"{workdir} holds a run of a different length ({keys}) that cannot be trained on: {why}. "
                        "Use another --workdir for the longer run.")
    if not extend:
      raise ConfigError(f"{workdir} holds a run of a different length ({keys}). To train it on to "
                        f"{new['train']['steps']} steps add --extend (the result equals one longer run), "
                        "or use another --workdir.")
    extending = True
  ckpt_dir = workdir / "checkpoints"
  _check_checkpoints(exp, workdir, recorded, extend)
  if recorded is None and not (ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())):
    _refuse_foreign(workdir)  # neither a config.json nor checkpoints: nothing says the files are bn's
  summary_file = workdir / "summary.json"
  if summary_file.exists() and not extending:
    if recorded is None:  # a summary without its config: cannot tell whose it is
      raise ConfigError(f"{workdir} holds a summary.json but no config.json; use another --workdir, or delete {workdir}.")
    return WorkdirState(artifacts.read_json(summary_file), False)
  return WorkdirState(None, extending)


def _steps_only(diff) -> bool:
  return [k for k, _, _ in diff] == ["train.steps"]


def _check_checkpoints(exp: bn_experiment.Experiment, workdir: Path, recorded: dict | None, extend: bool) -> None:
  """ConfigError unless every readable checkpoint of ``workdir`` is of ``exp``'s config (or, with
  ``extend``, of a shorter run of it that can be trained on)."""
  ckpt_dir, new = workdir / "checkpoints", exp.config
  if not (ckpt_dir.is_dir() and any(ckpt_dir.iterdir())):
    return
  ckpt = Checkpoints(workdir, read_only=True)
  try:
    for step in ckpt.steps():
      try:
        meta = ckpt.meta(step)
      except Exception:  # noqa: BLE001 -- an unreadable checkpoint: the restore skips it with a warning
        continue
      old = meta.get("config")
      if old is None:
        raise ConfigError(f"{ckpt_dir / str(step)} records no config (written by an older bn?); delete {ckpt_dir} "
                          "to train this workdir from the start, or use another --workdir.")
      if meta.get("fingerprint") == exp.fingerprint or old == new:
        continue
      diff = artifacts.config_diff(old, new)
      keys = "; ".join(config_mismatch(old, new, "checkpoint"))
      if not (_steps_only(diff) and extension_problem(old, new) is None and (extend or recorded == new)):
        raise ConfigError(f"{ckpt_dir} holds checkpoints of a different config ({keys}); resuming them would label "
                          f"their results with this config. Use another --workdir, or delete {ckpt_dir} to start over"
                          + (" (or add --extend to train the run on)" if _steps_only(diff) and not extend else "") + ".")
  finally:
    ckpt.close()


def _recorded_config(workdir: Path) -> dict:
  """The config that ``workdir/config.json`` records; UsageError when bn did not write that file."""
  cfg = artifacts.read_json(workdir / "config.json")
  if not isinstance(cfg, dict) or not isinstance(cfg.get("config"), dict):
    raise UsageError(f"{workdir / 'config.json'} was not written by bn (no \"config\" object in it); use another "
                     f"--workdir, or move that file away.")
  return cfg["config"]


def _refuse_foreign(workdir: Path) -> None:
  """A workdir with neither config.json nor a checkpoint may hold only bn's lock file (and an empty
  checkpoints/): any other file is someone else's, which a run would overwrite or delete."""
  foreign = sorted(set(os.listdir(workdir)) - {LOCK_FILE, "checkpoints"})
  if foreign:
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    raise UsageError(f"--workdir {workdir} holds files that no bn run of a config wrote ({shown}; there is no "
                     "config.json); give a new or empty directory, or move those files away.")


def check_rows(metrics_file: Path, rows: list[dict], runs: list[int], every: int, step: int) -> None:
  """Raises RunError unless ``rows`` (``metrics_file``'s rows up to the checkpoint of ``step``) hold one
  row per run at every evaluation up to ``step``: a resume from an emptied, cut or doubled
  file would summarize the rows that are left as the whole run."""
  evals = list(range(every, step + 1, every)) + ([step] if step % every else [])
  want = sorted((s, r) for s in evals for r in runs)
  have = sorted((row.get("step", -1), row.get("run", -1)) for row in rows)
  if have != want:
    raise RunError(f"{metrics_file} holds {len(have)} rows up to step {step}, but the checkpoint of step {step} needs "
                   f"{len(want)} (one per run at every evaluation: {evals[0]}, ..., {evals[-1]}); the file was emptied, "
                   f"cut or written twice. Put it back, or delete {metrics_file.parent / 'checkpoints'} to train again "
                   "from the start (same results).")


def check_writable(workdir: Path, flag: str = "--workdir") -> None:
  """Raises UsageError (naming ``flag``) unless ``workdir`` (or the directory it would be made in)
  takes new files."""
  probe = Path(workdir)
  while not probe.exists():
    if probe.parent == probe:
      break
    probe = probe.parent
  if probe.exists() and not probe.is_dir():
    raise UsageError(f"{flag} {workdir}: {probe} is a file, not a directory; give a directory path.")
  for d in (probe, Path(workdir) / "checkpoints"):
    if d.is_dir():
      try:
        artifacts.check_writable(d)
      except OSError as e:
        raise UsageError(f"{flag} {workdir}: cannot write in {d} ({e.strerror or e}); give a writable directory "
                         "(a read-only filesystem or missing permissions?).") from None


class Cleanup:
  """Remembers what a run creates, to remove it when the run fails before its first checkpoint."""

  def __init__(self, workdir: Path):
    self.workdir = workdir
    top = workdir.absolute()
    while not top.parent.exists():
      top = top.parent
    self.top = None if workdir.exists() else top  # the outermost directory this run makes
    self.before = set(os.listdir(workdir)) if workdir.is_dir() else set()

  def undo(self) -> None:
    if (self.workdir / "checkpoints").is_dir() and any(p.name.isdigit() for p in (self.workdir / "checkpoints").iterdir()):
      return  # resumable: keep everything
    if self.top is not None:
      shutil.rmtree(self.top, ignore_errors=True)
      return
    for name in set(os.listdir(self.workdir)) - self.before if self.workdir.is_dir() else ():
      p = self.workdir / name
      shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)



# ----------------------------------------------------------------------------- one process per workdir

LOCK_FILE = ".bn-lock"


@contextlib.contextmanager
def lock(workdir: Path):
  """Holds an OS lock (``flock``) on ``workdir/.bn-lock`` (the directory made if needed) while the
  block runs, with this process's pid in the file. Raises UsageError naming the pid of the process
  that holds it. The kernel drops the lock when its process ends, ``kill -9`` included, so a
  lock file left behind never blocks a resume."""
  import fcntl

  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / LOCK_FILE
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    os.close(fd)
    raise UsageError(f"--workdir {workdir} is in use by another bn process (pid {pid}; it holds {path}); two runs on "
                     "one workdir would write every row twice. Wait for it to end (or stop it), then re-run: the run "
                     "resumes where it stopped.") from None
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield path
  finally:
    os.close(fd)  # releases the lock


# ----------------------------------------------------------------------------- loading a workdir


class Restored(NamedTuple):
  """A workdir loaded back (:func:`restore`). ``params[i]`` / ``batch_stats[i]``: run ``i``'s
  trees (NumPy), in the order of ``runs`` (config.json's run table: run, seed, lr, weight decay);
  ``state``: the stacked TrainState as saved (a dict of its fields, for experts)."""

  workdir: Path
  step: int
  config: dict
  runs: list
  params: list
  batch_stats: list
  metrics: list
  summary: dict | None
  state: Any


def restore(workdir) -> Restored:
  """The newest usable checkpoint of a workdir (finished: the final state) with its config,
  run table, metrics and summary. Raises UsageError for a directory that is not a workdir,
  RunError when no checkpoint can be read."""
  workdir = Path(workdir)
  if not (workdir / "checkpoints").is_dir():
    raise UsageError(f"{workdir} holds no checkpoints/; give the --workdir of a `bn train` run.")
  cfg = artifacts.read_json(workdir / "config.json") if (workdir / "config.json").exists() else {}
  ckpt = Checkpoints(workdir, read_only=True)
  try:
    got = ckpt.restore()
  finally:
    ckpt.close()
  if got.step is None:
    raise UsageError(f"{workdir / 'checkpoints'} holds no checkpoint yet; train first (`bn train ... --workdir {workdir}`).")
  config = cfg.get("config") or got.meta.get("config")
  if cfg.get("config") is not None and got.meta.get("config") is not None:
    diff = artifacts.config_diff(got.meta["config"], cfg["config"])
    if diff and [k for k, _, _ in diff] != ["train.steps"]:
      raise RunError(f"{workdir}: its checkpoint was trained with another config than config.json "
                     f"({'; '.join(config_mismatch(got.meta['config'], cfg['config'], 'checkpoint'))}).")
  state = jax.tree.map(np.asarray, got.state)
  runs = cfg.get("runs") or [{"run": i} for i in range(len(np.asarray(state["step"])))]
  take = lambda tree, i: jax.tree.map(lambda x: x[i], tree)  # noqa: E731
  metrics = [r for r in artifacts.read_jsonl(workdir / "metrics.jsonl", partial_ok=True) if r["step"] <= got.step]
  summary = artifacts.read_json(workdir / "summary.json") if (workdir / "summary.json").exists() else None
  return Restored(workdir, got.step, config, runs, [take(state["params"], i) for i in range(len(runs))],
                  [take(state["batch_stats"], i) for i in range(len(runs))], metrics, summary, state)
