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
the target accuracy (the config's ``train.target_accuracy``) are ``base * 2**jit`` (log2 steps = log2
base + jit, exactly, because the accuracy curve is linear around the crossing and ``steps_to``
interpolates linearly). Metrics rows carry a validation split (``val_loss`` / ``val_accuracy``) as
the loop writes them when ``data.val_size > 0``; where a claim chooses on validation data, the
test-set curves are built to choose differently (decoys), so reading the test set would move the
per-seed values the tests pin.
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


def ramp(t_hit: float, cap: float, *, target: float, start: float = 0.1):
  """Test accuracy over steps: linear from ``start`` at step 0 through ``target`` at ``t_hit``, capped at
  ``cap`` (reached at ``t_hit * (1 + (cap - target) / (target - start))``: beyond the next evaluation, so the
  evaluations bracketing the crossing lie on the line and ``steps_to`` recovers ``t_hit`` exactly)."""
  slope = (target - start) / t_hit
  return lambda s: min(cap, start + slope * s)


def settle(final: float, start: float, at: float):
  """A value over steps going linearly from ``start`` (step 0) to ``final`` (step ``at``), then flat."""
  return lambda s: final + (start - final) * max(0.0, 1.0 - s / at)


# ----------------------------------------------------------------------------- trained conditions


def run(seed: int, lr: float, steps, *, test_accuracy, test_loss, train_loss, train_accuracy, val_accuracy=None, val_loss=None,
        weight_decay: float = 0.0, diverge_at: int | None = None, probe=None, extra: dict | None = None) -> dict:
  """One run: its evaluations at ``steps`` (each series a function of the step; ``val_*``: the validation
  split's, recorded when given). From ``diverge_at`` on the run is diverged: ``diverged`` true and every
  metric NaN (null in the JSON), as the loop records it. ``probe(step) -> {block: ...} or None``: the
  run's probe blocks at a probe step."""
  evals = []
  series = {"test_accuracy": test_accuracy, "test_loss": test_loss, "train_loss": train_loss, "train_accuracy": train_accuracy,
            **({"val_loss": val_loss} if val_loss is not None else {}), **({"val_accuracy": val_accuracy} if val_accuracy is not None else {}),
            **(extra or {})}
  for s in steps:
    dead = diverge_at is not None and s >= diverge_at
    evals.append({"step": int(s), **{k: float("nan") if dead else float(f(s)) for k, f in series.items()}, "diverged": bool(dead)})
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
                      "test_accuracy": e["test_accuracy"], **{k: e[k] for k in ("val_loss", "val_accuracy", "test_ece") if k in e},
                      "diverged": e["diverged"], "wall_time": 0.01 * t})
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
IOFFE_CONDITIONS = ledger.config_module("ioffe").conditions("quick")  # the real conditions' overrides
IOFFE_LRS = tuple(IOFFE_CONDITIONS["bn"]["sweep.lr"])  # C1's grid: (0.125, 0.5, 2, 8)
TARGET = config("ioffe")["train"]["target_accuracy"]  # 0.75: what every steps-to-target reads
DOSES = tuple(float(v["norm.noise.dose"]) for k, v in IOFFE_CONDITIONS.items() if k.startswith("noisy_"))
SLOPE = np.array([0.02, 0.03, 0.01, 0.04, 0.00, 0.02])  # noisy BN: log2 steps = BN's + SLOPE * dose (per seed)

