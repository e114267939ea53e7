"""Where a result came from: the command, the code (commit and uncommitted changes), every
package version, the machine, the date and the data files read (with checksums).

A ledger records this once in ``OUT/ledger.json``; the report prints it and ``claims.json``
carries it, so a number can be traced to the exact code and data that produced it.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import urllib.parse
from pathlib import Path

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "orbax-checkpoint", "ml_collections", "matplotlib",
            "tensorflow-datasets", "tqdm", "bn-lab")


def _git(args, cwd) -> str | None:
  try:
    out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=cwd)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def _checkout_state(cwd) -> tuple[str | None, bool | None]:
  commit = _git(["rev-parse", "HEAD"], cwd) or None
  if commit is None:
    return None, None
  status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
  return commit, None if status is None else bool(status)


def installed_from(dist: str = "bn-lab") -> dict | None:
  """What pip recorded about where ``dist`` was installed from (PEP 610 ``direct_url.json``:
  ``url``, and ``vcs_info.commit_id`` for a git URL); None for an install from an index or
  none recorded."""
  try:
    text = importlib.metadata.distribution(dist).read_text("direct_url.json")
    return json.loads(text) if text else None
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return None


def git_state(where: Path | None = None, *, package: Path | None = None, direct_url: dict | None = None) -> tuple[str | None, bool | None]:
  """``(commit, dirty)``: of the checkout holding ``where`` when given; else of the code that runs
  -- the one place bn looks its commit up (summary.json, the ledger, the report, the bench):

  1. this package inside a git checkout (a clone, an editable install): that checkout's HEAD
     and whether tracked files changed (a git repository that merely encloses an installed
     package, e.g. a project with its venv inside, is not taken for it);
  2. installed by pip from a git URL: the commit pip recorded (dirty unknown: None);
  3. installed by pip from a local clone (``pip install .``): that clone's HEAD and state now
     (it may have moved on since the install);

  else Nones. ``package`` / ``direct_url``: for tests (default: this package, pip's record)."""
  if where is not None:
    return _checkout_state(where)
  here = (package or Path(__file__).resolve().parent)
  top = _git(["rev-parse", "--show-toplevel"], here)
  if top and Path(top).resolve() == here.resolve().parent:
    return _checkout_state(here)
  record = direct_url if direct_url is not None else installed_from()
  if not record:
    return None, None
  vcs = record.get("vcs_info") or {}
  if vcs.get("commit_id"):
    return vcs["commit_id"], None
  url = record.get("url", "")
  if url.startswith("file://"):
    src = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    top = _git(["rev-parse", "--show-toplevel"], src) if src.is_dir() else None
    if top and Path(top).resolve() == src.resolve():
      return _checkout_state(src)
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


def collect(datasets=(), argv=None, *, backend: str = "") -> dict:
  """Everything above as one JSON-safe dict (``datasets``: loaded datasets to record; ``backend``: the
  accelerator in words, :func:`bn.records.backend`)."""
  commit, dirty = git_state()
  return {
      "command": " ".join(["bn"] + list(sys.argv[1:] if argv is None else argv)),
      "git_commit": commit, "git_dirty": dirty,
      "packages": packages(),
      "machine": machine(),
      "backend": backend,
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "datasets": [dataset_record(d) for d in datasets],
  }
