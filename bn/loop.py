"""The one training loop: an :class:`~bn.experiment.Experiment` -> a workdir of artifacts, resumable.

Workdir layout::

    config.json      the recorded config and the run table (seed, lr, weight decay per run)
    metrics.jsonl    one row per evaluation per run
    probes.jsonl     probe measurements (when probes.every > 0)
    summary.json     final metrics per run, gap, steps to target, divergence, wall time, versions
    checkpoints/     orbax checkpoints of the stacked TrainState

All files are written atomically. Running the same experiment on the same workdir
resumes from the last checkpoint; a finished workdir is not run again. One
:class:`Trainer` serves one device and a mesh of many (``plan``): the programs
come from :mod:`bn.programs` either way.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from bn import artifacts, data as bn_data, distributed, experiment as bn_experiment, parallel, programs, train
from bn.config import ConfigError
from bn.progress import Progress


class Trainer:
  """The compiled programs and device data of one experiment, on one device or a mesh."""

  def __init__(self, exp: bn_experiment.Experiment, dataset: bn_data.Dataset, plan: parallel.Plan | None = None):
    self.exp, self.plan = exp, plan
    self.task = exp.make_task(dataset.num_classes)  # the one-device task (probes use it)
    self.ptask = self.task if plan is None else parallel.parallel_task(self.task, plan.bn_stats)
    self.mesh = None if plan is None else plan.mesh
    self.runs = exp.run_table
    stats = bn_data.channel_stats(dataset.train.x)
    self.train_x, self.train_y = parallel.place_train(dataset.train, stats, plan)
    chunk = exp.schedule.eval_chunk
    subset = bn_experiment.train_eval_subset(dataset.train, exp.data.train_eval_size, exp.data.split_seed)
    self.eval_sets = tuple(parallel.place_eval(s, stats, plan, chunk) for s in (subset, dataset.test))
    self.recal_x = None
    if self.task.precise_bn is not None:  # precise BN: a fixed random sample of the training set, in chunks
      n = exp.schedule.precise_bn
      k = max(1, n // min(chunk, n))
      idx = np.sort(np.random.default_rng(exp.data.split_seed + 3).permutation(len(dataset.train.y))[: k * (n // k)])
      x = parallel.place_train(bn_data.Split(dataset.train.x[idx], dataset.train.y[idx]), stats, plan).x
      self.recal_x = x.reshape((k, n // k) + x.shape[1:])
    self._eval = programs.evaluate(self.ptask, len(self.eval_sets), self.mesh)
    self._chunks: dict[int, object] = {}
    self.compile_time = 0.0

  def init(self) -> train.TrainState:
    r = self.exp.runs
    f = programs.init(self.task, len(self.train_y), self.mesh)
    return f(np.asarray([x.seed for x in r], np.int32), np.asarray([x.lr for x in r], np.float32),
             np.asarray([x.weight_decay for x in r], np.float32), self.train_x[:2])

  def chunk(self, state, num_steps: int):
    """``num_steps`` training steps of every run (compiled on first use; compile time kept apart)."""
    if num_steps not in self._chunks:
      t0 = time.perf_counter()
      self._chunks[num_steps] = programs.chunk(self.ptask, num_steps, self.mesh).lower(state, self.train_x, self.train_y).compile()
      self.compile_time += time.perf_counter() - t0
    return self._chunks[num_steps](state, self.train_x, self.train_y)

  def evaluate(self, state) -> tuple[train.StepMetrics, ...]:
    """Eval-mode metrics on the train subset and the test split, per run."""
    return self._eval(state.params, state.batch_stats, self.eval_sets, self.recal_x)


# ----------------------------------------------------------------------------- checkpoints


class Checkpoints:
  """Orbax checkpoints of the stacked TrainState in ``workdir/checkpoints`` (the two newest kept).

  Saves are synchronous: every save is waited for anyway (a resume point must be complete
  before training goes on), and orbax's async path keeps a process-global operation id that
  concurrent managers (e.g. runs trained in threads) race on."""

  def __init__(self, workdir: Path):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.mgr = ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False),
    )

  def save(self, step: int, state) -> None:
    self.mgr.save(step, args=self._ocp.args.StandardSave(state))
    self.mgr.wait_until_finished()

  def restore(self, like):
    """``(step, state)`` of the newest checkpoint, restored into the structure of ``like``; ``(None, None)`` if none."""
    step = self.mgr.latest_step()
    if step is None:
      return None, None
    abstract = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, like)
    return step, self.mgr.restore(step, args=self._ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self.mgr.close()


# ----------------------------------------------------------------------------- records


def metric_rows(runs, step, wall, lr_mult, batch: train.StepMetrics, tr, te, diverged_step) -> list[dict]:
  """One ``metrics.jsonl`` row per run after an evaluation at ``step``."""
  out = []
  for i, r in enumerate(runs):
    d = int(diverged_step[i])
    out.append({
        "step": step, "run": r["run"], "seed": r["seed"], "lr": r["lr"], "weight_decay": r["weight_decay"],
        "learning_rate": r["lr"] * lr_mult,
        "batch_loss": float(np.nanmean(batch.loss[i])) if not np.all(np.isnan(batch.loss[i])) else None,
        "batch_accuracy": float(np.nanmean(batch.accuracy[i])) if not np.all(np.isnan(batch.accuracy[i])) else None,
        "train_loss": float(tr.loss[i]), "train_accuracy": float(tr.accuracy[i]),
        "test_loss": float(te.loss[i]), "test_accuracy": float(te.accuracy[i]),
        "diverged": d >= 0, "wall_time": wall,
    })
  return out


def summarize(exp: bn_experiment.Experiment, rows, diverged_step, wall, compile_time, steps_done, prober=None) -> dict:
  """``summary.json``: final metrics per run, gap, steps to target, divergence, timing, provenance."""
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
      # probing, this invocation (not part of wall_time_s): points measured, seconds running them
      # (program + writing probes.jsonl), seconds compiling the probe program
      **({"probe_points": prober.points, "probe_time_s": prober.time, "probe_compile_time_s": prober.compile_time} if prober else {}),
      **artifacts.provenance(),
  }


# ----------------------------------------------------------------------------- the loop


def check_workdir(exp: bn_experiment.Experiment, workdir: Path) -> dict | None:
  """The finished summary if ``workdir`` already holds this experiment's results; None when it is
  new or resumable. Raises ConfigError when it holds another config's run."""
  cfg_file = workdir / "config.json"
  if not cfg_file.exists():
    return None
  if artifacts.read_json(cfg_file).get("config") != exp.config:
    raise ConfigError(f"{workdir} already holds a run of a different config; use another --workdir, or delete {workdir} to start over.")
  if (workdir / "summary.json").exists():
    return artifacts.read_json(workdir / "summary.json")
  return None


