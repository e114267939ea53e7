"""C3 -- BN's noisy batch statistics regularize a little, an effect that fades at large batch (the seed's claim 3).

The design separates the two noises that batch size changes (Hoffer et al. 2017; Summers &
Dinneen 2020): the *statistics* batch g (ghost BN) at a fixed total batch B holds SGD noise
fixed and varies only the batch-statistics noise. Every cell trains the same number of epochs
(not steps) on a fixed 2,000-image subset, with the LR scaled by sqrt(B/64), and is evaluated
after precise-BN recalibration (so small ghosts are not penalized by a biased running variance).

At a fixed number of epochs a net with noisier statistics also fits the training set more slowly,
which by itself lowers the final test loss of an overfitting net (early stopping in disguise). So
every comparison uses the test loss at each run's *early-stopping point*: the evaluation with the
lowest loss on a held-out validation split (1,000 training images not used for training), so the
regularizer is judged by the best generalization each net reaches, not by where it happens to be.

What is tested, declared before the run:

* **Primary**: early-stopped test loss with ghost batches of 8 minus with full-batch statistics
  (g = B), per seed averaged over B in {64, 256, 1024}: < 0 (the noise of small statistics
  batches regularizes).
* **Sanity**: the full-statistics nets overfit -- their final test loss exceeds their training
  loss (gap > 0, mean over B) -- so a regularizer has something to do.
* Secondary: the same per B, in test accuracy, for g = 32, and at the end of training instead of
  the early-stopping point; the seed's "fades at large batch", at a fixed total batch of 1024 (so
  that SGD noise and steps are the same): statistics over 64 examples regularize more than over
  512 (early-stopped test loss, ghost 64 - ghost 512 < 0); population BN (no noise, no gradient
  through the statistics) is worse than BN; population BN plus noise matched to ghost-8 statistics
  (Luo et al. 2019) is better than population BN -- the noise alone regularizes. (The noise has the
  exact law of a ghost-8-normalized value given that value; members of one group get independent
  noise, so the dependence between them is not reproduced.)
* Notes: how many runs stopped at their last evaluation (still improving: their early-stopped
  loss is an upper bound), and how many steps the largest-B cells train.
"""

from __future__ import annotations

import numpy as np

from bn import analysis, plotting
from bn.claims._common import factor, mean_ci_text
from bn.claims.base import Claim, Part

EXPERIMENT = "c3_grid"


def cells(runs) -> dict:
  """``{(B, kind, g): run}`` with kind in {"bn", "none", "population", "population_noise", "stopgrad", "frozen", "bn_long",
  "reference", "reference_noise", "wd", "dropout"} (g = statistics batch; for "reference_noise" the noise's batch, for
  "dropout" the rate)."""
  out = {}
  for name, r in runs.items():
    b, kind = factor(r, "train", "batch_size"), factor(r, "norm", "kind")
    if name.endswith("_long"):  # the fading cells, trained until they stop improving
      out[b, "bn_long", factor(r, "norm", "ghost_batch_size")] = r
    elif factor(r, "norm", "reference", default=0):  # full-batch BN over a fixed reference set, with or without matched noise
      noise = factor(r, "norm", "population_noise")
      out[b, "reference_noise" if noise else "reference", noise or b] = r
    elif factor(r, "model", "dropout", default=0.0):
      out[b, "dropout", factor(r, "model", "dropout", default=0.0)] = r
    elif tuple(factor(r, "sweep", "weight_decay", default=())):
      out[b, "wd", b] = r
    elif not factor(r, "norm", "stats_gradient") or not factor(r, "norm", "affine"):
      out[b, "stopgrad" if not factor(r, "norm", "stats_gradient") else "frozen", b] = r  # C7's rows
    elif kind in ("batch", "ghost"):
      out[b, "bn", factor(r, "norm", "ghost_batch_size") or b] = r
    elif kind == "population":
      noise = factor(r, "norm", "population_noise")
      out[b, "population_noise" if noise else "population", noise or b] = r
    else:
      out[b, kind, b] = r
  return out


def has(run, key: str) -> bool:
  """Whether the condition's evaluations recorded ``key`` (runs from before a metric existed lack it)."""
  return bool(run["metrics"]) and key in run["metrics"][0]


