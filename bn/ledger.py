"""The claims ledger: run every experiment the claims need, then write the report.

Each experiment is a config file ``experiments/configs/<name>.py`` with
``get_config(mode)`` and ``conditions(mode)`` (a dict ``{condition: {dotted key: value}}``);
the claims (:mod:`bn.claims`) say which experiments they read. Every condition trains
into ``OUT/<experiment>/<condition>/`` through :func:`bn.loop.train_workdir` (or is
measured by its runner in :mod:`bn.measure`), so a second run on the same ``OUT`` skips finished
conditions and resumes an interrupted one from its checkpoint. ``OUT/ledger.json``
records the mode and the conditions; finally :func:`bn.report.build` turns the JSON
files into ``OUT/report.md``, ``OUT/claims.json`` and the PNG plots.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from bn import artifacts, claims as bn_claims, config as bn_config, data as bn_data, experiment, loop, measure as bn_measure, prereg, records
from bn.errors import UsageError
from bn.report import MANIFEST

MODES = ("tiny", "quick", "full")
CONFIRMATORY_SEED_BASE, PILOT_SEED_BASE = prereg.CONFIRMATORY_SEED_BASE, prereg.PILOT_SEED_BASE  # re-exported
# What a user should expect, stated at start-up (measured numbers: docs/benchmarks.md).
# A range: the quick ledger measured 15-22 min on the 2-core machine, up to ~2x that with other jobs on the same cores (README).
EXPECTED = {"quick": "15-45 min on a 2-core CPU (19 measured on a quiet machine, 32 with other jobs on the same cores)",
            "full": "6-20 h on a 2-core CPU (estimated: 6-8 h idle -- the Ioffe experiment at 50,000 steps ~4 h, C5's CNN ~1.5 h -- "
                    "up to ~2.8x that under load), far less on a GPU"}


def config_module(name: str):
  path = bn_config.CONFIG_DIR / f"{name}.py"
  if not path.is_file():
    raise bn_config.ConfigError(f"experiment config {path} is missing; run bn reproduce from a checkout of the repository.")
  spec = importlib.util.spec_from_file_location(f"bn_experiment_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def condition_configs(name: str, mode: str, dataset: str | None = None, seed_base: int = CONFIRMATORY_SEED_BASE) -> dict:
  """``{condition: ConfigDict}`` of one experiment in one mode, its seeds moved to ``seed_base`` + the config's."""
  module = config_module(name)
  out = {}
  for cond, overrides in module.conditions(mode).items():
    c = module.get_config(mode)
    if dataset and mode != "tiny":
      c.data.name = dataset
    for key, value in overrides.items():
      bn_config.assign(c, key, value)
    c.seeds = tuple(seed_base + int(x) for x in c.seeds)
    c.name = f"{name}/{cond}"
    out[cond] = c
  return out


def check_out(out: Path, mode: str, dataset: str | None, seed_base: int = CONFIRMATORY_SEED_BASE) -> dict | None:
  """The manifest of an existing ledger in ``out`` (None for a new one). Raises UsageError when
  ``out`` is a file, a training workdir, or a ledger of another mode or dataset (whose finished
  conditions would otherwise be reported as this mode's), and when it cannot be written."""
  if out.exists() and not out.is_dir():
    raise UsageError(f"--out {out} is a file; give a directory.")
  manifest = out / MANIFEST
  if manifest.exists():
    m = artifacts.read_json(manifest)
    if not isinstance(m, dict):
      raise UsageError(f"{manifest} holds a JSON {type(m).__name__}, not a ledger record (bn writes an object); "
                       f"give another --out, or delete {manifest} to run the ledger into {out} again.")
    if m.get("mode") != mode or m.get("dataset") != dataset:
      was = f"--{m.get('mode')}" + (f" --dataset {m['dataset']}" if m.get("dataset") else "")
      now = f"--{mode}" + (f" --dataset {dataset}" if dataset else "")
      raise UsageError(f"--out {out} holds a `bn reproduce {was}` ledger, not {now}: its finished conditions would be "
                                 f"reported as {now}. Give another --out (or delete {out}).")
    if m.get("seed_base", 0) != seed_base:
      raise UsageError(f"--out {out} holds a ledger of seeds from {m.get('seed_base', 0)}, not --seed-base {seed_base}: its "
                       "finished conditions would be reported under other seeds. Give another --out (or delete it).")
  elif out.is_dir() and ((out / "config.json").exists() or (out / "summary.json").exists()):
    raise UsageError(f"--out {out} is a `bn train` workdir; give a new directory (or an earlier --out of bn reproduce).")
  else:
    m = None
  loop.check_writable(out)
  return m


