"""C4 -- BN makes the loss landscape smoother (Santurkar et al. 2018)."""

from __future__ import annotations

import numpy as np

from bn import analysis, plotting
from bn.claims.base import Claim

EXPERIMENT = "mlp_probed"
MEASURES = (("beta_smoothness", "effective β-smoothness"), ("grad_predictiveness", "gradient predictiveness (max ‖Δ∇L‖)"),
            ("loss_variation", "loss variation"))


def analyze(results) -> dict:
  m = results[EXPERIMENT]
  bn_, none = m["bn"], m["none"]
  out = []
  for key, label in MEASURES:
    g = lambda r, k=key: r["landscape"][k]  # noqa: E731
    out.append(analysis.test(f"log10 {label}, BN / none", np.log10(analysis.probe_mean(bn_, g)) - np.log10(analysis.probe_mean(none, g)),
                             "lower", unit="decades"))
  return {"tests": out}


def plot(results, _analysis, out) -> list[str]:
  return [plotting.probe_curves(results[EXPERIMENT], out, "c4_landscape.png", "loss landscape along the gradient (Santurkar Fig. 4)",
                       [(k, lambda r, k=k: r["landscape"][k]) for k in ("loss_variation", "grad_predictiveness", "beta_smoothness")])]


CLAIM = Claim(
    id="C4", order=4.0,
    title="BN makes the loss landscape smoother (Santurkar et al. 2018)",
    predicts="lower loss variation, gradient change and effective β-smoothness along the gradient with BN",
    paper="Santurkar et al. (2018, Fig. 4): with BN, loss variation, gradient predictiveness and effective β-smoothness are "
          "markedly lower, most of all early in training.",
    experiments=(EXPERIMENT,), analyze=analyze, plot=plot,
)
