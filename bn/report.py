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

from bn import analysis, artifacts, claims as bn_claims, prereg, provenance
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
  if np.isfinite(t["lo"]) and t["lo"] == t["hi"]:
    return f"{t['mean']:+.3g} (all seeds equal)"
  ci = f" [{t['lo']:+.3g}, {t['hi']:+.3g}]" if np.isfinite(t["lo"]) else ""
  return f"{t['mean']:+.3g}{ci}"


def _seeds(t: dict) -> str:
  return ", ".join("nan" if not np.isfinite(v) else f"{v:.3g}" for v in t["per_seed"])


def _eval_mode(c: dict) -> str:
  if c["norm"]["kind"] in ("group", "layer", "none"):
    return "—"
  return f"precise BN ({c['train']['precise_bn']} train images)" if c["train"].get("precise_bn") else f"running stats (momentum {c['norm']['momentum']})"


def _lr_rule(name: str, c: dict) -> str:
  if name == "c3_grid":
    return "√(B/64) × base (linear in --full)"
  lrs = c["sweep"]["lr"] or [c["optimizer"]["lr"]]
  return "grid " + ", ".join(f"{x:g}" for x in lrs) if len(lrs) > 1 else f"{lrs[0]:g}"


def settings_table(experiments: dict) -> list[str]:
  """One row per experiment: what a reader needs to judge any number from it."""
  head = ["| experiment | conditions | model (init) | data | steps × batch | optimizer, LR | seeds | eval mode | probes |",
          "|---|---|---|---|---|---|---|---|---|"]
  rows = []
  for name, conds in experiments.items():
    done = [r for r in conds.values() if r]
    if not done:
      continue
    c = done[0]["config"]["config"]
    m, d, t, o, p = c["model"], c["data"], c["train"], c["optimizer"], c["probes"]
    init = "LeCun normal" if m.get("init_std") is None else f"N(0, {m['init_std']:g}²)"
    model = f"{m['name']} {tuple(m.get('widths') or ())} {m.get('act', '')} ({init})"
    data = f"{d['name']}" + (f", {d['train_size']} train images" if d.get("train_size") else "")
    steps = f"{t['steps']} × {t['batch_size']}" if "summary" in done[0] else "(own loop)"
    if name == "c3_grid":
      steps = f"{c.get('epochs', '?')} epochs × B"
    probes = f"every {p['every']} steps, batch {p['batch_size']}" if p.get("every") else "—"
    opt, ev = f"{o['name']}, {_lr_rule(name, c)}", _eval_mode(c)
    model, data, steps, opt, ev = _own_loop(c, (model, data, steps, opt, ev))
    rows.append(f"| {name} | {', '.join(conds)} | {model} | {data} | {steps} | {opt} | {len(c['seeds'])} | {ev} | {probes} |")
  return head + rows


def _own_loop(c: dict, cells: tuple) -> tuple:
  """The settings cells (model, data, steps, optimizer, eval) of the experiments that run their own
  loop (their config's ``deep``, ``alone`` or ``depths`` section), which the generic fields misdescribe."""
  model, data, steps, opt, ev = cells
  if "deep" in c:
    d = c["deep"]
    return (f"linear, {d['depth']} layers × {d['width']} (LeCun normal)", f"synthetic: x ~ N(0, I), y = A x, {d['examples']} examples",
            f"{d['steps']} full-batch steps", _deep_lr(d), "— (training loss)")
  if "alone" in c:
    f = c["alone"]
    return (model, data, f"SGD × {c['train']['batch_size']} to losses {', '.join(f'{v:g}' for v in f['levels'])}, then {f['budget']} "
            f"full-batch steps", f"{opt}; then gradient descent, LR tuned per variant over {len(f['lrs'])} values",
            f"training-mode loss on {f['batch']} train images")
  if "depths" in c:
    m = c["model"]
    return (f"{m['name']} depth {', '.join(map(str, c['depths']))}, width {(m.get('widths') or ['?'])[0]} {m.get('act', '')}",
            data, "none (at initialization)", "—", f"gradients on one batch of {c['probes']['batch_size']}")
  return cells


def _deep_lr(d: dict) -> str:
  if "lr_fraction" in d:
    return f"gradient descent, LR {d['lr_fraction']:g} × the no-BN net's stability edge at init (per seed)"
  return f"gradient descent, {d['lr']:g}"  # a ledger from before the stability-edge LR


