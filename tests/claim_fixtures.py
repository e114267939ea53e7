"""Hand-written run data for the claim analyses (tests/test_claims.py).

Every helper builds exactly what :func:`bn.analysis.load_condition` returns for a finished
condition -- ``{"summary", "metrics", "probes", "config"}`` for a trained one (the rows
:func:`bn.loop.metric_rows` / :func:`bn.loop.summarize` / :func:`bn.run_probes.to_json` write),
``{"results", "config"}`` for a measured one -- from a few numbers with known signs and sizes, so
that a test can compute every expected per-seed value by hand. :func:`roundtrip` writes the
conditions to disk and reads them back through ``load_condition`` (the JSON round trip: tuples
become lists, NaN becomes null), and :func:`write_condition` lays out a ledger's workdirs.

Conventions: 6 seeds (enough for an exact sign test: 2 * 0.5**6 < 0.05); every condition has a
per-seed jitter ``JIT[condition]`` (small, seed-varying, so t-intervals are not degenerate); steps to
the target accuracy are ``base * 2**jit`` (log2 steps = log2 base + jit, exactly, because the
accuracy curve is linear around the crossing and ``steps_to`` interpolates linearly).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bn import analysis, artifacts, config as bn_config, ledger, stats

SEEDS = (0, 1, 2, 3, 4, 5)
LAYERS = ("layer0", "layer1", "layer2", "head")  # what the probes of a 3-hidden-layer MLP record
HIDDEN = LAYERS[:-1]
UNIT_STD = (1.0, 1.5, 2.0, 2.5)  # every hidden layer has 4 units, with these (constant) spreads

# per-seed jitter of each condition (log2 steps, log10 ratios, ...); small against every designed effect
JIT = {
    "bn": (0.00, 0.02, -0.01, 0.03, -0.02, 0.01),
    "none": (0.01, -0.02, 0.02, 0.00, -0.01, -0.03),
    "stopgrad": (0.02, 0.00, -0.02, 0.01, 0.03, -0.01),
    "population": (-0.01, 0.01, 0.00, -0.02, 0.02, 0.03),
    "population_noise": (0.03, -0.01, 0.01, 0.02, 0.00, -0.02),
    "frozen": (0.00, -0.03, 0.02, 0.01, -0.01, 0.02),
    "noisy_d0.5": (0.01, 0.02, 0.00, -0.01, 0.03, -0.02),
    "noisy_d1": (-0.02, 0.01, 0.03, 0.00, -0.01, 0.02),
    "noisy_d2": (0.02, -0.01, 0.00, 0.03, 0.01, -0.02),
    "noisy_d4": (0.00, 0.01, -0.02, 0.02, -0.03, 0.01),
}
J = {k: np.array(v) for k, v in JIT.items()}
A = J["bn"]  # generic jitter vectors, also for the experiments with other condition names
B = J["none"]
C = J["stopgrad"]


# ----------------------------------------------------------------------------- configs


def config(experiment: str, overrides: dict | None = None, mode: str = "quick", name: str | None = None) -> dict:
  """The ``config`` of ``config.json``: the experiment's real config (so every key a claim reads via
  ``factor`` exists as it does in a real run) with the seeds set to :data:`SEEDS` and dotted
  ``overrides`` applied (type-checked: a key that does not exist raises)."""
  c = ledger.config_module(experiment).get_config(mode)
  c.seeds = SEEDS
  for key, value in (overrides or {}).items():
    bn_config.assign(c, key, value)
  c.name = f"{experiment}/{name}" if name else experiment
  return bn_config.to_dict(c)


# ----------------------------------------------------------------------------- curves


def ramp(t_hit: float, cap: float, *, start: float = 0.1, target: float = 0.8):
  """Test accuracy over steps: linear from ``start`` at step 0 through ``target`` at ``t_hit``, capped at
  ``cap`` (reached at ``t_hit * (1 + (cap - target) / (target - start))``: beyond the next evaluation, so the
  evaluations bracketing the crossing lie on the line and ``steps_to`` recovers ``t_hit`` exactly)."""
  slope = (target - start) / t_hit
  return lambda s: min(cap, start + slope * s)


def settle(final: float, start: float, at: float):
  """A value over steps going linearly from ``start`` (step 0) to ``final`` (step ``at``), then flat."""
  return lambda s: final + (start - final) * max(0.0, 1.0 - s / at)


# ----------------------------------------------------------------------------- trained conditions


def run(seed: int, lr: float, steps, *, test_accuracy, test_loss, train_loss, train_accuracy, weight_decay: float = 0.0,
        diverge_at: int | None = None, probe=None) -> dict:
  """One run: its evaluations at ``steps`` (each series a function of the step). From ``diverge_at`` on the
  run is diverged: ``diverged`` true and every metric NaN (null in the JSON), as the loop records it.
  ``probe(step) -> {block: ...} or None``: the run's probe blocks at a probe step."""
  evals = []
  for s in steps:
    dead = diverge_at is not None and s >= diverge_at
    nan = float("nan")
    evals.append({"step": int(s), "test_accuracy": nan if dead else float(test_accuracy(s)), "test_loss": nan if dead else float(test_loss(s)),
                  "train_loss": nan if dead else float(train_loss(s)), "train_accuracy": nan if dead else float(train_accuracy(s)),
                  "diverged": bool(dead)})
  return {"seed": seed, "lr": float(lr), "weight_decay": float(weight_decay), "evals": evals, "diverge_at": diverge_at, "probe": probe}


