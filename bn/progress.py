"""Progress display: a tqdm bar on a terminal, plain timestamped lines otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time


class Progress:
  """``update(n, **fields)`` after each chunk of ``n`` steps; shows steps/s and time left."""

  def __init__(self, total: int, desc: str = "", *, initial: int = 0, enabled: bool = True, stream=None):
    self.total, self.done, self.desc = total, initial, desc
    self.stream = stream or sys.stderr
    self.enabled = enabled
    self.t0, self.start = time.perf_counter(), initial
    self.bar = None
    if enabled and self.stream.isatty():
      from tqdm.auto import tqdm

      self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", file=self.stream, dynamic_ncols=True)

  def update(self, n: int, **fields) -> None:
    self.done += n
    if not self.enabled:
      return
    shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in fields.items()}
    if self.bar is not None:
      self.bar.set_postfix(shown, refresh=False)
      self.bar.update(n)
      return
    elapsed = time.perf_counter() - self.t0
    rate = (self.done - self.start) / elapsed if elapsed > 0 else float("nan")
    left = (self.total - self.done) / rate if rate > 0 else float("nan")
    extra = " ".join(f"{k}={v}" for k, v in shown.items())
    print(f"[{time.strftime('%H:%M:%S')}] {self.desc} step {self.done}/{self.total} "
          f"{rate:.1f} steps/s, {left:.0f}s left {extra}", file=self.stream, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
