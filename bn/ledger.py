"""``bn reproduce``: run the claims ledger (every experiment of experiments/configs) and write the report.

    bn reproduce [--tiny|--quick|--full] --out DIR [--dataset NAME] [--only EXP,...]

Each experiment is a config file ``experiments/configs/<name>.py`` with
``get_config(mode)`` and ``conditions(mode)`` (a dict ``{condition: {dotted key: value}}``).
Every condition trains into ``DIR/<experiment>/<condition>/`` through
:func:`bn.run.train_workdir`, so a second ``bn reproduce`` on the same ``--out``
skips finished conditions and resumes an interrupted one from its checkpoint.
``depth_init`` trains nothing: it measures gradient norms at initialization.
Finally :func:`bn.report.build` turns the JSON files into ``DIR/report.md``,
``DIR/claims.json`` and the PNG plots.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bn import artifacts, config as bn_config, data as bn_data, models, pipeline, probes, run, train

EXPERIMENTS = ("mlp_probed", "lr_sweep", "batch_gap", "ghost", "small_batch", "depth_init")
MODES = ("tiny", "quick", "full")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def experiment(name: str):
  path = CONFIG_DIR / f"{name}.py"
  if not path.is_file():
    raise bn_config.ConfigError(f"experiment config {path} is missing; run bn reproduce from a checkout of the repository.")
  spec = importlib.util.spec_from_file_location(f"bn_experiment_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def condition_configs(name: str, mode: str, dataset: str | None = None) -> dict:
  """``{condition: ConfigDict}`` of one experiment in one mode."""
  module = experiment(name)
  out = {}
  for cond, overrides in module.conditions(mode).items():
    c = module.get_config(mode)
    if dataset and mode != "tiny":
      c.data.name = dataset
    for key, value in overrides.items():
      bn_config.assign(c, key, value)
    c.name = f"{name}/{cond}"
    out[cond] = c
  return out


# ----------------------------------------------------------------------------- C6: gradients at initialization


def _grad_norms_at_init(c, depth: int, x, y):
  """Per-seed gradient norms of every layer at init, shape (seeds, depth + 1)."""
  spec = run.norm_spec(c)
  model = models.MLP(widths=(c.model.widths[0],) * depth, num_classes=int(y.max()) + 1, act=c.model.act, norm=spec, init_std=c.model.init_std)

  def one(seed):
    variables = model.init(jax.random.PRNGKey(seed), x[:2], train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})

    def loss_fn(p):
      logits, _ = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
      return train.cross_entropy(logits, y)

    return probes.grad_norms(loss_fn, params, models.layer_names(params))

  return jax.jit(jax.vmap(one))(jnp.asarray(c.seeds, jnp.int32))


def depth_init(c, workdir: Path, dataset: bn_data.Dataset) -> dict:
  """C6: writes ``results.json`` with per-depth, per-seed layer gradient norms."""
  out_file = workdir / "results.json"
  if out_file.exists():
    return artifacts.read_json(out_file)
  workdir.mkdir(parents=True, exist_ok=True)
  ds = run.load_data(c, dataset)
  stats = pipeline.channel_stats(ds.train.x)
  n = min(c.probes.batch_size, len(ds.train.y))
  x, y = pipeline.to_device(bn_data.Split(ds.train.x[:n], ds.train.y[:n]), stats)
  t0 = time.perf_counter()
  rows = []
  for depth in c.depths:
    norms = np.asarray(_grad_norms_at_init(c, depth, x, y))
    rows.append({"depth": depth, "grad_norms": norms.tolist()})
  result = {"name": c.name, "seeds": list(c.seeds), "norm": c.norm.kind, "act": c.model.act, "width": c.model.widths[0],
            "batch": n, "depths": rows, "wall_time_s": time.perf_counter() - t0, **artifacts.provenance()}
  artifacts.write_json(workdir / "config.json", {"config": bn_config.to_dict(c)})
  artifacts.write_json(out_file, result)
  return result


# ----------------------------------------------------------------------------- the ledger


def run_ledger(out: Path, mode: str = "quick", *, only=None, dataset: str | None = None, progress: bool = True) -> dict:
  """Runs every (selected) experiment into ``out``; returns ``{experiment: wall seconds}``."""
  names = tuple(only) if only else EXPERIMENTS
  unknown = set(names) - set(EXPERIMENTS)
  if unknown:
    raise bn_config.ConfigError(f"unknown experiment(s) {sorted(unknown)}; choose from {', '.join(EXPERIMENTS)}.")
  plan = [(name, cond, c) for name in names for cond, c in condition_configs(name, mode, dataset).items()]
  data_cache: dict = {}
  timings: dict = {}
  t_all = time.perf_counter()
  for i, (name, cond, c) in enumerate(plan):
    key = (c.data.name, c.data.source, c.data.data_dir, tuple(c.data.synthetic_shape), c.data.split_seed)
    if key not in data_cache:
      data_cache[key] = bn_data.load(
          c.data.name, source=c.data.source, data_dir=c.data.data_dir or None, seed=c.data.split_seed,
          synthetic_shape=tuple(c.data.synthetic_shape), synthetic_classes=c.data.synthetic_classes, synthetic_sizes=tuple(c.data.synthetic_sizes),
      )
    workdir = out / name / cond
    desc = f"[{i + 1}/{len(plan)}] {name}/{cond}"
    t0 = time.perf_counter()
    if name == "depth_init":
      if progress:
        print(f"{desc}: gradient norms at init for depths {tuple(c.depths)}", file=sys.stderr, flush=True)
      depth_init(c, workdir, data_cache[key])
    else:
      run.train_workdir(c, workdir, progress=progress, dataset=data_cache[key], desc=desc)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
  timings["total"] = time.perf_counter() - t_all
  return timings


# Expected wall time on the 2-core development CPU (quick: measured 13 min 0 s on 2026-11-26;
# full: scaled from the quick run's per-run-step rates -- steps x seeds x conditions, C5 at
# the 16-32-64 CNN's measured 2x cost; mlp ~0.1 h, lr_sweep ~0.2 h, batch_gap ~0.8 h,
# ghost ~1 h, small_batch ~3.2 h).
EXPECTED = {"quick": "~13 min on a 2-core CPU", "full": "~5-6 h on a 2-core CPU (C5's CNN is over half), far less on a GPU"}


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="bn reproduce", description="Run the claims ledger (C1-C6) and write DIR/report.md, DIR/claims.json and plots. Re-running resumes.")
  g = p.add_mutually_exclusive_group()
  g.add_argument("--quick", dest="mode", action="store_const", const="quick", help="3 seeds, short runs (default; ~13 min on a 2-core CPU)")
  g.add_argument("--full", dest="mode", action="store_const", const="full", help="paper-scale: 5 seeds, Ioffe's 50,000 steps (~5-6 h on a 2-core CPU, most of it C5's CNN)")
  g.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help="synthetic data, a few steps (for tests)")
  p.add_argument("--out", required=True, help="output directory (experiment workdirs, report.md, claims.json, plots)")
  p.add_argument("--dataset", default=None, help="dataset for every experiment (default fashion_mnist; e.g. mnist once prepared via `bn data prepare mnist`)")
  p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(EXPERIMENTS)}")
  p.add_argument("--no-progress", action="store_true")
  a = p.parse_args(argv)
  mode = a.mode or "quick"
  out = Path(a.out)
  only = a.only.split(",") if a.only else None
  if mode in EXPECTED and not a.no_progress:
    print(f"bn reproduce --{mode}: expected {EXPECTED[mode]}; re-running the same command resumes.", file=sys.stderr)
  try:
    timings = run_ledger(out, mode, only=only, dataset=a.dataset, progress=not a.no_progress)
  except (bn_config.ConfigError, bn_data.DataError, ValueError) as e:
    print(f"bn reproduce: error: {e}", file=sys.stderr)
    return 2
  prev = artifacts.read_json(out / "timings.json") if (out / "timings.json").exists() else {}
  # cumulative_s: summed over invocations with the same mode (an interrupted and resumed ledger
  # adds up to its whole cost; a re-run of a finished one adds only the seconds it took to skip).
  cum = dict(prev.get("cumulative_s") or {}) if prev.get("mode") == mode else {}
  cum = {k: cum.get(k, 0.0) + timings.get(k, 0.0) for k in {**cum, **timings}}
  artifacts.write_json(out / "timings.json", {"mode": mode, "last_invocation_s": timings, "previous": prev.get("last_invocation_s"), "cumulative_s": cum})
  from bn import report

  path = report.build(out)
  print(f"report: {path}")
  return 0
