"""The experiments that train nothing through :func:`bn.loop.train_workdir`: each has a runner here,
``runner(config, dataset) -> dict`` (JSON-safe), which :func:`bn.ledger.measure_condition` writes to
``workdir/results.json``. The claims (:mod:`bn.claims`) read those files and never run anything.

``RUNNERS`` maps an experiment's name to ``"module:function"`` in this package; :func:`runner`
imports the module only when asked (the runners need the training engine: jax, flax, bn.models)."""

from __future__ import annotations

import importlib
from typing import Callable

RUNNERS = {
    "deep_linear": "deep_linear:measure_deep_linear",
    "depth_init": "depth_init:measure_depth_init",
    "alone": "alone:measure_alone",
}


def runner(experiment: str) -> Callable | None:
  """The measuring function of ``experiment``, or None when it trains (through ``bn.loop``)."""
  if experiment not in RUNNERS:
    return None
  module, function = RUNNERS[experiment].split(":")
  return getattr(importlib.import_module(f"{__name__}.{module}"), function)


def measured(experiment: str) -> bool:
  """Whether ``experiment`` is measured by a runner here (it writes ``results.json``, not ``summary.json``)."""
  return experiment in RUNNERS
