"""A slice of the quick claims ledger, timed on every local device vs one device (``bn bench``'s
``ledger_slice_devices``; the whole ledger is timed only by the full bench).

    python -m bn.bench.ledger_slice MODE OUT   # the slice into OUT, its timings to OUT/slice.json
    python -m bn.bench.ledger_slice phases EXPERIMENT CONDITION [train.steps=N ...]   # where its time goes (:func:`phases`)

The slice is :data:`SLICE`: two conditions of the ledger, their configs as ``bn reproduce``
builds them (:func:`bn.ledger.condition_configs`, confirmatory seeds; c1_speed's cut to its first
250 steps), each trained into
``OUT/<experiment>/<condition>/`` by :func:`bn.loop.train_workdir` on the dataset loaded once,
as :func:`bn.ledger.run_ledger` does -- so on several host devices every program splits its
runs over the ``'runs'`` mesh axis (``parallel.runs_devices``). One condition is
evaluation-bound (c1_speed/bn: 40 runs of the Ioffe MLP, an evaluation with precise BN every 10
steps), one mostly training-bound (lr_sweep/bn: 60 runs of a 6 x 64 ReLU MLP, 1,000 steps, 5
evaluations). ``bn bench`` runs it in two
child processes, one per device count (:func:`on_devices`), so both start alike (nothing compiled,
no persistent compilation cache), and compares their final metrics (:func:`compare`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# (experiment, condition, overrides) of the ledger: c1_speed's BN condition for its first 250 of 500 steps (25 of its 50
# evaluations; ~30 s on one device of the 2-core machine), lr_sweep's BN condition whole (~45 s)
SLICE = (("c1_speed", "bn", {"train.steps": 250}), ("lr_sweep", "bn", {}))
METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "test_ece", "val_loss", "val_accuracy", "batch_loss", "batch_accuracy")
# One device vs several (bn.programs.over_runs): training is bit-identical; XLA compiles the evaluation for the per-device
# shapes into other fusions, so its sums may differ in the last bits (measured <= 3.3e-7 relative on the losses) and a test
# image whose top two logits nearly tie may flip class (or cross a calibration bin's edge): accuracies and the calibration
# error within one image of the smallest evaluation set (1,000 images).
LOSS_RTOL = 1e-6
ACCURACY_ATOL = 1e-3 + 1e-9


def describe(conditions=SLICE) -> str:
  """``"c1_speed/bn (train.steps=250), lr_sweep/bn"``."""
  return ", ".join(f"{e}/{c}" + (" (" + ", ".join(f"{k}={v}" for k, v in o.items()) + ")" if o else "") for e, c, o in conditions)


def run_slice(out: Path, mode: str = "quick", conditions=SLICE) -> dict:
  """Trains ``conditions`` of the ledger in ``mode`` into ``out``; returns ``{"exp/cond": seconds,
  "total": seconds, "compile_s": ..., "train_eval_s": ..., "devices": ...}`` (compile and
  train+eval seconds from the summaries, ``data_load_s``; the rest of the total is set-up and writing)."""
  import jax

  from bn import config as bn_config, experiment, ledger, loop

  out = Path(out)
  t_all = time.perf_counter()
  timings: dict = {"devices": jax.local_device_count(), "load_avg_start": [round(v, 2) for v in os.getloadavg()]}
  compile_s = train_s = 0.0
  exps = {}
  for name, cond, overrides in conditions:
    c = ledger.condition_configs(name, mode)[cond]
    for k, v in overrides.items():
      bn_config.assign(c, k, v)
    exps[name, cond] = experiment.from_config(c)
  data = ledger.load_datasets(exps.values())  # as bn reproduce: every dataset once, before training
  timings["data_load_s"] = time.perf_counter() - t_all
  for (name, cond), exp in exps.items():
    t0 = time.perf_counter()
    key = experiment.dataset_key(exp.data)
    s = loop.train_workdir(exp, out / name / cond, dataset=data[key], progress=False, startup=False)
    timings[f"{name}/{cond}"] = time.perf_counter() - t0
    compile_s += s.get("compile_time_s") or 0.0
    train_s += s.get("wall_time_s") or 0.0
  timings.update(total=time.perf_counter() - t_all, compile_s=compile_s, train_eval_s=train_s,
                 load_avg_end=[round(v, 2) for v in os.getloadavg()])
  return timings


def on_devices(out: Path, mode: str, devices: int, timeout: float = 1800) -> dict:
  """:func:`run_slice` in a child process with ``devices`` host devices (``XLA_FLAGS``; the other
  XLA flags kept): its timings."""
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  for k in ("BN_HOST_DEVICES", "JAX_COMPILATION_CACHE_DIR", "BN_COMPILE_CACHE"):
    env.pop(k, None)
  p = subprocess.run([sys.executable, "-m", "bn.bench.ledger_slice", mode, str(out)], env=env, capture_output=True, text=True, timeout=timeout)
  if p.returncode:
    raise RuntimeError(f"the ledger slice on {devices} device(s) failed (exit {p.returncode}): {p.stderr[-2000:]}")
  return json.loads((Path(out) / "slice.json").read_text())


def compare(a: Path, b: Path, conditions=SLICE) -> dict:
  """Two slices' results, every number of every evaluation of every run (``metrics.jsonl``: the
  curves the claims read): the training metrics (``batch_*``) bit-identical, the evaluation
  losses to :data:`LOSS_RTOL` relative, the evaluation accuracies and calibration error (ECE) to
  :data:`ACCURACY_ATOL`, and
  every run's steps to the target (``summary.json``) equal. Returns the counts, the largest
  differences and ``same``."""
  out = {"checked": 0, "not_identical": 0, "training_identical": True, "max_loss_rel_diff": 0.0, "max_accuracy_diff": 0.0,
         "accuracies_differing": 0, "steps_to_target_same": True, "loss_rtol": LOSS_RTOL, "accuracy_atol": ACCURACY_ATOL}
  for name, cond, _ in conditions:
    da, db = Path(a) / name / cond, Path(b) / name / cond
    ra, rb = _rows(da / "metrics.jsonl"), _rows(db / "metrics.jsonl")
    if not ra or [(r["run"], r["step"]) for r in ra] != [(r["run"], r["step"]) for r in rb]:
      return {**out, "same": False, "note": f"{name}/{cond}: the two runs evaluated at different points"}
    for x, y in zip(ra, rb):
      for k in METRICS:
        if x.get(k) is None or y.get(k) is None:
          continue
        out["checked"] += 1
        if x[k] == y[k]:
          continue
        out["not_identical"] += 1
        if k.startswith("batch_"):
          out["training_identical"] = False
        elif k.endswith("_loss"):
          out["max_loss_rel_diff"] = max(out["max_loss_rel_diff"], abs(x[k] - y[k]) / max(abs(y[k]), 1e-30))
        else:
          out["accuracies_differing"] += 1
          out["max_accuracy_diff"] = max(out["max_accuracy_diff"], abs(x[k] - y[k]))
    sa, sb = (json.loads((d / "summary.json").read_text())["runs"] for d in (da, db))
    out["steps_to_target_same"] &= [r["steps_to_target"] for r in sa] == [r["steps_to_target"] for r in sb]
  out["same"] = (out["checked"] > 0 and out["training_identical"] and out["steps_to_target_same"]
                 and out["max_loss_rel_diff"] <= LOSS_RTOL and out["max_accuracy_diff"] <= ACCURACY_ATOL)
  return out


def _rows(f: Path) -> list[dict]:
  return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


def phases(name: str, cond: str, out: Path, overrides: dict | None = None, repeats: int = 5) -> dict:
  """Where a ledger condition's wall time goes: ``{phase: seconds}`` of one
  :func:`bn.loop.train_workdir` of the quick ledger's ``name/cond`` into ``out`` on this process's
  devices, with timers around the trainer's programs (each call then waits for its result: one
  more host sync per chunk), the checkpoints and the metric rows; the compile seconds apart.
  With several devices also ``programs``: the condition's 10-step training chunk and its
  evaluation on one device vs spread over every device, timed round-robin in this process
  (:func:`bn.bench.core.measure`)."""
  import collections
  import dataclasses
  import functools

  import jax

  from bn import config as bn_config, experiment, ledger, loop, parallel, trainer as bn_trainer, workdir as bn_workdir
  from bn.bench import core

  c = ledger.condition_configs(name, "quick")[cond]
  for k, v in (overrides or {}).items():
    bn_config.assign(c, k, v)
  exp = experiment.from_config(c)
  t0 = time.perf_counter()
  ds = ledger.load_datasets([exp])[experiment.dataset_key(exp.data)]
  acc = collections.defaultdict(float, data_load=time.perf_counter() - t0)

  def timed(owner, attr, key, block=True):
    f = getattr(owner, attr)

    @functools.wraps(f)
    def g(*a, **kw):
      comp = sum(t.compile_time for t in trainers)
      t0 = time.perf_counter()
      r = f(*a, **kw)
      if block:
        jax.block_until_ready(r)
      acc[key] += time.perf_counter() - t0 - (sum(t.compile_time for t in trainers) - comp)
      return r

    return f, g

  trainers: list = []
  init = bn_trainer.Trainer.__init__

  def keep(self, *a, **kw):
    t0 = time.perf_counter()
    init(self, *a, **kw)
    trainers.append(self)
    acc["trainer set-up (data placement)"] += time.perf_counter() - t0

  patches = [(bn_trainer.Trainer, "__init__", None)] + [
      (owner, attr, timed(owner, attr, key, block)) for owner, attr, key, block in (
          (bn_trainer.Trainer, "init", "state init", True), (bn_trainer.Trainer, "chunk", "training chunks", True),
          (bn_trainer.Trainer, "evaluate", "evaluation (precise BN + eval passes)", True),
          (bn_workdir.Checkpoints, "save", "checkpoints", False), (loop._Outputs, "metrics", "metric rows (JSON)", False))]
  saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
  try:
    for owner, attr, fg in patches:
      setattr(owner, attr, keep if fg is None else fg[1])
    t0 = time.perf_counter()
    s = loop.train_workdir(exp, Path(out), dataset=ds, progress=False, startup=False)
    acc["train_workdir (all)"] = time.perf_counter() - t0
  finally:
    for owner, attr, f in saved:
      setattr(owner, attr, f)
  acc["compile"] = s["compile_time_s"]
  res = {"condition": f"{name}/{cond}", "devices": jax.local_device_count(), "runs": len(exp.runs), "steps": s["steps"],
         "seconds": {k: round(v, 2) for k, v in acc.items()}, "load_avg": core.load_avg()}
  if jax.local_device_count() > 1:
    p = exp.parallel
    plan = parallel.make_plan(p.devices, p.bn_stats, exp.batch_size, exp.ghost_batch_size, runs=len(exp.runs), runs_devices="all")
    trs = {"one_device": bn_trainer.Trainer(exp, ds, None), "all_devices": bn_trainer.Trainer(exp, ds, plan)}
    states = {k: t.init() for k, t in trs.items()}

    def chunk(k):
      states[k], m = trs[k].chunk(states[k], exp.schedule.eval_every)
      return m

    fns = {f"{what}_{k}": (functools.partial(chunk, k) if what == "train" else functools.partial(lambda k: trs[k].evaluate(states[k]), k))
           for k in trs for what in ("train", "eval")}
    st = dataclasses.replace(core.FULL, repeats=repeats, min_time=0.3)
    la = core.load_avg()
    t = core.measure(fns, st)
    res["programs"] = {"load_avg": la, "median_s": {k: v["median_s"] for k, v in t.items()},
                       "train_chunk_all_vs_one": core.ratio(t["train_all_devices"], t["train_one_device"]),
                       "evaluation_all_vs_one": core.ratio(t["eval_all_devices"], t["eval_one_device"]),
                       "steps_per_chunk": exp.schedule.eval_every}
  return res


def main(argv=None) -> int:
  argv = list(argv if argv is not None else sys.argv[1:])
  if argv and argv[0] == "phases":  # python -m bn.bench.ledger_slice phases EXPERIMENT CONDITION [KEY=VALUE ...]
    import tempfile

    overrides = dict(a.split("=", 1) for a in argv[3:])
    overrides = {k: json.loads(v) for k, v in overrides.items()}
    with tempfile.TemporaryDirectory() as d:
      print(json.dumps(phases(argv[1], argv[2], Path(d) / "wd", overrides), indent=1))
    return 0
  mode, out = argv[:2]
  t = run_slice(Path(out), mode)
  (Path(out) / "slice.json").write_text(json.dumps(t, indent=1))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