def load_datasets(exps) -> dict:
  """``{experiment.dataset_key: dataset}``: every dataset the experiments ``exps`` train on, each loaded once."""
  cache: dict = {}
  for exp in exps:
    key = experiment.dataset_key(exp.data)
    if key not in cache:
      d = exp.data
      cache[key] = bn_data.load(d.name, source=d.source, data_dir=d.data_dir, val_size=d.val_size, seed=d.split_seed,
                                synthetic_shape=d.synthetic_shape, synthetic_classes=d.synthetic_classes, synthetic_sizes=d.synthetic_sizes,
                                flag="--config.data.data_dir")
  return cache


def provenance_record(data_cache: dict, command, previous: dict | None) -> dict:
  """This invocation's provenance; a resumed ledger keeps the first invocation's record and notes this one under ``resumed``."""
  from bn import provenance

  record = provenance.collect(data_cache.values(), argv=command, backend=records.backend())
  if previous and previous.get("provenance"):
    record = {**previous["provenance"], "resumed": [*previous["provenance"].get("resumed", []),
                                                   {k: record[k] for k in ("command", "git_commit", "git_dirty", "date")}]}
  return record


def write_manifest(out: Path, mode: str, dataset, seed_base: int, configs: dict, previous: dict | None, record: dict) -> None:
  """``OUT/ledger.json`` (the experiments of earlier invocations kept, this one's conditions added) and the
  pre-registration of this invocation's experiments (:mod:`bn.prereg`; a resumed ledger keeps its first)."""
  experiments = {**(previous or {}).get("experiments", {}), **{n: list(conds) for n, conds in configs.items()}}
  artifacts.write_json(out / MANIFEST, {"mode": mode, "dataset": dataset, "seed_base": seed_base, "experiments": experiments,
                                        "provenance": record})
  seeds = {n: {cond: list(c.seeds) for cond, c in conds.items()} for n, conds in configs.items()}
  prereg.write(out, prereg.registration(bn_claims.all_claims(), seeds, mode=mode, seed_base=seed_base, provenance=record))


def run_ledger(out: Path, mode: str = "quick", *, only=None, dataset: str | None = None, progress: bool = True,
               log=None, command: list[str] | None = None, seed_base: int = CONFIRMATORY_SEED_BASE) -> dict:
  """Runs every (selected) experiment into ``out``; returns ``{experiment: wall seconds, "total": ...}``
  of this invocation, which ``OUT/timings.json`` records after every condition (a killed ledger
  keeps the time it spent; see :func:`record_timings`). ``command``: the ``bn`` arguments the
  provenance records (default: this process's command line)."""
  stderr = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
  say = log or (stderr if progress else (lambda line: None))
  warnings_only = lambda line: (log or stderr)(line) if line.startswith("warning:") else None  # noqa: E731 -- without progress
  known = bn_claims.experiments()
  names = tuple(only) if only else known
  unknown = set(names) - set(known)
  if unknown:
    raise bn_config.ConfigError(f"unknown experiment(s) {sorted(unknown)}; choose from {', '.join(known)}.")
  configs = {name: condition_configs(name, mode, dataset, seed_base) for name in names}
  plan = [(name, cond, c, experiment.from_config(c)) for name in names for cond, c in configs[name].items()]  # every config checked first
  # many processes (BN_COORDINATOR / BN_NUM_PROCESSES / BN_PROCESS_ID, as for bn train): join before JAX starts; every
  # condition then spreads its runs over every device of every process, and process 0 alone writes (docs/scale-out.md)
  import hashlib

  from bn import distributed

  distributed.initialize(plan[0][3].parallel, hashlib.sha256(" ".join([mode, *(e.fingerprint for *_, e in plan)]).encode()).hexdigest())
  if not distributed.is_writer():
    say = warnings_only = lambda line: None  # noqa: E731
  out = Path(out)
  previous = check_out(out, mode, dataset, seed_base)
  data_cache = load_datasets(exp for *_, exp in plan)  # every dataset loaded (and checked) before anything is written
  runs = sum(len(exp.runs) for *_, exp in plan)
  steps = sum(exp.schedule.steps * len(exp.runs) for *_, exp in plan)
  say(loop.startup_line(list(data_cache.values()), f"{len(plan)} conditions, {runs} runs, {steps} run-steps in all; out {out}"))
  if (warning := loop.gpu_warning()) is not None:
    say(warning)
  out.mkdir(parents=True, exist_ok=True)
  writer = distributed.is_writer()
  if writer:
    write_manifest(out, mode, dataset, seed_base, configs, previous, provenance_record(data_cache, command, previous))
  timings: dict = {}
  done: dict = {"trained": [], "skipped": []}
  prev_timings = artifacts.read_json(out / "timings.json") if (out / "timings.json").exists() else {}
  t_all = time.perf_counter()
  for i, (name, cond, c, exp) in enumerate(plan):
    workdir = out / name / cond
    desc = f"[{i + 1}/{len(plan)}] {name}/{cond}"
    t0, before = time.perf_counter(), timings.get(name, 0.0)

    def note(*_, name=name, t0=t0, before=before, running=f"{name}/{cond}"):
      """Records the seconds so far, those of the condition in progress too (a killed ledger keeps them)."""
      timings[name] = before + time.perf_counter() - t0
      timings["total"] = time.perf_counter() - t_all
      if writer:
        record_timings(out, mode, timings, previous=prev_timings, conditions={**done, **({"running": running} if running else {})})

    measure = bn_measure.runner(name)
    finished = (workdir / ("results.json" if measure is not None else "summary.json")).exists()
    try:
      if measure is not None:
        if progress and not finished:
          say(f"{desc}: measuring (no training)")
        measure_condition(measure, c, workdir, data_cache[experiment.dataset_key(exp.data)], write=writer)
      else:
        loop.train_workdir(exp, workdir, progress=progress, dataset=data_cache[experiment.dataset_key(exp.data)], desc=desc,
                           log=say if progress else warnings_only, startup=False, on_eval=note)
    except BaseException:
      note()  # interrupted or failed: its time so far counts
      raise
    done["skipped" if finished else "trained"].append(f"{name}/{cond}")
    note(running=None)
  return timings