def _analysis_code() -> str:
  """Which code computed the verdicts (it may be newer than the code that trained: see Provenance)."""
  commit, dirty = provenance.git_state()
  return f"analysis code at commit {commit[:12]}{' with uncommitted changes' if dirty else ''}" if commit else "analysis code outside a git checkout"


def secondary_tally(tests) -> str:
  """How the secondary tests came out, e.g. ``3 as predicted, 1 opposite, 1 unclear`` (``—`` if none)."""
  second = [t["outcome"] for t in tests if t["role"] == "secondary"]
  parts = [f"{second.count(o)} {o}" for o in ("as predicted", "opposite", "unclear") if second.count(o)]
  return ", ".join(parts) or "—"


def _cell(text: str) -> str:
  """Text for a Markdown table cell: a literal ``|`` (as in ``|Δμ|``) would end the cell."""
  return str(text).replace("|", "\\|")


def _test_rows(tests) -> list[str]:
  out = ["| test | predicted | mean [95% CI] | per seed | outcome |", "|---|---|---|---|---|"]
  for t in tests:
    note = f" ({t['note']})" if t.get("note") else ""
    out.append(f"| {_cell(t['name'] + note)} | {t['predicted']} | {_fmt(t)} {t['unit']} | {_seeds(t)} | {t['outcome']} |")
  return out


def read_manifest(out: Path) -> dict:
  """The ledger manifest ``OUT/ledger.json`` (mode, experiments and their conditions)."""
  path = out / MANIFEST
  if not path.exists():
    what = " but a `bn train` workdir" if (out / "config.json").exists() or (out / "summary.json").exists() else ""
    raise UsageError(f"{out} is not the output directory of `bn reproduce`{what} (it has no {MANIFEST}); "
                     "give the --out directory of a ledger run.")
  return artifacts.read_json(path)


WORDS = {"supported": "yes", "contradicted": "no", "inconclusive": "undecided (the interval, after the multiplicity adjustment, does not rule out no effect)",
         "invalid design": "no evidence (a sanity check failed: the experiment did not do what it was built to do)",
         "not tested here": "not tested here"}


def judge(claim, a: dict, record: dict | None) -> list[dict]:
  """The parts of one analysed claim: each with its primary test (None where untested), its
  registration status; verdicts are added by :func:`decide` after the multiplicity adjustment."""
  parts = []
  for part in claim.parts:
    untested = part.untested or a.get("untested", {}).get(part.id, "")  # the module's reason, or this run's (e.g. a mode without its cells)
    test = None if untested else analysis._primary(a["tests"], part.id)
    parts.append({"id": part.id, "says": part.says, "primary": part.primary, "untested": untested, "test": test,
                  "registration": prereg.status(record, claim, part)})
  return parts


def decide(entries: list[dict]) -> None:
  """Holm-Bonferroni across every tested part's primary test of the report, then each part's verdict
  and each claim's (:data:`bn.analysis.RULE`), in place."""
  analysis.adjust([p["test"] for e in entries for p in e["parts"] if p["test"] is not None])
  for e in entries:
    for p in e["parts"]:
      p["verdict"] = "not tested here" if p["test"] is None else analysis.verdict(e["tests"], p["id"])
    e["verdict"] = analysis.claim_verdict([p["verdict"] for p in e["parts"]])


def build(out) -> Path:
  """Writes ``out/report.md``, ``out/claims.json`` and the plots; returns the report's path."""
  out = Path(out)
  manifest = read_manifest(out)
  record = prereg.read(out)
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
    entry = {"id": claim.id, "claim": claim.title, "predicts": claim.predicts, "source": claim.source,
             "scope": claim.scope, **a, "parts": judge(claim, a, record)}
    claims.append(entry)
    sections.append((claim, entry, results))
  decide(claims)
  sections = [(claim, entry, claim.plot(results, entry, out), results) for claim, entry, results in sections]
  artifacts.write_json(out / "claims.json", {"rule": analysis.RULE, "mode": manifest.get("mode"), "seed_base": manifest.get("seed_base"),
                                             "provenance": manifest.get("provenance"), "preregistered": record is not None,
                                             "claims": claims})
  path = out / "report.md"
  artifacts.atomic_write_text(path, render(out, manifest, claims, sections, missing))
  return path