def trained(cfg: dict, runs: list[dict], probe_steps=()) -> dict:
  """A finished trained condition ``{summary, metrics, probes, config}`` from :func:`run` specs (run ids in
  the order given; give them seed-major like the loop's run table)."""
  table = [{"run": i, "seed": r["seed"], "lr": r["lr"], "weight_decay": r["weight_decay"]} for i, r in enumerate(runs)]
  steps = sorted({e["step"] for r in runs for e in r["evals"]})
  metrics = []
  for t in steps:
    for row, r in zip(table, runs):
      e = next((e for e in r["evals"] if e["step"] == t), None)
      if e is None:
        continue
      metrics.append({**row, "step": t, "learning_rate": r["lr"], "batch_loss": e["train_loss"], "batch_accuracy": e["train_accuracy"],
                      "train_loss": e["train_loss"], "train_accuracy": e["train_accuracy"], "test_loss": e["test_loss"],
                      "test_accuracy": e["test_accuracy"], "diverged": e["diverged"], "wall_time": 0.01 * t})
  target = cfg["train"]["target_accuracy"]
  summary_runs = []
  for row, r in zip(table, runs):
    last = r["evals"][-1]
    ok = [e for e in r["evals"] if not e["diverged"]]
    hit = stats.steps_to_target([e["step"] for e in ok], [e["test_accuracy"] for e in ok], target) if ok else None
    summary_runs.append({**row, "train_loss": last["train_loss"], "train_accuracy": last["train_accuracy"], "test_loss": last["test_loss"],
                         "test_accuracy": last["test_accuracy"], "gap_accuracy": last["train_accuracy"] - last["test_accuracy"],
                         "gap_loss": last["test_loss"] - last["train_loss"],
                         "best_test_accuracy": max((e["test_accuracy"] for e in ok), default=None),
                         "steps_to_target": hit,
                         "diverged": r["diverge_at"] is not None, "diverged_step": r["diverge_at"]})
  probes = []
  for t in probe_steps:
    for row, r in zip(table, runs):
      blocks = r["probe"](t) if r["probe"] else None
      if blocks is not None:
        probes.append({"step": int(t), "run": row["run"], "seed": row["seed"], "lr": row["lr"], "layers": list(LAYERS),
                       "kernels": list(LAYERS), "loss": 1.0, "bn_gap": {}, **blocks})
  summary = {"name": cfg["name"], "steps": steps[-1], "target_accuracy": target, "runs": summary_runs, "wall_time_s": 1.0,
             "compile_time_s": 0.1}
  return {"summary": summary, "metrics": metrics, "probes": probes, "config": {"config": cfg, "runs": table}}


