"""Tests for bn.report's pieces, each against a hand-worked answer: the Holm-Bonferroni adjustment and the
verdicts it decides across a report's parts (``decide``), the summary table's rows and its escaped cells,
the secondary tally, the number formats, the seeds line and the manifest check. ``report.build`` on a whole
hand-written ledger is tested with the claims (test_claims.py) and end to end with the tiny ledger (test_ledger.py).
"""

import math

import numpy as np
import pytest

from bn import analysis, artifacts, prereg, report
from bn.errors import UsageError


def _row(outcome, role):
  """A test row with just what the tally reads."""
  return {"outcome": outcome, "role": role, "name": role}


def test_secondary_tally_counts_what_disagrees():
  tests = [_row("as predicted", "primary"), _row("opposite", "sanity")] + [_row(o, "secondary") for o in ("opposite", "as predicted", "opposite", "unclear")]
  assert report.secondary_tally(tests) == "1 as predicted, 2 opposite, 1 unclear"  # sanity and primary are not counted
  assert report.secondary_tally([_row("as predicted", "primary")]) == "—"


def test_report_cells_escape_the_table_separator():
  assert report._cell("shift |Δμ|/σ") == "shift \\|Δμ\\|/σ"


def test_numbers_say_what_is_known():
  t = {"mean": 0.5, "lo": 0.25, "hi": 0.75}
  assert report._fmt(t) == "+0.5 [+0.25, +0.75]"
  assert report._fmt({**t, "lo": 0.5, "hi": 0.5}) == "+0.5 (all seeds equal)"
  assert report._fmt({**t, "lo": math.nan, "hi": math.nan}) == "+0.5"  # no interval (e.g. censored values)
  assert report._fmt({**t, "mean": math.nan}) == "n/a"
  assert report._seeds({"per_seed": [0.12345, math.nan, -2.0]}) == "0.123, nan, -2"


def _entry(cid, parts):
  """A report entry: each part ``(id, mean)`` has a primary test on 6 seeds around ``mean`` (``None``: untested)."""
  spread = np.array([0.3, -0.25, 0.2, -0.1, 0.15, -0.05])
  tests, out = [], []
  for pid, mean in parts:
    test = None
    if mean is not None:
      test = analysis.test(f"{cid}.{pid}", mean + spread, "lower", role="primary", part=pid)
      tests.append(test)
    out.append({"id": pid, "says": f"{pid} says", "primary": "a statistic", "untested": "" if test else "no such run",
                "test": test, "registration": "not registered"})
  return {"id": cid, "claim": f"claim {cid}", "tests": tests, "parts": out}


def test_decide_adjusts_across_the_whole_report_then_judges_parts_and_claims():
  """Three tested parts over two claims form one Holm family of 3: the marginal part (raw p ~ 0.04, the second
  smallest) is adjusted to 2 p > 0.05 and is no longer supported, which makes its claim mixed; an untested part
  is 'not tested here' and not counted in the family."""
  entries = [_entry("X", [("clear", -5.0), ("marginal", -0.28)]), _entry("Y", [("null", 0.0), ("later", None)])]
  clear, marginal = (p["test"] for p in entries[0]["parts"])
  null = entries[1]["parts"][0]["test"]
  assert clear["p"] < 1e-4 and 0.025 < marginal["p"] < 0.05 and null["p"] > 0.5  # the raw p-values the design gives
  report.decide(entries)
  assert [t["family_size"] for t in (clear, marginal, null)] == [3, 3, 3]
  assert clear["p_adjusted"] == pytest.approx(3 * clear["p"])  # smallest of 3: 3 p
  assert marginal["p_adjusted"] == pytest.approx(2 * marginal["p"])  # second: max(3 p_1, 2 p_2)
  assert null["p_adjusted"] == pytest.approx(min(1.0, max(2 * marginal["p"], null["p"])))  # third: monotone
  assert [p["verdict"] for p in entries[0]["parts"]] == ["supported", "inconclusive"]
  assert [p["verdict"] for p in entries[1]["parts"]] == ["inconclusive", "not tested here"]
  assert [e["verdict"] for e in entries] == ["mixed", "inconclusive"]


def test_summary_table_has_a_claim_row_and_a_row_per_part():
  entries = [_entry("X", [("a", -5.0), ("b", None)])]
  entries[0]["parts"][1]["says"] = "b's |Δ| says"
  report.decide(entries)
  head, rule, claim_row, a, b = report.summary_table(entries)
  assert head.startswith("| claim part") and rule == "|---|---|---|---|---|"
  assert claim_row.startswith("| **X** claim X — claim verdict **mixed** | secondary tests | — |")
  # the mean of -5 + (0.3, -0.25, 0.2, -0.1, 0.15, -0.05) is -5 + 0.25 / 6 = -4.958; one part in the family: Holm-adjusted p = p
  assert a.startswith("| X.a: a says | a statistic | -4.96 [") and "(n = 6; p = " in a and "(of 1))" in a
  assert a.endswith("| **supported** | not registered |")
  assert b == "| X.b: b's \\|Δ\\| says | a statistic | no such run | **not tested here** | not registered |"


@pytest.mark.parametrize("base,kind", [(prereg.CONFIRMATORY_SEED_BASE, "the confirmatory range"),
                                       (prereg.PILOT_SEED_BASE, "the pilot range: not a confirmatory run"), (12345, "a range of its own")])
def test_seeds_line_names_the_range(base, kind):
  assert report.seeds_line({"seed_base": base}).startswith(f"Seeds: every experiment's seeds start at {base} ({kind};")


def test_read_manifest_refuses_what_is_not_a_ledger_directory(tmp_path):
  with pytest.raises(UsageError, match="not the output directory of `bn reproduce` \\(it has no ledger.json\\)"):
    report.read_manifest(tmp_path)
  artifacts.write_json(tmp_path / "summary.json", {})
  with pytest.raises(UsageError, match="but a `bn train` workdir"):
    report.read_manifest(tmp_path)
  artifacts.write_json(tmp_path / "ledger.json", {"mode": "quick", "experiments": {}})
  assert report.read_manifest(tmp_path) == {"mode": "quick", "experiments": {}}
