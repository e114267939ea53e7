"""C1 -- BN reduces internal covariate shift, and so trains faster (Ioffe & Szegedy 2015; the seed's claim 1).

What is tested, declared before the run:

* **Primary** (the consequence Ioffe & Szegedy report, Fig. 1a): BN reaches the target test
  accuracy (75%) in fewer steps than no BN, **each net at its own best learning rate** from a
  small grid (0.125, 0.5, 2, 8): per seed, log2(steps) BN - none < 0. The best LR of each net is
  the grid value whose runs reach 75% *validation* accuracy in the fewest mean log2 steps (the same
  rule for both nets; the test set is not used to choose). Evaluation after precise-BN
  recalibration (the lag of momentum-0.99 running averages would slow BN's measured progress).
  Evaluations come every 100 steps and BN reaches 75% by the first one in most seeds: its steps
  are then counted as 100, an upper bound, which shrinks the difference toward 0 (against the
  prediction); the report's note counts these runs.
* **Sanity** (BN does what it is built to do, Fig. 1b/c): the inputs of BN's sigmoids move
  less during training than without BN -- per unit, the mean shift between probe points over the
  unit's pooled spread, averaged over hidden layers (LR 0.5), measured **in eval mode on fixed
  test data** (the network as it is deployed at each probe point; its parameters and, for BN, its
  statistics change between points). In training mode a BN unit's batch mean equals its bias by
  construction, so the training-mode shift (a secondary test) cannot fail for a working layer;
  the eval-mode one can. (Changed after the first confirmatory run, where the training-mode
  shift was the sanity check; the eval-mode shift was a secondary test then and came out as
  predicted.)
* **Sanity**: each net's chosen LR lies inside the grid, so "its best LR" is not an edge of it.
* Secondary: the shift in training mode (all of training, early and late); mean test accuracy
  over training and final accuracy at the best LRs; steps at the shared LR 0.5.

A *supported* verdict says that BN trains faster and keeps its inputs more stable, as Ioffe &
Szegedy observed. It does not say that the stability is *why* BN trains faster: that is
claim C1' (noisy BN and the noise dose-response).
"""

from __future__ import annotations

import numpy as np

from bn import analysis, plotting
from bn.claims._common import at_best_lr, censored, hidden_layers, log2_steps, mean_ci_text, mean_shift
from bn.claims.base import Claim

EXPERIMENTS = ("ioffe", "ioffe_long")
SHARED_LR = 0.5


def analyze(results) -> dict:
  m = results["ioffe"]
  bn_, none = m["bn"], m["none"]
  target = bn_["config"]["config"]["train"]["target_accuracy"]
  lr_bn, s_bn = at_best_lr(bn_, target)
  lr_none, s_none = at_best_lr(none, target)
  rows_bn, rows_none = analysis.probes_of(bn_, SHARED_LR), analysis.probes_of(none, SHARED_LR)
  t = analysis.test
  grid = analysis.lrs_of(bn_)
  inside = lambda lr: grid[0] < lr < grid[-1]  # noqa: E731
  tests = [
      t(f"BN learns faster: log2 steps to {target:.0%} test accuracy, each at its best LR (BN {lr_bn:g}, none {lr_none:g}), BN - none",
        s_bn - s_none, "lower", role="primary", unit="log2 steps", note=censored([(bn_, lr_bn), (none, lr_none)], target)),
      t("BN keeps its layer inputs stable: shift |Δμ|/σ_ref per probe interval in eval mode on fixed test data, mean over hidden "
        "layers (LR 0.5), BN - none", mean_shift(rows_bn, source="eval_units") - mean_shift(rows_none, source="eval_units"), "lower",
        role="sanity"),
      analysis.check("each net's best LR lies inside the grid", inside(lr_bn) and inside(lr_none),
                     f"grid {grid}; BN {lr_bn:g}, none {lr_none:g} (chosen on validation accuracy)"),
      t("the same shift in training mode (on the training batch; BN's batch mean is its bias by construction), BN - none",
        mean_shift(rows_bn) - mean_shift(rows_none), "lower"),
      t("... in the first half of training", mean_shift(rows_bn, (0, 0.5)) - mean_shift(rows_none, (0, 0.5)), "lower"),
      t("... in the second half of training", mean_shift(rows_bn, (0.5, 1)) - mean_shift(rows_none, (0.5, 1)), "lower"),
      t("mean test accuracy over training at the best LRs, BN - none",
        analysis.auc_at(bn_, lr_bn) - analysis.auc_at(none, lr_none), "higher", unit="accuracy"),
      t("final test accuracy (last 3 evaluations) at the best LRs, BN - none",
        analysis.last(bn_, "test_accuracy", lr_bn, 3, diverged=analysis.chance(bn_)[1])
        - analysis.last(none, "test_accuracy", lr_none, 3, diverged=analysis.chance(none)[1]), "higher", unit="accuracy"),
      t(f"at the shared LR {SHARED_LR:g}: log2 steps to {target:.0%}, BN - none",
        log2_steps(bn_, target, SHARED_LR) - log2_steps(none, target, SHARED_LR), "lower", unit="log2 steps",
        note=censored([(bn_, SHARED_LR), (none, SHARED_LR)], target)),
  ]
  steps = lambda s: mean_ci_text(2.0 ** s, 3)  # noqa: E731
  table = [
      ["data", "MNIST", f"{bn_['config']['config']['data']['name']} (offline)"],
      ["network", "784-100-100-100-10, sigmoid, BN before each sigmoid", "the same; init N(0, 0.1²) (assumed)"],
      ["training", "50,000 steps of batch 60; optimizer and LR not given", f"{bn_['summary']['steps']} steps of batch 60, SGD, LR grid {analysis.lrs_of(bn_)}"],
      ["faster learning", "BN reaches higher test accuracy sooner (Fig. 1a)",
       f"steps to {target:.0%}: BN {steps(s_bn)} (LR {lr_bn:g}), none {steps(s_none)} (LR {lr_none:g})"],
      ["stable inputs", "15/50/85th percentiles of a last-layer sigmoid input drift without BN, stay put with BN (Fig. 1b/c)",
       f"shift per interval (mean over hidden layers), eval mode on test data: BN {mean_ci_text(mean_shift(rows_bn, source='eval_units'))}, "
       f"none {mean_ci_text(mean_shift(rows_none, source='eval_units'))}; training mode: BN {mean_ci_text(mean_shift(rows_bn))}, "
       f"none {mean_ci_text(mean_shift(rows_none))}"],
  ]
  return {"tests": tests, "table": table, "best_lr": {"bn": lr_bn, "none": lr_none}}