def _result(t: dict | None) -> str:
  if t is None:
    return "—"
  adj = ""
  if np.isfinite(t.get("p_adjusted", np.nan)):
    adj = f"; p = {t['p']:.2g}, Holm-adjusted {t['p_adjusted']:.2g} (of {t['family_size']})"
  return f"{_fmt(t)} {t['unit']} (n = {t['n']}{adj})"


def findings(claims) -> list[str]:
  """The plain-words summary: per claim, each part's finding with its interval."""
  L = []
  for c in claims:
    bits = []
    for p in c["parts"]:
      why = f" ({p['untested']})" if p["untested"] else f" — {_result(p['test'])}"
      bits.append(f"{p['says']}: **{WORDS[p['verdict']]}**{why}")
    L.append(f"- **{c['id']}** ({c['claim']}; claim verdict **{c['verdict']}**): " + "; ".join(bits) + ".")
  return L


def summary_table(claims) -> list[str]:
  L = ["| claim part (what *supported* would say) | primary test | result: mean [95% CI] | part verdict | registration |",
       "|---|---|---|---|---|"]
  for c in claims:
    L.append(f"| **{c['id']}** {_cell(c['claim'])} — claim verdict **{c['verdict']}** | secondary tests | "
             f"{secondary_tally(c['tests'])} | | |")
    for p in c["parts"]:
      test = _cell(p["primary"] or "—")
      res = _cell(_result(p["test"])) if p["test"] is not None else _cell(p["untested"])
      L.append(f"| {c['id']}.{p['id']}: {_cell(p['says'])} | {test} | {res} | **{p['verdict']}** | {p['registration']} |")
  return L


def seeds_line(manifest: dict) -> str:
  base = manifest.get("seed_base", 0)
  kind = ("the confirmatory range" if base == prereg.CONFIRMATORY_SEED_BASE else
          "the pilot range: not a confirmatory run" if base == prereg.PILOT_SEED_BASE else "a range of its own")
  return (f"Seeds: every experiment's seeds start at {base} ({kind}; confirmatory runs start at {prereg.CONFIRMATORY_SEED_BASE}, "
          f"pilots at {prereg.PILOT_SEED_BASE}: disjoint ranges).")


def _preamble(out: Path, manifest: dict, claims, missing) -> list[str]:
  """The report's opening: what it is built from, what was found, the summary table and the rule behind the verdicts."""
  L = ["# Why does Batch Normalization work? — the claims ledger", "",
       f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `bn report` ({_analysis_code()}) from the JSON files in `{out}` "
       f"(mode: {manifest.get('mode')}). "
       "Every number below is computed from what the runs wrote; every verdict follows the rule stated here.", ""]
  if manifest.get("mode") == "tiny":
    L += ["**A smoke test, not a result**: `--tiny` trains a few steps on synthetic data; its verdicts mean nothing.", ""]
  L += ["## What was found", ""] + findings(claims) + ["", "## Summary", ""] + summary_table(claims)
  scoped = [c for c in claims if c.get("scope")]
  if scoped:
    L += ["", "**What a verdict covers** (part of each claim's module, like its primary tests):", ""]
    L += [f"- **{c['id']}**: {c['scope']}" for c in scoped]
  if missing:
    L += ["", f"Not finished yet: {', '.join(missing)}."]
  L += ["", f"**Verdict rule.** {analysis.RULE}", "", seeds_line(manifest), "",
        "Registration: *pre-registered* means the part's declaration and its claim module's code are those recorded in "
        "`preregistration.json` before the first training step; *changed after the run* names what differs.", "",
        "A verdict is about the primary test in this setting (CPU-scale analogs: MLPs on Fashion-MNIST, thousands of steps), "
        "not about the paper's setting; the \"paper vs here\" table of each claim says how they differ.", ""]
  return L


def _part_lines(c: dict, p: dict) -> list[str]:
  """One part of a claim's section: its verdict and registration, then its primary test (or why it is untested)."""
  L = [f"**Part {c['id']}.{p['id']}** — {p['says']}: **{p['verdict']}** ({p['registration']}).", ""]
  if p["test"] is None:
    return L + [f"*Not tested here:* {p['untested']}", ""]
  t = p["test"]
  return L + [f"*Primary test:* {p['primary']}.", "",
              f"*Result:* {_result(t)} — raw outcome **{t['outcome_raw']}**, after the adjustment **{t['outcome']}**."
              + (f" ({t['note']})" if t.get("note") else ""), "",
              f"*Power:* {analysis.power_statement(t)}", "",
              f"*What would change the verdict:* {analysis.what_would_change(t, p['verdict'])}", ""]


