"""The claims report (report.md, claims.json, PNG plots) from the JSON files of a ledger run.

Nothing here trains or reads anything but the files runs wrote; ``bn report DIR``
rebuilds the report of a finished (or partial) ledger without training. Every claim
of the registry (:mod:`bn.claims`) whose experiments finished gets its tests, its
verdict, its plots and its section.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bn import analysis, artifacts, claims as bn_claims
from bn.errors import UsageError

MANIFEST = "ledger.json"


def load_experiment(out: Path, name: str, conditions=None) -> dict:
  """``{condition: loaded or None}`` of one experiment (None: not finished). ``conditions``
  defaults to the subdirectories present."""
  d = out / name
  if conditions is None:
    conditions = sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
  return {c: analysis.load_condition(d / c) for c in conditions}


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


def _measured_settings(runs: dict) -> str:
  lines = []
  for cond, r in sorted(runs.items()):
    if r and "results" in r:
      c = r["config"]["config"]
      lines.append(f"- {cond}: {c['data']['name']}, {c['model']['name']} {c['model'].get('widths')} {c['model'].get('act')}, "
                   f"norm {c['norm']['kind']}, seeds {c['seeds']}")
  return "\n".join(lines)


def read_manifest(out: Path) -> dict:
  """The ledger manifest ``OUT/ledger.json`` (mode, experiments and their conditions)."""
  path = out / MANIFEST
  if not path.exists():
    what = " but a `bn train` workdir" if (out / "config.json").exists() or (out / "summary.json").exists() else ""
    raise UsageError(f"{out} is not the output directory of `bn reproduce`{what} (it has no {MANIFEST}); "
                     "give the --out directory of a ledger run.")
  return artifacts.read_json(path)


def build(out) -> Path:
  """Writes ``out/report.md``, ``out/claims.json`` and the plots; returns the report's path."""
  out = Path(out)
  manifest = read_manifest(out)
  planned = manifest["experiments"]
  loaded: dict[str, dict] = {}
  claims, sections, missing = [], [], []
  for claim in bn_claims.all_claims():
    if not all(e in planned for e in claim.experiments):
      continue  # not part of this ledger run (--only)
    for e in claim.experiments:
      if e not in loaded:
        loaded[e] = load_experiment(out, e, planned[e])
    results = {e: loaded[e] for e in claim.experiments}
    if not all(r is not None for e in claim.experiments for r in results[e].values()):
      missing.append(claim.id)
      continue
    a = claim.analyze(results)
    entry = {"id": claim.id, "claim": claim.title, "predicts": claim.predicts, **a, "verdict": analysis.verdict(a["tests"])}
    claims.append(entry)
    sections.append((claim, entry, claim.plot(results, a, out), results))
  artifacts.write_json(out / "claims.json", {"rule": analysis.RULE, "mode": manifest.get("mode"), "claims": claims})
  path = out / "report.md"
  artifacts.atomic_write_text(path, render(out, manifest, claims, sections, missing))
  return path


def render(out: Path, manifest: dict, claims, sections, missing) -> str:
  timings = artifacts.read_json(out / "timings.json") if (out / "timings.json").exists() else {}
  lines = ["# Why does Batch Normalization work? — the claims ledger", "",
           f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `bn report` from the JSON files in `{out}` (mode: {manifest.get('mode')}).", "",
           "| claim | what it predicts | what was measured (mean of per-seed paired difference [95% CI]) | verdict |",
           "|---|---|---|---|"]
  for c in claims:
    measured = "<br>".join(f"{t['name']}: {_fmt(t)} ({t['outcome']}{'' if t['counts'] else ', not counted'})" for t in c["tests"])
    lines.append(f"| **{c['id']}** {c['claim']} | {c['predicts']} | {measured} | **{c['verdict']}** |")
  if missing:
    lines += ["", f"Not finished yet: {', '.join(missing)}."]
  lines += ["", f"**Verdict rule.** {analysis.RULE}", ""]
  for claim, c, plots, results in sections:
    lines += [f"## {c['id']} — {c['claim']}", "", f"*Prediction:* {c['predicts']}. *Verdict:* **{c['verdict']}**.", "",
              "| test | predicted | mean [95% CI] | per seed | outcome |", "|---|---|---|---|---|"]
    for t in c["tests"]:
      seeds = ", ".join("nan" if not np.isfinite(v) else f"{v:.3g}" for v in t["per_seed"])
      lines.append(f"| {t['name']}{' (not counted)' if not t['counts'] else ''} | {t['predicted']} | {_fmt(t)} {t['unit']} | {seeds} | {t['outcome']} |")
    if c.get("caveat"):
      lines += ["", f"*Design caveat:* {c['caveat']}"]
    lines += [""] + [f"![{c['id']}]({p})" for p in plots] + [""]
    runs = {f"{e}/{cond}": r for e, conds in results.items() for cond, r in conds.items()}
    trained, measured = _settings(runs), _measured_settings(runs)
    if trained:
      lines += ["Settings:", "", trained, ""]
    if measured:
      lines += ["Settings:", "", measured, ""]
    agree = {"supported": "agrees with", "contradicted": "disagrees with", "inconclusive": "neither confirms nor refutes"}[c["verdict"]]
    lines += [f"*The paper:* {claim.paper} This run {agree} that prediction on the measures above "
              "(a CPU-scale analog, not the paper's setting).", ""]
  if timings:
    t = timings.get("last_invocation_s", {})
    lines += ["## Timing", "", "Wall time of the last `bn reproduce` invocation by experiment (a resumed run counts only the part it did): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()) + ".", ""]
  return "\n".join(lines) + "\n"