def plot(results, a, out) -> list[str]:
  m = results["ioffe"]
  plt = plotting.plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for cond in ("bn", "none"):
    lr = a["best_lr"][cond]
    s, v = analysis.metric_table(m[cond], "test_accuracy", lr)
    plotting.band(axes[0], s, v, f"{cond} (LR {lr:g})", plotting.COLORS[cond])
    rows = analysis.probes_of(m[cond], SHARED_LR)
    for i, layer in enumerate(hidden_layers(rows)):
      steps = sorted({r["step"] for r in rows})[1:]
      per = _shift_curve(rows, layer)
      plotting.band(axes[1], steps, per, f"{cond} {layer}", plotting.COLORS[cond], log=True, style=["-", "--", ":"][i % 3])
  axes[0].set(title="(a) test accuracy, each net at its best LR", xlabel="step", ylabel="test accuracy", ylim=(0.5, None))
  axes[0].legend()
  axes[1].set(title=f"(b) layer-input shift |Δμ|/σ_ref per interval (LR {SHARED_LR:g})", xlabel="step", yscale="log")
  axes[1].legend(fontsize=7)
  names = [plotting.save(fig, out, "c1_ioffe.png")]
  long = results.get("ioffe_long") or {}
  if long.get("bn") and long.get("none"):
    names += [_fig1(long, lr, out) for lr in analysis.lrs_of(long["bn"])]
  return names


def _shift_curve(rows, layer):
  """(seeds, intervals): per-interval shift of one layer (fixed reference scale), for plotting."""
  return np.array([np.mean(analysis.unit_shift_intervals(rows, layer, seed)[1], axis=1) for seed in sorted({r["seed"] for r in rows})])


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
    title="BN reduces internal covariate shift, and so trains faster (Ioffe & Szegedy 2015; the seed's claim 1)",
    predicts="BN reaches a target accuracy in fewer steps (each net at its best LR), and its layer inputs keep a stable distribution",
    primary="log2 steps to 75% test accuracy, each net at its best LR from (0.125, 0.5, 2, 8) chosen on validation data, "
            "BN − none < 0 (precise-BN evaluation, paired by seed)",
    paper="Ioffe & Szegedy (2015, Fig. 1, MNIST): BN reaches higher test accuracy sooner; the 15/50/85th percentiles of a "
          "last-layer sigmoid input drift without BN and stay put with BN.",
    source="Ioffe & Szegedy 2015, arXiv 1502.03167, §4.1",
    scope="that BN trains faster than no BN (the primary test) while its layer inputs move less (a sanity check, eval mode). "
          "It does not cover the \"so\": that BN trains faster *because* its inputs move less is what C1′ tests (noisy BN, "
          "whose inputs move more, against BN); read the two verdicts together.",
    experiments=EXPERIMENTS, analyze=analyze, plot=plot,
)
