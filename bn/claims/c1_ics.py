"""C1 -- BN reduces internal covariate shift (Ioffe & Szegedy 2015)."""

from __future__ import annotations

from bn import analysis, plotting
from bn.claims.base import Claim

EXPERIMENT = "mlp_probed"


def analyze(results) -> dict:
  m = results[EXPERIMENT]
  bn_, none = m["bn"], m["none"]
  return {"tests": [
      analysis.test("BN learns faster: mean test accuracy over training, BN - none", analysis.auc(bn_) - analysis.auc(none), "higher", unit="accuracy"),
      analysis.test("BN's last-hidden-layer inputs move less: shift |Δμ|/σ per probe interval, BN - none",
                    analysis.shift(bn_) - analysis.shift(none), "lower"),
  ]}


def plot(results, _analysis, out) -> list[str]:
  runs = results[EXPERIMENT]
  fig, axes = plotting.plt().subplots(1, 3, figsize=(15, 4))
  for cond in ("bn", "none", "noisy"):
    if cond in runs:
      s, v = analysis.curve(runs[cond]["metrics"], "test_accuracy")
      plotting.band(axes[0], s, v, cond, plotting.COLORS[cond])
  axes[0].set(title="(a) test accuracy vs steps", xlabel="step", ylabel="test accuracy")
  axes[0].legend()
  for ax, cond in zip(axes[1:], ("none", "bn")):
    layer = analysis.last_hidden(runs[cond])
    for i, p in enumerate((15, 50, 85)):
      s, v = analysis.probe_series(runs[cond]["probes"], lambda r, i=i: r["unit0"][layer][i])
      plotting.band(ax, s, v, f"{p}th pct", f"C{i}")
    ax.set(title=f"({'b' if cond == 'none' else 'c'}) {cond}: input of a last-hidden-layer sigmoid (unit 0)", xlabel="step")
    ax.legend()
  return [plotting.save(fig, out, "c1_ioffe_fig1.png")]


CLAIM = Claim(
    id="C1", order=1.0,
    title="BN reduces internal covariate shift (Ioffe & Szegedy 2015)",
    predicts="BN learns faster, and the inputs of its layers keep a stable distribution",
    paper="Ioffe & Szegedy (2015, Fig. 1, MNIST): BN reaches higher test accuracy sooner; the 15/50/85th percentiles of a "
          "last-layer sigmoid input drift without BN and stay put with BN.",
    experiments=(EXPERIMENT,), analyze=analyze, plot=plot,
)
