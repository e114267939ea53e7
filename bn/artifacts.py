"""Run artifacts on disk: atomic JSON / JSON-lines writes, reads.

Every write goes to a temporary file in the same directory, is flushed and
fsync'ed, then renamed over the target (``os.replace`` is atomic on POSIX), so
a kill at any moment leaves either the old file or the new one, never half of one.
JSON-lines files that grow during a run (metrics, probes) are appended to instead
(:func:`append_jsonl`: one ``write`` of whole lines, then fsync); a kill mid-append
leaves at most an unterminated last line, which ``read_jsonl(..., partial_ok=True)``
drops and :func:`truncate_jsonl` removes. A file that does not parse raises
:class:`ArtifactError`, naming the file, the line and what to do.
The file gets the mode a plain ``open(path, "w")`` would give (``0o666 & ~umask``),
not ``tempfile.mkstemp``'s private 0600: results are meant to be read by others.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from bn.errors import RunError, UsageError


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


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
  """The process's umask, read without changing it where the OS allows (Linux: /proc), since
  runs may train in threads; elsewhere set and restored at once under a lock."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  with _UMASK_LOCK:
    mask = os.umask(0o077)
    os.umask(mask)
  return mask


def file_mode() -> int:
  """The mode ``open(path, "w")`` gives a new file: ``0o666 & ~umask`` (0644 under umask 022)."""
  return 0o666 & ~current_umask()


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
  """Gives the finished temporary file ``tmp`` the umask's mode and renames it over ``path``."""
  os.chmod(tmp, file_mode())
  os.replace(tmp, path)


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_local_path(path: str | os.PathLike, flag: str) -> None:
  """Refuses remote URLs (``gs://``, ``s3://``, ``hdfs://``, ...): runs write their workdir
  with local file operations. Raises :class:`~bn.errors.UsageError` naming ``flag``."""
  if _URL.match(os.fspath(path)):
    raise UsageError(f"{flag} {os.fspath(path)}: remote paths are not supported; runs write their files "
                     f"(config.json, metrics.jsonl, summary.json, checkpoints/) with local file operations. "
                     f"Give a local directory, or a bucket mounted as one (e.g. gcsfuse, s3fs), and copy "
                     f"the results afterwards (e.g. `gsutil -m rsync -r DIR gs://...`).")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", suffix: str = ".tmp"):
  """Writes ``path`` all or nothing: yields a temporary file next to it (opened with ``mode``);
  when the block ends it is flushed, fsync'ed and renamed over ``path`` with the umask's mode
  (:func:`publish`); on any exception it is removed and ``path`` is untouched."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    publish(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  with atomic_file(path) as f:
    f.write(text)


def write_json(path, obj) -> None:
  atomic_write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def write_jsonl(path, rows: Iterable[dict]) -> None:
  atomic_write_text(path, "".join(json.dumps(_clean(r)) + "\n" for r in rows))


class ArtifactError(RunError):
  """A file a run wrote that cannot be read back (truncated, corrupt); the message names it (exit code 1)."""


def _damaged(path, what: str) -> ArtifactError:
  return ArtifactError(f"{path}: {what}; the file is damaged (a run killed or a disk filled while writing it?). "
                       f"Delete it (or its run's directory) and re-run the command that wrote it; "
                       f"a training workdir resumes from its last checkpoint.")


def read_json(path) -> Any:
  """The JSON value in ``path``; :class:`ArtifactError` naming the file when it does not parse."""
  text = Path(path).read_text()
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise _damaged(path, f"not valid JSON ({e})") from None


def read_jsonl(path, *, partial_ok: bool = False) -> list[dict]:
  """The rows of a JSON-lines file ([] if it does not exist). A line that does not parse raises
  :class:`ArtifactError` naming the file and the line -- except, with ``partial_ok``, an
  unterminated last line (an append cut short by a kill), which is dropped."""
  p = Path(path)
  if not p.exists():
    return []
  return _parse_lines(p, p.read_text(), partial_ok)[0]


def _parse_lines(p: Path, text: str, partial_ok: bool) -> tuple[list[dict], bool]:
  """``(rows, dropped)``: the rows of ``text`` and whether an unterminated last line was dropped."""
  lines = text.split("\n")
  tail = lines.pop()  # "" when the text ends with a newline
  rows = []
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      raise _damaged(p, f"line {i} is not valid JSON ({e})") from None
  if not tail.strip():
    return rows, False
  if partial_ok:
    return rows, True
  try:
    rows.append(json.loads(tail))
  except json.JSONDecodeError as e:
    raise _damaged(p, f"its last line ({len(lines) + 1}) is cut short ({e})") from None
  return rows, False


def clean(obj: Any) -> Any:
  """A JSON-safe copy of ``obj`` (NaN/inf become None, NumPy values Python ones), as every writer here stores it."""
  return _clean(obj)


def jsonl_text(rows: Iterable[dict]) -> str:
  """``rows`` as JSON lines, each terminated by a newline."""
  return "".join(json.dumps(_clean(r)) + "\n" for r in rows)


def config_diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
  """``[(dotted key, old value, new value), ...]`` where two (config) dicts differ; a key missing
  on one side shows as ``None`` there."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in list(old) + [k for k in new if k not in old]:
      out += config_diff(old.get(k), new.get(k), f"{prefix}{k}.")
    return out
  return [] if old == new else [(prefix.rstrip("."), old, new)]


def append_jsonl(path, rows: Iterable[dict]) -> None:
  """Appends ``rows`` as whole lines in one write, then fsyncs: a kill leaves at most an
  unterminated last line (see :func:`read_jsonl`)."""
  text = jsonl_text(rows)
  if text:
    with open(path, "a") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())


def truncate_jsonl(path, keep: Callable[[dict], bool]) -> list[dict]:
  """Keeps the rows of ``path`` for which ``keep(row)`` holds and drops an unterminated last
  line, rewriting the file (atomically) only if anything goes; returns the rows kept."""
  p = Path(path)
  if not p.exists():
    return []
  rows, dropped = _parse_lines(p, p.read_text(), partial_ok=True)
  kept = [r for r in rows if keep(r)]
  if dropped or len(kept) != len(rows):
    write_jsonl(p, kept)
  return kept


def check_writable(directory) -> None:
  """Raises OSError unless a file can be created in the existing ``directory``: a read-only
  filesystem or missing permissions show before anything runs."""
  fd, tmp = tempfile.mkstemp(prefix=".bn-write-test.", dir=directory)
  os.close(fd)
  os.unlink(tmp)

