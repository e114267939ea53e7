"""The claims ledger's statistics: reading what runs wrote, tests with outcomes, the verdict rule.

Reads only what runs wrote (``summary.json``, ``metrics.jsonl``, ``probes.jsonl``,
``results.json``, ``config.json``); each claim module (:mod:`bn.claims`) builds its
tests from these pieces. Every measurement is a per-seed quantity (conditions are
paired by seed: the same seed gives the same data order and, for equal shapes, the
same initial weights), summarized as the mean and 95% Student-t interval over seeds.

Each test has a *role* fixed in its claim module before the run: exactly one
**primary** test per claim decides the verdict; **secondary** tests are reported and
never change it; **sanity** checks confirm that the experiment did what it was built
to do (e.g. "the injected noise does move the layer inputs"). Outcomes by *kind*:

* ``lower`` / ``higher``: *as predicted* when the CI lies entirely on the predicted
  side of 0, *opposite* when entirely on the other side, *unclear* otherwise;
* ``equivalent`` (margin m): *as predicted* when the CI lies inside (-m, m),
  *opposite* when it lies entirely outside, *unclear* otherwise;
* ``not_higher`` / ``not_lower`` (margin m >= 0): *as predicted* when the CI excludes an
  increase (decrease) larger than m, *opposite* when the whole CI is beyond m.
* Every seed giving exactly the same value (no spread, e.g. a discrete LR grid): the
  t-interval is degenerate; the outcome then follows an exact two-sided sign test
  (significant from 6 seeds on), and the report says so.

Verdict rule (:data:`RULE`, :func:`verdict`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bn import artifacts, data, stats
from bn.errors import RunError

RULE = ("A claim is a conjunction of parts; each part has one primary test, declared in its claim module and written to "
        "preregistration.json before the first training step. A part is *supported* when its primary test came out as "
        "predicted (the 95% CI over seeds of the paired per-seed difference lies entirely on the predicted side of 0, or "
        "inside the equivalence margin) and still does after the Holm-Bonferroni adjustment across every primary test of "
        "the report, *contradicted* when it came out opposite (also after the adjustment), and *inconclusive* otherwise. "
        "If a sanity check of the part fails (the experiment did not do what it was built to do), the part is *invalid "
        "design*; a part the experiments here cannot test is *not tested here*. The claim is *supported* only when every "
        "part is, *contradicted* when any part is, *mixed* when some parts are supported and the others are not decided, "
        "and *inconclusive* (or *invalid design*, *not tested here*) when no part is decided. Secondary tests are "
        "reported and never change a verdict.")
PART_VERDICTS = ("supported", "contradicted", "inconclusive", "invalid design", "not tested here")
VERDICTS = ("supported", "contradicted", "mixed", "inconclusive", "invalid design", "not tested here")
ALPHA = 0.05
KINDS = ("lower", "higher", "equivalent", "not_higher", "not_lower")
ROLES = ("primary", "secondary", "sanity")


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
  steps = out["summary"].get("steps")
  if not out["metrics"] or (isinstance(steps, int) and max(r.get("step", -1) for r in out["metrics"]) != steps):
    raise damaged("metrics.jsonl is empty" if not out["metrics"] else f"metrics.jsonl stops before the final step {steps}")
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


def _outcome(kind: str, lo: float, hi: float, margin: float) -> str:
  if kind == "lower":
    return "as predicted" if hi < 0 else "opposite" if lo > 0 else "unclear"
  if kind == "higher":
    return "as predicted" if lo > 0 else "opposite" if hi < 0 else "unclear"
  if kind == "equivalent":
    return "as predicted" if (lo > -margin and hi < margin) else "opposite" if (lo > margin or hi < -margin) else "unclear"
  if kind == "not_higher":
    return "as predicted" if hi < margin else "opposite" if lo > margin else "unclear"
  if kind == "not_lower":
    return "as predicted" if lo > -margin else "opposite" if hi < -margin else "unclear"
  raise ValueError(f"unknown test kind {kind!r}; choose one of {KINDS}.")


def mde(sd: float, n: int, power: float = 0.8, confidence: float = 0.95) -> float:
  """Smallest true mean difference a two-sided paired t-test at ``confidence`` detects with
  probability ``power`` given per-seed spread ``sd`` over ``n`` seeds:
  ``(t_{(1+c)/2, n-1} + t_{power, n-1}) sd / sqrt(n)`` (normal approximation of the power)."""
  if n < 2 or not math.isfinite(sd):
    return float("nan")
  return (stats.t_ppf(0.5 + confidence / 2, n - 1) + stats.t_ppf(power, n - 1)) * sd / math.sqrt(n)


def _p_value(kind: str, mean: float, sd: float, n: int, margin: float, outcome: str) -> float:
  """Two-sided t-test p-value of the decision behind ``outcome`` (see the module docstring): against 0
  for lower/higher, against the margin's edge for not_higher/not_lower, and for an equivalence test the
  larger of the two edges' p-values (as predicted: both must be crossed; otherwise the nearer edge).
  Below 0.05 exactly when the 95% t-interval decides the outcome, so Holm's adjustment of these
  p-values (:func:`adjust`) can only move an outcome to unclear."""
  se = sd / math.sqrt(n)
  p_at = lambda b: 2 * stats.t_sf(abs(mean - b) / se, n - 1)  # noqa: E731
  if kind in ("lower", "higher"):
    return p_at(0.0)
  if kind == "not_higher":
    return p_at(margin)
  if kind == "not_lower":
    return p_at(-margin)
  return min(p_at(-margin), p_at(margin)) if outcome == "opposite" else max(p_at(-margin), p_at(margin))


def test(name: str, diffs, kind: str, *, role: str = "secondary", margin: float = 0.0, unit: str = "", note: str = "",
         part: str | None = None, censored=None) -> dict:
  """A test of per-seed values ``diffs`` (a paired difference, or one condition's values against 0).

  ``part``: the claim part it belongs to (None: the whole claim). ``censored``: per seed, whether the
  value is censored (e.g. a time that is only known to be at most the first evaluation's step);
  no interval is computed over censored values: the outcome is then unclear and the note says how many."""
  if role not in ROLES:
    raise ValueError(f"unknown test role {role!r}; choose one of {ROLES}.")
  if kind not in KINDS:
    raise ValueError(f"unknown test kind {kind!r}; choose one of {KINDS}.")
  if margin < 0 or (kind == "equivalent" and not margin > 0):
    raise ValueError(f"margin={margin}: must be >= 0 (> 0 for an equivalence test).")
  diffs = np.asarray(diffs, float).ravel()
  n, finite = int(diffs.size), bool(diffs.size) and bool(np.all(np.isfinite(diffs)))
  mean = float(np.nanmean(diffs)) if diffs.size and np.any(np.isfinite(diffs)) else float("nan")
  sd = float(np.std(diffs, ddof=1)) if n >= 2 and finite else float("nan")
  lo = hi = float("nan")
  notes = [note] if note else []
  n_cens = int(np.sum(np.asarray(censored, bool))) if censored is not None else 0
  p = float("nan")
  if n_cens:
    finite = False
    outcome = "unclear"
    notes.append(f"{n_cens} of {n} values censored; no interval is computed over censored values")
  elif not finite:
    outcome = "unclear"
    notes.append(f"{int(np.sum(~np.isfinite(diffs)))} of {n} seeds have no value (a run diverged or never reached the target)")
  elif n < 2:
    outcome = "unclear"
    notes.append("one seed: no interval")
  elif sd == 0.0:  # every seed the same value: a degenerate interval; use an exact sign test instead
    lo = hi = mean
    p = min(1.0, 2 * 0.5 ** n) if mean != 0 else 1.0
    if p < 0.05:
      outcome = _outcome(kind, mean, mean, margin)
    else:
      outcome = "unclear"
    notes.append(f"all {n} seeds gave exactly {mean:+.3g} (no spread; the t-interval is degenerate); exact sign test p = {p:.2g}")
  else:
    mean, lo, hi = (float(v) for v in stats.mean_ci(diffs))
    outcome = _outcome(kind, lo, hi, margin)
    p = _p_value(kind, mean, sd, n, margin, outcome)
  predicted = {"lower": "< 0", "higher": "> 0", "equivalent": f"within ±{margin:g}",
               "not_higher": f"not > {margin:g}", "not_lower": f"not < {-margin:g}"}[kind]
  return {"name": name, "role": role, "kind": kind, "predicted": predicted, "margin": margin, "mean": mean, "lo": lo, "hi": hi,
          "n": n, "sd": sd, "mde": mde(sd, n) if sd and sd > 0 else float("nan"), "per_seed": diffs.tolist(), "outcome": outcome,
          "unit": unit, "note": "; ".join(notes), "p": p, "part": part, "censored": n_cens}


def check(name: str, ok: bool, detail: str, *, role: str = "sanity", part: str | None = None) -> dict:
  """A test decided by a stated condition rather than an interval (e.g. "the best LR is inside the grid")."""
  return {"name": name, "role": role, "kind": "check", "predicted": "holds", "margin": 0.0, "mean": float("nan"), "lo": float("nan"),
          "hi": float("nan"), "n": 0, "sd": float("nan"), "mde": float("nan"), "per_seed": [],
          "outcome": "as predicted" if ok else "opposite", "unit": "", "note": detail, "p": float("nan"), "part": part, "censored": 0}


def _primary(tests: list[dict], part: str | None) -> dict:
  primary = [t for t in tests if t["role"] == "primary" and (part is None or t.get("part") == part)]
  if len(primary) != 1:
    where = f" for part {part!r}" if part else ""
    raise ValueError(f"a claim part needs exactly one primary test{where}, got {len(primary)}: {[t['name'] for t in primary]}")
  return primary[0]


def verdict(tests: list[dict], part: str | None = None) -> str:
  """The verdict of one claim part (:data:`RULE`): its primary test decides, unless a sanity check of
  the part (or of the whole claim: ``part`` None) failed. ``part`` None: the claim has one primary test."""
  p = _primary(tests, part)
  if any(t["outcome"] != "as predicted" for t in tests if t["role"] == "sanity" and t.get("part") in (None, p.get("part"))):
    return "invalid design"
  return {"as predicted": "supported", "opposite": "contradicted", "unclear": "inconclusive"}[p["outcome"]]


def claim_verdict(part_verdicts) -> str:
  """A claim's verdict from its parts' (:data:`RULE`): supported only when every part is, contradicted
  when any part is, mixed when some are supported and the rest undecided, otherwise the parts' common
  undecided verdict (inconclusive when they differ)."""
  v = list(part_verdicts)
  if not v or any(x not in PART_VERDICTS for x in v):
    raise ValueError(f"part verdicts must be a non-empty list of {PART_VERDICTS}, got {v}")
  if "contradicted" in v:
    return "contradicted"
  if all(x == "supported" for x in v):
    return "supported"
  if "supported" in v:
    return "mixed"
  if len(set(v)) == 1:
    return v[0]
  return "inconclusive"


def adjust(primaries: list[dict], alpha: float = ALPHA) -> None:
  """Holm-Bonferroni across a family of primary tests, in place: each test keeps its raw result
  (``outcome_raw``, ``p``, ``lo``/``hi``) and gets ``p_adjusted``, ``lo_adjusted``/``hi_adjusted`` (the
  t-interval at Holm's step level 1 - alpha/(m - rank)) and ``outcome``, the raw outcome where the
  adjusted p-value is below alpha and *unclear* otherwise. Tests without a p-value (checks, too few
  seeds) keep their outcome and are not counted in m."""
  adj = stats.holm([t.get("p", float("nan")) for t in primaries])
  finite = [t for t in primaries if math.isfinite(t.get("p", float("nan")))]
  m = len(finite)
  order = sorted(finite, key=lambda t: t["p"])
  for t, pa in zip(primaries, adj):
    t["outcome_raw"] = t.get("outcome_raw", t["outcome"])
    t["p_adjusted"], t["family_size"] = float(pa), m
    t["lo_adjusted"] = t["hi_adjusted"] = float("nan")
    if not math.isfinite(pa):
      continue
    rank = next(i for i, u in enumerate(order) if u is t)
    level = 1 - alpha / (m - rank)
    if t["sd"] > 0:
      half = stats.t_ppf(0.5 + level / 2, t["n"] - 1) * t["sd"] / math.sqrt(t["n"])
      t["lo_adjusted"], t["hi_adjusted"] = t["mean"] - half, t["mean"] + half
    t["outcome"] = t["outcome_raw"] if pa < alpha else "unclear"


def power_statement(t: dict) -> str:
  """What the test could detect, in words (for the report)."""
  if t["n"] < 2 or not math.isfinite(t.get("sd") or float("nan")):
    return "no interval (fewer than 2 finite seeds)."
  if t["sd"] == 0:
    return f"all {t['n']} seeds agree exactly; only an exact sign test applies (significant from 6 seeds on)."
  half = (t["hi"] - t["lo"]) / 2
  if t["kind"] == "equivalent":
    return (f"the 95% CI is ±{half:.3g} wide around the mean, so equivalence within ±{t['margin']:g} can be shown only if the "
            f"true difference is within ±{max(t['margin'] - half, 0):.3g}.")
  if t["kind"] in ("not_lower", "not_higher"):  # one-sided margin: the distance that matters is to the margin, not to 0
    edge = -t["margin"] if t["kind"] == "not_lower" else t["margin"]
    side = "above" if t["kind"] == "not_lower" else "below"
    return (f"with {t['n']} seeds (sd {t['sd']:.3g} of the per-seed value) a true difference at least {t['mde']:.3g} {t['unit']} "
            f"{side} the margin {edge:+g} (i.e. {side} {edge + (t['mde'] if side == 'above' else -t['mde']):+.3g}) is shown "
            "non-inferior with 80% power.")
  return f"with {t['n']} seeds (sd {t['sd']:.3g} of the per-seed value) a true effect of {t['mde']:.3g} {t['unit']} or more is detected with 80% power."


def what_would_change(t: dict, verdict_: str) -> str:
  """How far the primary test is from another verdict (for the report)."""
  if verdict_ == "invalid design":
    return "A run in which every sanity check passes; until then the primary test says nothing about the claim."
  if not (math.isfinite(t["lo"]) and math.isfinite(t["hi"])):
    return "Finite values for every seed (see the note)."
  k, m = t["kind"], t["margin"]
  if k in ("lower", "higher"):
    edge = t["hi"] if k == "lower" else t["lo"]
    if t["outcome"] == "unclear":
      return f"An interval that excludes 0: more seeds, or a larger effect than the {t['mean']:+.3g} measured."
    return f"An interval that reaches 0 (it now ends at {edge:+.3g}): a true effect near 0, or much larger seed-to-seed spread."
  if k == "equivalent":
    if t["outcome"] == "as predicted":
      return f"An interval that reaches ±{m:g} (it spans [{t['lo']:+.3g}, {t['hi']:+.3g}])."
    return f"An interval inside ±{m:g} (it spans [{t['lo']:+.3g}, {t['hi']:+.3g}]): more seeds, or a smaller true difference."
  edge = m if k == "not_higher" else -m  # not_higher: the claim holds below +margin; not_lower: above -margin
  side = "reaches above" if k == "not_higher" else "reaches below"
  if t["outcome"] == "as predicted":
    return f"An interval that {side} {edge:+g} (it spans [{t['lo']:+.3g}, {t['hi']:+.3g}])."
  if t["outcome"] == "opposite":
    return f"An interval that comes back across {edge:+g} (it spans [{t['lo']:+.3g}, {t['hi']:+.3g}])."
  return f"An interval entirely on the predicted side of {edge:+g} (it spans [{t['lo']:+.3g}, {t['hi']:+.3g}]): more seeds, or a true difference further from it."


# ----------------------------------------------------------------------------- measurements several claims use


def gap(run, key="gap_loss"):
  """A condition's per-seed generalization gap (``gap_loss``: test - train loss)."""
  return per_seed(run["summary"], key)


# ----------------------------------------------------------------------------- v2 measurements


def auc_at(run, lr: float | None = None, diverged: float = float("nan")) -> np.ndarray:
  """Per seed: mean test accuracy over all evaluations of the runs of one LR -- the area under the
  test-accuracy curve per step. A run's evaluations from its divergence on count as ``diverged``
  (NaN by default, which makes its mean NaN; e.g. chance accuracy to count them as guessing)."""
  _, acc = metric_table(run, "test_accuracy", lr)
  _, div = metric_table(run, "diverged", lr)
  return np.mean(np.where(div > 0, diverged, acc), axis=1)


def lrs_of(run) -> list[float]:
  return sorted({r["lr"] for r in run["summary"]["runs"]})


def metric_table(run, key: str, lr: float | None = None):
  """``steps (T,), values (seeds, T)`` of a metrics.jsonl field, for the runs of one LR."""
  rows = [r for r in run["metrics"] if lr is None or math.isclose(r["lr"], lr)]
  return curve(rows, key)


def early_stopped(run, key: str = "test_loss", by: str = "val_loss", lr: float | None = None, diverged: float = float("nan")) -> np.ndarray:
  """Per seed: ``key`` at the evaluation where ``by`` (a validation metric) was lowest -- early
  stopping chosen without the test set. Evaluations after a run diverged are not candidates; a run
  with none left gets ``diverged``."""
  _, vals = metric_table(run, key, lr)
  _, sel = metric_table(run, by, lr)
  _, div = metric_table(run, "diverged", lr)
  sel = np.where((div > 0) | ~np.isfinite(sel), np.inf, sel)
  return np.array([v[int(np.argmin(s_))] if np.isfinite(np.min(s_)) else diverged for v, s_ in zip(vals, sel)])


def steps_to(run, target: float, lr: float | None = None, key: str = "test_accuracy") -> np.ndarray:
  """Per seed: steps until ``key`` first reaches ``target`` (interpolated between evaluations;
  inf if never; a diverged run counts as never from its divergence on)."""
  steps, vals = metric_table(run, key, lr)
  _, div = metric_table(run, "diverged", lr)
  vals = np.where(div > 0, np.nan, vals)
  return np.array([stats.steps_to_target(steps, v, target) for v in vals], float)


def restricted_log2_steps(run, target: float, lr: float | None = None, key: str = "test_accuracy"):
  """Per seed: ``log2(min(T, tau))`` with T the (interpolated) steps until ``key`` reaches ``target``
  and tau the last evaluated step -- the restricted time to target, which is known exactly for a run
  that never reached it (tau) -- plus what is censored: ``(values, left, right)``, ``left`` the seeds
  that reached the target at their first evaluation after step 0 (the time is only known to be at
  most that step: censored, see :func:`test`), ``right`` those that never reached it (counted at tau,
  exact for the restricted time). A diverged run never reaches the target after its divergence."""
  steps, _ = metric_table(run, key, lr)
  t = steps_to(run, target, lr, key)
  tau = float(steps[-1])
  left = (t == steps[0]) & (steps[0] > 0)
  right = ~np.isfinite(t)
  return np.log2(np.maximum(np.minimum(t, tau), 1.0)), left, right


def last(run, key: str, lr: float | None = None, k: int = 1, diverged: float = float("nan")) -> np.ndarray:
  """Per seed: the mean of the last ``k`` evaluations of a metrics field; a run that diverged gets
  ``diverged`` (NaN by default; e.g. the chance-level loss or accuracy, to count it as no better
  than guessing)."""
  _, vals = metric_table(run, key, lr)
  _, div = metric_table(run, "diverged", lr)
  out = np.mean(vals[:, -k:], axis=1)
  return np.where(np.any(div > 0, axis=1), diverged, out)


def chance(run) -> tuple[float, float]:
  """``(loss, accuracy)`` of guessing uniformly among the dataset's classes: what a diverged run is counted as."""
  c = run["config"]["config"]
  d = c["data"]
  classes = data.num_classes(d.get("name"), d.get("source"), d.get("synthetic_classes", 10))
  return math.log(classes), 1.0 / classes


def probes_of(run, lr: float | None = None) -> list[dict]:
  return [r for r in run["probes"] if lr is None or math.isclose(r["lr"], lr)]


def probe_window(rows: list[dict], window: tuple[float, float] | None, skip_first: bool = False) -> list[dict]:
  """Probe rows whose step lies in a fraction ``window = (a, b)`` of the probed range
  (``(0, 0.5)``: the first half of training); ``skip_first`` drops the step-0 point."""
  steps = sorted({r["step"] for r in rows})
  if skip_first:
    steps = steps[1:]
  if window is not None and steps:
    lo, hi = steps[0], steps[-1]
    a, b = lo + window[0] * (hi - lo), lo + window[1] * (hi - lo)
    steps = [t for t in steps if a <= t <= b]
  keep = set(steps)
  return [r for r in rows if r["step"] in keep]


def per_point(rows: list[dict], getter) -> np.ndarray:
  """``getter(row)`` averaged over the probe points of each seed, per seed (NaN where missing)."""
  _, v = probe_series(rows, getter)
  return np.nanmean(v, axis=1) if v.size else np.array([], float)


def unit_shift_intervals(rows: list[dict], layer: str, seed: int, source: str = "units"):
  """``(steps, shifts)`` of one seed: the probe steps and, per interval between consecutive probe
  points and per unit, ``|mu_j(t) - mu_j(t-1)| / sigma_ref_j`` (see :func:`unit_shift`);
  ``shifts`` is None with fewer than 2 probe points."""
  mine = sorted((r for r in rows if r["seed"] == seed and source in r), key=lambda r: r["step"])
  if len(mine) < 2:
    return None, None
  mu = np.array([r[source][layer]["mean"] for r in mine])
  sd = np.array([r[source][layer]["std"] for r in mine])
  ref = np.sqrt(np.mean(np.square(sd), axis=0))
  return np.array([r["step"] for r in mine]), np.abs(np.diff(mu, axis=0)) / np.maximum(ref, 1e-12)  # (intervals, units)


def unit_shift(rows: list[dict], layer: str, *, source: str = "units", window=None) -> np.ndarray:
  """Per seed: the mean over consecutive probe intervals (in ``window``) and over units of
  ``|mu_j(t) - mu_j(t-1)| / sigma_ref_j`` for one layer's units, where ``sigma_ref_j`` is the
  unit's pooled standard deviation over the whole run (RMS of its std at every probe point).

  A fixed reference scale: the shift of consecutive intervals is not divided by whatever the
  spread happened to be at the earlier point (at initialization a no-BN sigmoid input can have
  a tiny spread, which made a per-interval ratio explode). ``source="eval_units"``: eval mode on
  the fixed test batch instead of train mode on the probe batch."""
  out = []
  for seed in sorted({r["seed"] for r in rows}):
    steps, d = unit_shift_intervals(rows, layer, seed, source)
    if d is None:
      out.append(np.nan)
      continue
    if window is not None:
      lo, hi = steps[0], steps[-1]
      ends = steps[1:]
      sel = (ends >= lo + window[0] * (hi - lo)) & (ends <= lo + window[1] * (hi - lo))
      d = d[sel]
    out.append(float(np.mean(d)) if d.size else np.nan)
  return np.array(out, float)


def selection_bootstrap(val_a, test_a, val_b, test_b, *, resamples: int = 2000, seed: int = 0, confidence: float = 0.95):
  """A percentile bootstrap interval of ``test_a[chosen_a] - test_b[chosen_b]`` (mean over seeds) that
  includes the choice of each side's setting: ``val_*`` and ``test_*`` are ``(settings, seeds)`` per-seed
  scores (lower is better on validation), paired by seed. In every resample of seeds each side's
  setting is chosen again on the resampled validation means, so the interval carries the selection's
  own uncertainty (nested selection). Returns ``(lo, hi)``."""
  va, ta, vb, tb = (np.asarray(x, float) for x in (val_a, test_a, val_b, test_b))
  n = va.shape[1]
  idx = np.random.default_rng(seed).integers(0, n, (resamples, n))  # (resamples, seeds)
  rows = np.arange(resamples)[:, None]

  def chosen(v, t):  # per resample: the test scores of the setting with the best resampled validation mean
    pick = np.argmin(np.where(np.isfinite(v), v, np.inf)[:, idx].mean(axis=2), axis=0)  # (resamples,)
    return t[pick[:, None], idx[rows, np.arange(n)]]

  out = np.mean(chosen(va, ta) - chosen(vb, tb), axis=1)
  a = (1 - confidence) / 2
  return float(np.quantile(out, a)), float(np.quantile(out, 1 - a))


def tuned(scores) -> np.ndarray:
  """Per row of ``scores (settings_groups, settings, seeds)``: the index of the setting with the largest mean over seeds
  (NaN counts as the worst), e.g. each variant's tuned LR from its loss drops."""
  d = np.where(np.isfinite(scores), scores, -np.inf)
  return np.argmax(np.mean(d, axis=-1), axis=-1)


def best_lr(run, score, *, higher_is_better: bool = False) -> float:
  """The swept LR with the best mean over seeds of ``score(run, lr) -> per-seed values`` (NaN/inf
  count as the worst value); ties go to the smaller LR."""
  best, best_v = None, None
  for lr in lrs_of(run):
    v = np.asarray(score(run, lr), float)
    bad = np.inf if not higher_is_better else -np.inf
    v = np.where(np.isfinite(v), v, bad)
    m = float(np.mean(v))
    if best_v is None or (m > best_v if higher_is_better else m < best_v):
      best, best_v = lr, m
  return best
