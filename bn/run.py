"""``bn train``: one experiment config -> a workdir of artifacts, with checkpoint/resume.

Workdir layout::

    config.json      the resolved config and the run table (seed, lr, weight decay per run)
    metrics.jsonl    one row per evaluation per run
    probes.jsonl     probe measurements (when config.probes.every > 0)
    summary.json     final metrics per run, gap, steps to target, divergence, wall time, versions
    checkpoints/     orbax checkpoints of the stacked TrainState

All files are written atomically. Running the same command on the same
workdir resumes from the last checkpoint; a finished workdir is not run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bn import artifacts, config as bn_config, data as bn_data, models, pipeline, train
from bn.progress import Progress


# ----------------------------------------------------------------------------- building a program from a config


def norm_spec(c) -> models.NormSpec:
  n = c.norm
  return models.NormSpec(
      kind=n.kind, position=n.position, momentum=n.momentum, epsilon=n.epsilon,
      ghost_batch_size=n.ghost_batch_size or None, num_groups=n.num_groups, r_max=n.r_max, d_max=n.d_max,
      noise=models.bn.Noise(tuple(n.noise.layer_mean), tuple(n.noise.layer_scale), n.noise.unit_mean_halfwidth, n.noise.unit_scale_std),
      use_fast_variance=n.variance == "fast",
  )


def make_task(c, num_classes: int) -> train.Task:
  try:
    loop, runs = train.resolve_layout(c.train.loop, c.train.runs, c.model.name)
  except ValueError as e:
    raise bn_config.ConfigError(f"--config.{e}") from None
  model_kwargs = {k: v for k, v in c.model.items() if k != "name"}
  model = models.create(c.model.name, norm=norm_spec(c), num_classes=num_classes, **model_kwargs)
  o = c.optimizer
  return train.Task(
      model=model,
      tx=train.make_optimizer(o.name, momentum=o.momentum),
      schedule=train.make_schedule(o.schedule, c.train.steps, warmup=o.warmup, decay_steps=tuple(o.decay_steps)),
      decoupled_wd=o.name == "adamw",
      batch_size=c.train.batch_size,
      sampling=c.train.sampling,
      augment=c.train.augment,
      renorm=(c.norm.r_max, c.norm.d_max, c.norm.renorm_warmup) if c.norm.kind == "renorm" else None,
      loop=loop,
      runs=runs,
  )


def run_table(c) -> list[dict]:
  """Runs = seeds x swept learning rates x swept weight decays, all in one vmapped program."""
  lrs = tuple(c.sweep.lr) or (c.optimizer.lr,)
  wds = tuple(c.sweep.weight_decay) or (c.optimizer.weight_decay,)
  return [
      {"run": i, "seed": int(s), "lr": float(lr), "weight_decay": float(wd)}
      for i, (s, lr, wd) in enumerate(itertools.product(c.seeds, lrs, wds))
  ]


def load_data(c, dataset: bn_data.Dataset | None = None) -> bn_data.Dataset:
  """The config's dataset (or ``dataset`` if given), cut to ``data.train_size`` examples when > 0."""
  d = c.data
  if dataset is None:
    dataset = bn_data.load(
        d.name, source=d.source, data_dir=d.data_dir or None, val_size=d.val_size, seed=d.split_seed,
        synthetic_shape=tuple(d.synthetic_shape), synthetic_classes=d.synthetic_classes, synthetic_sizes=tuple(d.synthetic_sizes),
    )
  n = len(dataset.train.y)
  if 0 < d.train_size < n:
    idx = np.sort(np.random.default_rng(d.split_seed + 2).permutation(n)[: d.train_size])
    dataset = dataclasses.replace(dataset, train=bn_data.Split(dataset.train.x[idx], dataset.train.y[idx]))
  return dataset


def _eval_subset(split, size: int, seed: int):
  """A fixed subset of the training split for train-mode-free (eval) metrics."""
  n = len(split.y)
  if size <= 0 or size >= n:
    return split.x, split.y
  idx = np.random.default_rng(seed).permutation(n)[:size]
  idx.sort()
  return split.x[idx], split.y[idx]


# ----------------------------------------------------------------------------- the host loop


