"""The one training loop: an :class:`~bn.experiment.Experiment` -> a workdir of artifacts, resumable.

Workdir layout::

    config.json      the recorded config and the run table (seed, lr, weight decay per run)
    metrics.jsonl    one row per evaluation per run (appended)
    probes.jsonl     probe measurements (when probes.every > 0; appended)
    summary.json     final metrics per run, gap, steps to target, divergence, wall time, versions
    checkpoints/     orbax checkpoints (the two newest, the final state among them): the stacked
                     TrainState, the config and its fingerprint, accumulated timings
    .bn-lock         the OS lock (flock) that the running process holds; it names its pid

Guarantees (tests/test_reliability.py):

* nothing is written before every check has passed (config, data, parallel plan, a
  writable workdir, a workdir holding this config's run or nothing -- files bn did not
  write are refused, named); a run that fails before its first checkpoint leaves no files
  it created (a directory it made is removed);
* one process at a time: a second ``bn train`` on a workdir in use is refused, naming the
  pid of the first; the kernel drops the lock when a process dies (``kill -9`` too);
* running the same experiment on the same workdir resumes from the newest usable
  checkpoint -- after a ``kill -9`` at any point too -- and ends with the same
  ``metrics.jsonl``, ``probes.jsonl`` and ``summary.json`` as an uninterrupted run
  (wall-clock fields aside): rows past the checkpoint and a half-written last line are
  dropped (every probe point is a pure function of its state, so nothing else carries over);
  a ``metrics.jsonl`` that lacks rows up to the checkpoint (emptied, edited) is refused;
* a corrupt newest checkpoint falls back to the previous one (with a warning); checkpoints
  or a config.json of another config are refused, naming the keys that differ;
* the final state is checkpointed too; a finished workdir (``summary.json``) is not run
  again, and :func:`restore` loads it. ``extend=True`` (``bn train --extend``) trains a
  finished run on to a larger ``train.steps``, equal to one longer run.

The jobs around the loop live apart: :mod:`bn.trainer` (the compiled programs),
:mod:`bn.workdir` (checkpoints, the workdir policy and lock, :func:`restore`),
:mod:`bn.records` (metric rows, the summary) and :mod:`bn.faults` (fault injection for tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import numpy as np

from bn import artifacts, data as bn_data, distributed, experiment as bn_experiment, faults, parallel, records
from bn.errors import RunError
from bn.progress import Progress
from bn.records import ACCUMULATED, TB_FIELDS, TensorBoard, metric_rows, summarize  # noqa: F401 -- re-exported
from bn.trainer import Trainer
from bn.workdir import (Checkpoints, Restored, WorkdirState, check_writable, config_mismatch,  # noqa: F401 -- re-exported
                        extension_problem, inspect_workdir, restore)
from bn import workdir as bn_workdir

KILL_ENV, ENOSPC_ENV = faults.KILL_ENV, faults.ENOSPC_ENV  # re-exported: the tests' names


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


class _Call(NamedTuple):
  """How one invocation runs: who writes, where lines go, when to stop."""

  name: str
  writer: bool  # this process writes the artifacts (process 0)
  say: Callable[[str], None]
  progress: bool
  stop_after: int | None
  on_eval: Callable[[int], None] | None  # told after every evaluation's rows are written


def _sayer(log, progress: bool, writer: bool) -> Callable[[str], None]:
  if not writer:
    return lambda line: None
  if log is not None:
    return log
  return (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)


def train_workdir(exp: bn_experiment.Experiment, workdir, *, dataset: bn_data.Dataset | None = None, progress: bool = True,
                  desc: str = "", stop_after: int | None = None, extend: bool = False,
                  log: Callable[[str], None] | None = None, startup: bool = True,
                  on_eval: Callable[[int], None] | None = None) -> dict:
  """Trains ``exp`` into ``workdir`` (resuming if it holds a checkpoint) and returns the summary.

  ``dataset``: the already loaded full dataset (the spec's ``train_size`` cut is applied here).
  ``stop_after`` stops (after checkpointing) once that many steps are done -- for tests of resume.
  ``extend``: train a finished run of the same config but fewer ``train.steps`` on (see
  :func:`extension_problem` for when that equals one longer run). ``log``: where status lines
  go (start-up, "complete", warnings); default stderr when ``progress``, else nowhere.
  ``on_eval(step)``: called after every evaluation is recorded (the ledger keeps its timings)."""
  distributed.initialize(exp.parallel, exp.fingerprint)  # many hosts: join before any computation
  writer = distributed.is_writer()  # only process 0 writes artifacts
  call = _Call(desc or exp.name, writer, _sayer(log, progress, writer), progress, stop_after, on_eval)
  p = exp.parallel
  plan = parallel.make_plan(p.devices, p.bn_stats, exp.batch_size, exp.ghost_batch_size, runs=len(exp.runs),
                            runs_devices=p.runs_devices)
  artifacts.check_local_path(workdir, "--workdir")
  workdir = Path(workdir)
  status = inspect_workdir(exp, workdir, extend=extend)
  if status.finished is not None:
    return _complete(call, workdir, status.finished)
  check_writable(workdir)
  ds = bn_experiment.load_dataset(exp.data, dataset)
  trainer = Trainer(exp, ds, plan)
  if startup:
    runs = len(exp.runs)
    call.say(f"{call.name}: " + startup_line([ds], f"{runs} run{'s' if runs != 1 else ''} x {exp.schedule.steps} steps; workdir {workdir}"))
    if (warning := gpu_warning()) is not None:
      call.say(warning)
  # Every check has passed: from here on files are written, by this process alone.
  cleanup = bn_workdir.Cleanup(workdir)
  with bn_workdir.lock(workdir) if writer else contextlib.nullcontext():  # refused (nothing undone) when in use
    try:
      status = inspect_workdir(exp, workdir, extend=extend)  # again: another process may have written it meanwhile
      if status.finished is not None:
        return _complete(call, workdir, status.finished)
      return _train(exp, workdir, trainer, status, call)
    except BaseException as e:
      if writer:
        cleanup.undo()
      if isinstance(e, OSError):
        raise RunError(f"{e.filename or workdir}: {e.strerror or e}. Free disk space (or fix the directory) and re-run "
                       "the same command: it resumes from the last checkpoint.") from None
      raise


def _complete(call: _Call, workdir: Path, summary: dict) -> dict:
  call.say(f"{call.name}: {workdir} is complete ({summary.get('steps')} steps); nothing to train. "
           "To train it on: --config.train.steps=N --extend.")
  return summary


def _train(exp, workdir: Path, trainer: Trainer, status: WorkdirState, call: _Call) -> dict:
  """The loop: resume, then train / evaluate / record / probe / checkpoint chunk by chunk."""
  _write_config(exp, workdir, status, call.writer)
  state = trainer.init()
  prober = _prober(exp, trainer)
  ckpt = Checkpoints(workdir, warn=call.say)
  bar = tb = None
  try:
    state, rows, wall, acc = _resume(exp, workdir, ckpt, state, call)
    s = exp.schedule
    done = int(np.asarray(state.step)[0])
    ckpt_every = max(s.checkpoint_every // s.eval_every, 1) * s.eval_every
    bar = Progress(s.steps, call.name, initial=done, enabled=call.progress and call.writer)
    trainer.on_compile = bar.note
    tb = TensorBoard(workdir, trainer.runs, done) if call.writer and s.tensorboard else None
    out = _Outputs(workdir, call, prober, bar, tb)
    if prober is not None and done == 0:
      out.probe(state, 0)
    while done < s.steps:
      n = min(s.eval_every, s.steps - done)
      state, evals, seconds = _chunk(trainer, state, n, bar)
      wall, done = wall + seconds, done + n
      new = metric_rows(trainer.runs, done, wall, float(trainer.task.schedule(done - 1)), *evals[:3],
                        np.asarray(state.diverged_step), evals[3])
      rows += new
      out.metrics(new, done)
      if prober is not None and (done % exp.probes.every == 0 or done == s.steps):
        out.probe(state, done)
      stopping = call.stop_after is not None and call.stop_after <= done < s.steps
      if done % ckpt_every == 0 or done == s.steps or stopping:  # the final state too
        ckpt.save(done, state, {"fingerprint": exp.fingerprint, "config": exp.config, "step": done,
                                **_accumulated(acc, trainer, prober)})
        faults.fault("checkpointed", done)
      bar.update(n, **records.progress_numbers(new))
      if stopping:
        return {"stopped_at": done}
  finally:
    if bar is not None:
      bar.close()
    if tb is not None:
      tb.close()
    ckpt.close()
  cost = _accumulated(acc, trainer, prober)
  summary = summarize(exp, rows, state.diverged_step, wall, cost.pop("compile_time_s"), done, cost or None, trainer.data_files)
  if call.writer:
    artifacts.write_json(workdir / "summary.json", summary)
  return summary


def _write_config(exp, workdir: Path, status: WorkdirState, writer: bool) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  if not writer:
    return
  if status.extending:  # first: a workdir without summary.json is never taken for finished
    (workdir / "summary.json").unlink(missing_ok=True)
  cfg = {"config": exp.config, "runs": exp.run_table}
  if not (workdir / "config.json").exists() or artifacts.read_json(workdir / "config.json") != artifacts.clean(cfg):
    artifacts.write_json(workdir / "config.json", cfg)


def _prober(exp, trainer: Trainer):
  if exp.probes.every <= 0:
    return None
  from bn import run_probes

  return run_probes.Prober(exp.probes, trainer, exp.data.split_seed, test_x=trainer.test_images(exp.probes.eval_batch_size))


def _resume(exp, workdir: Path, ckpt: Checkpoints, state, call: _Call):
  """``(state, rows, wall, accumulated)`` to go on from: the newest usable checkpoint with the
  metric rows up to it (rows past it and a half-written line dropped), or a fresh start."""
  metrics_file, probes_file = workdir / "metrics.jsonl", workdir / "probes.jsonl"
  got = ckpt.restore(state, delete_bad=True)  # every process: orbax deletes behind a barrier
  acc = {k: got.meta.get(k, 0) for k in ACCUMULATED}
  if got.step is None:  # a fresh start: rows of an attempt killed before its first checkpoint go
    if call.writer:
      for f in (metrics_file, probes_file):
        f.unlink(missing_ok=True)
    return state, [], 0.0, acc
  keep = lambda r: r.get("step", 0) <= got.step  # noqa: E731 -- rows past the checkpoint, and a half-written line, go
  rows = [r for r in artifacts.read_jsonl(metrics_file, partial_ok=True) if keep(r)]
  bn_workdir.check_rows(metrics_file, rows, [r["run"] for r in exp.run_table], exp.schedule.eval_every, got.step)
  if call.writer:
    artifacts.truncate_jsonl(metrics_file, keep)
    artifacts.truncate_jsonl(probes_file, keep)
  call.say(f"{call.name}: resuming from the checkpoint of step {got.step}.")
  return got.state, rows, rows[-1]["wall_time"] if rows else 0.0, acc


def _chunk(trainer: Trainer, state, n: int, bar: Progress):
  """``n`` steps of every run and the evaluation after them: ``(state, (batch, train, test, val),
  seconds)``, the seconds without compile time (reported apart)."""
  t0, compiled = time.perf_counter(), trainer.compile_time
  state, batch = trainer.chunk(state, n)
  tr, te, *va = trainer.evaluate(state)
  jax.block_until_ready((tr, te, va))
  bar.exclude(trainer.compile_time - compiled)
  seconds = time.perf_counter() - t0 - (trainer.compile_time - compiled)
  evals = jax.device_get((batch, tr, te)) + (jax.device_get(va[0]) if va else None,)
  return state, evals, seconds


def _accumulated(acc: dict, trainer: Trainer, prober) -> dict:
  """The costs summed over every invocation of the run (checkpoint meta, summary)."""
  out = {"compile_time_s": acc["compile_time_s"] + trainer.compile_time}
  if prober is not None:
    out.update(probe_points=acc["probe_points"] + prober.points, probe_time_s=acc["probe_time_s"] + prober.time,
               probe_compile_time_s=acc["probe_compile_time_s"] + prober.compile_time)
  return out


class _Outputs:
  """The appends of one invocation: metric rows (and their TensorBoard scalars), probe rows."""

  def __init__(self, workdir: Path, call: _Call, prober, bar: Progress, tb: TensorBoard | None):
    self.workdir, self.call, self.prober, self.bar, self.tb = workdir, call, prober, bar, tb

  def metrics(self, rows: list[dict], step: int) -> None:
    if self.call.writer:
      faults.append(self.workdir / "metrics.jsonl", rows, "metrics", step)
      if self.tb is not None:
        self.tb.write(rows)
    if self.call.on_eval is not None:
      self.call.on_eval(step)

  def probe(self, state, step: int) -> None:
    p = self.prober
    compiled = p.compile_time
    if p.compiled is None:
      self.bar.note("compiling the probe program (once; not counted in steps/s)")
    rows = p.measure(state, step)
    t0 = time.perf_counter()
    if self.call.writer:
      faults.append(self.workdir / "probes.jsonl", rows, "probes", step)
    p.time += time.perf_counter() - t0
    self.bar.exclude(p.compile_time - compiled)
