"""C1 -- BN reduces internal covariate shift, so later layers learn faster (Ioffe & Szegedy 2015; the seed's claim 1).

The claim has three parts; each has its own primary test, declared here before the run:

* **faster** (experiment ``c1_speed``): BN reaches 75% test accuracy in fewer steps than no BN
  *with a working init* (LeCun normal: the v2 baseline's N(0, 0.1²) init starts the third layer's
  sigmoid inputs at std ~0.07, which BN repairs), each net at its best LR from (0.125, 0.5, 2, 8)
  chosen on validation data, evaluated every 10 steps: per seed, restricted log2 steps (a run that
  never reaches 75% by the last evaluation counts at that step, which is exact for the restricted
  time) BN − none < 0. The interval is a t-interval conditional on the chosen LRs; the notes give
  the nested bootstrap interval that re-chooses the LRs in every resample of seeds.
* **stable**: BN's layer inputs move less than without BN -- per unit, the shift of the mean between
  probe points over the unit's pooled spread, mean over hidden layers, **in eval mode on fixed test
  data** (the deployed network at each probe point), over the probe intervals after the first (the
  first holds the running statistics' warm-up from their (0, 1) start), LR 0.5 (``ioffe``).
* **because**: BN with a slow drift of RMS 1 added to its outputs (``bn.models.Drift``, periods
  200-400 steps; ``c1_speed``'s ``bn_drift1``) loses at least half of its lead: per seed, with s the
  restricted log2 steps at each net's best LR, (s_drift − s_BN) − ½ (s_none − s_BN) > 0. Sanity: the
  drift makes the inputs move more than without BN (``ioffe``'s ``bn_drift1``, the *stable* statistic)
  and BN has a lead. C1′'s noise is redrawn at every step -- jitter around a fixed point, not drift.

Secondary: the same speed test against no BN with the paper's init; steps at the shared LR 0.5;
the training-mode shift; mean and final accuracy at the best LRs (``ioffe``).
"""

from __future__ import annotations

import numpy as np

from bn import analysis, plotting, stats
from bn.claims._common import hidden_layers, mean_ci_text, mean_shift
from bn.claims.base import Claim, Part

EXPERIMENTS = ("c1_speed", "ioffe", "ioffe_long")
SHARED_LR = 0.5
FASTER = Part("faster", says="BN reaches 75% test accuracy in fewer steps than no BN with a working init (each at its best LR)",
              primary="restricted log2 steps to 75% test accuracy (evaluated every 10 steps), each net at its best LR from "
                      "(0.125, 0.5, 2, 8) chosen on validation data, BN − no BN with LeCun-normal init, paired by seed",
              kind="lower", unit="log2 steps")
STABLE = Part("stable", says="BN's layer inputs move less during training than without BN (eval mode, after the warm-up)",
              primary="per-unit shift |Δμ|/σ_ref per probe interval in eval mode on fixed test data, mean over hidden layers and "
                      "over the intervals after the first (running-statistics warm-up), LR 0.5, BN − none, paired by seed",
              kind="lower", unit="|Δμ|/σ")
DRIFT = 1.0  # the primary's drift RMS (c1_speed's bn_drift1; the ioffe experiment's bn_drift1 measures its shift)
BECAUSE = Part("because", says="making BN's layer inputs drift more than without BN takes away at least half of BN's lead",
               primary=f"restricted log2 steps to 75%, each net at its best LR: (BN with a slow drift of RMS {DRIFT:g} added to its "
                       "outputs − BN) − ½ (no BN with LeCun init − BN) > 0, paired by seed (sanity: the drift makes the inputs "
                       "move more than without BN, eval mode after the warm-up, LR 0.5; BN has a lead to take away)",
               kind="higher", unit="log2 steps")


def speed(run, target: float):
  """``(lr, values, left, right, val (lrs, seeds), test (lrs, seeds))``: restricted log2 steps to ``target``
  test accuracy at the LR whose runs reach ``target`` *validation* accuracy in the fewest mean restricted
  log2 steps, with the censoring of the chosen LR's values and every LR's scores (for the bootstrap)."""
  lrs = analysis.lrs_of(run)
  val = np.array([analysis.restricted_log2_steps(run, target, lr, "val_accuracy")[0] for lr in lrs])
  test = np.array([analysis.restricted_log2_steps(run, target, lr)[0] for lr in lrs])
  k = int(np.argmin(val.mean(axis=1)))
  values, left, right = analysis.restricted_log2_steps(run, target, lrs[k])
  return lrs[k], values, left, right, val, test


