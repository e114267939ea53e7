"""C2 -- BN decouples layers, so each learns faster on its own (the seed's claim 2).

No published metric exists; this project defines the tests, declared before the run:

* **Primary**: how much the layers' steps interact in the loss. Every weight column of every layer
  takes the same small relative step (rho = 1% of its norm) down its own gradient, in the
  column-normalized parametrization (``bn.probes.normalized_parametrization``), and the second-order
  change of the loss is split into within-layer and cross-layer parts by mixed second differences
  (``bn.probes.coupling``). The cross-layer share, averaged over the probe points after step 0,
  BN - none < 0 (Ioffe MLP, LR 0.5, paired by seed). Step-size-free to second order, and BN's
  per-unit weight-scale symmetry cannot change it (tested with random per-unit scales).
* Secondary: the same early and late in training; the normalized Hessian blocks
  ``||H_jk|| / sqrt(||H_jj|| ||H_kk||)`` (also invariant, but equal to 1 whenever the Hessian is
  rank one, so they measure how concentrated the curvature is as much as how coupled the layers
  are); the cross-layer share along the optimizer's actual update (the first version's measure;
  not invariant).
* **Primary of "so each learns faster on its own"** (the ``alone`` experiment): both nets branched at
  matched training loss (two levels), then a fixed budget of full-batch gradient descent on one hidden
  layer alone or on all layers, each variant at its own tuned LR: the loss drop a hidden layer achieves
  alone minus the all-layer drop, over the loss at the branch point (mean over hidden layers and
  levels), BN - none > 0.
  Secondary: the additivity gap ``1 - together / sum of solo drops``, with every layer trained together
  at the LR it did best with alone -- 0 when each layer learns essentially by itself (the seed's words),
  > 0 when the layers' steps interfere -- BN against none and against 0.
"""

from __future__ import annotations

import numpy as np

from bn import analysis, plotting
from bn.claims._common import mean_ci_text
from bn.claims.base import Claim, Part

LR = 0.5


def hessian(rows, window=None) -> np.ndarray:
  return analysis.per_point(analysis.probe_window(rows, window, skip_first=True), lambda r: r["hessian"]["summary"])


def relative(rows, window=None) -> np.ndarray:
  """Per seed: the cross-layer share for equal relative steps (invariant), mean over probe points after step 0."""
  return analysis.per_point(analysis.probe_window(rows, window, skip_first=True), lambda r: r["coupling"]["relative_cross_fraction"])


def cross_fraction(rows) -> np.ndarray:
  return analysis.per_point(analysis.probe_window(rows, None, skip_first=True), lambda r: r["coupling"]["cross_fraction"])


def analyze(results) -> dict:
  m = results["ioffe"]
  rows = {k: analysis.probes_of(m[k], LR) for k in ("bn", "none")}
  t = analysis.test
  tests = [
      t("cross-layer share of the second-order loss change for equal relative steps, mean over training, BN - none",
        relative(rows["bn"]) - relative(rows["none"]), "lower", role="primary", unit="share", part="interact"),
      t("... in the first half of training", relative(rows["bn"], (0, 0.5)) - relative(rows["none"], (0, 0.5)), "lower"),
      t("... in the second half of training", relative(rows["bn"], (0.5, 1)) - relative(rows["none"], (0.5, 1)), "lower"),
      t("normalized Hessian blocks of the weights (1 for a rank-one Hessian), mean over layer pairs and training, BN - none",
        hessian(rows["bn"]) - hessian(rows["none"]), "lower"),
      t("cross-layer share along the optimizer's actual update (not scale-invariant), BN - none",
        cross_fraction(rows["bn"]) - cross_fraction(rows["none"]), "lower"),
  ]
  al = results.get("alone") or {}
  notes = []
  if al.get("bn") and al.get("none"):
    tests += alone_tests(al["bn"]["results"], al["none"]["results"])
  table = [
      ["definition", "none published (this project's)", "cross-layer share for equal relative steps (primary); normalized Hessian blocks; freezing"],
      ["network", "—", f"the Ioffe MLP, LR {LR:g}, probed every {m['bn']['config']['config']['probes']['every']} steps"],
      ["coupling", "—", f"cross-layer share BN {mean_ci_text(relative(rows['bn']))}, none {mean_ci_text(relative(rows['none']))}"],
  ]
  untested = {} if al.get("bn") and al.get("none") else {"alone": "this run has no results of the alone experiment"}
  return {"tests": tests, "table": table, "notes": notes, "untested": untested}


