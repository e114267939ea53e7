"""C4 -- BN makes the loss landscape smoother (Santurkar et al. 2018, §3).

Santurkar et al. move along the gradient by steps of 0.5-4x the LR and record the range of the
loss, the largest change of the gradient ("gradient predictiveness") and that change over the
distance moved ("effective beta-smoothness"). Those raw quantities are not invariant to BN's
weight-scale symmetry: for a layer followed by BN, ``W -> cW`` leaves the function unchanged but
scales its gradient by 1/c and its curvature by 1/c^2, so a BN net whose weights grew looks
smoother at the same nominal step (van Laarhoven 2017).

What is tested, declared before the run (Ioffe MLP, LR 0.5, paired by seed):

* **Primary**: the effective beta-smoothness in *relative units* -- every weight matrix moves by
  the same fraction of its norm along its own gradient, gradient changes are measured in units of
  1/||W_k|| -- log10 BN/none < 0, averaged over the probe points after step 0. Invariant to the
  symmetry (tested: multiplying a BN layer's weights by 10 leaves it unchanged).
* Secondary: the paper's raw measures (beta-smoothness, gradient predictiveness, loss variation);
  the relative-units loss variation and gradient predictiveness; early and late in training;
  the growth of the BN layers' weight norms and their effective LR.
"""

from __future__ import annotations

import numpy as np

from bn import analysis, plotting
from bn.claims._common import mean_ci_text
from bn.claims.base import Claim, Part

LR = 0.5


def measure(rows, block: str, key: str, window=None) -> np.ndarray:
  """Per seed: mean over probe points (after step 0, in ``window``) of log10 ``row[block][key]``."""
  rows = analysis.probe_window(rows, window, skip_first=True)
  return analysis.per_point(rows, lambda r: float(np.log10(max(r[block][key], 1e-30))))


def analyze(results) -> dict:
  m = results["ioffe"]
  rows = {k: analysis.probes_of(m[k], LR) for k in ("bn", "none")}
  d = lambda block, key, window=None: measure(rows["bn"], block, key, window) - measure(rows["none"], block, key, window)  # noqa: E731
  t = analysis.test
  tests = [
      t("effective β-smoothness in relative units, log10 BN / none", d("landscape_rel", "beta_smoothness"), "lower", role="primary", unit="decades",
        part="smoother"),
      t("... first half of training", d("landscape_rel", "beta_smoothness", (0, 0.5)), "lower", unit="decades"),
      t("... second half of training", d("landscape_rel", "beta_smoothness", (0.5, 1)), "lower", unit="decades"),
      t("relative-units loss variation, log10 BN / none", d("landscape_rel", "loss_variation"), "lower", unit="decades"),
      t("relative-units gradient predictiveness, log10 BN / none", d("landscape_rel", "grad_predictiveness"), "lower", unit="decades"),
      t("the paper's effective β-smoothness (raw steps 0.5-4 × LR), log10 BN / none", d("landscape", "beta_smoothness"), "lower", unit="decades"),
      t("the paper's gradient predictiveness, log10 BN / none", d("landscape", "grad_predictiveness"), "lower", unit="decades"),
      t("the paper's loss variation, log10 BN / none", d("landscape", "loss_variation"), "lower", unit="decades"),
  ]
  growth = {k: analysis.per_point(analysis.probe_window(rows[k], (1, 1)), lambda r: float(np.mean(r["norms"]["weight"][:-1])))
            / analysis.per_point(analysis.probe_window(rows[k], (0, 0)), lambda r: float(np.mean(r["norms"]["weight"][:-1]))) for k in rows}
  table = [
      ["setting", "VGG on CIFAR-10 (and deep linear nets), steps 0.5-4 × LR along the gradient",
       f"Ioffe MLP on {m['bn']['config']['config']['data']['name']}, LR {LR:g}, steps 0.5-4 × LR (raw) and 0.5-4 × ρ relative (ρ = {m['bn']['config']['config']['probes']['rho']:g})"],
      ["result", "BN markedly smoother (lower loss variation, gradient change, β), most of all early",
       f"log10 β BN/none: relative {mean_ci_text(d('landscape_rel', 'beta_smoothness'))}, raw {mean_ci_text(d('landscape', 'beta_smoothness'))}"],
      ["weight growth", "(not measured there) without weight decay ||W|| grows, lowering BN's effective step",
       f"hidden-layer ||W|| end/start: BN {mean_ci_text(growth['bn'])}, none {mean_ci_text(growth['none'])}"],
  ]
  return {"tests": tests, "table": table}


def plot(results, _a, out) -> list[str]:
  m = results["ioffe"]
  runs = {k: {"probes": analysis.probe_window(analysis.probes_of(m[k], LR), None, skip_first=True)} for k in ("bn", "none")}
  getters = [("relative β-smoothness", lambda r: r["landscape_rel"]["beta_smoothness"]),
             ("raw β-smoothness (paper)", lambda r: r["landscape"]["beta_smoothness"]),
             ("raw loss variation (paper)", lambda r: r["landscape"]["loss_variation"]),
             ("effective LR lr/||W||², hidden layers", lambda r: float(np.mean(r["norms"]["effective_lr"][:-1])))]
  return [plotting.probe_curves(runs, out, "c4_landscape.png", f"loss landscape along the gradient (Ioffe MLP, LR {LR:g})", getters)]


CLAIM = Claim(
    id="C4", order=4.0,
    title="BN makes the loss landscape smoother (Santurkar et al. 2018)",
    predicts="lower effective β-smoothness along the gradient with BN, in units BN's weight-scale symmetry cannot change",
    parts=(Part("smoother", says=f"BN lowers the effective β-smoothness along the gradient, in units BN's weight-scale symmetry "
                                 f"cannot change (Ioffe MLP, LR {LR:g})",
                primary=f"log10 effective β-smoothness in relative units, BN / none, mean over probe points < 0 (Ioffe MLP, LR {LR:g}, "
                        "paired by seed)", kind="lower", unit="decades"),),
    paper="Santurkar et al. (2018, Fig. 4): with BN, loss variation, gradient predictiveness and effective β-smoothness are "
          "markedly lower, most of all early in training.",
    source="Santurkar, Tsipras, Ilyas & Madry 2018, arXiv 1805.11604, §3",
    experiments=("ioffe",), analyze=analyze, plot=plot,
)
