"""C2' -- BN's main benefit is that it permits larger learning rates (Bjorck et al. 2018)."""

from __future__ import annotations

import math

import numpy as np

from bn import analysis, plotting
from bn.claims.base import Claim

EXPERIMENT = "lr_sweep"


def largest_stable_lr(summary: dict, threshold: float = 0.5) -> np.ndarray:
  """Per seed: log10 of the largest swept LR that neither diverged nor ended below ``threshold`` train accuracy."""
  seeds = sorted({r["seed"] for r in summary["runs"]})
  out = []
  for s in seeds:
    ok = [r["lr"] for r in summary["runs"] if r["seed"] == s and not r["diverged"] and (r["train_accuracy"] or 0) > threshold]
    out.append(math.log10(max(ok)) if ok else np.nan)
  return np.array(out)


def analyze(results) -> dict:
  r = results[EXPERIMENT]
  bn_, none = r["bn"]["summary"], r["none"]["summary"]
  return {"tests": [analysis.test("log10 largest stable LR, BN - none", largest_stable_lr(bn_) - largest_stable_lr(none), "higher", unit="decades")]}


def plot(results, _analysis, out) -> list[str]:
  runs = results[EXPERIMENT]
  fig, ax = plotting.plt().subplots(figsize=(6, 4))
  for cond in ("bn", "none"):
    rs = runs[cond]["summary"]["runs"]
    lrs = sorted({r["lr"] for r in rs})
    acc = np.array([[np.nan if r["diverged"] else r["train_accuracy"] for r in rs if r["lr"] == lr] for lr in lrs])
    ax.errorbar(lrs, plotting.nanmean(acc, 1), yerr=plotting.nanstd(acc, 1), marker="o", label=cond, color=plotting.COLORS[cond])
    for lr, row in zip(lrs, acc):
      if np.all(np.isnan(row)):
        ax.plot([lr], [0.05], "x", color=plotting.COLORS[cond], markersize=10)
  ax.set(xscale="log", xlabel="learning rate", ylabel="final train-subset accuracy", title="LR sweep (× = diverged)")
  ax.legend()
  return [plotting.save(fig, out, "c2_lr_sweep.png")]


CLAIM = Claim(
    id="C2'", order=2.5,
    title="BN's main benefit is that it permits larger learning rates (Bjorck et al. 2018)",
    predicts="the largest stable learning rate is larger with BN",
    paper="Bjorck et al. (2018): BN's main benefit is allowing much larger learning rates; without BN large steps diverge.",
    experiments=(EXPERIMENT,), analyze=analyze, plot=plot,
)