class Trainer:
  """Holds the compiled programs and device data of one experiment."""

  def __init__(self, c, dataset: bn_data.Dataset):
    self.c = c
    self.task = make_task(c, dataset.num_classes)
    self.runs = run_table(c)
    stats = pipeline.channel_stats(dataset.train.x)
    self.train_x, self.train_y = pipeline.to_device(dataset.train, stats)
    self.sub_x, self.sub_y = pipeline.to_device(bn_data.Split(*_eval_subset(dataset.train, c.data.train_eval_size, c.data.split_seed)), stats)
    self.test_x, self.test_y = pipeline.to_device(dataset.test, stats)
    self.eval_fn = train.vmapped_eval(self.task, c.train.eval_chunk)
    self._chunks: dict[int, Any] = {}
    self.compile_time = 0.0

  def init(self):
    r = self.runs
    sample = self.train_x[:2]
    return train.vmapped_init(self.task, [x["seed"] for x in r], [x["lr"] for x in r], [x["weight_decay"] for x in r], sample, len(self.train_y))

  def chunk(self, state, num_steps: int):
    if num_steps not in self._chunks:
      t0 = time.perf_counter()
      self._chunks[num_steps] = train.vmapped_chunk(self.task, num_steps).lower(state, self.train_x, self.train_y).compile()
      self.compile_time += time.perf_counter() - t0
    return self._chunks[num_steps](state, self.train_x, self.train_y)

  def evaluate(self, state):
    tr = self.eval_fn(state.params, state.batch_stats, self.sub_x, self.sub_y)
    te = self.eval_fn(state.params, state.batch_stats, self.test_x, self.test_y)
    return tr, te


def _rows(runs, step, wall, lr_mult, batch: train.StepMetrics, tr, te, diverged_step) -> list[dict]:
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


def _checkpointer(workdir: Path):
  import orbax.checkpoint as ocp

  # Synchronous: every save is waited for anyway (a resume point must be complete before training
  # goes on), and orbax's async path keeps a process-global operation id that concurrent managers
  # (e.g. runs trained in threads) race on -- a save then waits 300 s for a signal and fails.
  return ocp.CheckpointManager(
      (workdir / "checkpoints").absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False),
  )


def _save(mgr, step: int, state) -> None:
  import orbax.checkpoint as ocp

  mgr.save(step, args=ocp.args.StandardSave(state))
  mgr.wait_until_finished()


def _restore(mgr, state):
  import orbax.checkpoint as ocp

  step = mgr.latest_step()
  if step is None:
    return None, None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  return step, mgr.restore(step, args=ocp.args.StandardRestore(abstract))


def _summary(c, runs, rows, state, wall, compile_time, steps_done, prober=None) -> dict:
  from bn import stats

  target = c.train.target_accuracy
  per_run = []
  div = np.asarray(state.diverged_step)
  for i, r in enumerate(runs):
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
      "name": c.name, "steps": steps_done, "target_accuracy": target, "runs": per_run,
      "wall_time_s": wall, "compile_time_s": compile_time,
      "steps_per_s": steps_done / wall if wall > 0 else None,
      "run_steps_per_s": steps_done * len(runs) / wall if wall > 0 else None,
      # probing, this invocation (not part of wall_time_s): points measured, seconds running them
      # (program + writing probes.jsonl), seconds compiling the probe program
      **({"probe_points": prober.points, "probe_time_s": prober.time, "probe_compile_time_s": prober.compile_time} if prober else {}),
      **artifacts.provenance(),
  }