def final(run, key="test_loss"):
  """Per seed: the last evaluation of ``key``; a diverged run counts as chance (uniform guessing)."""
  loss, acc = analysis.chance(run)
  return analysis.last(run, key, diverged=acc if "accuracy" in key else loss)


def stopped(run, key="test_loss"):
  """Per seed: ``key`` at the evaluation with the lowest validation loss (early stopping without the
  test set); a run with no finite evaluation counts as chance."""
  loss, acc = analysis.chance(run)
  if not run["metrics"] or "val_loss" not in run["metrics"][0]:
    return final(run, key)
  return analysis.early_stopped(run, key, "val_loss", diverged=acc if "accuracy" in key else loss)


def gap(run):
  return final(run, "test_loss") - final(run, "train_loss")


def improving(runs, part: str) -> dict:
  """Sanity check of a part decided by early stopping: in each cell at most half of the seeds stop at their
  last evaluation (still improving there: it has not shown where it generalizes best) and at most half at
  their first (the best point may lie before it: censored)."""
  ends = {name: (stopped_at(r, -1), stopped_at(r, 0), len(r["summary"]["runs"])) for name, r in runs.items()}
  bad = {k: v for k, v in ends.items() if max(v[0], v[1]) > v[2] / 2}
  detail = ", ".join(f"{k}: {last} of {m} seeds stop at the last evaluation, {first} at the first" for k, (last, first, m) in ends.items())
  return analysis.check("the cells are not still improving at their last evaluation, nor best at their first (at most half "
                        "the seeds stop at either)", not bad, detail, part=part)