def solo_drops(r, level: int) -> np.ndarray:
  """``(variants, seeds)``: each variant's loss drop at its own tuned LR, at loss level index ``level``."""
  d = np.asarray(r["drop"], float)[level]
  return d[np.arange(d.shape[0]), analysis.tuned(d)]


def alone_advantage(r) -> np.ndarray:
  """Per seed: the loss drop a hidden layer achieves alone (mean over hidden layers) minus the all-layer drop, each at its
  own tuned LR, as a fraction of the loss at the branch point; mean over loss levels. (A difference over the branch loss,
  not a ratio of drops: the all-layer drop at its tuned LR comes close to 0 for a seed now and then.)"""
  names = r["variants"]
  hidden = [i for i, n in enumerate(names) if n not in ("all", "head")]
  base = np.asarray(r["branch_loss"], float)
  return np.mean([(np.mean(solo_drops(r, lv)[hidden], axis=0) - solo_drops(r, lv)[names.index("all")]) / base[lv]
                  for lv in range(len(r["levels"]))], axis=0)


def additivity_gap(r) -> np.ndarray:
  """Per seed: ``1 - together / (sum over layers of the solo drops)``, mean over levels: 0 when training every layer together,
  each at the LR it did best with alone, realizes the sum of their solo gains (each learns by itself); > 0 when the
  layers' steps interfere (together < sum; > 1 when the loss rises), < 0 when they help each other."""
  names = r["variants"]
  layers = [i for i, n in enumerate(names) if n != "all"]
  together = np.asarray(r["together"], float)
  return np.mean([1.0 - together[lv] / np.sum(solo_drops(r, lv)[layers], axis=0) for lv in range(len(r["levels"]))], axis=0)


def tuned_inside(r) -> list[str]:
  """The (level, variant)s whose tuned LR is the grid's smallest or largest (a better one may lie outside it)."""
  lrs = r["lrs"]
  out = []
  for lv, level in enumerate(r["levels"]):
    for v, i in zip(r["variants"], analysis.tuned(np.asarray(r["drop"], float)[lv])):
      if i in (0, len(lrs) - 1):
        out.append(f"{r['norm']} loss {level:g} {v}: LR {lrs[i]:g}")
  return out


def alone_tests(bn_r, none_r) -> list[dict]:
  """C2's *alone* part: its primary, sanity checks (matched branch losses; every tuned LR inside its grid) and the
  additivity secondaries."""
  t = analysis.test
  def mean(x):  # over the seeds that branched (NaN when none did: the check then fails)
    x = np.asarray(x, float)
    return float(np.mean(x[np.isfinite(x)])) if np.any(np.isfinite(x)) else float("nan")

  gap_loss = [abs(mean(bn_r["branch_loss"][i]) - mean(none_r["branch_loss"][i])) for i in range(len(bn_r["levels"]))]
  edges = tuned_inside(bn_r) + tuned_inside(none_r)
  levels = ", ".join(f"{v:g}" for v in bn_r["levels"])
  return [
      t(f"a hidden layer trained alone minus all layers together: loss drop over the loss at the branch point (each at its own "
        f"tuned LR, {bn_r['budget']} full-batch steps from matched losses {levels}), BN - none",
        alone_advantage(bn_r) - alone_advantage(none_r), "higher", role="primary", unit="of the loss", part="alone"),
      analysis.check("the nets branch at matched training loss: mean branch losses of BN and none within 0.1 at every level",
                     bool(np.all(np.asarray(gap_loss) <= 0.1)), "differences " + ", ".join(f"{g:.3f}" for g in gap_loss), part="alone"),
      analysis.check("every variant's tuned LR lies inside its grid (not its smallest or largest LR)", not edges,
                     "; ".join(edges) or f"grid {', '.join(f'{v:g}' for v in bn_r['lrs'])}", part="alone"),
      t("additivity gap 1 - together / sum of solo drops (every layer at its solo-tuned LR), BN - none: BN's layers "
        "interfere less", np.abs(additivity_gap(bn_r)) - np.abs(additivity_gap(none_r)), "lower", unit="|gap|"),
      t("\"each learns essentially by itself\" with BN: additivity gap within ±0.25 of 0", additivity_gap(bn_r), "equivalent",
        margin=0.25, unit="gap"),
      t("... without BN: additivity gap within ±0.25 of 0", additivity_gap(none_r), "equivalent", margin=0.25, unit="gap"),
  ]


