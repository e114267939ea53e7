"""Fault injection for the reliability tests (tests/test_reliability.py): named points where
a ``bn train`` process kills itself or fails as on a full disk, set by environment variables.

``BN_TEST_KILL_AT="EVENT:STEP"`` makes the process SIGKILL itself at that point. Events:
"probes" / "metrics" (rows of STEP appended), "probes-partial" / "metrics-partial" (those rows
written up to the middle of the last), "checkpoint" (the checkpoint of STEP written but not
committed), "checkpointed" (committed). ``BN_TEST_ENOSPC_AT="metrics:STEP"`` / ``"probes:STEP"``:
that append stops in the middle of its last row and fails as on a full disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from pathlib import Path

from bn import artifacts

KILL_ENV = "BN_TEST_KILL_AT"
ENOSPC_ENV = "BN_TEST_ENOSPC_AT"


def armed(env: str, event: str, step: int) -> bool:
  return os.environ.get(env, "") == f"{event}:{step}"


def fault(event: str, step: int) -> None:
  """SIGKILLs this process when ``KILL_ENV`` names ``event`` at ``step``."""
  if armed(KILL_ENV, event, step):
    os.kill(os.getpid(), signal.SIGKILL)


def append(path: Path, rows: list[dict], event: str, step: int) -> None:
  """Appends ``rows`` to a JSON-lines file, with the fault-injection points of ``event``."""
  kill, full = armed(KILL_ENV, f"{event}-partial", step), armed(ENOSPC_ENV, event, step)
  if kill or full:  # a write cut short in the middle of its last row
    text = artifacts.jsonl_text(rows)
    with open(path, "a") as f:
      f.write(text[: len(text) - len(artifacts.jsonl_text(rows[-1:])) // 2])
      f.flush()
    if kill:
      os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
  artifacts.append_jsonl(path, rows)
  fault(event, step)


@contextlib.contextmanager
def kill_before_commit(step: int):
  """SIGKILL once orbax has written the checkpoint of ``step`` but before it commits it."""
  if not armed(KILL_ENV, "checkpoint", step):
    yield
    return
  from orbax.checkpoint._src.path import atomicity

  async def die(*_a, **_k):
    os.kill(os.getpid(), signal.SIGKILL)

  old, atomicity.on_commit_callback = atomicity.on_commit_callback, die
  try:
    yield
  finally:
    atomicity.on_commit_callback = old