def measured(cfg: dict, results: dict) -> dict:
  """A finished measured condition (a claim's runner wrote ``results.json``)."""
  return {"results": results, "config": {"config": cfg}}


def write_condition(workdir: Path, cond: dict) -> None:
  """The files a finished condition leaves in its workdir."""
  workdir.mkdir(parents=True, exist_ok=True)
  artifacts.write_json(workdir / "config.json", cond["config"])
  if "results" in cond:
    artifacts.write_json(workdir / "results.json", cond["results"])
    return
  artifacts.write_jsonl(workdir / "metrics.jsonl", cond["metrics"])
  if cond["probes"]:
    artifacts.write_jsonl(workdir / "probes.jsonl", cond["probes"])
  artifacts.write_json(workdir / "summary.json", cond["summary"])


def roundtrip(root: Path, results: dict) -> dict:
  """``{experiment: {condition: ...}}`` written under ``root`` and read back by ``load_condition``."""
  out = {}
  for exp, conds in results.items():
    out[exp] = {}
    for name, cond in conds.items():
      write_condition(root / exp / name, cond)
      out[exp][name] = analysis.load_condition(root / exp / name)
  return out


# ----------------------------------------------------------------------------- the Ioffe MLP experiment (C1, C1', C2, C4, C7)

IOFFE_STEPS, IOFFE_EVAL, IOFFE_PROBE = 2000, 50, 200
PROBE_STEPS = tuple(range(0, IOFFE_STEPS + 1, IOFFE_PROBE))  # 0, 200, ..., 2000: 11 points, i = 0 ... 10
SHARED_LR = 0.5
DOSES = (0.5, 1.0, 2.0, 4.0)
SLOPE = np.array([0.02, 0.03, 0.01, 0.04, 0.00, 0.02])  # noisy BN: log2 steps = BN's + SLOPE * dose (per seed)

# The default world: BN helps in every way the claims predict. Knobs per condition:
#   t: {lr: base steps to 80% (times 2**jit), "diverge" (diverged at step 100), None (never reaches 80%)}
#   cap: final test accuracy; loss: final test loss at LR 0.5 (+ jit / 10); shift: drift of every unit's mean per probe
#   interval in units of its (constant) std (times 1 + jit); ics: 1 - cos of layers >= 1 after step 0 (times 10**jit);
#   beta_rel / beta_raw: effective beta-smoothness, relative / raw (times 10**(jit + trend * i));
#   hessian / cross: normalized Hessian coupling (+ jit / 10 + trend * i) and cross-layer share (+ jit / 10);
#   trend: per probe point i; full: every probe (bn, none), else the cheap ones (act, eval_act, norms)
IOFFE = {
    "bn": dict(t={0.1: 900, 0.5: 600, 2.0: 400}, cap=0.95, loss=0.40, shift=0.05, ics=2e-3, beta_rel=0.1, beta_raw=0.01,
               hessian=0.2, cross=0.1, trend=0.02, full=True),
    "none": dict(t={0.1: 1200, 0.5: 800, 2.0: "diverge"}, cap=0.90, loss=0.70, shift=0.5, ics=1e-3, beta_rel=1.0, beta_raw=1.0,
                 hessian=0.5, cross=0.3, trend=0.0, full=True),
    "stopgrad": dict(t={0.5: 900}, cap=0.90, loss=0.60, shift=0.1),
    "population": dict(t={0.5: 800}, cap=0.90, loss=0.55, shift=0.05),
    "population_noise": dict(t={0.5: 700}, cap=0.91, loss=0.50, shift=0.2),
    "frozen": dict(t={0.5: 650}, cap=0.93, loss=0.45, shift=0.05),
    **{f"noisy_d{d:g}": dict(t={0.5: "noisy"}, dose=d, cap=0.94, loss=0.42, shift=1.0) for d in DOSES},
}
IOFFE_OVERRIDES = {
    "bn": {"norm.kind": "batch", "sweep.lr": (0.1, 0.5, 2.0), "probes.kinds": ()},
    "none": {"norm.kind": "none", "sweep.lr": (0.1, 0.5, 2.0), "probes.kinds": ()},
    "stopgrad": {"norm.kind": "batch", "norm.stats_gradient": False},
    "population": {"norm.kind": "population"},
    "population_noise": {"norm.kind": "population", "norm.population_noise": 60},
    "frozen": {"norm.kind": "batch", "norm.affine": False},
    **{f"noisy_d{d:g}": {"norm.kind": "noisy", "norm.noise.dose": d} for d in DOSES},
}


