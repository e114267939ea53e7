"""The claims ledger's analysis: JSON files of a ``bn reproduce`` run -> measurements and verdicts.

Reads only what runs wrote (``summary.json``, ``metrics.jsonl``, ``probes.jsonl``,
``results.json``, ``config.json``). Every measurement is a per-seed quantity
(conditions are paired by seed) summarized as mean and 95% t-interval over
seeds. Each prediction is a *test* with an outcome:

* ``lower`` / ``higher``: *as predicted* when the CI lies entirely on the
  predicted side of 0, *opposite* when it lies entirely on the other side,
  *unclear* otherwise;
* ``equivalent`` (margin m): *as predicted* when the CI lies inside (-m, m),
  *opposite* when it lies entirely outside, *unclear* otherwise;
* ``not_lower``: *opposite* when the CI lies entirely below 0, else *as
  predicted* (a non-inferiority reading; weak by design, numbers shown).

Verdict rule (:data:`RULE`): **supported** if every test that counts came out as
predicted; **contradicted** if any came out opposite; **inconclusive** otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bn import artifacts, stats

RULE = ("A claim is *supported* when every test that counts for it came out as predicted (the 95% CI over seeds of the "
        "paired per-seed difference lies entirely on the predicted side of 0, or inside the equivalence margin); "
        "*contradicted* when any such test came out opposite (CI entirely on the other side, or entirely outside the margin); "
        "*inconclusive* otherwise (some CI includes 0 and none is opposite).")


# ----------------------------------------------------------------------------- reading


def load_runs(workdir: Path) -> dict | None:
  """``{summary, metrics, probes, config}`` of one condition's workdir, or None if it has not finished."""
  if not (workdir / "summary.json").exists():
    return None
  return {
      "summary": artifacts.read_json(workdir / "summary.json"),
      "metrics": artifacts.read_jsonl(workdir / "metrics.jsonl"),
      "probes": artifacts.read_jsonl(workdir / "probes.jsonl"),
      "config": artifacts.read_json(workdir / "config.json"),
  }


def per_seed(summary: dict, key: str, *, lr: float | None = None) -> np.ndarray:
  """One value per seed (runs sorted by seed), None -> NaN."""
  runs = [r for r in summary["runs"] if lr is None or math.isclose(r["lr"], lr)]
  runs.sort(key=lambda r: r["seed"])
  return np.array([np.nan if r.get(key) is None else r[key] for r in runs], float)


def curve(metrics: list[dict], key: str):
  """``steps (T,), values (seeds, T)`` from metrics rows."""
  steps = sorted({r["step"] for r in metrics})
  seeds = sorted({r["seed"] for r in metrics})
  table = {(r["seed"], r["step"]): r.get(key) for r in metrics}
  vals = np.array([[np.nan if table.get((s, t)) is None else table[(s, t)] for t in steps] for s in seeds], float)
  return np.array(steps), vals


def probe_series(probe_rows: list[dict], getter):
  """``steps (T,), values (seeds, T)`` of ``getter(row)`` over probe rows."""
  steps = sorted({r["step"] for r in probe_rows})
  seeds = sorted({r["seed"] for r in probe_rows})
  table = {}
  for r in probe_rows:
    try:
      table[(r["seed"], r["step"])] = getter(r)
    except (KeyError, IndexError, TypeError):
      pass
  vals = np.array([[table.get((s, t), np.nan) if table.get((s, t)) is not None else np.nan for t in steps] for s in seeds], float)
  return np.array(steps), vals


# ----------------------------------------------------------------------------- tests and verdicts


def test(name: str, diffs, kind: str, *, margin: float = 0.0, counts: bool = True, unit: str = "") -> dict:
  diffs = np.asarray(diffs, float)
  if diffs.size >= 2 and np.all(np.isfinite(diffs)):
    mean, lo, hi = (float(v) for v in stats.mean_ci(diffs))
  else:
    mean = float(np.nanmean(diffs)) if diffs.size and np.any(np.isfinite(diffs)) else float("nan")
    lo = hi = float("nan")
  if not (math.isfinite(lo) and math.isfinite(hi)):
    outcome = "unclear"
  elif kind == "lower":
    outcome = "as predicted" if hi < 0 else "opposite" if lo > 0 else "unclear"
  elif kind == "higher":
    outcome = "as predicted" if lo > 0 else "opposite" if hi < 0 else "unclear"
  elif kind == "equivalent":
    outcome = "as predicted" if (lo > -margin and hi < margin) else "opposite" if (lo > margin or hi < -margin) else "unclear"
  elif kind == "not_lower":
    outcome = "opposite" if hi < 0 else "as predicted"
  else:
    raise ValueError(f"unknown test kind {kind!r}")
  predicted = {"lower": "< 0", "higher": "> 0", "equivalent": f"within ±{margin:g}", "not_lower": "not < 0"}[kind]
  return {"name": name, "kind": kind, "predicted": predicted, "mean": mean, "lo": lo, "hi": hi, "n": int(diffs.size),
          "per_seed": diffs.tolist(), "outcome": outcome, "counts": counts, "unit": unit}


