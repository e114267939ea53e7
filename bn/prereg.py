"""Pre-registration of the claims ledger: what every primary test is, on disk before the first step.

``bn reproduce`` writes ``OUT/preregistration.json`` before it trains anything (a resumed
ledger keeps the first one): per claim, its parts with their primary tests (statistic in
words, predicted direction and margin) and a SHA-256 of the claim module's source; per
experiment, its conditions and seeds; the seed base, the mode and the commit. The report
compares the code it analyses with this record and marks every primary test
*pre-registered* or *changed after the run* (:func:`status`). Reads and writes JSON only.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from bn import artifacts

FILE = "preregistration.json"
# Seeds: every experiment config gives its seeds as 0, 1, ...; the ledger trains seed_base + those.
# Confirmatory runs draw from CONFIRMATORY_SEED_BASE (v3 of the ledger; a design change made after
# seeing results moves it to a fresh range, see docs/ledger.md); pilots use another base
# (`bn reproduce --seed-base 0`, and `bn train`'s configs start at 0), so the ranges are disjoint.
CONFIRMATORY_SEED_BASE = 6000  # 3000, 4000, then 5000 until designs changed after seeing their results (docs/ledger.md, log)
PILOT_SEED_BASE = 0


def module_hash(claim) -> str:
  """SHA-256 of the source file of the module that defines ``claim`` (its analysis and declarations)."""
  path = Path(sys.modules[claim.analyze.__module__].__file__)
  return hashlib.sha256(path.read_bytes()).hexdigest()


def claim_record(claim) -> dict:
  return {"title": claim.title, "module": claim.analyze.__module__, "sha256": module_hash(claim),
          "parts": [p.declaration() for p in claim.parts]}


def registration(claims, experiments: dict, *, mode: str, seed_base: int, provenance: dict | None = None) -> dict:
  """The record: ``claims`` (the registry's Claims), ``experiments`` ``{name: {condition: seeds}}``."""
  prov = provenance or {}
  return {"mode": mode, "seed_base": seed_base, "commit": prov.get("git_commit"), "dirty": prov.get("git_dirty"),
          "date": prov.get("date"), "claims": {c.id: claim_record(c) for c in claims}, "experiments": experiments}


def write(out: Path, record: dict) -> Path:
  """``out/preregistration.json``, unless one is there (a resumed ledger keeps the record made before its first step)."""
  path = Path(out) / FILE
  if not path.exists():
    artifacts.write_json(path, record)
  return path


def read(out: Path) -> dict | None:
  path = Path(out) / FILE
  return artifacts.read_json(path) if path.exists() else None


def status(record: dict | None, claim, part) -> str:
  """``pre-registered`` when the part's declaration and its claim module's source are what the
  record holds; ``changed after the run: ...`` (saying what) otherwise; ``not registered`` when the
  ledger has no record (a run from before pre-registration existed)."""
  if not record:
    return "not registered"
  reg = (record.get("claims") or {}).get(claim.id)
  if reg is None:
    return "changed after the run: the claim was added after the run"
  parts = {p.get("id"): p for p in reg.get("parts") or []}
  changed = []
  if parts.get(part.id) != part.declaration():
    was = parts.get(part.id)
    if was is None:
      changed.append("the part was added after the run")
    else:
      changed.append("its declaration (" + ", ".join(k for k, v in part.declaration().items() if was.get(k) != v) + ")")
  if reg.get("sha256") != module_hash(claim):
    changed.append(f"the code of {claim.analyze.__module__}")
  return "pre-registered" if not changed else "changed after the run: " + "; ".join(changed)