def ioffe_t(cond: str, lr: float, k: dict | None = None) -> np.ndarray:
  """Per seed: the designed steps to 80% test accuracy of a condition at one LR (what ``steps_to`` must find)."""
  k = k or IOFFE[cond]
  base = k["t"][lr]
  if base == "noisy":
    return 600.0 * 2.0 ** (J["bn"] + k.get("slope", SLOPE) * k["dose"])
  return float(base) * 2.0 ** J[cond]


def _ioffe_probe(k: dict, s: int, jit: float, decoy: bool):
  """Probe blocks of one run, as :func:`bn.run_probes.to_json` writes them. ``decoy``: a run at another LR than
  the probed one, with values that would flip every test if an analysis read it."""
  scale = 20.0 if decoy else 1.0

  def blocks(step):
    i = PROBE_STEPS.index(step)
    shift = k["shift"] * (1 + jit) * scale
    units = {l: {"mean": [shift * i * sd + 0.3 * u for u, sd in enumerate(UNIT_STD)], "std": list(UNIT_STD)} for l in HIDDEN}
    eval_units = {l: {"mean": [0.5 * shift * i * sd for sd in UNIT_STD], "std": list(UNIT_STD)} for l in HIDDEN}
    unit0 = {l: [units[l]["mean"][0] - 1, units[l]["mean"][0], units[l]["mean"][0] + 1] for l in HIDDEN}
    weight = [2.0 * (1 + 0.05 * i), 3.0 * (1 + 0.05 * i), 3.0, 1.0]
    out = {"act": {l: {"mean": 0.0, "std": 1.0, "p15": -1.0, "p50": 0.0, "p85": 1.0, "saturated": 0.0} for l in HIDDEN},
           "units": units, "unit0": unit0, "eval_units": eval_units, "eval_unit0": unit0,
           "norms": {"weight": weight, "effective_lr": [SHARED_LR / w**2 for w in weight], "grad": [0.1] * 4,
                     "relative_update": [0.01] * 4}}
    if not k.get("full"):
      return out
    trend = k.get("trend", 0.0) * i
    ics = k["ics"] * 10**jit * (100.0 if decoy else 1.0)
    first = i == 0  # step 0: values that would move every "after step 0" mean if it were not skipped
    cos = [0.0] + [1.0 - (0.5 if first else ics)] * 3  # layer 0 (1 - cos = 1) is not compared either
    cos_raw = [0.0] + [1.0 - (0.5 if first else 3 * ics)] * 3
    beta_rel = 1e6 if first else k["beta_rel"] * 10 ** (jit + trend) * scale
    beta_raw = 1e6 if first else k["beta_raw"] * 10**jit * scale
    hess = 9.0 if first else k["hessian"] + jit / 10 + trend + (1.0 if decoy else 0.0)
    cross = 0.99 if first else k["cross"] + jit / 10 + (0.5 if decoy else 0.0)
    out.update({
        "grad_ics": {"matched": {"l2": [0.1] * 4, "cos": cos, "rel": [0.1] * 4}, "raw": {"l2": [0.1] * 4, "cos": cos_raw, "rel": [0.1] * 4}},
        "landscape": {"loss_variation": 0.1 * beta_raw, "grad_predictiveness": 0.5 * beta_raw, "beta_smoothness": beta_raw, "loss0": 1.0,
                      "grad_norm": 0.5},
        "landscape_rel": {"loss_variation": 0.1 * beta_rel, "grad_predictiveness": 0.5 * beta_rel, "beta_smoothness": beta_rel},
        "coupling": {"summary": 0.01, "cross_fraction": cross, "normalized": [[1.0] * 4] * 4, "own": [0.0] * 4},
        "hessian": {"summary": hess, "normalized": [[1.0] * 4] * 4},
    })
    return out

  return blocks


