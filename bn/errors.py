"""The two kinds of failure every ``bn`` command reports, and their exit codes.

* :class:`UsageError` (exit 2): the user asked for something that cannot work -- a bad
  flag, config key or value, a missing or damaged dataset, a workdir that belongs to
  another run. The message names the problem and the fix.
* :class:`RunError` (exit 1): a well-formed request failed while running -- a full disk,
  a corrupt checkpoint with no older one to fall back to, a failed download.

Library code raises the usual ``ValueError``/``TypeError`` for bad arguments; the
command line (:mod:`bn.cli`) maps those to exit 2 as well.
"""

from __future__ import annotations


class UsageError(ValueError):
  """A request that cannot work as given; the message says how to fix it (exit code 2)."""


class RunError(RuntimeError):
  """A failure while running a valid request (exit code 1)."""
