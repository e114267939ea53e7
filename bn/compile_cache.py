"""JAX's persistent compilation cache for ``bn train`` and ``bn reproduce`` (on by default).

A second invocation of the same config (a resume, a re-run, a config of the same shapes)
loads its compiled programs from disk instead of compiling them again. The
cache lives in ``$BN_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/bn/jax``, else ``~/.cache/bn/jax``;
JAX's own setting (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) wins when given. With the
``filelock`` package installed it keeps at most :data:`MAX_BYTES` (least recently used entries
go first; JAX's eviction needs filelock), without it it grows; it can be deleted at any time. ``--no-compile-cache`` turns it off. Results do not depend on it: a program loaded from
the cache is the program XLA compiled.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

MAX_BYTES = 2 << 30  # 2 GiB


def default_dir(environ=os.environ) -> Path:
  """Where bn keeps the cache: ``$BN_COMPILE_CACHE``, ``$XDG_CACHE_HOME/bn/jax`` or ``~/.cache/bn/jax``."""
  if environ.get("BN_COMPILE_CACHE"):
    return Path(environ["BN_COMPILE_CACHE"]).expanduser()
  return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "bn" / "jax"


def enable(path: str | os.PathLike | None = None) -> str | None:
  """Turns the persistent compilation cache on (every program cached, however fast it compiled)
  and returns its directory. A directory JAX was already given (``JAX_COMPILATION_CACHE_DIR``,
  ``jax.config``) is kept. A directory that cannot be made leaves the cache off (returns None):
  caching is an optimisation, never a reason to fail."""
  import jax

  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  where = Path(path) if path is not None else default_dir()
  try:
    where.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None
  jax.config.update("jax_compilation_cache_dir", str(where))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  if jax.config.jax_compilation_cache_max_size == -1 and importlib.util.find_spec("filelock") is not None:
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)  # JAX's eviction needs filelock
  return str(where)
