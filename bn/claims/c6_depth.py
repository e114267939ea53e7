"""C6 -- deep BN MLPs without skips have exploding gradients at initialization (Yang et al. 2019).

What is tested, declared before the run (no training: one gradient per seed and depth):

* **Primary**: per seed, the least-squares slope over depth of log10(||grad of the first layer||
  / ||grad of the last hidden layer||), with BN: > 0 (gradients grow exponentially toward the input).
* Secondary: the slope with BN minus without.
"""

from __future__ import annotations

import math

import numpy as np

from bn import analysis, plotting
from bn.claims.base import Claim, Part

EXPERIMENT = "depth_init"


# ----------------------------------------------------------------------------- analysis


def depth_slopes(result: dict) -> np.ndarray:
  """Per seed: least-squares slope over depth of log10(||grad layer 0|| / ||grad last hidden layer||)."""
  depths = np.array([r["depth"] for r in result["depths"]], float)
  ratios = np.array([[math.log10(g[0] / g[-2]) for g in r["grad_norms"]] for r in result["depths"]])  # (D, seeds)
  if len(depths) < 2:
    return np.full(ratios.shape[1], np.nan)
  x = depths - depths.mean()
  return (x @ (ratios - ratios.mean(0))) / (x @ x)


def analyze(results) -> dict:
  r = results[EXPERIMENT]
  s_bn, s_none = depth_slopes(r["bn"]["results"]), depth_slopes(r["none"]["results"])
  rb = r["bn"]["results"]
  return {"tests": [
      analysis.test("gradients explode with depth under BN: slope of log10(‖g_first‖/‖g_last‖) per layer of depth, BN", s_bn, "higher",
                    role="primary", unit="decades/layer", part="explode"),
      analysis.test("more than without BN: slope BN - none", s_bn - s_none, "higher", unit="decades/layer"),
  ], "table": [
      ["setting", "mean-field theory of fully connected BN nets (no skips) at initialization",
       f"MLP width {rb['width']}, {rb['act']}, LeCun init, depths {[d['depth'] for d in rb['depths']]}, one batch of {rb['batch']} in training mode"],
      ["result", "gradient norms explode exponentially with depth", f"slope BN {_ci(s_bn)}, none {_ci(s_none)} decades per layer"],
  ]}


def _ci(v):
  from bn.claims._common import mean_ci_text

  return mean_ci_text(v)


def plot(results, _analysis, out) -> list[str]:
  fig, ax = plotting.plt().subplots(figsize=(6, 4))
  for cond in ("bn", "none"):
    r = results[EXPERIMENT][cond]["results"]
    depths = [d["depth"] for d in r["depths"]]
    ratio = np.array([[np.log10(g[0] / g[-2]) for g in d["grad_norms"]] for d in r["depths"]])
    ax.errorbar(depths, ratio.mean(1), yerr=ratio.std(1), marker="o", label=cond, color=plotting.COLORS[cond])
  ax.set(xlabel="depth (hidden layers)", ylabel="log10 ‖∇W_first‖ / ‖∇W_last‖", title="gradient growth at initialization")
  ax.legend()
  return [plotting.save(fig, out, "c6_depth.png")]


CLAIM = Claim(
    id="C6", order=6.0,
    title="Deep BN MLPs without skips have exploding gradients at initialization (Yang et al. 2019)",
    predicts="the first layer's gradient grows exponentially with depth relative to the last, with BN",
    paper="Yang et al. (2019): in fully-connected BN nets without skips, gradients explode exponentially with depth at init.",
    parts=(Part("explode", says="at initialization, the first layer's gradient grows with depth relative to the last in BN MLPs "
                                "without skips",
                primary="slope over depth of log10(‖∇W_first‖/‖∇W_last hidden‖) at initialization, BN, > 0 (per seed)",
                kind="higher", unit="decades/layer"),),
    source="Yang, Pennington, Rao, Sohl-Dickstein & Schoenholz 2019, arXiv 1902.08129",
    experiments=(EXPERIMENT,), analyze=analyze, plot=plot,
)
