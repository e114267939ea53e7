"""``bn bench``: the performance suite -> ``DIR/bench.json`` and ``DIR/bench.md``.

    bn bench [--quick] --out DIR

Sections (the cases live in :mod:`bn.bench_cases`, the GPU ones in :mod:`bn.bench_gpu`):

1. ``bn_layer``: one BN layer, forward and forward+backward, train and eval,
   float32 and bfloat16: ``bn.batch_norm`` vs ``flax.linen.BatchNorm`` vs no
   normalization (a per-feature bias add).
2. ``train_step``: the Ioffe MLP and ResNet-20: the engine (``bn.train``
   chunks) vs a reference loop written the usual way (Flax Linen +
   ``nn.BatchNorm`` + optax, ``jit`` per step, batches from the host) vs the
   same reference under ``lax.scan``; the engine without normalization and
   with a linear net of the same shapes (the matmul-only floor).
3. ``roofline``: fp32 matmul peak, XLA's FLOP count of one Ioffe step, the
   fraction of peak the engine reaches.
4. ``seeds``: N runs in one vmapped program vs N runs one after another.
5. ``e2e``: the quick claims ledger timed by experiment (not with ``--quick``).
6. ``gpu``: only on a GPU backend.

Method: every comparison is one *group* of programs compiled first (compile
time reported separately), warmed up, then timed round-robin -- repeat ``r``
of every member runs before repeat ``r + 1`` of any -- so a change of machine
load hits all members alike. Each member's call count per repeat is chosen so
that a repeat lasts at least ``min_time``. Reported: the median over repeats,
min/max and the interquartile range; ratios are medians divided by the
reference's median *from the same group*, with the range of the per-repeat
(paired) ratios. The load average is recorded next to every group: numbers
taken on a loaded machine are unreliable.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from bn import artifacts


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
  """Sizes of one bench mode; ``full`` is the default, ``quick`` fits in ~5 min on 2 CPU cores."""

  mode: str
  repeats: int
  min_time: float  # seconds per timed repeat (calls are batched up to this)
  layer_shapes: tuple[tuple[int, ...], ...]
  ioffe_steps: int  # steps per timed chunk (also for the vmapped seeds)
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
  seeds: tuple[int, ...]
  ledger: bool
  gpu_steps: int
  ledger_timings: str = ""  # when the ledger is not run: report this quick ledger's timings.json instead (labelled)
  compiler_options: tuple[tuple[str, Any], ...] = ()  # passed to every compile (tiny: fast, unoptimized)


FULL = Settings(
    mode="full", repeats=7, min_time=0.2, layer_shapes=((256, 32, 32, 64), (60, 100)),
    ioffe_steps=1000, ioffe_train_size=60000, ioffe_widths=(100, 100, 100), ioffe_image=28,
    resnet=True, resnet_steps=1, resnet_batch=128, resnet_image=32, resnet_widths=(16, 32, 64), resnet_blocks=3, resnet_train_size=10000, resnet_repeats=3,
    matmul_n=2048, seeds=(1, 4, 8), ledger=True, gpu_steps=50,
)
QUICK = dataclasses.replace(
    FULL, mode="quick", repeats=5, min_time=0.05, layer_shapes=((32, 32, 32, 64), (60, 100)),
    ioffe_steps=200, resnet_batch=8, resnet_repeats=2, matmul_n=1024, ledger=False, gpu_steps=20,
    ledger_timings="reproduce/timings.json",
)
TINY = dataclasses.replace(  # for tests: structure only, numbers meaningless; no ResNet (its compile alone takes ~10 s)
    FULL, mode="tiny", repeats=2, min_time=0.0, layer_shapes=((6, 10),),
    ioffe_steps=3, ioffe_train_size=600, ioffe_widths=(16, 16), ioffe_image=8,
    resnet=False, resnet_steps=1, resnet_batch=8, resnet_image=8, resnet_widths=(4, 8, 8), resnet_blocks=1,
    resnet_train_size=64, matmul_n=64, seeds=(1, 2), ledger=False, gpu_steps=2,
    compiler_options=(("xla_backend_optimization_level", 0), ("xla_llvm_disable_expensive_passes", True)),
)
MODES = {"full": FULL, "quick": QUICK, "tiny": TINY}


# ----------------------------------------------------------------------------- timing


def log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", file=sys.stderr, flush=True)


_COMPILER_OPTIONS: dict = {}  # set by run_bench from Settings.compiler_options


def compile_timed(fn, *args) -> tuple[Any, float]:
  """``(compiled, seconds)`` for a ``jax.jit``-wrapped ``fn`` lowered on ``args``."""
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile(compiler_options=dict(_COMPILER_OPTIONS) or None)
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


# ----------------------------------------------------------------------------- targets


def target(tid: str, what: str, threshold: str, value: float | None, ok: bool | None, note: str = "") -> dict:
  status = "not run" if ok is None else ("met" if ok else "not met")
  return {"id": tid, "target": what, "threshold": threshold, "measured": value, "status": status, "note": note}


def _noise_note(r: dict | None) -> str:
  if not r:
    return ""
  return f"paired ratios {r['paired_min']:.2f}-{r['paired_max']:.2f}"


def targets(res: dict) -> list[dict]:
  """Every target of the issue, with a status; a missing measurement is ``not run``."""
  out = []
  layer = res.get("bn_layer", {}).get("cases", [])
  if layer:
    rs = [c["ratio_bn_vs_flax"]["ratio"] for c in layer]
    met = sum(r <= 1.0 for r in rs)
    worst = max(layer, key=lambda c: c["ratio_bn_vs_flax"]["ratio"])
    slower = sum(c["ratio_bn_vs_flax"]["paired_min"] > 1.0 for c in layer)  # slower in every repeat
    note = (f"{met}/{len(rs)} cases met, {slower} slower in every repeat; worst {worst['case']} "
            f"({_noise_note(worst['ratio_bn_vs_flax'])})")
    out.append(target("bn_layer_vs_flax", "bn.batch_norm vs flax.linen.BatchNorm, every layer case", "<= 1.00x", max(rs), met == len(rs), note))
  else:
    out.append(target("bn_layer_vs_flax", "bn.batch_norm vs flax.linen.BatchNorm, every layer case", "<= 1.00x", None, None))
  io = res.get("train_step", {}).get("ioffe", {})
  r = io.get("ratios", {}).get("engine_vs_engine_none")
  out.append(target("bn_overhead_ioffe", "Ioffe step: engine with BN vs engine without normalization", "<= 1.05x",
                    r and r["ratio"], r and r["ratio"] <= 1.05, _noise_note(r)))
  r = io.get("ratios", {}).get("engine_vs_matmul_only")
  out.append(target("ioffe_vs_matmul_only", "Ioffe step: engine vs matmul-only step (linear net, same engine)", "<= 1.20x",
                    r and r["ratio"], r and r["ratio"] <= 1.2, _noise_note(r)))
  sd = res.get("seeds", {})
  r = sd.get("ratio_at_max_n")
  out.append(target("vmapped_seeds", f"cost per run-step, N={sd.get('max_n', 8)} seeds vmapped vs one after another", "<= 0.50x",
                    r and r["ratio"], r and r["ratio"] <= 0.5, _noise_note(r)))
  comp = io.get("compile_s", {}).get("engine")
  on_cpu = jax.default_backend() == "cpu"
  out.append(target("compile_time", "compile time of one experiment's program (Ioffe engine chunk)", "<= 10 s on CPU",
                    comp, (comp <= 10.0) if (comp is not None and on_cpu) else None, "" if on_cpu else "CPU target; measured on " + jax.default_backend()))
  out += res.get("gpu", {}).get("targets") or [
      target("gpu_bn_bandwidth", "GPU: BN layer (train forward) bandwidth vs device copy bandwidth", ">= 0.70x", None, None, "not run (no GPU)"),
      target("gpu_resnet20_vs_torch", "GPU: ResNet-20 images/s, JAX engine vs PyTorch", ">= 1.00x", None, None, "not run (no torch/GPU)"),
      target("gpu_airbench_vs_torch", "GPU: airbench-style net images/s, JAX engine vs PyTorch", ">= 1.00x", None, None, "not run (no torch/GPU)"),
  ]
  return out


# ----------------------------------------------------------------------------- markdown


def _us(t: dict | None) -> str:
  """``median [min-max]`` of a timing summary, in a readable unit."""
  if not t:
    return "-"
  m = t["median_s"]
  scale, unit = (1e3, "ms") if m >= 1e-3 else (1e6, "us")
  return f"{m * scale:.3g} [{t['min_s'] * scale:.3g}-{t['max_s'] * scale:.3g}] {unit}"


def _x(r: dict | None) -> str:
  return "-" if not r else f"{r['ratio']:.2f}x ({r['paired_min']:.2f}-{r['paired_max']:.2f})"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
  return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def markdown(res: dict) -> str:
  m = res["meta"]
  L = [f"# bn bench ({m['mode']})", ""]
  L += [f"{m['date']} - {m['backend']} ({m['device']}, {m['device_count']} device(s)); CPU {m['cpu']} x {m['cpu_count']}; "
        f"Python {m['python']}, jax {m['jax']}, flax {m['flax']}, optax {m['optax']}, numpy {m['numpy']}; commit {m['git_commit']}.", ""]
  L += [f"Load average (1/5/15 min) at start {m['load_avg_start']}, at end {m.get('load_avg_end')}; each group's own is in its table. "
        f"Runtime {m.get('runtime_s', 0):.0f} s.", ""]
  L += ["Times: median [min-max] over repeats, after warm-up; compile time separate. Ratios: median / median of the "
        "reference measured in the same round-robin group, with the range of per-repeat paired ratios.", ""]
  L += ["## Targets", ""]
  L += _table(["target", "threshold", "measured", "status", "note"],
              [[t["target"], t["threshold"], "-" if t["measured"] is None else f"{t['measured']:.3g}", t["status"], t["note"]] for t in res["targets"]])
  b = res.get("bn_layer", {})
  if b.get("cases"):
    L += ["", "## 1. One BN layer", "", "bn = `bn.batch_norm(variance='fast')` (Flax's estimator); bn 2-pass = its default two-pass variance; "
          "flax = `flax.linen.BatchNorm(dtype=x.dtype)`; none = per-feature bias add. Ratios against flax."]
    if b.get("note"):
      L += ["", f"Note: {b['note']}."]
    L += [""] + _table(["case", "flax", "bn / flax", "bn 2-pass / flax", "none / flax", "load"],
                       [[c["case"], _us(c["time"]["flax"]), _x(c["ratio_bn_vs_flax"]), _x(c.get("ratio_bn_two_pass_vs_flax")),
                         _x(c["ratio_none_vs_flax"]), c["load_avg"][0]] for c in b["cases"]])
  ts = res.get("train_step", {})
  for name, title in (("ioffe", "Ioffe MLP (784-100-100-100-10 sigmoid, BN, batch 60)"), ("resnet20", "ResNet-20")):
    g = ts.get(name)
    if not g:
      continue
    L += ["", f"## 2. Training step: {title}", "", f"{g['data']}; {g['steps_per_chunk']} steps per timed call; load {g['load_avg']}.", ""]
    rows = []
    for k, t in g["time_per_step"].items():
      r = g["ratios"].get(f"{k}_vs_reference")
      rows.append([k, _us(t), f"{1 / t['median_s']:.4g}", "1.00x" if k == "reference" else _x(r), f"{g['compile_s'].get(k, 0):.1f}"])
    L += _table(["program", "time per step", "steps/s", "vs reference", "compile s"], rows)
    extra = [[k, _x(r)] for k, r in g["ratios"].items() if not k.endswith("_vs_reference")]
    if extra:
      L += [""] + _table(["ratio", "value"], extra)
  L += ["", "engine = `bn.train.vmapped_chunk` with one run, as `bn train` runs it (device-resident data and sampler, divergence guard; lax.scan over steps, except a host loop over one jitted step for conv models on CPU: `bn.train.resolve_layout`); "
        "reference = Flax Linen + nn.BatchNorm + optax, jit per step, batches sliced on the host; reference_scan = the same "
        "step under lax.scan over device-resident data with host-drawn indices; engine_none = no normalization; "
        "matmul_only = a linear net of the same shapes in the engine (same sampling and optimizer)."]
  r = res.get("roofline", {})
  if r:
    L += ["", "## 3. Roofline", ""]
    L += [f"- fp32 matmul {r['matmul_n']}^3: {r['peak_flops'] / 1e9:.1f} GFLOP/s median (best {r['best_flops'] / 1e9:.1f}); load {r['load_avg']}."]
    for k, f in r.get("flops_per_step", {}).items():
      frac = r.get("fraction_of_peak", {}).get(k)
      L += [f"- {k} step: {f / 1e6:.2f} MFLOP (XLA cost analysis)" + ("" if frac is None else f", {100 * frac:.1f}% of the matmul peak")]
    if r.get("floor_at_peak_s"):
      L += [f"- floor at peak for the engine step: {r['floor_at_peak_s'] * 1e6:.0f} us; engine / matmul-only step: {_x(r.get('engine_vs_matmul_only'))}"]
  sd = res.get("seeds", {})
  if sd.get("rows"):
    L += ["", "## 4. Many runs at once (Ioffe MLP)", "", f"{sd['steps_per_chunk']} steps per call; load {sd['load_avg']}.", ""]
    L += _table(["N seeds", "time per step", "per run-step", "vs sequential", "compile s"],
                [[x["n"], _us(x["time_per_step"]), _us(x["time_per_run_step"]), _x(x["ratio_vs_sequential"]), f"{x['compile_s']:.1f}"] for x in sd["rows"]])
  e = res.get("e2e", {})
  L += ["", "## 5. End to end (quick ledger)", ""]
  if e.get("status") in ("run", "read"):
    L += _table(["experiment", "seconds"], [[k, f"{v:.1f}"] for k, v in e["timings_s"].items()]) + ["", f"load {e['load_avg']}"]
    L += [e["note"]] if e.get("note") else []
  else:
    L += [f"{e.get('status', 'not run')}: {e.get('note', '')}"]
  g = res.get("gpu", {})
  L += ["", "## 6. GPU", ""]
  if g.get("status") != "run":
    L += [f"{g.get('status', 'not run')}: {g.get('note', '')}"]
  else:
    L += _table(["net", "program", "images/s", "time per step", "compile s"],
                [[x["net"], x["program"], f"{x['images_per_s']:.4g}", _us(x["time_per_step"]), f"{x.get('compile_s', 0):.1f}"] for x in g["nets"]])
    bw = g.get("bandwidth", {})
    if bw:
      L += [""] + _table(["layer pass", "GB/s", "vs copy"], [[k, f"{v['gbps']:.1f}", f"{v['vs_copy']:.2f}x"] for k, v in bw.items()])
    if g.get("torch_note"):
      L += ["", g["torch_note"]]
  return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------- the run


def machine() -> dict:
  import flax
  import optax

  dev = jax.devices()[0]
  cpu = ""
  try:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
  except OSError:
    pass
  return {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "backend": jax.default_backend(), "device": getattr(dev, "device_kind", str(dev)), "device_count": jax.device_count(),
      "cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
      "python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
      "numpy": np.__version__, "git_commit": artifacts.provenance().get("git_commit"),
  }


def run_bench(s: Settings, out: str | os.PathLike) -> dict:
  """Runs every section of mode ``s``, writes ``out/bench.json`` and ``out/bench.md``; returns the results."""
  from bn import bench_cases, bench_gpu

  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  t_all = time.perf_counter()
  bench_cases.reset()
  _COMPILER_OPTIONS.clear()
  _COMPILER_OPTIONS.update(s.compiler_options)
  res: dict[str, Any] = {"meta": {**machine(), "mode": s.mode, "settings": dataclasses.asdict(s), "load_avg_start": load_avg()}}
  sections = [
      ("bn_layer", bench_cases.bn_layer),
      ("train_step", bench_cases.train_steps),
      ("roofline", bench_cases.roofline),
      ("seeds", bench_cases.seeds),
      ("e2e", bench_cases.end_to_end),
      ("gpu", bench_gpu.gpu_section),
  ]
  for name, fn in sections:
    log(f"section {name} ...")
    t0 = time.perf_counter()
    res[name] = fn(s, res)
    res[name]["section_time_s"] = time.perf_counter() - t0
    log(f"section {name} done in {time.perf_counter() - t0:.1f}s")
  bench_cases.reset()
  _COMPILER_OPTIONS.clear()
  res["targets"] = targets(res)
  res["meta"]["load_avg_end"] = load_avg()
  res["meta"]["runtime_s"] = time.perf_counter() - t_all
  artifacts.write_json(out / "bench.json", res)
  artifacts.atomic_write_text(out / "bench.md", markdown(res))
  return res


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="bn bench", description="Performance suite: BN layer, training steps, roofline, vmapped seeds, end to end, GPU.")
  g = p.add_mutually_exclusive_group()
  g.add_argument("--quick", dest="mode", action="store_const", const="quick", help="smaller shapes and fewer repeats (< 5 min on a 2-core CPU)")
  g.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help=argparse.SUPPRESS)  # tests: structure only
  p.add_argument("--out", required=True, help="output directory for bench.json and bench.md")
  a = p.parse_args(argv)
  s = MODES[a.mode or "full"]
  res = run_bench(s, a.out)
  for t in res["targets"]:
    shown = "-" if t["measured"] is None else f"{t['measured']:.3g}"
    print(f"{t['status']:>8}  {t['id']:<24} {shown:>8} ({t['threshold']})")
  print(f"bench: {Path(a.out) / 'bench.md'} ({res['meta']['runtime_s']:.0f}s)")
  return 0