def measure_condition(measure, c, workdir: Path, dataset, *, write: bool = True) -> dict:
  """A condition that trains nothing: ``workdir/results.json`` from ``measure(c, dataset)`` (a runner
  of :mod:`bn.measure`), with ``config.json``, the wall time and the provenance; a second call returns what the
  first wrote -- only for the same config (another mode's results must not pass for this one's).
  ``write=False`` (processes other than 0): measure, write nothing."""
  out_file, cfg_file, mine = workdir / "results.json", workdir / "config.json", bn_config.to_dict(c)
  if out_file.exists():
    recorded = artifacts.read_json(cfg_file).get("config") if cfg_file.exists() else None
    if recorded != mine:
      keys = "; ".join(f"{k}: {a!r} (workdir) vs {b!r} (this run)" for k, a, b in artifacts.config_diff(recorded or {}, mine))
      raise bn_config.ConfigError(f"{workdir} holds results of a different config ({keys}); use another --out, "
                                  f"or delete {workdir} to measure again.")
    return artifacts.read_json(out_file)
  t0 = time.perf_counter()
  result = {**measure(c, dataset), "wall_time_s": time.perf_counter() - t0, **records.run_provenance()}
  if not write:
    return result
  workdir.mkdir(parents=True, exist_ok=True)
  artifacts.write_json(cfg_file, {"config": mine})
  artifacts.write_json(out_file, result)
  return result


def record_timings(out: Path, mode: str, timings: dict, *, previous: dict | None = None, conditions: dict | None = None) -> None:
  """``OUT/timings.json``: this invocation's seconds so far (``last_invocation_s``; rewritten after
  every condition and every evaluation inside one, so a killed ledger keeps what it spent, the
  condition it was killed in too), the previous invocation's, and
  ``cumulative_s`` summed over invocations with the same mode (an interrupted and resumed
  ledger adds up to its whole cost; a re-run of a finished one adds only the seconds it took
  to skip). ``conditions``: which conditions this invocation trained (or measured), which it
  found finished and which was ``running`` when the file was written. ``previous``: the file as it
  was before this invocation (default: as it is)."""
  prev = previous if previous is not None else (artifacts.read_json(out / "timings.json") if (out / "timings.json").exists() else {})
  prev = prev if isinstance(prev, dict) else {}  # not bn's: started afresh
  cum = dict(prev.get("cumulative_s") or {}) if prev.get("mode") == mode else {}
  cum = {k: cum.get(k, 0.0) + timings.get(k, 0.0) for k in {**cum, **timings}}
  artifacts.write_json(out / "timings.json", {"mode": mode, "last_invocation_s": timings, "previous": prev.get("last_invocation_s"),
                                              "cumulative_s": cum, **({"conditions": conditions} if conditions is not None else {})})