def analyze(results) -> dict:
  c = cells(results[EXPERIMENT])
  batches = sorted({b for b, k, _ in c if k == "bn"})
  small, large = batches[0], batches[-1]
  bn = lambda b, g: c[b, "bn", g]  # noqa: E731
  pooled = lambda f, g: np.mean([f(bn(b, min(g, b))) - f(bn(b, b)) for b in batches], axis=0)  # noqa: E731
  g0 = min(8, small)
  t = analysis.test
  tests = [
      t(f"early-stopped test loss at B = {small}: ghost {g0} - full-batch statistics (ghost {small})",
        stopped(bn(small, g0)) - stopped(bn(small, small)), "lower", role="primary", unit="nats", part="regularizes"),
      t(f"the full-statistics net overfits at B = {small}: final test - train loss", gap(bn(small, small)), "higher", role="sanity",
        unit="nats", part="regularizes"),
      improving({f"B = {small} ghost {g0}": bn(small, g0), f"B = {small} full statistics": bn(small, small)}, "regularizes"),
      t(f"early-stopped test accuracy at B = {small}, ghost {g0} - full-batch statistics",
        stopped(bn(small, g0), "test_accuracy") - stopped(bn(small, small), "test_accuracy"), "higher", unit="accuracy"),
      t(f"early-stopped test loss, ghost 8 - full-batch statistics, mean over B in {batches} (v2's primary; the large-B cells "
        "train few steps)", pooled(stopped, 8), "lower", unit="nats"),
      t("early-stopped test loss, ghost 32 - full-batch statistics, mean over B", pooled(stopped, 32), "lower", unit="nats"),
      t("final (not early-stopped) test loss, ghost 8 - full-batch statistics, mean over B", pooled(final, 8), "lower", unit="nats"),
      t("final train-test loss gap, ghost 8 - full-batch statistics, mean over B", pooled(gap, 8), "lower", unit="nats"),
  ]
  if has(bn(small, g0), "test_ece"):  # loss can move while accuracy does not: calibration too
    tests.append(t(f"early-stopped test calibration error (ECE, 15 bins) at B = {small}, ghost {g0} - full-batch statistics",
                   stopped(bn(small, g0), "test_ece") - stopped(bn(small, small), "test_ece"), "lower", unit="ECE"))
  tests += [t(f"early-stopped test loss at B = {b}: ghost 8 - ghost {b}", stopped(bn(b, min(8, b))) - stopped(bn(b, b)), "lower", unit="nats")
            for b in batches[1:]]
  if (large, "bn_long", 64) in c and (large, "bn_long", 512) in c:
    lo, hi = c[large, "bn_long", 64], c[large, "bn_long", 512]
    tests += [
        t(f"the effect fades from statistics batch 64 to 512 (B = {large}, {lo['summary']['steps']} steps): early-stopped test loss, "
          "ghost 64 - ghost 512", stopped(lo) - stopped(hi), "lower", role="primary", unit="nats", part="fades"),
        improving({f"B = {large} ghost 64": lo, f"B = {large} ghost 512": hi}, "fades"),
    ]
  tests += noise_alone_tests(c, small) + a_little_tests(c, small)
  untested = {part: why for part, why in (
      ("fades", "this run has no fading cells (ghost 64 and 512 at the largest total batch; the tiny mode trains none)"),
      ("noise_alone", "this run has no full-batch BN cells (the tiny mode trains none)"),
      ("a_little", "this run has no weight-decay or dropout cells (the tiny mode trains none)"),
  ) if not any(t.get("part") == part for t in tests)}
  none = lambda b: c[b, "none", b]  # noqa: E731
  d = {b: stopped(bn(b, b)) - stopped(none(b)) for b in batches}
  any_run = bn(small, small)
  table = [
      ["setting", "Hoffer et al.: MNIST/CIFAR, large batch with ghost 128; Keskar et al.: MNIST MLP batch 256 vs 10% of the data",
       f"MLP {factor(any_run, 'model', 'widths')} ReLU on {factor(any_run, 'data', 'train_size')} {factor(any_run, 'data', 'name')} images, "
       f"{factor(any_run, 'epochs') if 'epochs' in any_run['config']['config'] else '?'} epochs per cell, LR ∝ √B, precise-BN evaluation"],
      ["result", "ghost BN closes part of the large-batch generalization gap; Keskar: test 98.03±0.07 (small) vs 97.81±0.07 (large)",
       f"early-stopped test loss ghost 8 − full statistics (mean over B): {mean_ci_text(pooled(stopped, 8))}"],
      ["BN − none (descriptive)", "regularization weakens as the (statistics) batch grows (Luo et al. 2019)",
       "BN − none early-stopped test loss (descriptive; BN also optimizes faster, most at B = 1024's few steps): "
       + ", ".join(f"B={b}: {mean_ci_text(d[b])}" for b in batches)],
  ]
  return {"tests": tests, "table": table, "batches": batches, "notes": notes(c, batches) + population_notes(c, batches),
          "untested": untested}


def noise_alone_tests(c, b) -> list[dict]:
  """The noise alone: full-batch BN (statistics of a fixed reference set of training images, gradient through them, no
  lag) with and without the sampling noise of 8-example statistics on the batch's rows, at total batch ``b``."""
  if (b, "reference", b) not in c or (b, "reference_noise", 8) not in c:
    return []
  ref, noisy, full = c[b, "reference", b], c[b, "reference_noise", 8], c[b, "bn", b]
  n_ref = factor(ref, "norm", "reference")
  t = analysis.test
  fits = np.mean(final(ref, "train_loss")), np.mean(final(full, "train_loss"))
  return [
      t(f"early-stopped test loss at B = {b}: full-batch BN ({n_ref} reference images) plus ghost-8 noise - without it",
        stopped(noisy) - stopped(ref), "lower", role="primary", unit="nats", part="noise_alone"),
      analysis.check("the noise-free control trains: full-batch BN's final training loss is at most BN's (full-batch statistics "
                     "of the batch) + 0.05 nats", bool(fits[0] <= fits[1] + 0.05),
                     f"final training loss {fits[0]:.3f} (full-batch BN) vs {fits[1]:.3f} (BN)", part="noise_alone"),
      t(f"the noise-free control overfits at B = {b}: final test - train loss", gap(ref), "higher", role="sanity", unit="nats",
        part="noise_alone"),
      improving({f"B = {b} full-batch BN": ref, f"B = {b} full-batch BN + ghost-8 noise": noisy}, "noise_alone"),
      t(f"the noise acts: final training loss, full-batch BN plus ghost-8 noise - without it (B = {b})",
        final(noisy, "train_loss") - final(ref, "train_loss"), "higher", unit="nats"),
      t(f"early-stopped test accuracy at B = {b}: full-batch BN plus ghost-8 noise - without it",
        stopped(noisy, "test_accuracy") - stopped(ref, "test_accuracy"), "higher", unit="accuracy"),
      t(f"early-stopped test loss at B = {b}: full-batch BN - BN (the batch's own statistics: noise and all)",
        stopped(ref) - stopped(full), "not_lower", unit="nats"),
  ] + ([t(f"early-stopped test calibration error (ECE) at B = {b}: full-batch BN plus ghost-8 noise - without it",
          stopped(noisy, "test_ece") - stopped(ref, "test_ece"), "lower", unit="ECE")] if has(ref, "test_ece") else [])