def plot(results, _a, out) -> list[str]:
  m = results["ioffe"]
  plt = plotting.plt()
  fig, axes = plt.subplots(1, 3, figsize=(16, 4))
  for cond in ("bn", "none"):
    rows = analysis.probes_of(m[cond], LR)
    s, v = analysis.probe_series(rows, lambda r: r["coupling"]["relative_cross_fraction"])
    plotting.band(axes[0], s[1:], v[:, 1:], cond, plotting.COLORS[cond])
    s, v = analysis.probe_series(rows, lambda r: r["hessian"]["summary"])
    plotting.band(axes[1], s[1:], v[:, 1:], cond, plotting.COLORS[cond])
  axes[0].set(title="(a) cross-layer share, equal relative steps (primary)", xlabel="step")
  axes[1].set(title="(b) normalized Hessian blocks ||H_jk||/√(||H_jj|| ||H_kk||)", xlabel="step")
  for ax in axes[:2]:
    ax.legend()
  al = results.get("alone") or {}
  if al.get("bn") and al.get("none"):
    names = al["bn"]["results"]["variants"]
    for cond, off in (("bn", -0.15), ("none", 0.15)):
      r = al[cond]["results"]
      d = np.mean([solo_drops(r, lv) for lv in range(len(r["levels"]))], axis=0)  # (variants, seeds), mean over levels
      x = np.arange(len(names) + 1) + off
      vals = np.concatenate([d, np.mean(np.asarray(r["together"], float), axis=0)[None]])
      axes[2].bar(x, plotting.nanmean(vals, 1), 0.3, yerr=plotting.nanstd(vals, 1), color=plotting.COLORS[cond], label=cond)
    axes[2].set_xticks(range(len(names) + 1), [*names, "together"])
    axes[2].axhline(0, color="k", lw=0.5)
    axes[2].set(title="(c) loss drop from matched loss, each at its tuned LR", ylabel="loss drop (mean over levels)")
    axes[2].legend()
  return [plotting.save(fig, out, "c2_coupling.png")]


CLAIM = Claim(
    id="C2", order=2.0,
    title="BN decouples layers, so each learns faster on its own (the seed's claim 2)",
    predicts="the layers' steps interact less in the loss with BN; a layer trained alone achieves more of what all achieve together",
    parts=(Part("interact", says=f"the layers' steps interact less in the loss with BN (cross-layer share for equal relative "
                                 f"steps, Ioffe MLP, LR {LR:g})",
                primary="cross-layer share of the second-order loss change when every weight column takes the same relative step "
                        f"down its own gradient (invariant to BN's weight-scale symmetry), mean over probe points, BN − none < 0 "
                        f"(Ioffe MLP, LR {LR:g}, paired by seed)", kind="lower", unit="share"),
           Part("alone", says="a hidden layer trained alone gains more, against all layers trained together, than without BN "
                               "(from matched training loss, each at its own tuned LR)",
                primary="(loss drop of a hidden layer trained alone − the all-layer drop) / the loss at the branch point, each "
                        "variant at its own tuned LR, 10 full-batch gradient-descent steps from branch points at matched training "
                        "loss (1.0 and 0.6), mean over hidden layers and levels, BN − none > 0 (Ioffe MLP, paired by seed; sanity: "
                        "matched branch losses, every tuned LR inside its grid)", kind="higher", unit="of the loss")),
    paper="No published metric: this project's definitions. The claim predicts weaker interactions between layers with BN.",
    scope="*interact* covers the cross-layer share on the Ioffe MLP at one LR; *alone* covers the same MLP from two matched "
          "training losses, 10 full-batch steps per variant. \"Essentially by itself\" (the layers' solo gains add up when "
          "they train together) is a secondary test, not a part.",
    experiments=("ioffe", "alone"), analyze=analyze, plot=plot,
)
