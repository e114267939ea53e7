"""What a run records: its ``metrics.jsonl`` rows, its ``summary.json``, the progress bar's
numbers and optional TensorBoard event files."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import flax
import jax
import numpy as np

from bn import experiment as bn_experiment, provenance as bn_provenance, train
from bn.errors import UsageError


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
        "test_loss": float(te.loss[i]), "test_accuracy": float(te.accuracy[i]),
        **({} if getattr(te, "calibration", None) is None else {"test_ece": float(te.calibration[i])}), **val,
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
      **run_provenance(),
  }


def run_provenance() -> dict:
  """Versions, git commit and machine, for summary.json and a measured condition's results.json."""
  commit, _ = bn_provenance.git_state()
  dev = jax.devices()[0]
  return {
      "jax": jax.__version__,
      "flax": flax.__version__,
      "python": platform.python_version(),
      "git_commit": commit,
      "backend": jax.default_backend(),
      "device": getattr(dev, "device_kind", str(dev)),
      "device_count": jax.device_count(),
      "machine": f"{platform.machine()} {os.cpu_count()} cpus",
  }


def backend() -> str:
  """The accelerator in words, for the ledger's provenance record: ``"cpu (cpu x 2)"``."""
  dev = jax.devices()[0]
  return f"{jax.default_backend()} ({getattr(dev, 'device_kind', str(dev))} x {jax.device_count()})"


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


def progress_numbers(rows: list[dict]) -> dict:
  """The progress bar's numbers after an evaluation: the mean batch loss of the runs that have one
  and the mean test accuracy of the runs not diverged (NaN when none; no warning)."""
  losses = [r["batch_loss"] for r in rows if r["batch_loss"] is not None and np.isfinite(r["batch_loss"])]
  accs = [r["test_accuracy"] for r in rows if not r["diverged"]]
  return {"loss": float(np.mean(losses)) if losses else float("nan"), "test_acc": float(np.mean(accs)) if accs else float("nan")}