def by_weight_decay(run) -> dict:
  """``{weight decay: run}``: a condition that swept weight decay, split into one run dict per value."""
  wds = sorted({r["weight_decay"] for r in run["metrics"]})
  return {wd: {**run, "metrics": [r for r in run["metrics"] if r["weight_decay"] == wd],
               "summary": {**run["summary"], "runs": [r for r in run["summary"]["runs"] if r.get("weight_decay", wd) == wd]}}
          for wd in wds}


def regularizers(c, b) -> dict:
  """``{label: run}``: the standard regularizers on BN with full-batch statistics at total batch ``b``."""
  out = {f"weight decay {wd:g}": r for wd, r in by_weight_decay(c[b, "wd", b]).items()} if (b, "wd", b) in c else {}
  out.update({f"dropout {p:g}": c[b, "dropout", p] for bb, kind, p in sorted(c, key=str) if bb == b and kind == "dropout"})
  return out


def a_little_tests(c, b) -> list[dict]:
  """"A little": ghost-8 noise against the best standard regularizer (weight decay or dropout on BN with full-batch statistics),
  the regularizer and its strength chosen on validation loss (each run's early-stopped validation loss, mean over seeds)."""
  regs = regularizers(c, b)
  if not regs or (b, "bn", 8) not in c:
    return []
  g8, full = c[b, "bn", 8], c[b, "bn", b]
  names = list(regs)
  val = np.array([stopped(regs[k], "val_loss") for k in names])
  test = np.array([stopped(regs[k]) for k in names])
  best = int(np.argmin(np.where(np.isfinite(val), val, np.inf).mean(axis=1)))
  lo, hi = analysis.selection_bootstrap([stopped(g8, "val_loss")], [stopped(g8)], val, test)
  means = ", ".join(f"{k}: {np.mean(v):.3f}" for k, v in zip(names, test))
  t = analysis.test
  return [
      t(f"early-stopped test loss at B = {b}: ghost 8 - the tuned standard regularizer ({names[best]}, chosen on validation "
        "loss among weight decay and dropout)", stopped(g8) - test[best], "higher", role="primary", unit="nats", part="a_little",
        note=f"interval with the choice redone in every bootstrap resample of seeds: [{lo:+.3g}, {hi:+.3g}]; mean early-stopped "
             f"test loss per regularizer: {means}"),
      t(f"the tuned regularizer regularizes: its early-stopped test loss - no regularizer (BN, B = {b}, full-batch statistics)",
        test[best] - stopped(full), "lower", role="sanity", unit="nats", part="a_little"),
      improving({f"B = {b} {names[best]}": regs[names[best]]}, "a_little"),
  ]


