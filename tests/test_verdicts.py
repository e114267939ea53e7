"""Verdicts that mean what they say, around the verdict rule: claim parts, seed ranges.

Checked against hand-worked answers, in both directions. The tests and the verdict rule themselves
(bn.analysis) are test_analysis.py; the statistics under them (bn.stats) test_stats.py; pre-registration test_prereg.py.
"""

from __future__ import annotations

import pytest

from bn import ledger
from bn.claims.base import Claim, Part
from bn.errors import UsageError

# ----------------------------------------------------------------------------- claim parts


def test_claim_parts_need_distinct_ids():
  base = dict(id="X", title="t", predicts="p", paper="", experiments=(), analyze=lambda r: {}, plot=lambda *a: [], order=9.0)
  with pytest.raises(ValueError, match="distinct ids"):
    Claim(parts=(Part("a", "says"), Part("a", "says too")), **base)
  with pytest.raises(ValueError, match="distinct ids"):
    Claim(parts=(), **base)


# ----------------------------------------------------------------------------- seed ranges


def test_confirmatory_and_pilot_seeds_are_disjoint_and_recorded(tmp_path):
  conf = ledger.condition_configs("depth_init", "quick")
  pilot = ledger.condition_configs("depth_init", "quick", seed_base=ledger.PILOT_SEED_BASE)
  for cond in conf:
    assert min(conf[cond].seeds) >= ledger.CONFIRMATORY_SEED_BASE
    assert not set(conf[cond].seeds) & set(pilot[cond].seeds)
    assert [s - ledger.CONFIRMATORY_SEED_BASE for s in conf[cond].seeds] == list(pilot[cond].seeds)


def test_a_ledger_refuses_another_seed_base(tmp_path):
  (tmp_path / "ledger.json").write_text('{"mode": "quick", "dataset": null, "seed_base": 0, "experiments": {}}')
  with pytest.raises(UsageError, match=f"seeds from 0, not --seed-base {ledger.CONFIRMATORY_SEED_BASE}"):
    ledger.check_out(tmp_path, "quick", None, ledger.CONFIRMATORY_SEED_BASE)
  assert ledger.check_out(tmp_path, "quick", None, 0)["seed_base"] == 0


def test_cli_seed_base_is_checked():
  from bn import cli

  for bad in ("-1", "x", "1.5"):
    try:
      rc = cli.main(["reproduce", "--tiny", "--seed-base", bad, "--out", "/nonexistent/never"])
    except SystemExit as e:  # argparse's own refusal of a non-integer
      rc = e.code
    assert rc == 2, bad
