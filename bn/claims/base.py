"""What a claim of the ledger is: its experiments, its tests (one primary), its plots, its report text.

A claim module in :mod:`bn.claims` defines ``CLAIM = Claim(...)``; the ledger, the
analysis and the report find it through the registry (:func:`bn.claims.all_claims`),
so adding a claim means adding one module here plus its experiment config(s) in
``experiments/configs/``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

# results of one claim: {experiment name: {condition name: loaded run (see bn.analysis.load_condition)}}
Results = Mapping[str, Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Part:
  """One part of a claim (a claim is the conjunction of its parts), with its own primary test.

  ``says``: what a *supported* verdict of this part states, in plain words (the summary table's row
  title: it says no more than the test shows). ``primary``: the primary test in words; ``kind``,
  ``margin`` and ``unit``: its statistic's predicted direction (:data:`bn.analysis.KINDS`). The
  claim's ``analyze`` returns exactly one test with ``role="primary"`` and ``part=id`` for every part,
  except a part with ``untested`` set: why the experiments here cannot test it (its verdict is then
  *not tested here*). All of it is written before the run and recorded in ``preregistration.json``."""

  id: str
  says: str
  primary: str = ""
  kind: str = "lower"
  margin: float = 0.0
  unit: str = ""
  untested: str = ""

  def declaration(self) -> dict:
    """What pre-registration records of this part (compared with the report's code afterwards)."""
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Claim:
  """One explanation of BN put to the test.

  ``experiments`` names configs of ``experiments/configs/`` (each with ``get_config(mode)``
  and ``conditions(mode)``) whose finished conditions ``analyze`` reads (an experiment that trains
  nothing is measured by its runner in :mod:`bn.measure`, which writes ``workdir/results.json``).
  ``analyze(results) -> {"tests": [...], "table": [[aspect, paper, here], ...], "notes": [...]}``
  computes the tests (:func:`bn.analysis.test`; exactly one with ``role="primary"`` per tested
  part, its ``part`` the part's id), the "paper vs here" rows and any caveats, and optionally
  ``"untested": {part id: why}`` for a part the finished conditions at hand cannot test (e.g. a
  mode that trains none of its cells);
  ``plot(results, analysis, out_dir) -> [png names]`` draws the figures.

  ``parts`` (:class:`Part`) are what the claim says, each with its primary test in words; they are
  part of the module, written before any run, and the report prints them next to the results."""

  def __post_init__(self):
    ids = [p.id for p in self.parts]
    if not ids or len(set(ids)) != len(ids):
      raise ValueError(f"claim {self.id}: parts need distinct ids, got {ids}")

  id: str
  title: str
  predicts: str
  paper: str
  parts: tuple[Part, ...]
  experiments: tuple[str, ...]
  analyze: Callable[[Results], dict]
  plot: Callable[[Results, dict, Path], list[str]]
  order: float
  source: str = ""  # the paper (authors, year, arXiv id)
  # what a verdict does and does not cover, when the claim says more than its primary test can show
  # (written with the claim, before any run; the report prints it next to the verdict)
  scope: str = ""