def population_notes(c, batches) -> list[str]:
  """Population BN's final training loss next to BN's, no BN's and BN without the gradient through its statistics (no lag):
  why population BN is no no-noise control (nothing leans on it; the noise-alone part uses full-batch BN instead)."""
  pop = [b for b in batches if (b, "population", b) in c]
  if not pop:
    return []
  f = lambda r: mean_ci_text(final(r, "train_loss"))  # noqa: E731
  out = ["final training loss, population BN / BN / no BN (a control that cannot fit is no control; nothing leans on it): "
         + "; ".join(f"B = {b}: {f(c[b, 'population', b])} / {f(c[b, 'bn', b])} / {f(c[b, 'none', b])}" for b in pop)]
  for b in (b for b in pop if (b, "stopgrad", b) in c):
    m = {k: float(np.mean(final(c[b, k, b], "train_loss"))) for k in ("stopgrad", "population", "bn")}
    near = abs(m["stopgrad"] - m["population"]) < abs(m["stopgrad"] - m["bn"])
    out.append(f"why population BN does not fit (B = {b}): BN without the gradient through its batch statistics (the batch's own "
               f"statistics, no lag) ends at a final training loss of {m['stopgrad']:.3f}, population BN at {m['population']:.3f}, "
               f"BN at {m['bn']:.3f}: " + ("closer to population BN's, so the missing gradient through the statistics (Ioffe & "
               "Szegedy 2015, §2), not the running statistics' lag, is what keeps it from fitting" if near else
               "closer to BN's, so the missing gradient does not explain it; the running statistics' lag may") +
               ". Full-batch BN (the statistics of a fixed reference set, gradient through them) is the noise-free control instead.")
  return out


def stopped_at(run, index: int) -> int:
  """How many seeds' early-stopping point is evaluation ``index`` (-1: the last -- the net was still improving;
  0: the first -- the best point may lie before it). 0 without a validation split."""
  if not run["metrics"] or "val_loss" not in run["metrics"][0]:
    return 0
  steps, sel = analysis.metric_table(run, "val_loss")
  sel = np.where(np.isfinite(sel), sel, np.inf)
  return int(np.sum(np.argmin(sel, axis=1) == index % sel.shape[1]))


def stopped_last(run) -> int:
  """How many seeds' early-stopping point is their last evaluation (the net was still improving)."""
  return stopped_at(run, -1)


def notes(c, batches) -> list[str]:
  out = []
  late = {k: stopped_last(r) for k, r in sorted(c.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])) if k[1] in ("bn", "none")}
  late = {k: n for k, n in late.items() if n}
  if late:
    out.append("stopped at the last evaluation (still improving, so the early-stopped loss is an upper bound): "
               + ", ".join(f"B = {b} {'BN ghost ' + str(g) if kind == 'bn' else 'no BN'}: {n} of {len(c[b, kind, g]['summary']['runs'])} seeds"
                           for (b, kind, g), n in late.items()))
  big = batches[-1]
  run = c[big, "bn", big]
  out.append(f"the B = {big} cells train {run['summary']['steps']} steps (same epochs as every cell): the B = {big} rows are "
             "descriptive; the fading part reads the longer cells.")
  return out


def plot(results, a, out) -> list[str]:
  c = cells(results[EXPERIMENT])
  batches = a["batches"]
  plt = plotting.plt()
  long = sorted(g for _, k, g in c if k == "bn_long")
  fig, axes = plt.subplots(1, 3 if long else 2, figsize=(16 if long else 11, 4))
  for i, b in enumerate(batches):
    gs = sorted(g for bb, k, g in c if bb == b and k == "bn")
    for ax, f, label in ((axes[0], stopped, "early-stopped test loss"), (axes[1], gap, "final test − train loss")):
      v = np.array([f(c[b, "bn", g]) for g in gs])
      ax.errorbar(gs, plotting.nanmean(v, 1), yerr=plotting.nanstd(v, 1), marker="o", color=f"C{i}", label=f"BN, B = {b}")
      ax.axhline(plotting.nanmean(f(c[b, "none", b])), ls="--", color=f"C{i}", lw=0.8, label=f"no BN, B = {b}")
      if (b, "population", b) in c:
        ax.axhline(plotting.nanmean(f(c[b, "population", b])), ls=":", color=f"C{i}", lw=0.8, label=f"population, B = {b}")
      ax.set(ylabel=label)
  if long:  # the fading part's cells: validation and test loss over training, ghost 64 vs 512
    big = max(b for b, k, _ in c if k == "bn_long")
    for j, g in enumerate(long):
      run = c[big, "bn_long", g]
      for key, style in (("val_loss", ":"), ("test_loss", "-")):
        steps, v = analysis.metric_table(run, key)
        plotting.band(axes[2], steps, v, f"ghost {g}, {key.split('_')[0]}", f"C{j + 3}", style=style)
    axes[2].set(title=f"(c) the fading part: B = {big}, ghost 64 vs 512", xlabel="step", ylabel="loss")
    axes[2].legend(fontsize=7)
  for ax in axes[:2]:
    plotting.size_axis(ax, sorted({g for _, k, g in c if k == "bn"}))
    ax.set(xlabel="statistics (ghost) batch g")
  axes[0].set_title("(a) test loss over the (B, g) grid (fixed epochs)")
  axes[1].set_title("(b) generalization gap")
  axes[1].legend(fontsize=6)
  return [plotting.save(fig, out, "c3_grid.png")]


