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
class Claim:
  """One explanation of BN put to the test.

  ``experiments`` names configs of ``experiments/configs/`` (each with ``get_config(mode)``
  and ``conditions(mode)``) whose finished conditions ``analyze`` reads; ``runners`` maps an
  experiment that trains nothing to the function that measures it instead
  (``runner(config, dataset) -> dict``; :func:`bn.ledger.measure_condition` writes it to
  ``workdir/results.json`` with the config, the wall time and the provenance).
  ``analyze(results) -> {"tests": [...], "table": [[aspect, paper, here], ...], "notes": [...]}``
  computes the tests (:func:`bn.analysis.test`; exactly one with ``role="primary"``), the
  "paper vs here" rows and any caveats; ``plot(results, analysis, out_dir) -> [png names]``
  draws the figures.

  ``primary`` states the primary test in words; it is part of the module, written before
  any run, and the report prints it next to the result."""

  id: str
  title: str
  predicts: str
  paper: str
  primary: str
  experiments: tuple[str, ...]
  analyze: Callable[[Results], dict]
  plot: Callable[[Results, dict, Path], list[str]]
  order: float
  runners: Mapping[str, Callable] = dataclasses.field(default_factory=dict)
  source: str = ""  # the paper (authors, year, arXiv id)
  # what a verdict does and does not cover, when the claim says more than its primary test can show
  # (written with the claim, before any run; the report prints it next to the verdict)
  scope: str = ""
