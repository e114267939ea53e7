"""C1' -- the counter-claim: it is not covariate shift (Santurkar et al. 2018)."""

from __future__ import annotations

import numpy as np

from bn import analysis, plotting
from bn.claims.base import Claim

EXPERIMENT = "mlp_probed"


def gradient_ics(run) -> np.ndarray:
  """Mean over probe points and layers k >= 1 of ||G - G'|| / ||G||, per seed."""
  _, v = analysis.probe_series(run["probes"], lambda r: float(np.mean(r["grad_ics"]["rel"][1:])))
  return np.nanmean(v, axis=1)


def analyze(results) -> dict:
  m = results[EXPERIMENT]
  bn_, none, noisy = m["bn"], m["none"], m["noisy"]
  auc, shift = analysis.auc, analysis.shift
  return {"tests": [
      analysis.test("noisy BN trains about as well as BN: mean test accuracy, noisy - BN", auc(noisy) - auc(bn_), "equivalent", margin=0.02, unit="accuracy"),
      analysis.test("noisy BN trains better than no BN: mean test accuracy, noisy - none", auc(noisy) - auc(none), "higher", unit="accuracy"),
      analysis.test("the noise does destabilize layer inputs: shift |Δμ|/σ, noisy - BN", shift(noisy) - shift(bn_), "higher"),
      analysis.test("gradient ICS is not lower with BN: ||G-G'||/||G||, BN - none", gradient_ics(bn_) - gradient_ics(none), "not_lower"),
  ]}


def plot(results, _analysis, out) -> list[str]:
  runs = results[EXPERIMENT]
  fig, axes = plotting.plt().subplots(1, 2, figsize=(11, 4))
  for cond in ("bn", "none", "noisy"):
    layer = analysis.last_hidden(runs[cond])
    s, v = analysis.probe_series(runs[cond]["probes"], lambda r: r["shift"][layer]["mean"])
    plotting.band(axes[0], s, v, cond, plotting.COLORS[cond])
    layers = runs[cond]["probes"][0]["layers"]
    rel = np.array([[np.mean([r["grad_ics"]["rel"][k] for r in runs[cond]["probes"] if r["seed"] == seed]) for k in range(len(layers))]
                    for seed in sorted({r["seed"] for r in runs[cond]["probes"]})])
    axes[1].errorbar(np.arange(len(layers)) + {"bn": -0.1, "none": 0, "noisy": 0.1}[cond], rel.mean(0), yerr=rel.std(0), fmt="o",
                     label=cond, color=plotting.COLORS[cond])
  axes[0].set(title="layer-input shift |Δμ|/σ (last hidden layer)", xlabel="step", yscale="log")
  axes[0].legend()
  axes[1].set(title="gradient ICS ‖G−G′‖/‖G‖ by layer (mean over training)", xlabel="layer index", yscale="log")
  axes[1].legend()
  return [plotting.save(fig, out, "c1p_noisy_gradient_ics.png")]


CLAIM = Claim(
    id="C1'", order=1.5,
    title="It is not covariate shift (Santurkar et al. 2018)",
    predicts="noisy BN, with deliberately unstable layer inputs, trains about as well as BN; BN does not lower gradient ICS",
    paper="Santurkar et al. (2018): noisy BN trains about as well as BN and better than no BN (VGG/CIFAR-10, ≈83% with BN "
          "vs 80% without, secondary source); BN does not reduce gradient ICS (in a 25-layer deep linear net it increases it).",
    experiments=(EXPERIMENT,), analyze=analyze, plot=plot,
)