REGULARIZES = Part(
    "regularizes", says="at the smallest total batch (64), statistics over 8 examples reach a lower early-stopped test loss "
                        "than full-batch statistics",
    primary="early-stopped test loss (stopping point chosen on validation data) at B = 64, ghost 8 − full-batch statistics, < 0 "
            "(precise-BN evaluation, paired by seed; sanity: the full-statistics net overfits and neither cell is still improving)",
    kind="lower", unit="nats")
FADES = Part(
    "fades", says="at total batch 1024, statistics over 64 examples reach a lower early-stopped test loss than statistics "
                  "over 512 (one pair of statistics batches)",
    primary="early-stopped test loss at B = 1024 after 200 epochs (quick), ghost 64 − ghost 512, < 0 (paired by seed; sanity: "
            "neither cell is still improving at its last evaluation nor best at its first)",
    kind="lower", unit="nats")
NOISE_ALONE = Part(
    "noise_alone", says="at total batch 64, simulated sampling noise of 8-example statistics (independent per value), added "
                        "alone to noise-free full-batch BN, lowers the early-stopped test loss",
    primary="early-stopped test loss at B = 64: full-batch BN (statistics of 512 fixed training images, gradient through them) "
            "plus the sampling noise of ghost-8 statistics (Luo et al. 2019's matched noise) − without it, < 0 (paired by seed; "
            "sanity: the noise-free control trains as well as BN, overfits, and neither cell is still improving)",
    kind="lower", unit="nats")
A_LITTLE = Part(
    "a_little", says="at total batch 64, a tuned standard regularizer (weight decay or dropout, chosen on validation loss) "
                     "reaches a lower early-stopped test loss than ghost-8 statistics do: the noise's regularization is the smaller",
    primary="early-stopped test loss at B = 64, ghost 8 − the tuned regularizer on BN with full-batch statistics (weight decay "
            "1e-4/1e-3/1e-2, dropout 0.1/0.3/0.5; the one with the lowest mean early-stopped validation loss), > 0 (paired by "
            "seed; sanity: the tuned regularizer lowers the test loss itself and is not still improving)",
    kind="higher", unit="nats")

CLAIM = Claim(
    id="C3", order=3.0,
    title="BN's noisy batch statistics regularize a little, an effect that fades at large batch (the seed's claim 3)",
    predicts="at a fixed total batch, smaller statistics batches reach a lower test loss; the effect fades from statistics batch 64 to 512",
    parts=(REGULARIZES, FADES, NOISE_ALONE, A_LITTLE),
    paper="Hoffer et al. (2017) and Luo et al. (2019): BN's regularization comes from batch-statistics noise and weakens as the "
          "(statistics) batch grows; Keskar et al. (2017, MNIST MLP): test 98.03±0.07 (batch 256) vs 97.81±0.07 (large batch).",
    source="Hoffer, Hubara & Soudry 2017, arXiv 1705.08741; Luo et al. 2019, arXiv 1809.00846",
    scope="*regularizes*, *noise alone* and *a little* cover total batch 64 on one 2,000-image training subset (20 epochs, "
          "the early-stopping point chosen on 1,000 held-out images); the other batch sizes are secondary rows. *fades* covers "
          "statistics batches 64 vs 512 at total batch 1024, trained 200 epochs. Not covered: other training subsets, larger "
          "training sets, the noise alone at other batch sizes (calibration error is a secondary row); population BN (running statistics in "
          "training) does not fit the training set here and is only described.",
    experiments=(EXPERIMENT,), analyze=analyze, plot=plot,
)
