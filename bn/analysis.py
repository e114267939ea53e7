"""The claims ledger's statistics: reading what runs wrote, tests with outcomes, the verdict rule.

Reads only what runs wrote (``summary.json``, ``metrics.jsonl``, ``probes.jsonl``,
``results.json``, ``config.json``); each claim module (:mod:`bn.claims`) builds its
tests from these pieces. Every measurement is a per-seed quantity
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
from bn.errors import RunError

RULE = ("A claim is *supported* when every test that counts for it came out as predicted (the 95% CI over seeds of the "
        "paired per-seed difference lies entirely on the predicted side of 0, or inside the equivalence margin); "
        "*contradicted* when any such test came out opposite (CI entirely on the other side, or entirely outside the margin); "
        "*inconclusive* otherwise (some CI includes 0 and none is opposite).")


# ----------------------------------------------------------------------------- reading


def load_condition(workdir: Path) -> dict | None:
  """What one condition wrote: ``{summary, metrics, probes, config}`` of a trained workdir, or
  ``{results, config}`` of a measured one (``results.json``); None if it has not finished."""
  def damaged(what: str) -> RunError:
    return RunError(f"{workdir}: {what} although the condition finished; delete {workdir} and re-run "
                    "`bn reproduce` with the same --out to run this condition again.")

  def need(name: str) -> Path:
    if not (workdir / name).exists():
      raise damaged(f"{name} is missing")
    return workdir / name

  if (workdir / "results.json").exists():
    return {"results": artifacts.read_json(workdir / "results.json"), "config": artifacts.read_json(need("config.json"))}
  if not (workdir / "summary.json").exists():
    return None
  config = artifacts.read_json(need("config.json"))
  probed = ((config.get("config") or {}).get("probes") or {}).get("every", 0) > 0
  out = {"summary": artifacts.read_json(workdir / "summary.json"), "metrics": artifacts.read_jsonl(need("metrics.jsonl")),
         "probes": artifacts.read_jsonl(need("probes.jsonl")) if probed else [], "config": config}
  if not isinstance(out["summary"], dict) or not out["summary"].get("runs"):
    raise damaged("summary.json lists no runs")
  return out


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


# ----------------------------------------------------------------------------- measurements several claims use


def auc(run) -> np.ndarray:
  """Mean test accuracy over all evaluations (area under the curve / steps), per seed."""
  _, acc = curve(run["metrics"], "test_accuracy")
  return np.nanmean(acc, axis=1)


def last_hidden(run) -> str:
  return run["probes"][0]["layers"][-2]


def shift(run, layer: str | None = None, field: str = "mean") -> np.ndarray:
  """Mean over probe points (from the 2nd) of the per-unit shift |dmu|/sigma of a layer, per seed."""
  layer = layer or last_hidden(run)
  _, v = probe_series(run["probes"], lambda r: r["shift"][layer][field])
  return np.nanmean(v, axis=1)


def probe_mean(run, getter, skip_first: bool = False) -> np.ndarray:
  """Mean over probe points of ``getter(row)``, per seed (``skip_first``: without the step-0 point)."""
  steps, v = probe_series(run["probes"], getter)
  if skip_first and v.shape[1] > 1:
    v = v[:, 1:]
  return np.nanmean(v, axis=1)


def gap(run, key="gap_loss"):
  """A condition's per-seed generalization gap (``gap_loss``: test - train loss)."""
  return per_seed(run["summary"], key)