def train_workdir(c, workdir, *, progress: bool = True, dataset: bn_data.Dataset | None = None, desc: str = "", stop_after: int | None = None) -> dict:
  """Trains ``c`` into ``workdir`` (resuming if it holds a checkpoint) and returns the summary.

  ``stop_after`` stops (after checkpointing) once that many steps are done -- for tests of resume."""
  from bn import parallel  # lazily: bn.parallel builds on this module

  parallel.initialize(c)  # many hosts: join the JAX distributed runtime before any computation
  writer = parallel.is_writer()  # only process 0 writes artifacts
  plan = parallel.plan(c)  # None: one device (the default); checked before anything is written
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  cfg_dict = parallel.recorded_config(bn_config.to_dict(c))
  runs = run_table(c)
  cfg_file = workdir / "config.json"
  if cfg_file.exists():
    old = artifacts.read_json(cfg_file)
    if old.get("config") != cfg_dict:
      raise bn_config.ConfigError(
          f"{workdir} already holds a run of a different config; use another --workdir, or delete {workdir} to start over."
      )
    if (workdir / "summary.json").exists():
      return artifacts.read_json(workdir / "summary.json")

  dataset = load_data(c, dataset)
  trainer = Trainer(c, dataset) if plan is None else parallel.Trainer(c, dataset, plan)  # checks the config
  if writer and not cfg_file.exists():  # only once the config and the data are known to be good
    artifacts.write_json(cfg_file, {"config": cfg_dict, "runs": runs})
  state = trainer.init()
  mgr = _checkpointer(workdir)
  step, restored = _restore(mgr, state)
  rows, wall = [], 0.0
  if restored is not None:
    state = restored
    rows = [r for r in artifacts.read_jsonl(workdir / "metrics.jsonl") if r["step"] <= step]
    wall = rows[-1]["wall_time"] if rows else 0.0
  steps_done = int(np.asarray(state.step)[0])
  total, every = c.train.steps, c.train.eval_every
  ckpt_every = max(c.train.checkpoint_every // every, 1) * every
  bar = Progress(total, desc or c.name, initial=steps_done, enabled=progress and writer)
  prober = None
  if c.probes.every > 0:
    from bn import run_probes

    prober = run_probes.Prober(c, trainer, workdir, steps_done)
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
      new = _rows(runs, steps_done, wall, lr_mult, jax.device_get(batch), jax.device_get(tr), jax.device_get(te), np.asarray(state.diverged_step))
      rows += new
      if writer:
        artifacts.write_jsonl(workdir / "metrics.jsonl", rows)
      if prober is not None and (steps_done % c.probes.every == 0 or steps_done == total):
        prober.measure(state, steps_done)
      # No checkpoint at the end: a finished workdir is marked by summary.json and never resumed.
      if (steps_done % ckpt_every == 0 and steps_done < total) or (stop_after is not None and steps_done >= stop_after):
        _save(mgr, steps_done, state)
      accs = [r["test_accuracy"] for r in new if not r["diverged"]]
      bar.update(n, loss=float(np.nanmean([r["batch_loss"] or np.nan for r in new])), test_acc=float(np.mean(accs)) if accs else float("nan"))
      if stop_after is not None and steps_done >= stop_after and steps_done < total:
        return {"stopped_at": steps_done}
  finally:
    bar.close()
    mgr.close()
  summary = _summary(c, runs, rows, state, wall, trainer.compile_time, steps_done, prober)
  if writer:
    artifacts.write_json(workdir / "summary.json", summary)
  return summary


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str]) -> int:
  try:
    rest, overrides = bn_config.split_overrides(argv)
  except bn_config.ConfigError as e:
    print(f"bn train: {e}", file=sys.stderr)
    return 2
  p = argparse.ArgumentParser(prog="bn train", description="Train one experiment config into a workdir (resumes if interrupted).")
  p.add_argument("--config", required=True, help="experiments/configs/NAME.py; override keys with --config.KEY=VALUE")
  p.add_argument("--workdir", required=True, help="output directory (config.json, metrics.jsonl, summary.json, checkpoints/)")
  p.add_argument("--no-progress", action="store_true", help="no progress output")
  a = p.parse_args(rest)
  try:
    c = bn_config.load(a.config, overrides)
    summary = train_workdir(c, a.workdir, progress=not a.no_progress)
  except (bn_config.ConfigError, bn_data.DataError, ValueError) as e:
    print(f"bn train: error: {e}", file=sys.stderr)
    return 2
  for r in summary["runs"]:
    status = f"diverged at step {r['diverged_step']}" if r["diverged"] else f"test acc {r['test_accuracy']:.4f}, train acc {r['train_accuracy']:.4f}"
    print(f"run {r['run']} seed {r['seed']} lr {r['lr']:g}: {status}")
  print(f"wall {summary['wall_time_s']:.1f}s (+{summary['compile_time_s']:.1f}s compile), {summary['steps_per_s']:.0f} steps/s; artifacts in {a.workdir}")
  return 0
