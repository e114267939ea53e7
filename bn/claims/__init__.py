"""The claims of the ledger, one module each, found by :func:`all_claims`.

Every module ``bn/claims/<name>.py`` (not starting with ``_``, not ``base``) defines
``CLAIM``, a :class:`~bn.claims.base.Claim`. The ledger runs the experiments the
claims name (training them, or measuring them with :mod:`bn.measure`), and the report
analyses and plots each claim whose experiments finished. A claim module reads JSON only:
it imports neither jax nor bn's training engine.
"""

from __future__ import annotations

import importlib
import pkgutil

from bn.claims.base import Claim, Results

__all__ = ["Claim", "Results", "all_claims", "experiments"]


def all_claims() -> tuple[Claim, ...]:
  """Every claim module's ``CLAIM``, in report order."""
  found = []
  for info in pkgutil.iter_modules(__path__):
    if info.name.startswith("_") or info.name == "base":
      continue
    module = importlib.import_module(f"{__name__}.{info.name}")
    if not isinstance(getattr(module, "CLAIM", None), Claim):
      raise TypeError(f"claim module {module.__name__} defines no CLAIM = Claim(...).")
    found.append(module.CLAIM)
  ids = [c.id for c in found]
  if len(set(ids)) != len(ids):
    raise ValueError(f"two claim modules share an id: {sorted(ids)}")
  return tuple(sorted(found, key=lambda c: c.order))


def experiments() -> tuple[str, ...]:
  """The experiments of every claim, each once, in claim order."""
  out = []
  for c in all_claims():
    out += [e for e in c.experiments if e not in out]
  return tuple(out)