# The default world: BN helps in every way the claims predict. Knobs per condition:
#   t: {lr: base steps to TARGET test accuracy (times 2**jit), "diverge" (diverged at step 100), None (never reaches
#      it), "noisy" (600 * 2**(jit_bn + slope * dose))}; v: the same for *validation* accuracy (default: t) -- where
#      they differ, the test set would choose another LR than validation data (bn: 8, none: 2 -- decoys);
#   cap: final test accuracy; loss: final test loss at LR 0.5 (+ jit / 10); shift: drift of every unit's mean per probe
#   interval in units of its (constant) std (times 1 + jit); ics: 1 - cos of layers >= 1 after step 0 (times 10**jit);
#   beta_rel / beta_raw: effective beta-smoothness, relative / raw (times 10**(jit + trend * i));
#   rel_cross: cross-layer share for equal relative steps (+ jit / 10 + trend * i); hessian / cross: normalized
#   Hessian blocks and the cross-layer share along the actual update (+ jit / 10);
#   trend: per probe point i; full: every probe (bn, none), else the cheap ones (act, units, norms)
IOFFE = {
    "bn": dict(t={0.125: 1200, 0.5: 600, 2.0: 400, 8.0: 300}, v={0.125: 1200, 0.5: 600, 2.0: 400, 8.0: 1000}, cap=0.95, loss=0.40,
               shift=0.05, ics=2e-3, beta_rel=0.1, beta_raw=0.01, rel_cross=0.05, hessian=0.2, cross=0.1, trend=0.02, full=True),
    "none": dict(t={0.125: 1800, 0.5: 1200, 2.0: 1000, 8.0: "diverge"}, v={0.125: 1800, 0.5: 1200, 2.0: 1500, 8.0: "diverge"}, cap=0.90,
                 loss=0.70, shift=0.5, ics=1e-3, beta_rel=1.0, beta_raw=1.0, rel_cross=0.25, hessian=0.5, cross=0.3, trend=0.0, full=True),
    "stopgrad": dict(t={0.5: 900}, cap=0.90, loss=0.60, shift=0.1),
    "population": dict(t={0.5: 800}, cap=0.90, loss=0.55, shift=0.05),
    "population_noise": dict(t={0.5: 700}, cap=0.91, loss=0.50, shift=0.2),
    "frozen": dict(t={0.5: 650}, cap=0.93, loss=0.45, shift=0.05),
    **{f"noisy_d{d:g}": dict(t={0.5: "noisy"}, dose=d, cap=0.948, loss=0.42, shift=1.0) for d in DOSES},
}


def ioffe_t(cond: str, lr: float, k: dict | None = None, which: str = "t") -> np.ndarray:
  """Per seed: the designed steps to TARGET test (``which="t"``) or validation (``"v"``) accuracy of a
  condition at one LR (what ``steps_to`` must find)."""
  k = k or IOFFE[cond]
  base = k.get(which, k["t"])[lr]
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
    rel = 0.99 if first else k["rel_cross"] + jit / 10 + trend + (0.5 if decoy else 0.0)
    hess = 9.0 if first else k["hessian"] + jit / 10 + (1.0 if decoy else 0.0)
    cross = 0.99 if first else k["cross"] + jit / 10 + (0.5 if decoy else 0.0)
    out.update({
        "grad_ics": {"matched": {"l2": [0.1] * 4, "cos": cos, "rel": [0.1] * 4}, "raw": {"l2": [0.1] * 4, "cos": cos_raw, "rel": [0.1] * 4}},
        "landscape": {"loss_variation": 0.1 * beta_raw, "grad_predictiveness": 0.5 * beta_raw, "beta_smoothness": beta_raw, "loss0": 1.0,
                      "grad_norm": 0.5},
        "landscape_rel": {"loss_variation": 0.1 * beta_rel, "grad_predictiveness": 0.5 * beta_rel, "beta_smoothness": beta_rel},
        "coupling": {"summary": 0.01, "cross_fraction": cross, "normalized": [[1.0] * 4] * 4, "own": [0.0] * 4,
                     "relative_cross_fraction": rel, "relative_own": [0.0] * 4},
        "hessian": {"summary": hess, "normalized": [[1.0] * 4] * 4},
    })
    return out

  return blocks