def _other_tests_lines(c: dict) -> list[str]:
  """A claim's sanity checks and secondary tests as tables, and a warning when secondary tests disagree."""
  L = []
  sanity = [t for t in c["tests"] if t["role"] == "sanity"]
  if sanity:
    L += ["Sanity checks (the experiment did what it was built to do; a failure makes the verdict *invalid design*):", ""]
    L += _test_rows(sanity) + [""]
  second = [t for t in c["tests"] if t["role"] == "secondary"]
  if second:
    L += ["Secondary tests (reported; they do not change the verdict):", ""] + _test_rows(second) + [""]
    against = [t for t in second if t["outcome"] == "opposite"]
    if against:
      L += [f"*Not all evidence agrees:* {len(against)} of {len(second)} secondary tests came out opposite to the claim's "
            "prediction; the verdict covers only what the primary test measures.", ""]
  return L


def _claim_section(claim, c: dict, plots) -> list[str]:
  """The section of one claim: source and prediction, each part, the other tests, notes, paper vs here, its plots."""
  L = [f"## {c['id']} — {c['claim']}", "", f"*Source:* {claim.source or '—'}. *Prediction:* {c['predicts']}.", "",
       f"Claim verdict: **{c['verdict']}** (from its parts, by the rule above).", ""]
  for p in c["parts"]:
    L += _part_lines(c, p)
  L += [*([f"*What the verdicts cover:* {c['scope']}", ""] if c.get("scope") else [])]
  L += _other_tests_lines(c)
  if c.get("notes"):
    L += ["Notes (computed from this run):", ""] + [f"- {n}" for n in c["notes"]] + [""]
  if c.get("table"):
    L += ["Paper vs here:", "", "| | paper | here |", "|---|---|---|"] + [f"| {_cell(a)} | {_cell(b)} | {_cell(d)} |" for a, b, d in c["table"]] + [""]
  L += [f"*The paper:* {claim.paper}", ""]
  return L + [f"![{c['id']}]({name})" for name in plots] + [""]


def _provenance_lines(prov: dict) -> list[str]:
  """The Provenance section: command, commit, machine, packages, and each dataset's files once."""
  L = ["## Provenance", ""]
  if not prov:
    return L + ["(not recorded by this ledger run)", ""]
  L += [f"- command: `{prov.get('command', '?')}`",
        f"- commit: {prov.get('git_commit') or 'unknown'}{' (with uncommitted changes)' if prov.get('git_dirty') else ''}",
        f"- machine: {prov.get('machine', '?')}; backend {prov.get('backend', '?')}; started {prov.get('date', '?')}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in sorted((prov.get("packages") or {}).items()))]
  seen = []
  for d in prov.get("datasets") or []:
    files = "; ".join(f"{f['path']} (sha256 {f['sha256'][:16]}…)" for f in d.get("files", [])) or d.get("location", "")
    line = f"- data: {d.get('name')} from {d.get('source')}: {files}"
    if line not in seen:  # experiments that share a dataset record it once each
      seen.append(line)
  return L + seen + [""]


def render(out: Path, manifest: dict, claims, sections, missing) -> str:
  """The text of report.md: the preamble and summary, the settings, one section per claim, provenance, timing."""
  timings = artifacts.read_json(out / "timings.json") if (out / "timings.json").exists() else {}
  L = _preamble(out, manifest, claims, missing)
  loaded = {}
  for _, _, _, results in sections:
    loaded.update(results)
  L += ["## Settings", ""] + settings_table(loaded) + [""]
  for claim, c, plots, _ in sections:
    L += _claim_section(claim, c, plots)
  L += _provenance_lines(manifest.get("provenance") or {})
  if timings:
    t = timings.get("cumulative_s") or timings.get("last_invocation_s", {})
    L += ["## Timing", "", "Wall time by experiment, summed over the invocations of this mode (seconds): "
          + ", ".join(f"{k} {v:.0f}" for k, v in t.items() if k != "total") + (f"; total {t['total']:.0f}" if "total" in t else "") + ".", ""]
  return "\n".join(L) + "\n"