def analyze(results) -> dict:
  sp = results["c1_speed"]
  target = sp["bn"]["config"]["config"]["train"]["target_accuracy"]
  lr_bn, s_bn, left_bn, right_bn, val_bn, test_bn = speed(sp["bn"], target)
  lr_none, s_none, left_none, right_none, val_none, test_none = speed(sp["none_lecun"], target)
  lr_old, s_old, left_old, _, _, _ = speed(sp["none"], target)
  lo_b, hi_b = analysis.selection_bootstrap(val_bn, test_bn, val_none, test_none)
  drifts = {k: speed(r, target) for k, r in sp.items() if k.startswith("bn_drift")}
  m = results["ioffe"]
  bn_, none = m["bn"], m["none"]
  rows_bn, rows_none = analysis.probes_of(bn_, SHARED_LR), analysis.probes_of(none, SHARED_LR)
  after_warmup = lambda rows: mean_shift(analysis.probe_window(rows, None, skip_first=True), source="eval_units")  # noqa: E731
  t = analysis.test
  grid = analysis.lrs_of(sp["bn"])
  inside = lambda lr: grid[0] < lr < grid[-1]  # noqa: E731
  steps_of = lambda v: 2.0 ** v  # noqa: E731
  cens = (f"never reached {target:.0%} by step {sp['bn']['summary']['steps']} (counted there, exact for the restricted time): "
          f"BN {int(right_bn.sum())}, none {int(right_none.sum())} of {right_bn.size}; reached at the first evaluation "
          f"(censored): BN {int(left_bn.sum())}, none {int(left_none.sum())}")
  tests = [
      t(f"restricted log2 steps to {target:.0%} test accuracy, each at its best LR (BN {lr_bn:g}, no BN with LeCun init "
        f"{lr_none:g}), BN - none", s_bn - s_none, "lower", role="primary", part="faster", unit="log2 steps",
        censored=left_bn | left_none, note=cens),
      t("shift |Δμ|/σ_ref per probe interval in eval mode on fixed test data, intervals after the first, mean over hidden "
        "layers (LR 0.5), BN - none", after_warmup(rows_bn) - after_warmup(rows_none), "lower", role="primary", part="stable",
        unit="|Δμ|/σ"),
      analysis.check("each net's best LR lies inside the grid", inside(lr_bn) and inside(lr_none), f"grid {grid}; BN {lr_bn:g}, "
                     f"none {lr_none:g} (chosen on validation accuracy)", part="faster"),
      t(f"against no BN with the paper's init N(0, 0.1²) (best LR {lr_old:g}): restricted log2 steps, BN - none",
        s_bn - s_old, "lower", unit="log2 steps", censored=left_bn | left_old),
      t("the eval-mode shift over all intervals (warm-up included), BN - none",
        mean_shift(rows_bn, source="eval_units") - mean_shift(rows_none, source="eval_units"), "lower"),
      t("the same shift in training mode (on the training batch; BN's batch mean is its bias by construction), BN - none",
        mean_shift(rows_bn) - mean_shift(rows_none), "lower"),
      t("mean test accuracy over the first 500 steps at the best LRs, BN - no BN with LeCun init",
        analysis.auc_at(sp["bn"], lr_bn) - analysis.auc_at(sp["none_lecun"], lr_none), "higher", unit="accuracy"),
      t("final test accuracy (ioffe, 1,500 steps, LR 0.5), BN - none",
        analysis.last(bn_, "test_accuracy", SHARED_LR, 3, diverged=analysis.chance(bn_)[1])
        - analysis.last(none, "test_accuracy", SHARED_LR, 3, diverged=analysis.chance(none)[1]), "higher", unit="accuracy"),
  ]
  tests += because_tests(drifts, s_bn, s_none, left_bn | left_none, m, after_warmup, rows_none)
  notes = [f"The primary's interval is conditional on the chosen LRs; re-choosing both LRs on validation data in every "
           f"bootstrap resample of seeds (nested selection, 2,000 resamples) gives [{lo_b:+.3g}, {hi_b:+.3g}] log2 steps.",
           f"Kaplan-Meier median steps to {target:.0%} at the chosen LRs: BN {_km(sp['bn'], target, lr_bn)}, no BN with LeCun init "
           f"{_km(sp['none_lecun'], target, lr_none)}, no BN with N(0, 0.1²) {_km(sp['none'], target, lr_old)}."]
  steps = lambda s: mean_ci_text(steps_of(s), 3)  # noqa: E731
  table = [
      ["data", "MNIST", f"{bn_['config']['config']['data']['name']} (offline)"],
      ["network", "784-100-100-100-10, sigmoid, BN before each sigmoid", "the same; init N(0, 0.1²) (assumed)"],
      ["training", "50,000 steps of batch 60; optimizer and LR not given",
       f"speed: {sp['bn']['summary']['steps']} steps of batch 60, SGD, LR grid {grid}, evaluated every "
       f"{sp['bn']['config']['config']['train']['eval_every']} steps; stability: {bn_['summary']['steps']} steps at LR 0.5"],
      ["faster learning", "BN reaches higher test accuracy sooner (Fig. 1a); the no-BN net's init is not stated",
       f"restricted steps to {target:.0%}: BN {steps(s_bn)} (LR {lr_bn:g}), no BN with LeCun init {steps(s_none)} (LR {lr_none:g}), "
       f"no BN with N(0, 0.1²) {steps(s_old)} (LR {lr_old:g})"],
      ["stable inputs", "15/50/85th percentiles of a last-layer sigmoid input drift without BN, stay put with BN (Fig. 1b/c)",
       f"shift per interval (mean over hidden layers), eval mode on test data: BN {mean_ci_text(mean_shift(rows_bn, source='eval_units'))}, "
       f"none {mean_ci_text(mean_shift(rows_none, source='eval_units'))}; training mode: BN {mean_ci_text(mean_shift(rows_bn))}, "
       f"none {mean_ci_text(mean_shift(rows_none))}"],
  ]
  untested = {} if any(t.get("part") == "because" for t in tests) else {
      "because": f"this run has no drift condition (c1_speed's bn_drift{DRIFT:g})"}
  best = {"bn": lr_bn, "none_lecun": lr_none, "none": lr_old, **{k: d[0] for k, d in drifts.items()}}
  return {"tests": tests, "table": table, "notes": notes, "best_lr": best,
          "untested": untested}


