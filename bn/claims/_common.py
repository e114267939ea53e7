"""Pieces several claim modules share: condition lookup by config, common endpoints, table rows."""

from __future__ import annotations

import math

import numpy as np

from bn import analysis


_REQUIRED = object()


def factor(run, *path, default=_REQUIRED):
  """A config value of a finished condition, e.g. ``factor(run, "norm", "kind")``; ``default`` where the config has
  no such key (a condition written before the key existed), else a KeyError."""
  node = run["config"]["config"]
  for p in path:
    if default is not _REQUIRED and (not isinstance(node, dict) or p not in node):
      return default
    node = node[p]
  return node


def hidden_layers(rows: list[dict]) -> list[str]:
  """The layers with a nonlinearity input (all but the head), from probe rows."""
  return [n for n in rows[0]["layers"] if n != "head"] if rows else []


def log2_steps(run, target: float, lr: float | None = None, *, never: str = "last", key: str = "test_accuracy") -> np.ndarray:
  """Per seed: log2 of the steps until ``key`` reaches ``target``. A run that never reached it (or
  diverged first) is counted at the last step it trained (``never="last"``: a lower bound on its
  true steps, see :func:`censored`) or as inf (``never="inf"``: the test then says it is unclear).
  Use "last" where the bound works against the prediction being tested, "inf" where it would
  work for it."""
  if never == "inf":
    return np.log2(analysis.steps_to(run, target, lr, key=key))
  return analysis.restricted_log2_steps(run, target, lr, key)[0]  # never reached: the last evaluated step


def censored(runs_lrs, target: float) -> str:
  """A note for a test whose per-seed values come from :func:`log2_steps` of ``runs_lrs``
  (``[(run, lr), ...]``): how many seeds never reached the target and were counted at the last step."""
  n = sum(int(np.sum(~np.isfinite(analysis.steps_to(r, target, lr)))) for r, lr in runs_lrs)
  notes = [] if not n else [f"{n} run(s) never reached {target:.0%}; counted at the last step, a lower bound on their steps "
                            "(it shrinks a difference toward 0)"]
  for r, lr in runs_lrs:  # reached by the first evaluation: the steps are an upper bound, resolved no finer than one interval
    steps, _ = analysis.metric_table(r, "test_accuracy", lr)
    first = int(np.sum(analysis.steps_to(r, target, lr) == steps[0])) if len(steps) else 0
    if first:
      label = (r.get("summary") or {}).get("name") or (factor(r, "norm", "kind") if "config" in r else "")
      notes.append(f"{first} {label + ' ' if label else ''}run(s) reached {target:.0%} by the first evaluation (step {steps[0]:g}): "
                   "counted at that step, an upper bound")
  return "; ".join(notes)


def at_best_lr(run, target: float) -> tuple[float, np.ndarray]:
  """``(lr, per-seed log2 steps to target test accuracy)`` at the swept LR that reaches ``target``
  *validation* accuracy in the fewest mean log2 steps (chosen without the test set; runs that never
  reach it count as the worst value, inf, in this choice)."""
  key = "val_accuracy" if run["metrics"] and "val_accuracy" in run["metrics"][0] else "test_accuracy"
  lr = analysis.best_lr(run, lambda r, x: np.log2(analysis.steps_to(r, target, x, key=key)))
  return lr, log2_steps(run, target, lr)


def mean_shift(rows: list[dict], window=None, source: str = "units") -> np.ndarray:
  """Per seed: :func:`bn.analysis.unit_shift` averaged over the hidden layers."""
  layers = hidden_layers(rows)
  return np.mean([analysis.unit_shift(rows, layer, source=source, window=window) for layer in layers], axis=0)


def fmt(x, digits: int = 3) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "n/a"
  return f"{x:.{digits}g}"


def mean_ci_text(values, digits: int = 3) -> str:
  """``mean [lo, hi]`` over seeds (95% t-interval) for the report's tables."""
  from bn import stats

  v = np.asarray(values, float)
  if v.size == 0 or not np.all(np.isfinite(v)):
    finite = v[np.isfinite(v)]
    return f"{fmt(float(np.mean(finite)), digits)} ({v.size - finite.size} of {v.size} seeds n/a)" if finite.size else "n/a"
  if v.size < 2:
    return fmt(float(v[0]), digits)
  m, lo, hi = stats.mean_ci(v)
  return f"{m:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"