def ioffe_condition(cond: str, k: dict | None = None) -> dict:
  """One condition of the ioffe experiment with the real condition's config; ``k``: knobs changed from
  :data:`IOFFE` (a changed ``t`` without a ``v`` changes the validation curves to match)."""
  changes = k or {}
  k = {**IOFFE[cond], **changes}
  if "t" in changes and "v" not in changes:
    k["v"] = changes["t"]
  k.setdefault("v", k["t"])
  cfg = config("ioffe", IOFFE_CONDITIONS[cond], name=cond)
  lrs = tuple(cfg["sweep"]["lr"]) or (cfg["optimizer"]["lr"],)
  assert sorted(k["t"]) == sorted(k["v"]) == sorted(lrs), (cond, sorted(k["t"]), lrs)
  steps = range(IOFFE_EVAL, IOFFE_STEPS + 1, IOFFE_EVAL)  # the loop evaluates after every eval_every steps (no step 0)
  runs = []
  for s, seed in enumerate(SEEDS):
    jit = float(J[cond][s])
    for lr in sorted(k["t"]):
      base, vbase = k["t"][lr], k["v"][lr]
      loss = k["loss"] + jit / 10 if lr == SHARED_LR else k["loss"] + 0.5  # other LRs: worse, to pin the LR filter
      test_loss = settle(loss, 2.3, IOFFE_STEPS / 2)
      common = dict(test_loss=test_loss, train_loss=settle(loss - 0.05, 2.3, IOFFE_STEPS / 2), val_loss=lambda x, f=test_loss: f(x) + 0.03,
                    probe=_ioffe_probe(k, s, jit, decoy=lr != SHARED_LR))
      cap = k["cap"] + jit / 10

      def curve(b, which):
        if b in ("diverge", None):
          return ramp(5000.0 if b == "diverge" else 4000.0, 0.5 if b == "diverge" else 0.7, target=TARGET)
        return ramp(float(ioffe_t(cond, lr, k, which)[s]), cap, target=TARGET)

      acc, vacc = curve(base, "t"), curve(vbase, "v")
      runs.append(run(seed, lr, steps, test_accuracy=acc, train_accuracy=lambda x, a=acc: min(1.0, a(x) + 0.02), val_accuracy=vacc,
                      diverge_at=100 if "diverge" in (base, vbase) else None, **common))
  return trained(cfg, runs, PROBE_STEPS if cfg["probes"]["every"] > 0 else ())


def ioffe(changes: dict | None = None, conditions=None) -> dict:
  """``{condition: run}`` of the ioffe experiment: the default world with ``changes[cond]`` knobs applied."""
  changes = changes or {}
  return {c: ioffe_condition(c, changes.get(c)) for c in (conditions or IOFFE)}


# ----------------------------------------------------------------------------- simple trained conditions (final values only)