def because_tests(drifts: dict, s_bn, s_none, censored, m, after_warmup, rows_none) -> list[dict]:
  """C1's *because*: BN with its inputs made to drift (c1_speed's ``bn_drift<a>``) against BN and no BN."""
  key = f"bn_drift{DRIFT:g}"
  if key not in drifts:
    return []
  t = analysis.test
  lr_d, s_d, left_d, *_ = drifts[key]
  out = [t(f"the drift (RMS {DRIFT:g}, best LR {lr_d:g}) takes away at least half of BN's lead: (drift − BN) − ½ (none − BN), "
           "restricted log2 steps", (s_d - s_bn) - 0.5 * (s_none - s_bn), "higher", role="primary", part="because", unit="log2 steps",
           censored=censored | left_d),
         t("BN has a lead to take away: restricted log2 steps, BN − no BN with LeCun init", s_bn - s_none, "lower", role="sanity",
           part="because", unit="log2 steps", censored=censored)]
  if key in m:
    rows_d = analysis.probes_of(m[key], SHARED_LR)
    out.append(t(f"the drift makes BN's inputs move more than without BN: eval-mode shift after the warm-up (ioffe, LR 0.5), "
                 f"BN + drift {DRIFT:g} − none", after_warmup(rows_d) - after_warmup(rows_none), "higher", role="sanity", part="because"))
  for k, (lr, s, left, *_r) in sorted(drifts.items()):
    if k != key:
      out.append(t(f"{k} (best LR {lr:g}) − BN: restricted log2 steps", s - s_bn, "higher", unit="log2 steps", censored=censored | left))
  return out


def _km(run, target, lr) -> str:
  steps = analysis.steps_to(run, target, lr)
  tau = analysis.metric_table(run, "test_accuracy", lr)[0][-1]
  med = stats.km_median(np.minimum(steps, tau), np.isfinite(steps))
  return f"{med:.0f}" if np.isfinite(med) else f"> {tau:g} (more than half never reached it)"