def train_workdir(exp: bn_experiment.Experiment, workdir, *, dataset: bn_data.Dataset | None = None, progress: bool = True,
                  desc: str = "", stop_after: int | None = None) -> dict:
  """Trains ``exp`` into ``workdir`` (resuming if it holds a checkpoint) and returns the summary.

  ``dataset``: the already loaded full dataset (the spec's ``train_size`` cut is applied here).
  ``stop_after`` stops (after checkpointing) once that many steps are done -- for tests of resume."""
  distributed.initialize(exp.parallel, exp.fingerprint)  # many hosts: join before any computation
  writer = distributed.is_writer()  # only process 0 writes artifacts
  p = exp.parallel
  plan = parallel.make_plan(p.devices, p.bn_stats, exp.config["train"]["batch_size"], exp.ghost_batch_size)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  done = check_workdir(exp, workdir)
  if done is not None:
    return done

  trainer = Trainer(exp, bn_experiment.load_dataset(exp.data, dataset), plan)
  if writer and not (workdir / "config.json").exists():  # only once the config and the data are known to be good
    artifacts.write_json(workdir / "config.json", {"config": exp.config, "runs": exp.run_table})
  state = trainer.init()
  ckpt = Checkpoints(workdir)
  step, restored = ckpt.restore(state)
  rows, wall = [], 0.0
  if restored is not None:
    state = restored
    rows = [r for r in artifacts.read_jsonl(workdir / "metrics.jsonl") if r["step"] <= step]
    wall = rows[-1]["wall_time"] if rows else 0.0
  steps_done = int(np.asarray(state.step)[0])
  s = exp.schedule
  total, every = s.steps, s.eval_every
  ckpt_every = max(s.checkpoint_every // every, 1) * every
  bar = Progress(total, desc or exp.name, initial=steps_done, enabled=progress and writer)
  prober = None
  if exp.probes.every > 0:
    from bn import run_probes

    prober = run_probes.Prober(exp.probes, trainer, workdir, steps_done, exp.data.split_seed)
  try:
    if prober is not None:
      prober.measure(state, 0) if steps_done == 0 else prober.prime(state)
    while steps_done < total:
      n = min(every, total - steps_done)
      t0, compiled = time.perf_counter(), trainer.compile_time
      state, batch = trainer.chunk(state, n)
      tr, te = trainer.evaluate(state)
      jax.block_until_ready((tr, te))
      wall += time.perf_counter() - t0 - (trainer.compile_time - compiled)  # compile time is reported apart
      steps_done += n
      lr_mult = float(trainer.task.schedule(steps_done - 1))
      new = metric_rows(trainer.runs, steps_done, wall, lr_mult, jax.device_get(batch), jax.device_get(tr), jax.device_get(te),
                        np.asarray(state.diverged_step))
      rows += new
      if writer:
        artifacts.write_jsonl(workdir / "metrics.jsonl", rows)
      if prober is not None and (steps_done % exp.probes.every == 0 or steps_done == total):
        prober.measure(state, steps_done)
      # No checkpoint at the end: a finished workdir is marked by summary.json and never resumed.
      if (steps_done % ckpt_every == 0 and steps_done < total) or (stop_after is not None and steps_done >= stop_after):
        ckpt.save(steps_done, state)
      accs = [r["test_accuracy"] for r in new if not r["diverged"]]
      bar.update(n, loss=float(np.nanmean([r["batch_loss"] or np.nan for r in new])), test_acc=float(np.mean(accs)) if accs else float("nan"))
      if stop_after is not None and steps_done >= stop_after and steps_done < total:
        return {"stopped_at": steps_done}
  finally:
    bar.close()
    ckpt.close()
  summary = summarize(exp, rows, state.diverged_step, wall, trainer.compile_time, steps_done, prober)
  if writer:
    artifacts.write_json(workdir / "summary.json", summary)
  return summary
