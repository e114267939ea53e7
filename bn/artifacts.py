"""Run artifacts on disk: atomic JSON / JSON-lines writes, reads, provenance.

Every write goes to a temporary file in the same directory, is flushed and
fsync'ed, then renamed over the target (``os.replace`` is atomic on POSIX), so
a kill at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable


def _clean(obj: Any) -> Any:
  """JSON-safe copy: NaN/inf become None, numpy scalars become Python numbers."""
  if isinstance(obj, dict):
    return {str(k): _clean(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_clean(v) for v in obj]
  if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
    obj = obj.item()
  if hasattr(obj, "tolist"):
    return _clean(obj.tolist())
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json(path, obj) -> None:
  atomic_write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def write_jsonl(path, rows: Iterable[dict]) -> None:
  atomic_write_text(path, "".join(json.dumps(_clean(r)) + "\n" for r in rows))


def read_json(path) -> Any:
  with open(path) as f:
    return json.load(f)


def read_jsonl(path) -> list[dict]:
  p = Path(path)
  if not p.exists():
    return []
  return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def provenance() -> dict:
  """Versions, git commit and machine, for summary.json."""
  import jax
  import flax

  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    commit = None
  dev = jax.devices()[0]
  return {
      "jax": jax.__version__,
      "flax": flax.__version__,
      "python": platform.python_version(),
      "git_commit": commit,
      "backend": jax.default_backend(),
      "device": getattr(dev, "device_kind", str(dev)),
      "device_count": jax.device_count(),
      "machine": f"{platform.machine()} {os.cpu_count()} cpus",
  }