def plot(results, a, out) -> list[str]:
  m, sp = results["ioffe"], results["c1_speed"]
  plt = plotting.plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  drift_styles = {"bn_drift0.25": ":", "bn_drift1": "--", "bn_drift4": "-."}
  for cond in ("bn", "none_lecun", "none", *sorted(k for k in sp if k in drift_styles)):
    lr = a["best_lr"].get(cond)
    if lr is None:
      continue
    s, v = analysis.metric_table(sp[cond], "test_accuracy", lr)
    color = plotting.COLORS["bn"] if cond.startswith("bn") else plotting.COLORS.get(cond, "C2")
    plotting.band(axes[0], s, v, f"{cond} (LR {lr:g})", color, style=drift_styles.get(cond, "-"))
  for cond in ("bn", "none", "bn_drift1"):  # the stable part's statistic (eval mode) and the drift's premise
    if cond not in m:
      continue
    rows = analysis.probes_of(m[cond], SHARED_LR)
    steps = sorted({r["step"] for r in rows})[1:]
    per = np.mean([_shift_curve(rows, layer, "eval_units") for layer in hidden_layers(rows)], axis=0)
    color = plotting.COLORS["none"] if cond == "none" else plotting.COLORS["bn"]
    plotting.band(axes[1], steps, per, cond, color, log=True, style="--" if cond == "bn_drift1" else "-")
  axes[0].set(title="(a) test accuracy, each net at its best LR", xlabel="step", ylabel="test accuracy", ylim=(0.5, None))
  axes[0].legend(fontsize=7)
  axes[1].set(title=f"(b) layer-input shift |Δμ|/σ_ref per interval, eval mode, mean over layers (LR {SHARED_LR:g})",
              xlabel="step", yscale="log")
  axes[1].legend(fontsize=7)
  names = [plotting.save(fig, out, "c1_ioffe.png")]
  long = results.get("ioffe_long") or {}
  if long.get("bn") and long.get("none"):
    names += [_fig1(long, lr, out) for lr in analysis.lrs_of(long["bn"])]
  return names


def _shift_curve(rows, layer, source="units"):
  """(seeds, intervals): per-interval shift of one layer (fixed reference scale), for plotting."""
  return np.array([np.mean(analysis.unit_shift_intervals(rows, layer, seed, source)[1], axis=1)
                   for seed in sorted({r["seed"] for r in rows})])


def _fig1(long, lr, out) -> str:
  """Ioffe & Szegedy Fig. 1b/c: the 15/50/85th percentiles of one unit's sigmoid input in every
  hidden layer over training, without and with BN; train mode (solid) and eval mode on test data (dotted)."""
  plt = plotting.plt()
  layers = hidden_layers(long["bn"]["probes"])
  fig, axes = plt.subplots(2, len(layers), figsize=(4 * len(layers), 6), sharex=True, squeeze=False)
  for row, cond in enumerate(("none", "bn")):
    rows = analysis.probes_of(long[cond], lr)
    for col, layer in enumerate(layers):
      ax = axes[row][col]
      for i, p in enumerate((15, 50, 85)):
        for key, style in (("unit0", "-"), ("eval_unit0", ":")):
          s, v = analysis.probe_series(rows, lambda r, i=i, k=key: r[k][layer][i])
          for j, seed_vals in enumerate(v):
            ax.plot(s, seed_vals, style, color=f"C{i}", lw=0.8, alpha=0.8, label=f"{p}th" if key == "unit0" and j == 0 else None)
      ax.set(title=f"{'no BN' if cond == 'none' else 'BN'}, {layer}, unit 0", xlabel="step" if row else None)
      if row == 0 and col == 0:
        ax.legend(fontsize=7)
  fig.suptitle(f"Ioffe & Szegedy Fig. 1b/c analog, LR {lr:g}: percentiles of a sigmoid input (solid: training batch, train mode; "
               "dotted: test data, eval mode); one line per seed", fontsize=9)
  return plotting.save(fig, out, f"c1_fig1_lr{lr:g}.png")


CLAIM = Claim(
    id="C1", order=1.0,
    title="BN reduces internal covariate shift, so later layers learn faster (Ioffe & Szegedy 2015; the seed's claim 1)",
    predicts="BN reaches a target accuracy in fewer steps than no BN with a working init; its layer inputs move less; and the "
             "first because of the second",
    parts=(FASTER, STABLE, BECAUSE),
    paper="Ioffe & Szegedy (2015, Fig. 1, MNIST): BN reaches higher test accuracy sooner; the 15/50/85th percentiles of a "
          "last-layer sigmoid input drift without BN and stay put with BN.",
    source="Ioffe & Szegedy 2015, arXiv 1502.03167, §4.1",
    scope="*faster* covers the first 500 steps (quick) of a 3-layer sigmoid MLP against a no-BN net with a LeCun-normal init, "
          "not how long the lead lasts (the ioffe_long figure shows the curves to 12,000 steps); *stable* covers the eval-mode "
          "drift at LR 0.5 over 1,500 steps, after the warm-up; *because* covers one intervention (a slow sinusoidal drift of "
          "RMS 1 added to BN's outputs, periods 200-400 steps: the sigmoid inputs drift, and the next layer's BN still normalizes "
          "its own pre-activations) and not the other direction (drift taken away without BN's other effects). C1′ tests a "
          "different statement: that BN's benefit survives per-step noise.",
    experiments=EXPERIMENTS, analyze=analyze, plot=plot,
)
