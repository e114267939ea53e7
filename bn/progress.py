"""Progress display: a tqdm bar on a terminal, plain timestamped lines otherwise (logs, CI).

Steps/s and the time left count training time only: the loop reports the seconds it
spent compiling (:meth:`Progress.exclude`) and says when it starts to (:meth:`Progress.note`),
so a first chunk that compiles for a minute neither looks like a hang nor drags the rate down.
"""

from __future__ import annotations

import sys
import time


class Progress:
  """``update(n, **fields)`` after each chunk of ``n`` steps; shows steps/s and time left."""

  def __init__(self, total: int, desc: str = "", *, initial: int = 0, enabled: bool = True, stream=None, clock=time.perf_counter):
    self.total, self.done, self.desc = total, initial, desc
    self.stream = stream or sys.stderr
    self.enabled = enabled
    self.clock = clock
    self.t0, self.start = clock(), initial
    self.excluded = 0.0  # seconds not counted in the rate (compiling)
    self.bar = None
    if enabled and self.stream.isatty():
      from tqdm.auto import tqdm

      self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", file=self.stream, dynamic_ncols=True)

  def note(self, message: str) -> None:
    """A line of its own, e.g. ``compiling ...`` before a long compile."""
    if not self.enabled:
      return
    line = f"[{time.strftime('%H:%M:%S')}] {self.desc} {message}".replace("  ", " ")
    if self.bar is not None:
      self.bar.write(line, file=self.stream)
    else:
      print(line, file=self.stream, flush=True)

  def exclude(self, seconds: float) -> None:
    """Leave ``seconds`` (spent compiling) out of steps/s and the time left."""
    self.excluded += seconds
    if self.bar is not None:  # tqdm measures rates from start_t and last_print_t
      self.bar.start_t += seconds
      self.bar.last_print_t += seconds

  @property
  def rate(self) -> float:
    """Steps per second since the start, compile time excluded."""
    elapsed = self.clock() - self.t0 - self.excluded
    return (self.done - self.start) / elapsed if elapsed > 0 else float("nan")

  def update(self, n: int, **fields) -> None:
    self.done += n
    if not self.enabled:
      return
    shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in fields.items()}
    if self.bar is not None:
      self.bar.set_postfix(shown, refresh=False)
      self.bar.update(n)
      return
    rate = self.rate
    left = (self.total - self.done) / rate if rate > 0 else float("nan")
    extra = " ".join(f"{k}={v}" for k, v in shown.items())
    print(f"[{time.strftime('%H:%M:%S')}] {self.desc} step {self.done}/{self.total} "
          f"{rate:.1f} steps/s, {left:.0f}s left {extra}", file=self.stream, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