def verdict(tests: list[dict]) -> str:
  counted = [t for t in tests if t["counts"]]
  if not counted:
    return "inconclusive"
  if any(t["outcome"] == "opposite" for t in counted):
    return "contradicted"
  if all(t["outcome"] == "as predicted" for t in counted):
    return "supported"
  return "inconclusive"


# ----------------------------------------------------------------------------- per-claim measurements


def _auc(run) -> np.ndarray:
  """Mean test accuracy over all evaluations (area under the curve / steps), per seed."""
  _, acc = curve(run["metrics"], "test_accuracy")
  return np.nanmean(acc, axis=1)


def _last_hidden(run) -> str:
  return run["probes"][0]["layers"][-2]


def _shift(run, layer: str | None = None, field: str = "mean") -> np.ndarray:
  """Mean over probe points (from the 2nd) of the per-unit shift |dmu|/sigma of a layer, per seed."""
  layer = layer or _last_hidden(run)
  _, v = probe_series(run["probes"], lambda r: r["shift"][layer][field])
  return np.nanmean(v, axis=1)


def _gradient_ics(run) -> np.ndarray:
  """Mean over probe points and layers k >= 1 of ||G - G'|| / ||G||, per seed."""
  _, v = probe_series(run["probes"], lambda r: float(np.mean(r["grad_ics"]["rel"][1:])))
  return np.nanmean(v, axis=1)


def _probe_mean(run, getter, skip_first: bool = False) -> np.ndarray:
  steps, v = probe_series(run["probes"], getter)
  if skip_first and v.shape[1] > 1:
    v = v[:, 1:]
  return np.nanmean(v, axis=1)


def c1(runs: dict) -> dict:
  bn_, none = runs["bn"], runs["none"]
  tests = [
      test("BN learns faster: mean test accuracy over training, BN - none", _auc(bn_) - _auc(none), "higher", unit="accuracy"),
      test("BN's last-hidden-layer inputs move less: shift |Δμ|/σ per probe interval, BN - none", _shift(bn_) - _shift(none), "lower"),
  ]
  return {"id": "C1", "claim": "BN reduces internal covariate shift (Ioffe & Szegedy 2015)",
          "predicts": "BN learns faster, and the inputs of its layers keep a stable distribution", "tests": tests}


def c1_prime(runs: dict) -> dict:
  bn_, none, noisy = runs["bn"], runs["none"], runs["noisy"]
  tests = [
      test("noisy BN trains about as well as BN: mean test accuracy, noisy - BN", _auc(noisy) - _auc(bn_), "equivalent", margin=0.02, unit="accuracy"),
      test("noisy BN trains better than no BN: mean test accuracy, noisy - none", _auc(noisy) - _auc(none), "higher", unit="accuracy"),
      test("the noise does destabilize layer inputs: shift |Δμ|/σ, noisy - BN", _shift(noisy) - _shift(bn_), "higher"),
      test("gradient ICS is not lower with BN: ||G-G'||/||G||, BN - none", _gradient_ics(bn_) - _gradient_ics(none), "not_lower"),
  ]
  return {"id": "C1'", "claim": "It is not covariate shift (Santurkar et al. 2018)",
          "predicts": "noisy BN, with deliberately unstable layer inputs, trains about as well as BN; BN does not lower gradient ICS", "tests": tests}


def c2(runs: dict) -> dict:
  get = lambda r: r["coupling"]["summary"]
  cf = lambda r: r["coupling"]["cross_fraction"]
  bn_, none = runs["bn"], runs["none"]
  tests = [
      test("layer coupling |I_jk| / (|ΔL_j|+|ΔL_k|), mean over training, BN - none", _probe_mean(bn_, get, True) - _probe_mean(none, get, True), "lower"),
      test("cross-layer share of the second-order loss change, BN - none", _probe_mean(bn_, cf, True) - _probe_mean(none, cf, True), "lower", counts=False),
  ]
  return {"id": "C2", "claim": "BN decouples layers (the seed's claim)",
          "predicts": "the interaction of two layers' updates in the loss is smaller with BN", "tests": tests}


def largest_stable_lr(summary: dict, threshold: float = 0.5) -> np.ndarray:
  """Per seed: log10 of the largest swept LR that neither diverged nor ended below ``threshold`` train accuracy."""
  seeds = sorted({r["seed"] for r in summary["runs"]})
  out = []
  for s in seeds:
    ok = [r["lr"] for r in summary["runs"] if r["seed"] == s and not r["diverged"] and (r["train_accuracy"] or 0) > threshold]
    out.append(math.log10(max(ok)) if ok else np.nan)
  return np.array(out)


def c2_prime(runs: dict) -> dict:
  bn_, none = runs["bn"]["summary"], runs["none"]["summary"]
  tests = [test("log10 largest stable LR, BN - none", largest_stable_lr(bn_) - largest_stable_lr(none), "higher", unit="decades")]
  return {"id": "C2'", "claim": "BN's main benefit is that it permits larger learning rates (Bjorck et al. 2018)",
          "predicts": "the largest stable learning rate is larger with BN", "tests": tests}


