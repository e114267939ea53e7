"""The one training loop: an :class:`~bn.experiment.Experiment` -> a workdir of artifacts, resumable.

Workdir layout::

    config.json      the recorded config and the run table (seed, lr, weight decay per run)
    metrics.jsonl    one row per evaluation per run (appended)
    probes.jsonl     probe measurements (when probes.every > 0; appended)
    summary.json     final metrics per run, gap, steps to target, divergence, wall time, versions
    checkpoints/     orbax checkpoints (the two newest, the final state among them): the stacked
                     TrainState, the config and its fingerprint, accumulated timings

Guarantees (tests/test_reliability.py):

* nothing is written before every check has passed (config, data, parallel plan, a
  writable workdir, a workdir holding this config's run or nothing); a run that fails
  before its first checkpoint leaves no files it created (a directory it made is removed);
* running the same experiment on the same workdir resumes from the newest usable
  checkpoint -- after a ``kill -9`` at any point too -- and ends with the same
  ``metrics.jsonl``, ``probes.jsonl`` and ``summary.json`` as an uninterrupted run
  (wall-clock fields aside): rows past the checkpoint and a half-written last line are
  dropped (every probe point is a pure function of its state, so nothing else carries over);
* a corrupt newest checkpoint falls back to the previous one (with a warning); checkpoints
  or a config.json of another config are refused, naming the keys that differ;
* the final state is checkpointed too; a finished workdir (``summary.json``) is not run
  again, and :func:`restore` loads it. ``extend=True`` (``bn train --extend``) trains a
  finished run on to a larger ``train.steps``, equal to one longer run.

One :class:`Trainer` serves one device and a mesh of many (``plan``): the programs
come from :mod:`bn.programs` either way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from bn import artifacts, data as bn_data, distributed, experiment as bn_experiment, parallel, programs, train
from bn.config import ConfigError
from bn.errors import RunError, UsageError
from bn.progress import Progress

# Fault injection for tests (tests/test_reliability.py): "EVENT:STEP" makes the process SIGKILL
# itself at that point. Events: "probes" / "metrics" (rows of STEP appended), "probes-partial" /
# "metrics-partial" (those rows written up to the middle of the last), "checkpoint" (the checkpoint of STEP written
# but not committed), "checkpointed" (committed).
KILL_ENV = "BN_TEST_KILL_AT"
# "metrics:STEP" / "probes:STEP": that append stops in the middle of its last row and fails as on a full disk.
ENOSPC_ENV = "BN_TEST_ENOSPC_AT"


class Trainer:
  """The compiled programs and device data of one experiment, on one device or a mesh."""

  def __init__(self, exp: bn_experiment.Experiment, dataset: bn_data.Dataset, plan: parallel.Plan | None = None):
    self.exp, self.plan = exp, plan
    self.data_files = tuple(getattr(dataset, "files", ()) or ())
    self.task = exp.make_task(dataset.num_classes)  # the one-device task (probes use it)
    self.ptask = self.task if plan is None else parallel.parallel_task(self.task, plan.bn_stats)
    self.mesh = None if plan is None else plan.mesh
    self.runs = exp.run_table
    stats = bn_data.channel_stats(dataset.train.x)
    self.train_x, self.train_y = parallel.place_train(dataset.train, stats, plan)
    chunk = exp.schedule.eval_chunk
    subset = bn_experiment.train_eval_subset(dataset.train, exp.data.train_eval_size, exp.data.split_seed)
    # train subset, test split, and the validation split when the data has one (data.val_size > 0)
    test = bn_experiment.train_eval_subset(dataset.test, exp.data.test_eval_size, exp.data.split_seed + 4)  # all when 0
    splits = (subset, test) + ((dataset.val,) if dataset.val is not None else ())
    self.eval_sets = tuple(parallel.place_eval(s, stats, plan, chunk) for s in splits)
    self._test, self._stats = dataset.test, stats
    self.recal_x = None
    if self.task.precise_bn is not None:  # precise BN: a fixed random sample of the training set, in chunks
      n = exp.schedule.precise_bn
      k = max(1, n // min(chunk, n))
      sample = bn_experiment.train_eval_subset(dataset.train, k * (n // k), exp.data.split_seed + 3)
      x = parallel.place_train(sample, stats, plan).x
      self.recal_x = x.reshape((k, n // k) + x.shape[1:])
    self._eval = programs.evaluate(self.ptask, len(self.eval_sets), self.mesh)
    self._eval_compiled = None
    self._chunks: dict[int, object] = {}
    self.compile_time = 0.0
    self.on_compile: Callable[[str], None] | None = None  # told before each compile (progress output)

  def _compile(self, what: str, lower: Callable[[], Any]):
    """``lower().compile()``, announced, its time (tracing included) kept in ``compile_time``."""
    if self.on_compile is not None:
      self.on_compile(f"compiling the {what} (once; not counted in steps/s)")
    t0 = time.perf_counter()
    out = lower().compile()
    self.compile_time += time.perf_counter() - t0
    return out

  def test_images(self, n: int):
    """The first ``n`` test images, standardized, on the device (the probes' eval-mode batch)."""
    return parallel.place_train(bn_data.Split(self._test.x[:n], self._test.y[:n]), self._stats, self.plan).x

  def init(self) -> train.TrainState:
    r = self.exp.runs
    f = programs.init(self.task, len(self.train_y), self.mesh)
    return f(np.asarray([x.seed for x in r], np.int32), np.asarray([x.lr for x in r], np.float32),
             np.asarray([x.weight_decay for x in r], np.float32), self.train_x[:2])

  def chunk(self, state, num_steps: int):
    """``num_steps`` training steps of every run (compiled on first use; compile time kept apart)."""
    if num_steps not in self._chunks:
      lower = lambda: programs.chunk(self.ptask, num_steps, self.mesh).lower(state, self.train_x, self.train_y)  # noqa: E731
      self._chunks[num_steps] = self._compile(f"{num_steps}-step training program", lower)
    return self._chunks[num_steps](state, self.train_x, self.train_y)

  def evaluate(self, state) -> tuple[train.StepMetrics, ...]:
    """Eval-mode metrics on the train subset, the test split and (if any) the validation split,
    per run (compiled on first use)."""
    args = (state.params, state.batch_stats, self.eval_sets, self.recal_x)
    if self._eval_compiled is None:
      self._eval_compiled = self._compile("evaluation program", lambda: self._eval.lower(*args))
    return self._eval_compiled(*args)


# ----------------------------------------------------------------------------- fault injection (tests)


def _armed(env: str, event: str, step: int) -> bool:
  return os.environ.get(env, "") == f"{event}:{step}"


def _fault(event: str, step: int) -> None:
  if _armed(KILL_ENV, event, step):
    os.kill(os.getpid(), signal.SIGKILL)


def _append(path: Path, rows: list[dict], event: str, step: int) -> None:
  """Appends ``rows`` to a JSON-lines file, with the fault-injection points of ``event``."""
  kill, full = _armed(KILL_ENV, f"{event}-partial", step), _armed(ENOSPC_ENV, event, step)
  if kill or full:  # a write cut short in the middle of its last row
    text = artifacts.jsonl_text(rows)
    with open(path, "a") as f:
      f.write(text[: len(text) - len(artifacts.jsonl_text(rows[-1:])) // 2])
      f.flush()
    if kill:
      os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
  artifacts.append_jsonl(path, rows)
  _fault(event, step)


@contextlib.contextmanager
def _kill_before_commit(step: int):
  """Test hook: SIGKILL once orbax has written the checkpoint of ``step`` but before it commits it."""
  if not _armed(KILL_ENV, "checkpoint", step):
    yield
    return
  from orbax.checkpoint._src.path import atomicity

  async def die(*_a, **_k):
    os.kill(os.getpid(), signal.SIGKILL)

  old, atomicity.on_commit_callback = atomicity.on_commit_callback, die
  try:
    yield
  finally:
    atomicity.on_commit_callback = old


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
      with _kill_before_commit(step):
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
      items = {"state": a.StandardRestore(None if like is None else to_struct(like)), "meta": a.JsonRestore()}
      try:
        with _quiet_absl():
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

  def close(self) -> None:
    self.mgr.close()


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


# ----------------------------------------------------------------------------- records


def metric_rows(runs, step, wall, lr_mult, batch: train.StepMetrics, tr, te, diverged_step, va=None) -> list[dict]:
  """One ``metrics.jsonl`` row per run after an evaluation at ``step`` (``va``: validation metrics, if any)."""
  out = []
  for i, r in enumerate(runs):
    d = int(diverged_step[i])
    val = {} if va is None else {"val_loss": float(va.loss[i]), "val_accuracy": float(va.accuracy[i])}
    out.append({
        "step": step, "run": r["run"], "seed": r["seed"], "lr": r["lr"], "weight_decay": r["weight_decay"],
        "learning_rate": r["lr"] * lr_mult,
        "batch_loss": float(np.nanmean(batch.loss[i])) if not np.all(np.isnan(batch.loss[i])) else None,
        "batch_accuracy": float(np.nanmean(batch.accuracy[i])) if not np.all(np.isnan(batch.accuracy[i])) else None,
        "train_loss": float(tr.loss[i]), "train_accuracy": float(tr.accuracy[i]),
        "test_loss": float(te.loss[i]), "test_accuracy": float(te.accuracy[i]), **val,
        "diverged": d >= 0, "wall_time": wall,
    })
  return out


# Accumulated over resumed invocations, carried in the checkpoints' meta item.
ACCUMULATED = ("compile_time_s", "probe_points", "probe_time_s", "probe_compile_time_s")


def summarize(exp: bn_experiment.Experiment, rows, diverged_step, wall, compile_time, steps_done, prober=None, data_files=()) -> dict:
  """``summary.json``: final metrics per run, gap, steps to target, divergence, timing, provenance.

  ``prober``: a dict of the probing cost (``probe_points``, ``probe_time_s``, ``probe_compile_time_s``)."""
  from bn import stats

  target = exp.schedule.target_accuracy
  per_run = []
  div = np.asarray(diverged_step)
  for i, r in enumerate(exp.run_table):
    mine = [x for x in rows if x["run"] == r["run"]]
    last = mine[-1] if mine else {}
    ok = [x for x in mine if not x["diverged"]]
    steps_to = stats.steps_to_target([x["step"] for x in ok], [x["test_accuracy"] for x in ok], target) if ok else None
    per_run.append({
        **r,
        "train_loss": last.get("train_loss"), "train_accuracy": last.get("train_accuracy"),
        "test_loss": last.get("test_loss"), "test_accuracy": last.get("test_accuracy"),
        "gap_accuracy": (last["train_accuracy"] - last["test_accuracy"]) if last else None,
        "gap_loss": (last["test_loss"] - last["train_loss"]) if last else None,
        "best_test_accuracy": max((x["test_accuracy"] for x in ok), default=None),
        "steps_to_target": steps_to,
        "diverged": bool(div[i] >= 0), "diverged_step": int(div[i]) if div[i] >= 0 else None,
    })
  return {
      "name": exp.name, "steps": steps_done, "target_accuracy": target, "runs": per_run,
      "wall_time_s": wall, "compile_time_s": compile_time,
      "steps_per_s": steps_done / wall if wall > 0 else None,
      "run_steps_per_s": steps_done * len(per_run) / wall if wall > 0 else None,
      # probing over the whole run, resumed invocations summed (not part of wall_time_s): points
      # measured, seconds running them (program + writing probes.jsonl), seconds compiling the program
      **(prober or {}),
      # the data actually read: path, size and SHA-256 of every file (empty for synthetic data)
      "data_files": [dict(f._asdict()) if hasattr(f, "_asdict") else dict(f) for f in data_files],
      **artifacts.provenance(),
  }


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
  steps_only = lambda d: [k for k, _, _ in d] == ["train.steps"]  # noqa: E731
  extending = False
  cfg_file = workdir / "config.json"
  recorded = artifacts.read_json(cfg_file).get("config") if cfg_file.exists() else None
  if recorded is not None and recorded != new:
    diff = artifacts.config_diff(recorded, new)
    keys = "; ".join(config_mismatch(recorded, new, "workdir"))
    if not steps_only(diff):
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
  if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
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
        ok = steps_only(diff) and extension_problem(old, new) is None and (extend or recorded == new)
        if not ok:
          raise ConfigError(f"{ckpt_dir} holds checkpoints of a different config ({keys}); resuming them would label "
                            f"their results with this config. Use another --workdir, or delete {ckpt_dir} to start over"
                            + (" (or add --extend to train the run on)" if steps_only(diff) and not extend else "") + ".")
    finally:
      ckpt.close()
  summary_file = workdir / "summary.json"
  if summary_file.exists() and not extending:
    if recorded is None:  # a summary without its config: cannot tell whose it is
      raise ConfigError(f"{workdir} holds a summary.json but no config.json; use another --workdir, or delete {workdir}.")
    return WorkdirState(artifacts.read_json(summary_file), False)
  return WorkdirState(None, extending)


def check_writable(workdir: Path) -> None:
  """Raises UsageError unless ``workdir`` (or the directory it would be made in) takes new files."""
  probe = Path(workdir)
  while not probe.exists():
    if probe.parent == probe:
      break
    probe = probe.parent
  if probe.exists() and not probe.is_dir():
    raise UsageError(f"--workdir {workdir}: {probe} is a file, not a directory; give a directory path.")
  for d in (probe, Path(workdir) / "checkpoints"):
    if d.is_dir():
      try:
        artifacts.check_writable(d)
      except OSError as e:
        raise UsageError(f"--workdir {workdir}: cannot write in {d} ({e.strerror or e}); give a writable directory "
                         "(a read-only filesystem or missing permissions?).") from None


class _Cleanup:
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


# ----------------------------------------------------------------------------- start-up


def gpu_warning(backend: str | None = None, *, which=shutil.which, exists=os.path.exists, environ=os.environ) -> str | None:
  """A warning line when an NVIDIA GPU is present but JAX runs on the CPU (and was not told to)."""
  if (backend or jax.default_backend()) != "cpu" or environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
    return None
  found = "nvidia-smi" if which("nvidia-smi") else "/dev/nvidia0" if exists("/dev/nvidia0") else None
  if found is None:
    return None
  return (f"warning: a GPU is present ({found}) but JAX runs on the CPU; install JAX's CUDA build "
          "(pip install -U 'jax[cuda12]', or make install ACCEL=cuda12), or set JAX_PLATFORMS=cpu to silence this.")


def startup_line(datasets, work: str) -> str:
  """What a command is about to do (``work``, e.g. "2 runs x 400 steps"), and on what: backend,
  device count and kind, each dataset's source and path."""
  devs = jax.devices()
  kinds = sorted({getattr(d, "device_kind", str(d)) for d in devs})
  data = ", ".join(f"{d.name} from {d.source} ({d.location})" for d in datasets)
  return f"{jax.default_backend()} backend, {len(devs)} device{'s' if len(devs) != 1 else ''} ({', '.join(kinds)}); data {data}; {work}"


# ----------------------------------------------------------------------------- the loop


def train_workdir(exp: bn_experiment.Experiment, workdir, *, dataset: bn_data.Dataset | None = None, progress: bool = True,
                  desc: str = "", stop_after: int | None = None, extend: bool = False,
                  log: Callable[[str], None] | None = None, startup: bool = True) -> dict:
  """Trains ``exp`` into ``workdir`` (resuming if it holds a checkpoint) and returns the summary.

  ``dataset``: the already loaded full dataset (the spec's ``train_size`` cut is applied here).
  ``stop_after`` stops (after checkpointing) once that many steps are done -- for tests of resume.
  ``extend``: train a finished run of the same config but fewer ``train.steps`` on (see
  :func:`extension_problem` for when that equals one longer run). ``log``: where status lines
  go (start-up, "complete", warnings); default stderr when ``progress``, else nowhere."""
  distributed.initialize(exp.parallel, exp.fingerprint)  # many hosts: join before any computation
  writer = distributed.is_writer()  # only process 0 writes artifacts
  say = log if log is not None else (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)
  if not writer:
    say = lambda line: None  # noqa: E731
  name = desc or exp.name
  p = exp.parallel
  plan = parallel.make_plan(p.devices, p.bn_stats, exp.config["train"]["batch_size"], exp.ghost_batch_size)
  artifacts.check_local_path(workdir, "--workdir")
  workdir = Path(workdir)
  status = inspect_workdir(exp, workdir, extend=extend)
  if status.finished is not None:
    say(f"{name}: {workdir} is complete ({status.finished.get('steps')} steps); nothing to train. "
        "To train it on: --config.train.steps=N --extend.")
    return status.finished
  check_writable(workdir)
  ds = bn_experiment.load_dataset(exp.data, dataset)
  trainer = Trainer(exp, ds, plan)
  if startup:
    runs = len(exp.runs)
    say(f"{name}: " + startup_line([ds], f"{runs} run{'s' if runs != 1 else ''} x {exp.schedule.steps} steps; workdir {workdir}"))
    if (warning := gpu_warning()) is not None:
      say(warning)
  # Every check has passed: from here on files are written.
  cleanup = _Cleanup(workdir)
  try:
    return _train(exp, workdir, trainer, status, writer, say, name, progress, stop_after)
  except BaseException as e:
    if writer:
      cleanup.undo()
    if isinstance(e, OSError):
      raise RunError(f"{e.filename or workdir}: {e.strerror or e}. Free disk space (or fix the directory) and re-run "
                     "the same command: it resumes from the last checkpoint.") from None
    raise


TB_FIELDS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "val_loss", "val_accuracy", "batch_loss",
             "batch_accuracy", "learning_rate")


class TensorBoard:
  """Optional TensorBoard event files (``train.tensorboard=true``; the ``[tensorboard]`` extra,
  tensorboardX): ``workdir/tensorboard/run<i>/``, one scalar per ``metrics.jsonl`` field at every
  evaluation, so a run can be watched live (``tensorboard --logdir workdir/tensorboard``).
  ``metrics.jsonl`` stays the record; after a resume, events past the checkpoint are purged."""

  def __init__(self, workdir: Path, runs, steps_done: int):
    try:
      from tensorboardX import SummaryWriter
    except ModuleNotFoundError as e:
      raise UsageError("train.tensorboard=true needs tensorboardX: pip install 'bn-lab[tensorboard]' "
                       "(in a clone: pip install -e '.[tensorboard]'), or set --config.train.tensorboard=false.") from e
    # After a resume TensorBoard hides the points of earlier files from purge_step on: the checkpoint step's point
    # stays (it is never written again). tensorboardX names files by the second: the suffix keeps a resume within the
    # same second from overwriting the earlier file, and sorts after it.
    self.writers = {r["run"]: SummaryWriter(logdir=str(workdir / "tensorboard" / f"run{r['run']}"), purge_step=steps_done + 1
                                            if steps_done else None, filename_suffix=f".step{steps_done:010d}") for r in runs}

  def write(self, rows) -> None:
    for r in rows:
      w = self.writers[r["run"]]
      for k in TB_FIELDS:
        if r.get(k) is not None:
          w.add_scalar(k, r[k], r["step"])
      w.flush()

  def close(self) -> None:
    for w in self.writers.values():
      w.close()


def _train(exp, workdir: Path, trainer: Trainer, status: WorkdirState, writer: bool, say, name: str, progress: bool,
           stop_after: int | None) -> dict:
  metrics_file, probes_file = workdir / "metrics.jsonl", workdir / "probes.jsonl"
  workdir.mkdir(parents=True, exist_ok=True)
  if writer:
    if status.extending:  # first: a workdir without summary.json is never taken for finished
      (workdir / "summary.json").unlink(missing_ok=True)
    cfg = {"config": exp.config, "runs": exp.run_table}
    if not (workdir / "config.json").exists() or artifacts.read_json(workdir / "config.json") != artifacts.clean(cfg):
      artifacts.write_json(workdir / "config.json", cfg)
  state = trainer.init()
  prober = None
  if exp.probes.every > 0:
    from bn import run_probes

    prober = run_probes.Prober(exp.probes, trainer, exp.data.split_seed,
                               test_x=trainer.test_images(exp.probes.eval_batch_size))
  ckpt = Checkpoints(workdir, warn=say)
  bar = None
  try:
    got = ckpt.restore(state, delete_bad=True)  # every process: orbax deletes behind a barrier
    acc = {k: got.meta.get(k, 0) for k in ACCUMULATED}
    if got.step is None:  # a fresh start: rows of an attempt killed before its first checkpoint go
      rows, wall = [], 0.0
      if writer:
        for f in (metrics_file, probes_file):
          f.unlink(missing_ok=True)
    else:
      state = got.state
      keep = lambda r: r["step"] <= got.step  # noqa: E731 -- rows past the checkpoint, and a half-written line, go
      if writer:
        rows = artifacts.truncate_jsonl(metrics_file, keep)
        artifacts.truncate_jsonl(probes_file, keep)
      else:
        rows = [r for r in artifacts.read_jsonl(metrics_file, partial_ok=True) if keep(r)]
      wall = rows[-1]["wall_time"] if rows else 0.0
      say(f"{name}: resuming from the checkpoint of step {got.step}.")
    steps_done = int(np.asarray(state.step)[0])
    s = exp.schedule
    total, every = s.steps, s.eval_every
    ckpt_every = max(s.checkpoint_every // every, 1) * every
    bar = Progress(total, name, initial=steps_done, enabled=progress and writer)
    trainer.on_compile = bar.note
    tb = TensorBoard(workdir, trainer.runs, steps_done) if writer and exp.schedule.tensorboard else None

    def probe(step):
      compiled = prober.compile_time
      if prober.compiled is None:
        bar.note("compiling the probe program (once; not counted in steps/s)")
      new_rows = prober.measure(state, step)
      t0 = time.perf_counter()
      if writer:
        _append(probes_file, new_rows, "probes", step)
      prober.time += time.perf_counter() - t0
      bar.exclude(prober.compile_time - compiled)

    def save(step):
      meta = {"fingerprint": exp.fingerprint, "config": exp.config, "step": step, "compile_time_s": acc["compile_time_s"] + trainer.compile_time}
      if prober is not None:
        meta.update(probe_points=acc["probe_points"] + prober.points, probe_time_s=acc["probe_time_s"] + prober.time,
                    probe_compile_time_s=acc["probe_compile_time_s"] + prober.compile_time)
      ckpt.save(step, state, meta)
      _fault("checkpointed", step)

    if prober is not None and steps_done == 0:
      probe(0)
    while steps_done < total:
      n = min(every, total - steps_done)
      t0, compiled = time.perf_counter(), trainer.compile_time
      state, batch = trainer.chunk(state, n)
      tr, te, *va = trainer.evaluate(state)
      jax.block_until_ready((tr, te, va))
      bar.exclude(trainer.compile_time - compiled)
      wall += time.perf_counter() - t0 - (trainer.compile_time - compiled)  # compile time is reported apart
      steps_done += n
      lr_mult = float(trainer.task.schedule(steps_done - 1))
      new = metric_rows(trainer.runs, steps_done, wall, lr_mult, jax.device_get(batch), jax.device_get(tr), jax.device_get(te),
                        np.asarray(state.diverged_step), jax.device_get(va[0]) if va else None)
      rows += new
      if writer:
        _append(metrics_file, new, "metrics", steps_done)
        if tb is not None:
          tb.write(new)
      if prober is not None and (steps_done % exp.probes.every == 0 or steps_done == total):
        probe(steps_done)
      stopping = stop_after is not None and steps_done >= stop_after and steps_done < total
      if steps_done % ckpt_every == 0 or steps_done == total or stopping:  # the final state too
        save(steps_done)
      accs = [r["test_accuracy"] for r in new if not r["diverged"]]
      bar.update(n, loss=float(np.nanmean([r["batch_loss"] or np.nan for r in new])), test_acc=float(np.mean(accs)) if accs else float("nan"))
      if stopping:
        return {"stopped_at": steps_done}
  finally:
    if bar is not None:
      bar.close()
    if "tb" in locals() and tb is not None:
      tb.close()
    ckpt.close()
  probe_cost = None
  if prober is not None:
    probe_cost = {"probe_points": acc["probe_points"] + prober.points, "probe_time_s": acc["probe_time_s"] + prober.time,
                  "probe_compile_time_s": acc["probe_compile_time_s"] + prober.compile_time}
  summary = summarize(exp, rows, state.diverged_step, wall, acc["compile_time_s"] + trainer.compile_time, steps_done, probe_cost,
                      getattr(trainer, "data_files", ()))
  if writer:
    artifacts.write_json(workdir / "summary.json", summary)
  return summary


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