def ioffe_condition(cond: str, k: dict | None = None) -> dict:
  k = {**IOFFE[cond], **(k or {})}
  cfg = config("ioffe", IOFFE_OVERRIDES[cond], name=cond)
  steps = range(IOFFE_EVAL, IOFFE_STEPS + 1, IOFFE_EVAL)  # the loop evaluates after every eval_every steps (no step 0)
  runs = []
  for s, seed in enumerate(SEEDS):
    jit = float(J[cond][s])
    for lr in sorted(k["t"]):
      base = k["t"][lr]
      loss = k["loss"] + jit / 10 if lr == SHARED_LR else k["loss"] + 0.5  # other LRs: worse, to pin the LR filter
      common = dict(test_loss=settle(loss, 2.3, IOFFE_STEPS / 2), train_loss=settle(loss - 0.05, 2.3, IOFFE_STEPS / 2),
                    probe=_ioffe_probe(k, s, jit, decoy=lr != SHARED_LR))
      if base == "diverge":
        acc = ramp(5000.0, 0.5)
        runs.append(run(seed, lr, steps, test_accuracy=acc, train_accuracy=acc, diverge_at=100, **common))
      elif base is None:
        acc = ramp(4000.0, 0.7)
        runs.append(run(seed, lr, steps, test_accuracy=acc, train_accuracy=acc, **common))
      else:
        t_hit = float(ioffe_t(cond, lr, k)[s])
        acc = ramp(t_hit, k["cap"] + jit / 10)
        runs.append(run(seed, lr, steps, test_accuracy=acc, train_accuracy=lambda x, a=acc: a(x) + 0.02, **common))
  return trained(cfg, runs, PROBE_STEPS)


def ioffe(changes: dict | None = None, conditions=None) -> dict:
  """``{condition: run}`` of the ioffe experiment: the default world with ``changes[cond]`` knobs applied."""
  changes = changes or {}
  return {c: ioffe_condition(c, changes.get(c)) for c in (conditions or IOFFE)}


# ----------------------------------------------------------------------------- simple trained conditions (final values only)


def flat_runs(seeds_values: list[dict], *, steps=(300, 600, 900, 1200, 1500)) -> list[dict]:
  """Runs whose metrics reach their final values by the second evaluation and stay there: each item
  ``{seed, lr, weight_decay?, test_accuracy, train_accuracy, test_loss, train_loss, diverge_at?, probe?}``."""
  at = steps[1]
  out = []
  for v in seeds_values:
    out.append(run(v["seed"], v["lr"], steps, weight_decay=v.get("weight_decay", 0.0), diverge_at=v.get("diverge_at"), probe=v.get("probe"),
                   test_accuracy=settle(v["test_accuracy"], 0.1, at), train_accuracy=settle(v["train_accuracy"], 0.1, at),
                   test_loss=settle(v["test_loss"], 2.3, at), train_loss=settle(v["train_loss"], 2.3, at)))
  return out


def finals(experiment: str, overrides: dict, name: str, *, test_loss=0.5, train_loss=0.3, test_accuracy=0.85, train_accuracy=0.9,
           jit=None, lr=None) -> dict:
  """A condition of one LR whose final metrics are the given values (+ the per-seed ``jit``: added to the losses,
  a tenth of it to the accuracies)."""
  cfg = config(experiment, overrides, name=name)
  jit = np.zeros(len(SEEDS)) if jit is None else np.asarray(jit)
  lr = cfg["optimizer"]["lr"] if lr is None else lr
  vals = [dict(seed=seed, lr=lr, test_loss=test_loss + jit[s], train_loss=train_loss + jit[s], test_accuracy=test_accuracy + jit[s] / 10,
               train_accuracy=train_accuracy + jit[s] / 10) for s, seed in enumerate(SEEDS)]
  return trained(cfg, flat_runs(vals))


