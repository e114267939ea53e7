"""C2 -- BN decouples layers (the seed's claim)."""

from __future__ import annotations

from bn import analysis, plotting
from bn.claims.base import Claim

EXPERIMENT = "mlp_probed"


def analyze(results) -> dict:
  m = results[EXPERIMENT]
  get = lambda r: r["coupling"]["summary"]  # noqa: E731
  cf = lambda r: r["coupling"]["cross_fraction"]  # noqa: E731
  bn_, none = m["bn"], m["none"]
  pm = analysis.probe_mean
  return {"tests": [
      analysis.test("layer coupling |I_jk| / (|ΔL_j|+|ΔL_k|), mean over training, BN - none", pm(bn_, get, True) - pm(none, get, True), "lower"),
      analysis.test("cross-layer share of the second-order loss change, BN - none", pm(bn_, cf, True) - pm(none, cf, True), "lower", counts=False),
  ]}


def plot(results, _analysis, out) -> list[str]:
  return [plotting.probe_curves(results[EXPERIMENT], out, "c2_coupling.png", "layer coupling over training",
                       [("coupling summary", lambda r: r["coupling"]["summary"]), ("cross-layer fraction", lambda r: r["coupling"]["cross_fraction"])])]


CLAIM = Claim(
    id="C2", order=2.0,
    title="BN decouples layers (the seed's claim)",
    predicts="the interaction of two layers' updates in the loss is smaller with BN",
    paper="No published metric: this project's definition. The claim predicts smaller interactions with BN.",
    experiments=(EXPERIMENT,), analyze=analyze, plot=plot,
)