def _gap(run, key="gap_loss"):
  return per_seed(run["summary"], key)


def c3(gap_runs: dict, ghost_runs: dict) -> dict:
  batches = sorted({int(k.split("_b")[1]) for k in gap_runs})
  small, large = batches[0], batches[-1]
  d_small = _gap(gap_runs[f"bn_b{small}"]) - _gap(gap_runs[f"none_b{small}"])
  d_large = _gap(gap_runs[f"bn_b{large}"]) - _gap(gap_runs[f"none_b{large}"])
  ghosts = sorted(int(k[len("ghost"):]) for k in ghost_runs if k.startswith("ghost"))
  g_small, g_full = f"ghost{ghosts[0]}", f"ghost{ghosts[-1]}"
  tests = [
      test(f"loss gap at batch {small}, BN - none", d_small, "lower"),
      test(f"the effect fades: (BN - none) at batch {small} minus at batch {large}", d_small - d_large, "lower"),
      test(f"fixed batch {ghosts[-1]}: loss gap, ghost {ghosts[0]} - ghost {ghosts[-1]}", _gap(ghost_runs[g_small]) - _gap(ghost_runs[g_full]), "lower"),
      test(f"no batch-statistics noise: loss gap, population - BN (batch {ghosts[-1]})", _gap(ghost_runs["population"]) - _gap(ghost_runs[g_full]), "higher"),
  ]
  return {"id": "C3", "claim": "BN regularizes through noisy batch statistics (the seed's claim)",
          "predicts": "smaller generalization gap with BN at small (statistics) batches, fading toward 512", "tests": tests,
          "batches": batches, "ghosts": ghosts,
          "caveat": "Every batch size trains the same number of steps, so larger batches see more epochs of the fixed "
                    "training subset and overfit more (batch size and epochs move together in the first two tests); "
                    "the ghost-batch and population tests hold the total batch, the steps and the LR fixed and vary "
                    "only the batch-statistics noise."}


def c4(runs: dict) -> dict:
  bn_, none = runs["bn"], runs["none"]
  out = []
  for key, label in (("beta_smoothness", "effective β-smoothness"), ("grad_predictiveness", "gradient predictiveness (max ‖Δ∇L‖)"), ("loss_variation", "loss variation")):
    g = lambda r, k=key: r["landscape"][k]
    out.append(test(f"log10 {label}, BN / none", np.log10(_probe_mean(bn_, g)) - np.log10(_probe_mean(none, g)), "lower", unit="decades"))
  return {"id": "C4", "claim": "BN makes the loss landscape smoother (Santurkar et al. 2018)",
          "predicts": "lower loss variation, gradient change and effective β-smoothness along the gradient with BN", "tests": out}


def c5(runs: dict) -> dict:
  ghosts = sorted(int(k[len("bn_g"):]) for k in runs if k.startswith("bn_g"))
  small, full = ghosts[0], ghosts[-1]
  acc = lambda k: per_seed(runs[k]["summary"], "test_accuracy")
  tests = [
      test(f"BN degrades at small statistics batches: test accuracy, ghost {small} - ghost {full}", acc(f"bn_g{small}") - acc(f"bn_g{full}"), "lower", unit="accuracy"),
      test(f"GroupNorm beats BN at statistics batch {small}: test accuracy, GN - BN", acc("group") - acc(f"bn_g{small}"), "higher", unit="accuracy"),
      test(f"Batch Renorm recovers at statistics batch {small}: test accuracy, renorm - BN", acc(f"renorm_g{small}") - acc(f"bn_g{small}"), "higher", counts=False, unit="accuracy"),
  ]
  return {"id": "C5", "claim": "Small batches hurt BN; GroupNorm does not depend on the batch (Wu & He 2018)",
          "predicts": "BN's accuracy falls at the smallest statistics batch, where GN is better", "tests": tests, "ghosts": ghosts}


def depth_slopes(result: dict) -> np.ndarray:
  """Per seed: least-squares slope over depth of log10(||grad layer 0|| / ||grad last hidden layer||)."""
  depths = np.array([r["depth"] for r in result["depths"]], float)
  ratios = np.array([[math.log10(g[0] / g[-2]) for g in r["grad_norms"]] for r in result["depths"]])  # (D, seeds)
  if len(depths) < 2:
    return np.full(ratios.shape[1], np.nan)
  x = depths - depths.mean()
  return (x @ (ratios - ratios.mean(0))) / (x @ x)


def c6(results: dict) -> dict:
  s_bn, s_none = depth_slopes(results["bn"]), depth_slopes(results["none"])
  tests = [
      test("gradients explode with depth under BN: slope of log10(‖g_first‖/‖g_last‖) per layer of depth, BN", s_bn, "higher", unit="decades/layer"),
      test("more than without BN: slope BN - none", s_bn - s_none, "higher", unit="decades/layer"),
  ]
  return {"id": "C6", "claim": "Deep BN MLPs without skips have exploding gradients at initialization (Yang et al. 2019)",
          "predicts": "the first layer's gradient grows exponentially with depth relative to the last, with BN", "tests": tests}