def sweep(experiment: str, overrides: dict, name: str, per: dict, jit, *, key: str = "lr", probe=None, steps=(300, 600, 900, 1200, 1500)) -> dict:
  """A condition whose runs sweep ``key`` ("lr" or "weight_decay") over ``per``'s keys, seed-major like the run
  table. ``per[value]``: final ``test_accuracy``, ``train_accuracy``, ``test_loss``, ``train_loss`` (each a number or
  one per seed; ``jit / 10`` is added to the accuracies, ``jit`` to the losses) and optionally ``diverge_at``.
  ``probe(seed index, value) -> probe(step)``."""
  cfg = config(experiment, overrides, name=name)
  jit = np.asarray(jit, float)
  each = lambda v, s: float(v[s]) if isinstance(v, (list, tuple, np.ndarray)) else float(v)  # noqa: E731
  vals = []
  for s, seed in enumerate(SEEDS):
    for x in sorted(per):
      p = per[x]
      vals.append(dict(seed=seed, lr=x if key == "lr" else cfg["optimizer"]["lr"], weight_decay=x if key == "weight_decay" else 0.0,
                       test_accuracy=each(p["test_accuracy"], s) + jit[s] / 10, train_accuracy=each(p["train_accuracy"], s) + jit[s] / 10,
                       test_loss=each(p.get("test_loss", 0.5), s) + jit[s], train_loss=each(p.get("train_loss", 0.4), s) + jit[s],
                       diverge_at=p.get("diverge_at"), probe=probe(s, x) if probe else None))
  return trained(cfg, flat_runs(vals, steps=steps), sorted({0, *steps}) if probe else ())


# ----------------------------------------------------------------------------- measured conditions


def depth_result(depths, ratios, *, width=100, first=1.0) -> dict:
  """``depth_init``'s ``results.json``: per depth and seed, layer gradient norms (depth hidden layers + head)
  whose log10(first / last hidden) is ``ratios[depth index][seed]``."""
  rows = []
  for d, per_seed in zip(depths, ratios):
    norms = []
    for r in per_seed:
      last = first / 10**r
      hidden = list(np.geomspace(first, last, d)) if d > 1 else [first]
      norms.append([float(x) for x in hidden] + [123.0])  # the head: not part of the ratio
    rows.append({"depth": int(d), "grad_norms": norms})
  return {"name": "depth_init", "seeds": list(SEEDS), "norm": "batch", "act": "tanh", "width": width, "batch": 256, "depths": rows,
          "wall_time_s": 1.0}


def freeze_result(shares, jit) -> dict:
  """``freeze``'s ``results.json``: all-layer reduction 1 + jit per seed; a hidden layer alone achieves
  ``share + jit / 10`` of it; the head (not a hidden layer) 0.9."""
  all_ = 1.0 + np.asarray(jit)
  red = [all_] + [(sh + np.asarray(jit) / 10) * all_ for sh in shares] + [0.9 * all_]
  return {"name": "freeze", "seeds": list(SEEDS), "variants": ["all"] + [f"layer{i}" for i in range(len(shares))] + ["head"],
          "reduction": np.array(red).tolist(), "loss_before": (np.ones((len(red), len(SEEDS))) * 2).tolist(),
          "loss_after": (2 - np.array(red)).tolist(), "before_steps": 500, "budget": 200}


def deep_linear_result(log10_one_minus_cos, jit, *, points=3, layers=5) -> dict:
  """``deep_linear``'s ``results.json``: cos_matched (seeds, points, layers) with 1 - cos = 10**(e + jit) at
  every point after step 0 and layer >= 1; step 0 and layer 0 hold 1 - cos = 1 (not part of the measure)."""
  cos = np.zeros((len(SEEDS), points, layers))
  for s in range(len(SEEDS)):
    cos[s, 1:, 1:] = 1.0 - 10 ** (log10_one_minus_cos + jit[s])
  return {"name": "deep_linear", "seeds": list(SEEDS), "steps": list(range(0, 100 * points, 100)), "cos_raw": cos.tolist(),
          "cos_matched": cos.tolist(), "loss": [[1.0] * points] * len(SEEDS), "depth": layers, "width": 10}
