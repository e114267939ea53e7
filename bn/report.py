"""``bn report DIR``: the claims report (report.md, claims.json, PNG plots) from the JSON files of ``bn reproduce``.

Nothing here trains or reads anything but the files runs wrote; ``bn report``
rebuilds the report of a finished (or partial) run without training.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from bn import analysis, artifacts, stats

PAPER = {
    "C1": "Ioffe & Szegedy (2015, Fig. 1, MNIST): BN reaches higher test accuracy sooner; the 15/50/85th percentiles of a "
          "last-layer sigmoid input drift without BN and stay put with BN.",
    "C1'": "Santurkar et al. (2018): noisy BN trains about as well as BN and better than no BN (VGG/CIFAR-10, ≈83% with BN "
           "vs 80% without, secondary source); BN does not reduce gradient ICS (in a 25-layer deep linear net it increases it).",
    "C2": "No published metric: this project's definition (EXPERIMENTS.md C2). The claim predicts smaller interactions with BN.",
    "C2'": "Bjorck et al. (2018): BN's main benefit is allowing much larger learning rates; without BN large steps diverge.",
    "C3": "Hoffer et al. (2017) and Luo et al. (2019): BN's regularization comes from batch-statistics noise and weakens as the "
          "(statistics) batch grows; Keskar et al. (2017, MNIST MLP) saw test 98.03±0.07 (batch 256) vs 97.81±0.07 (large batch).",
    "C4": "Santurkar et al. (2018, Fig. 4): with BN, loss variation, gradient predictiveness and effective β-smoothness are "
          "markedly lower, most of all early in training.",
    "C5": "Wu & He (2018, Table 2, ResNet-50 ImageNet top-1 error): BN 23.6 (32/GPU), 27.3 (4), 34.7 (2); GN ≈ 24.1 at every "
          "size; Batch Renorm 26.3 at 4 (Ioffe 2017).",
    "C6": "Yang et al. (2019): in fully-connected BN nets without skips, gradients explode exponentially with depth at init.",
}

COLORS = {"bn": "C0", "none": "C3", "noisy": "C2", "group": "C4", "layer": "C5", "renorm": "C1", "population": "C6"}


def _quietly(f):
  """``f`` with numpy's RuntimeWarnings silenced: all-NaN slices (every run of a condition
  diverged) give NaN, which the plots and tables show as missing."""
  def g(*args, **kw):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      return f(*args, **kw)
  return g


_nanmean, _nanstd = _quietly(np.nanmean), _quietly(np.nanstd)


def _size_axis(ax, sizes):
  """A log2 x-axis labelled with exactly the batch sizes used (no overlapping minor labels)."""
  ax.set_xscale("log", base=2)
  ax.set_xticks(list(sizes), [str(x) for x in sizes])
  ax.minorticks_off()


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _band(ax, steps, vals, label, color, log: bool = False):
  """Mean over seeds with its 95% t-interval; ``log``: geometric mean and interval in log10
  space (for positive quantities drawn on a log axis, where a linear CI can cross 0)."""
  if vals.size == 0:
    return
  if log:
    with np.errstate(divide="ignore", invalid="ignore"):
      vals = np.log10(np.where(vals > 0, vals, np.nan))
  back = (lambda t: 10.0 ** t) if log else (lambda t: t)
  mean = _nanmean(vals, axis=0)
  ax.plot(steps, back(mean), label=label, color=color)
  if vals.shape[0] >= 2 and np.all(np.isfinite(vals)):
    _, lo, hi = stats.mean_ci(vals, axis=0)
    ax.fill_between(steps, back(lo), back(hi), color=color, alpha=0.2)


def _save(fig, out: Path, name: str) -> str:
  fig.tight_layout()
  fig.savefig(out / name, dpi=90)
  _plt().close(fig)
  return name


# ----------------------------------------------------------------------------- plots


def plot_c1(runs, out):
  plt = _plt()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for cond in ("bn", "none", "noisy"):
    if cond in runs:
      s, v = analysis.curve(runs[cond]["metrics"], "test_accuracy")
      _band(axes[0], s, v, cond, COLORS[cond])
  axes[0].set(title="(a) test accuracy vs steps", xlabel="step", ylabel="test accuracy")
  axes[0].legend()
  for ax, cond in zip(axes[1:], ("none", "bn")):
    layer = analysis._last_hidden(runs[cond])
    for i, p in enumerate((15, 50, 85)):
      s, v = analysis.probe_series(runs[cond]["probes"], lambda r, i=i: r["unit0"][layer][i])
      _band(ax, s, v, f"{p}th pct", f"C{i}")
    ax.set(title=f"({'b' if cond == 'none' else 'c'}) {cond}: input of a last-hidden-layer sigmoid (unit 0)", xlabel="step")
    ax.legend()
  return _save(fig, out, "c1_ioffe_fig1.png")


def plot_c1_prime(runs, out):
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for cond in ("bn", "none", "noisy"):
    layer = analysis._last_hidden(runs[cond])
    s, v = analysis.probe_series(runs[cond]["probes"], lambda r: r["shift"][layer]["mean"])
    _band(axes[0], s, v, cond, COLORS[cond])
    layers = runs[cond]["probes"][0]["layers"]
    _, g = analysis.probe_series(runs[cond]["probes"], lambda r: 0.0)
    rel = np.array([[np.mean([r["grad_ics"]["rel"][k] for r in runs[cond]["probes"] if r["seed"] == seed]) for k in range(len(layers))]
                    for seed in sorted({r["seed"] for r in runs[cond]["probes"]})])
    axes[1].errorbar(np.arange(len(layers)) + {"bn": -0.1, "none": 0, "noisy": 0.1}[cond], rel.mean(0), yerr=rel.std(0), fmt="o", label=cond, color=COLORS[cond])
  axes[0].set(title="layer-input shift |Δμ|/σ (last hidden layer)", xlabel="step", yscale="log")
  axes[0].legend()
  axes[1].set(title="gradient ICS ‖G−G′‖/‖G‖ by layer (mean over training)", xlabel="layer index", yscale="log")
  axes[1].legend()
  return _save(fig, out, "c1p_noisy_gradient_ics.png")


def plot_probe_curves(runs, out, name, title, getters):
  plt = _plt()
  fig, axes = plt.subplots(1, len(getters), figsize=(5 * len(getters), 4))
  axes = np.atleast_1d(axes)
  for ax, (label, get) in zip(axes, getters):
    for cond in ("bn", "none"):
      s, v = analysis.probe_series(runs[cond]["probes"], get)
      _band(ax, s, v, cond, COLORS[cond], log=True)
    ax.set(title=label + " (geometric mean, 95% CI)", xlabel="step", yscale="log")
    ax.legend()
  fig.suptitle(title)
  return _save(fig, out, name)


def plot_lr_sweep(runs, out):
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  for cond in ("bn", "none"):
    rs = runs[cond]["summary"]["runs"]
    lrs = sorted({r["lr"] for r in rs})
    acc = np.array([[np.nan if r["diverged"] else r["train_accuracy"] for r in rs if r["lr"] == lr] for lr in lrs])
    ax.errorbar(lrs, _nanmean(acc, 1), yerr=_nanstd(acc, 1), marker="o", label=cond, color=COLORS[cond])
    for lr, row in zip(lrs, acc):
      if np.all(np.isnan(row)):
        ax.plot([lr], [0.05], "x", color=COLORS[cond], markersize=10)
  ax.set(xscale="log", xlabel="learning rate", ylabel="final train-subset accuracy", title="LR sweep (× = diverged)")
  ax.legend()
  return _save(fig, out, "c2_lr_sweep.png")


def plot_c3(gap_runs, ghost_runs, out, batches, ghosts):
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for kind, label in (("bn", "BN"), ("none", "no BN")):
    g = np.array([analysis._gap(gap_runs[f"{kind}_b{b}"]) for b in batches])
    axes[0].errorbar(batches, _nanmean(g, 1), yerr=_nanstd(g, 1), marker="o", label=label, color=COLORS[kind])
  _size_axis(axes[0], batches)
  axes[0].set(xlabel="batch size", ylabel="test loss − train loss", title="generalization gap vs batch size")
  axes[0].legend()
  g = np.array([analysis._gap(ghost_runs[f"ghost{x}"]) for x in ghosts])
  axes[1].errorbar(ghosts, _nanmean(g, 1), yerr=_nanstd(g, 1), marker="o", label="ghost BN", color=COLORS["bn"])
  for cond in ("population", "none"):
    v = analysis._gap(ghost_runs[cond])
    axes[1].axhline(_nanmean(v), ls="--", color=COLORS[cond], label=f"{cond} (batch {ghosts[-1]})")
  _size_axis(axes[1], ghosts)
  axes[1].set(xlabel=f"statistics (ghost) batch, total batch {ghosts[-1]}", ylabel="test loss − train loss", title="gap vs ghost batch size")
  axes[1].legend()
  return _save(fig, out, "c3_gap.png")


def plot_c5(runs, out, ghosts):
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  acc = lambda k: analysis.per_seed(runs[k]["summary"], "test_accuracy")
  v = np.array([acc(f"bn_g{g}") for g in ghosts])
  ax.errorbar(ghosts, _nanmean(v, 1), yerr=_nanstd(v, 1), marker="o", label="BN", color=COLORS["bn"])
  rg = sorted(int(k[len("renorm_g"):]) for k in runs if k.startswith("renorm_g"))
  v = np.array([acc(f"renorm_g{g}") for g in rg])
  ax.errorbar(rg, _nanmean(v, 1), yerr=_nanstd(v, 1), marker="s", label="Batch Renorm", color=COLORS["renorm"])
  for cond, label in (("group", "GroupNorm"), ("layer", "LayerNorm")):
    ax.axhline(_nanmean(acc(cond)), ls="--", color=COLORS[cond], label=label)
  _size_axis(ax, ghosts)
  ax.set(xlabel="statistics batch (ghost size)", ylabel="test accuracy", title="accuracy vs statistics batch")
  ax.legend()
  return _save(fig, out, "c5_small_batch.png")


def plot_c6(results, out):
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  for cond in ("bn", "none"):
    r = results[cond]
    depths = [d["depth"] for d in r["depths"]]
    ratio = np.array([[np.log10(g[0] / g[-2]) for g in d["grad_norms"]] for d in r["depths"]])
    ax.errorbar(depths, ratio.mean(1), yerr=ratio.std(1), marker="o", label=cond, color=COLORS[cond])
  ax.set(xlabel="depth (hidden layers)", ylabel="log10 ‖∇W_first‖ / ‖∇W_last‖", title="gradient growth at initialization")
  ax.legend()
  return _save(fig, out, "c6_depth.png")


# ----------------------------------------------------------------------------- assembling


def _fmt(t: dict) -> str:
  if not np.isfinite(t["mean"]):
    return "n/a"
  ci = f" [{t['lo']:+.3g}, {t['hi']:+.3g}]" if np.isfinite(t["lo"]) else ""
  return f"{t['mean']:+.3g}{ci}"


def _settings(runs: dict) -> str:
  lines = []
  for cond, r in sorted(runs.items()):
    if not r or "summary" not in r:
      continue
    c, s = r["config"]["config"], r["summary"]
    o = c["optimizer"]
    lrs = sorted({x["lr"] for x in s["runs"]})
    lines.append(f"| {cond} | {c['data']['name']} ({c['data']['source']}{', ' + str(c['data']['train_size']) + ' train' if c['data'].get('train_size') else ''}) | "
                 f"{c['model']['name']} {c['norm']['kind']} | {s['steps']} × {c['train']['batch_size']} | {len({x['seed'] for x in s['runs']})} | "
                 f"{o['name']} lr {', '.join(f'{x:g}' for x in lrs)} | {s['wall_time_s']:.0f}+{s['compile_time_s']:.0f} s |")
  head = "| condition | data | model / norm | steps × batch | seeds | optimizer | wall (+compile) |\n|---|---|---|---|---|---|---|\n"
  return head + "\n".join(lines) if lines else ""


def _load_experiment(out: Path, name: str) -> dict:
  d = out / name
  if not d.is_dir():
    return {}
  return {p.name: analysis.load_runs(p) for p in sorted(d.iterdir()) if p.is_dir()}


def build(out) -> Path:
  """Writes ``out/report.md``, ``out/claims.json`` and the plots; returns the report's path."""
  out = Path(out)
  claims, sections = [], []
  exp = {n: _load_experiment(out, n) for n in ("mlp_probed", "lr_sweep", "batch_gap", "ghost", "small_batch")}
  depth = {}
  for cond in ("bn", "none"):
    p = out / "depth_init" / cond / "results.json"
    if p.exists():
      depth[cond] = artifacts.read_json(p)

  def ready(runs, needed):
    return all(runs.get(k) for k in needed)

  def add(claim, plots, runs):
    claim["verdict"] = analysis.verdict(claim["tests"])
    claims.append(claim)
    sections.append((claim, plots, runs))

  m = exp["mlp_probed"]
  if ready(m, ("bn", "none")):
    add(analysis.c1(m), [plot_c1(m, out)], m)
  if ready(m, ("bn", "none", "noisy")):
    add(analysis.c1_prime(m), [plot_c1_prime(m, out)], m)
  if ready(m, ("bn", "none")):
    add(analysis.c2(m), [plot_probe_curves(m, out, "c2_coupling.png", "layer coupling over training",
                                           [("coupling summary", lambda r: r["coupling"]["summary"]), ("cross-layer fraction", lambda r: r["coupling"]["cross_fraction"])])], m)
  if ready(exp["lr_sweep"], ("bn", "none")):
    add(analysis.c2_prime(exp["lr_sweep"]), [plot_lr_sweep(exp["lr_sweep"], out)], exp["lr_sweep"])
  g, gh = exp["batch_gap"], exp["ghost"]
  if g and gh and all(g.values()) and all(gh.values()):
    claim = analysis.c3(g, gh)
    add(claim, [plot_c3(g, gh, out, claim["batches"], claim["ghosts"])], {**g, **gh})
  if ready(m, ("bn", "none")):
    add(analysis.c4(m), [plot_probe_curves(m, out, "c4_landscape.png", "loss landscape along the gradient (Santurkar Fig. 4)",
                                           [(k, lambda r, k=k: r["landscape"][k]) for k in ("loss_variation", "grad_predictiveness", "beta_smoothness")])], m)
  sb = exp["small_batch"]
  if sb and all(sb.values()):
    claim = analysis.c5(sb)
    add(claim, [plot_c5(sb, out, claim["ghosts"])], sb)
  if set(depth) == {"bn", "none"}:
    add(analysis.c6(depth), [plot_c6(depth, out)], {})

  artifacts.write_json(out / "claims.json", {"rule": analysis.RULE, "claims": claims})
  path = out / "report.md"
  artifacts.atomic_write_text(path, render(out, claims, sections, depth))
  return path


