"""Where a result came from: the command, the code (commit and uncommitted changes), every
package version, the machine, the date and the data files read (with checksums).

A ledger records this once in ``OUT/ledger.json``; the report prints it and ``claims.json``
carries it, so a number can be traced to the exact code and data that produced it.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "orbax-checkpoint", "ml_collections", "matplotlib",
            "tensorflow-datasets", "tqdm", "bn-lab")


def git_state(where: Path | None = None) -> tuple[str | None, bool | None]:
  """``(commit, dirty)`` of the checkout holding ``where`` (this package by default); Nones outside git."""
  cwd = where or Path(__file__).resolve().parent
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=cwd).stdout.strip() or None
    if commit is None:
      return None, None
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10, cwd=cwd)
    return commit, bool(status.stdout.strip())
  except (OSError, subprocess.SubprocessError):
    return None, None


def packages() -> dict[str, str]:
  """Installed versions of the packages a result depends on (missing ones left out)."""
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  out["python"] = platform.python_version()
  return out


def machine() -> str:
  cpu = ""
  try:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
  except OSError:
    pass
  return f"{platform.machine()} {os.cpu_count()} cpus{', ' + cpu if cpu else ''}, {platform.system()} {platform.release()}"


def dataset_record(ds) -> dict:
  """Name, source, location and the files read (path, size, sha256) of a loaded :class:`bn.data.Dataset`."""
  files = [dict(f._asdict()) if hasattr(f, "_asdict") else dict(f) for f in (getattr(ds, "files", None) or ())]
  return {"name": ds.name, "source": ds.source, "location": ds.location, "files": files}


def collect(datasets=(), argv=None) -> dict:
  """Everything above as one JSON-safe dict (``datasets``: loaded datasets to record)."""
  import jax

  commit, dirty = git_state()
  dev = jax.devices()[0]
  return {
      "command": " ".join(["bn"] + list(sys.argv[1:] if argv is None else argv)),
      "git_commit": commit, "git_dirty": dirty,
      "packages": packages(),
      "machine": machine(),
      "backend": f"{jax.default_backend()} ({getattr(dev, 'device_kind', str(dev))} x {jax.device_count()})",
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "datasets": [dataset_record(d) for d in datasets],
  }