def flat_runs(seeds_values: list[dict], *, steps=(300, 600, 900, 1200, 1500)) -> list[dict]:
  """Runs whose metrics reach their final values by the second evaluation and stay there: each item
  ``{seed, lr, weight_decay?, test_accuracy, train_accuracy, test_loss, train_loss, val_accuracy?, val_loss?,
  diverge_at?, probe?}`` (the validation split's values default to the test set's)."""
  at = steps[1]
  out = []
  for v in seeds_values:
    out.append(run(v["seed"], v["lr"], steps, weight_decay=v.get("weight_decay", 0.0), diverge_at=v.get("diverge_at"), probe=v.get("probe"),
                   test_accuracy=settle(v["test_accuracy"], 0.1, at), train_accuracy=settle(v["train_accuracy"], 0.1, at),
                   test_loss=settle(v["test_loss"], 2.3, at), train_loss=settle(v["train_loss"], 2.3, at),
                   val_accuracy=settle(v.get("val_accuracy", v["test_accuracy"]), 0.1, at), val_loss=settle(v.get("val_loss", v["test_loss"]), 2.3, at)))
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
  table. ``per[value]``: final ``test_accuracy``, ``train_accuracy``, ``test_loss``, ``train_loss`` and optionally
  ``val_accuracy`` (the validation split's; default: the test accuracy) (each a number or one per seed; ``jit / 10`` is
  added to the accuracies, ``jit`` to the losses) and ``diverge_at``. ``probe(seed index, value) -> probe(step)``."""
  cfg = config(experiment, overrides, name=name)
  jit = np.asarray(jit, float)
  each = lambda v, s: float(v[s]) if isinstance(v, (list, tuple, np.ndarray)) else float(v)  # noqa: E731
  vals = []
  for s, seed in enumerate(SEEDS):
    for x in sorted(per):
      p = per[x]
      vals.append(dict(seed=seed, lr=x if key == "lr" else cfg["optimizer"]["lr"], weight_decay=x if key == "weight_decay" else 0.0,
                       test_accuracy=each(p["test_accuracy"], s) + jit[s] / 10, train_accuracy=each(p["train_accuracy"], s) + jit[s] / 10,
                       val_accuracy=each(p.get("val_accuracy", p["test_accuracy"]), s) + jit[s] / 10,
                       test_loss=each(p.get("test_loss", 0.5), s) + jit[s], train_loss=each(p.get("train_loss", 0.4), s) + jit[s],
                       diverge_at=p.get("diverge_at"), probe=probe(s, x) if probe else None))
  return trained(cfg, flat_runs(vals, steps=steps), sorted({0, *steps}) if probe else ())


# ----------------------------------------------------------------------------- the c3_grid experiment (C3, C7)

C3_CONDITIONS = ledger.config_module("c3_grid").conditions("quick")  # the real cells: b{B}_g{g}, b{B}_none, ...
C3_STEPS = tuple(range(100, 1001, 100))  # 10 evaluations (the config's "about 10" early-stopping candidates), no step 0
C3_STOP = (3, 4, 5, 3, 4, 5)  # per seed: the evaluation with the lowest validation loss (the early-stopping point)


def c3_cell(name: str, *, stopped: float, final: float, train: float, jit, acc: float = 0.85, decoy: float = 0.05,
            diverge_at: int | None = None, stop=C3_STOP, weight_decays: dict | None = None) -> dict:
  """A c3_grid cell (the real condition ``name``'s config) whose runs have, per seed s: the lowest validation
  loss at evaluation ``C3_STOP[s]``, where the test loss is ``stopped + jit`` and the test accuracy ``acc + jit / 10``;
  at the last evaluation the test loss ``final + jit`` and the train loss ``train + jit / 2``. Decoys: two
  evaluations after the stopping point the test loss is at its lowest, ``stopped - decoy + jit`` (where stopping on
  the test set would land), and the final test loss is not the early-stopped one. ``diverge_at``: every seed
  diverges from that step on. ``stop``: the early-stopping evaluation per seed (``-1``: the last, still improving).
  ``weight_decays``: ``{wd: (stopped, lowest validation loss)}``, one run per seed and value (a swept condition);
  otherwise the lowest validation loss is 0.5. The test calibration error is 0.02 + 0.1 x the test loss."""
  cfg = config("c3_grid", C3_CONDITIONS[name], name=name)
  n = len(C3_STEPS)

  def at(values):
    return lambda step: values[C3_STEPS.index(step)]

  def one(s, seed, stopped, wd=0.0, val_min=0.5):
    k, j = stop[s] % n, float(np.asarray(jit)[s])
    test = [stopped + 0.3 + j] * n
    if k + 2 < n:
      test[k + 2] = stopped - decoy + j
    test[k], test[-1] = stopped + j, final + j
    accs = [acc - 0.1 + j / 10] * n
    accs[k], accs[-1] = acc + j / 10, acc - 0.03 + j / 10
    val = [val_min + 0.1 * abs(i - k) for i in range(n)]
    tr = [train + j / 2 + 0.05 * (n - 1 - i) for i in range(n)]
    return run(seed, cfg["optimizer"]["lr"], C3_STEPS, test_loss=at(test), test_accuracy=at(accs), train_loss=at(tr),
               train_accuracy=lambda step: 0.95, val_loss=at(val), val_accuracy=lambda step: 0.8, diverge_at=diverge_at,
               weight_decay=wd, extra={"test_ece": at([0.02 + 0.1 * v for v in test])})

  if weight_decays:
    return trained(cfg, [one(s, seed, st, wd, v) for s, seed in enumerate(SEEDS) for wd, (st, v) in weight_decays.items()])
  return trained(cfg, [one(s, seed, stopped) for s, seed in enumerate(SEEDS)])


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


ALONE_LRS = (1 / 16, 1 / 4, 1.0, 4.0, 16.0, 64.0, 256.0)


def alone_result(norm: str, drops: dict, best: dict, together: float, jit, *, branch_loss=(0.98, 0.59)) -> dict:
  """``alone``'s ``results.json`` at two loss levels (the same values at both): variant ``v`` drops the loss by
  ``drops[v]`` at its tuned LR (index ``best[v]``), a hidden layer by ``drops[v] * (1 + jit)`` per seed; at every other
  LR 0.05 less on average -- except a decoy LR (two above the best, or below it near the top of the grid) where seed 0
  alone drops it by 1 more (the best *mean* must win). ``together``: all layers at their solo-tuned LRs, every seed."""
  jit = np.asarray(jit, float)
  variants = ["all", "layer0", "layer1", "layer2", "head"]
  k, n = len(ALONE_LRS), len(SEEDS)
  d = np.zeros((len(variants), k, n))
  for i, v in enumerate(variants):
    per_seed = drops[v] * (1 + jit) if v.startswith("layer") else np.full(n, drops[v])
    d[i] = per_seed - 0.05
    d[i, best[v]] = per_seed
    decoy = best[v] + 2 if best[v] + 2 < k else best[v] - 2
    d[i, decoy, 0] += 1.0  # seed 0 does best here; the other seeds much worse: the mean is 0.3 below the best's
    d[i, decoy, 1:] -= 0.5
  level = d.tolist()
  return {"name": "alone", "seeds": list(SEEDS), "norm": norm, "variants": variants, "levels": [1.0, 0.6], "lrs": list(ALONE_LRS),
          "budget": 10, "batch": 500, "branch_step": [[100] * n, [400] * n], "branch_loss": [[branch_loss[0]] * n, [branch_loss[1]] * n],
          "drop": [level, level], "together": [[together] * n, [together] * n],
          "together_lrs": [[ALONE_LRS[best[v]] for v in variants[1:]]] * 2}


def deep_linear_result(log10_one_minus_cos, jit, *, points=3, layers=5) -> dict:
  """``deep_linear``'s ``results.json``: cos_matched (seeds, points, layers) with 1 - cos = 10**(e + jit) at
  every point after step 0 and layer >= 1; step 0 and layer 0 hold 1 - cos = 1 (not part of the measure)."""
  cos = np.zeros((len(SEEDS), points, layers))
  for s in range(len(SEEDS)):
    cos[s, 1:, 1:] = 1.0 - 10 ** (log10_one_minus_cos + jit[s])
  return {"name": "deep_linear", "seeds": list(SEEDS), "steps": list(range(0, 100 * points, 100)), "cos_raw": cos.tolist(),
          "cos_matched": cos.tolist(), "loss": [[1.0] * points] * len(SEEDS), "depth": layers, "width": 10}


def deep_linear_fractions(log10_by_fraction: dict, jit, *, main=0.25, diverge=None, points=3, layers=5) -> dict:
  """``deep_linear``'s ``results.json`` with runs at several fractions of the stability edge (``by_fraction``,
  as one runner call writes it): each fraction's run is :func:`deep_linear_result` at its own log10(1 - cos);
  the top level repeats the run at ``main``. ``diverge``: {fraction: seed indices} whose loss ends 1e30 times
  above where it started (diverged: their cos values stay finite, so only the loss tells)."""
  by = {}
  for f, e in log10_by_fraction.items():
    r = deep_linear_result(e, jit, points=points, layers=layers)
    loss = np.ones((len(SEEDS), points))
    loss[list((diverge or {}).get(f, ())), -1] = 1e30
    by[f"{f:g}"] = {"lr_fraction": f, "lr": [f * 0.01] * len(SEEDS), "steps": r["steps"], "cos_raw": r["cos_raw"],
                    "cos_matched": r["cos_matched"], "loss": loss.tolist()}
  return {"name": "deep_linear", "seeds": list(SEEDS), "depth": layers, "width": 10, "edge": [0.01] * len(SEEDS),
          **by[f"{main:g}"], "lr_fractions": sorted(log10_by_fraction), "by_fraction": by}
