"""The bench's settings and its timing method (see :mod:`bn.bench.suite` for what is measured).

Method: every comparison is one *group* of programs compiled first (compile
time reported separately), warmed up, then timed round-robin -- repeat ``r``
of every member runs before repeat ``r + 1`` of any -- so a change of machine
load hits all members alike. Each member's call count per repeat is chosen so
that a repeat lasts at least ``min_time``. Reported: the median over repeats,
min/max and the interquartile range; ratios are medians divided by the
reference's median *from the same group*, with the range of the per-repeat
(paired) ratios. The load average is recorded next to every group.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
from typing import Any, Callable

import jax
import numpy as np


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
  """Sizes of one bench mode; ``full`` is the default, ``quick`` fits in ~5 min on 2 CPU cores."""

  mode: str
  repeats: int
  min_time: float  # seconds per timed repeat (calls are batched up to this)
  layer_shapes: tuple[tuple[int, ...], ...]
  ioffe_steps: int  # steps per timed chunk in the training-step section
  ioffe_train_size: int
  ioffe_widths: tuple[int, ...]
  ioffe_image: int
  resnet: bool
  resnet_steps: int
  resnet_batch: int
  resnet_image: int
  resnet_widths: tuple[int, ...]
  resnet_blocks: int
  resnet_train_size: int
  resnet_repeats: int  # reference_scan's convolutions inside lax.scan are slow on XLA:CPU: ~1 min per batch-128 step on 2 cores
  matmul_n: int
  seeds: tuple[int, ...]  # runs per program in the seeds section (the curve); its target is read at N = 8
  seeds_steps: int  # steps per timed call in the seeds section
  ledger: bool
  gpu_steps: int
  ledger_timings: str = ""  # when the ledger is not run: report this quick ledger's timings.json instead (labelled)
  compiler_options: tuple[tuple[str, Any], ...] = ()  # passed to every compile (tiny: fast, unoptimized)
  devices_runs: int = 8  # runs per program in the runs-over-devices section
  ledger_slice: bool = True  # time a slice of the quick ledger on every device vs one (bn.bench.ledger_slice); not in tiny


FULL = Settings(
    mode="full", repeats=7, min_time=0.2, layer_shapes=((256, 32, 32, 64), (60, 100)),
    ioffe_steps=1000, ioffe_train_size=60000, ioffe_widths=(100, 100, 100), ioffe_image=28,
    resnet=True, resnet_steps=1, resnet_batch=128, resnet_image=32, resnet_widths=(16, 32, 64), resnet_blocks=3, resnet_train_size=10000, resnet_repeats=3,
    matmul_n=2048, seeds=(1, 2, 4, 8, 16), seeds_steps=200, ledger=True, gpu_steps=50,
)
QUICK = dataclasses.replace(
    FULL, mode="quick", repeats=5, min_time=0.05, layer_shapes=((32, 32, 32, 64), (60, 100)),
    ioffe_steps=200, resnet_batch=8, resnet_repeats=2, matmul_n=1024, seeds_steps=50, ledger=False, gpu_steps=20,
    ledger_timings="reproduce/timings.json",
)
TINY = dataclasses.replace(  # for tests: structure only, numbers meaningless; no ResNet (its compile alone takes ~10 s)
    FULL, mode="tiny", repeats=2, min_time=0.0, layer_shapes=((6, 10),),
    ioffe_steps=3, ioffe_train_size=600, ioffe_widths=(16, 16), ioffe_image=8,
    resnet=False, resnet_steps=1, resnet_batch=8, resnet_image=8, resnet_widths=(4, 8, 8), resnet_blocks=1,
    resnet_train_size=64, matmul_n=64, seeds=(1, 2), seeds_steps=3, ledger=False, gpu_steps=2, devices_runs=3, ledger_slice=False,
    compiler_options=(("xla_backend_optimization_level", 0), ("xla_llvm_disable_expensive_passes", True)),
)
MODES = {"full": FULL, "quick": QUICK, "tiny": TINY}


# ----------------------------------------------------------------------------- timing


def log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", file=sys.stderr, flush=True)


def compile_timed(s: Settings, fn, *args) -> tuple[Any, float]:
  """``(compiled, seconds)`` for a ``jax.jit``-wrapped ``fn`` lowered on ``args``, with the mode's compiler options."""
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile(compiler_options=dict(s.compiler_options) or None)
  return compiled, time.perf_counter() - t0


def summarize(times: list[float]) -> dict:
  t = np.asarray(times, np.float64)
  q1, med, q3 = np.percentile(t, [25, 50, 75])
  return {"median_s": float(med), "min_s": float(t.min()), "max_s": float(t.max()), "q1_s": float(q1), "q3_s": float(q3), "repeats": len(t)}


def measure(fns: dict[str, Callable[[], Any]], s: Settings, *, per_call: float = 1.0, repeats: int | None = None) -> dict[str, dict]:
  """Round-robin timing of a group. Each ``fn()`` does one unit of work and returns
  something to block on; times are divided by ``per_call`` (e.g. steps per chunk).

  Every member is called once to warm up (caches, allocator, first-run effects), and
  once more to choose its calls per repeat unless the warm-up alone lasted ``min_time``.
  Returns ``{name: summary}`` with ``times_s`` (per repeat) and ``calls`` (per repeat)."""
  calls = {}
  for name, fn in fns.items():
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    once = time.perf_counter() - t0
    if once < s.min_time or s.min_time == 0:
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      once = time.perf_counter() - t0
    calls[name] = max(1, math.ceil(s.min_time / max(once, 1e-9)))
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats or s.repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      for _ in range(calls[name]):
        jax.block_until_ready(fn())
      times[name].append((time.perf_counter() - t0) / calls[name] / per_call)
  return {name: {**summarize(t), "times_s": t, "calls": calls[name]} for name, t in times.items()}


def ratio(a: dict, b: dict) -> dict:
  """Median ratio ``a / b`` and the range of the paired per-repeat ratios."""
  paired = np.asarray(a["times_s"]) / np.asarray(b["times_s"])
  return {"ratio": a["median_s"] / b["median_s"], "paired_min": float(paired.min()), "paired_max": float(paired.max())}


def load_avg() -> list[float]:
  return [round(v, 2) for v in os.getloadavg()]


def meets(value: float, threshold: str) -> bool:
  """Whether ``value`` satisfies ``threshold``, a string that starts with ``<=``, ``<``, ``>=`` or
  ``>`` and a number (``"<= 1.05x"``, ``">= 0.70x"``, ``"<= 10 s on CPU"``)."""
  m = re.match(r"^\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+)", threshold)
  if not m:
    raise ValueError(f"threshold {threshold!r}: expected '<= N', '< N', '>= N' or '> N' first")
  op, bound = m.group(1), float(m.group(2))
  return {"<=": value <= bound, "<": value < bound, ">=": value >= bound, ">": value > bound}[op]


def target(tid: str, what: str, threshold: str, value: float | None, note: str = "", *, applies: bool = True) -> dict:
  """A target's row. Its status follows from ``value`` and ``threshold`` alone (:func:`meets`):
  ``not run`` without a measurement or where the target does not apply (``applies=False``)."""
  if value is None or not applies:
    status = "not run"
  else:
    status = "met" if meets(float(value), threshold) else "not met"
  return {"id": tid, "target": what, "threshold": threshold, "measured": value, "status": status, "note": note}


def noise_note(r: dict | None) -> str:
  if not r:
    return ""
  return f"paired ratios {r['paired_min']:.2f}-{r['paired_max']:.2f}"