def render(out: Path, claims, sections, depth) -> str:
  timings = artifacts.read_json(out / "timings.json") if (out / "timings.json").exists() else {}
  lines = ["# Why does Batch Normalization work? — the claims ledger", "",
           f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `bn report` from the JSON files in `{out}`"
           + (f" (mode: {timings.get('mode')})" if timings else "") + ".", "",
           "| claim | what it predicts | what was measured (mean of per-seed paired difference [95% CI]) | verdict |",
           "|---|---|---|---|"]
  for c in claims:
    measured = "<br>".join(f"{t['name']}: {_fmt(t)} ({t['outcome']}{'' if t['counts'] else ', not counted'})" for t in c["tests"])
    lines.append(f"| **{c['id']}** {c['claim']} | {c['predicts']} | {measured} | **{c['verdict']}** |")
  missing = {"C1", "C1'", "C2", "C2'", "C3", "C4", "C5", "C6"} - {c["id"] for c in claims}
  if missing:
    lines += ["", f"Not run yet (no finished workdirs): {', '.join(sorted(missing))}."]
  lines += ["", f"**Verdict rule.** {analysis.RULE}", ""]
  for claim, plots, runs in sections:
    lines += [f"## {claim['id']} — {claim['claim']}", "", f"*Prediction:* {claim['predicts']}. *Verdict:* **{claim['verdict']}**.", "",
              "| test | predicted | mean [95% CI] | per seed | outcome |", "|---|---|---|---|---|"]
    for t in claim["tests"]:
      seeds = ", ".join("nan" if not np.isfinite(v) else f"{v:.3g}" for v in t["per_seed"])
      lines.append(f"| {t['name']}{' (not counted)' if not t['counts'] else ''} | {t['predicted']} | {_fmt(t)} {t['unit']} | {seeds} | {t['outcome']} |")
    if claim.get("caveat"):
      lines += ["", f"*Design caveat:* {claim['caveat']}"]
    lines += [""] + [f"![{claim['id']}]({p})" for p in plots] + [""]
    if runs:
      lines += ["Settings:", "", _settings(runs), ""]
    elif claim["id"] == "C6" and depth:
      r = depth["bn"]
      lines += [f"Settings: MLP width {r['width']}, {r['act']}, batch {r['batch']}, depths {[d['depth'] for d in r['depths']]}, seeds {r['seeds']}.", ""]
    agree = {"supported": "agrees with", "contradicted": "disagrees with", "inconclusive": "neither confirms nor refutes"}[claim["verdict"]]
    lines += [f"*The paper:* {PAPER[claim['id']]} This run {agree} that prediction on the measures above "
              "(a CPU-scale analog, not the paper's setting).", ""]
  if timings:
    t = timings.get("last_invocation_s", {})
    lines += ["## Timing", "", "Wall time of the last `bn reproduce` invocation by experiment (a resumed run counts only the part it did): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()) + ".", ""]
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="bn report", description="Rebuild DIR/report.md, DIR/claims.json and plots from the JSON files of `bn reproduce --out DIR` (no training).")
  p.add_argument("dir")
  a = p.parse_args(argv)
  if not Path(a.dir).is_dir():
    print(f"bn report: {a.dir} is not a directory; give the --out directory of `bn reproduce`.", file=sys.stderr)
    return 2
  print(build(a.dir))
  return 0
