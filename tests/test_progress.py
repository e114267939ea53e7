"""Tests for bn.progress on a non-terminal stream, with a fake clock: steps/s and the time left count training time
only (the seconds spent compiling are left out), every update is one timestamped line with its fields, notes are
lines of their own, and a disabled display writes nothing (its count still moves).
"""

import io
import math
import re

from bn.progress import Progress


class Clock:
  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


def test_rate_and_time_left_leave_out_compile_time():
  clock, out = Clock(), io.StringIO()
  p = Progress(100, "run", initial=10, stream=out, clock=clock)
  assert math.isnan(p.rate)  # no time has passed
  clock.t += 65.0  # 60 s compiling, then 5 s for 20 steps
  p.exclude(60.0)
  p.update(20, loss=0.123456, lr=0.1, epoch=3)
  assert p.rate == 20 / 5.0  # 4 steps/s, from the 10 the run resumed at
  line = out.getvalue().splitlines()[-1]
  assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] run step 30/100 4\.0 steps/s, 18s left loss=0\.1235 lr=0\.1 epoch=3", line), line
  p.note("compiling the evaluation")
  assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] run compiling the evaluation", out.getvalue().splitlines()[-1])
  p.close()


def test_a_disabled_display_writes_nothing_but_counts():
  out = io.StringIO()
  p = Progress(10, "quiet", enabled=False, stream=out, clock=Clock())
  p.note("hello")
  p.update(4, loss=1.0)
  assert out.getvalue() == "" and p.done == 4
