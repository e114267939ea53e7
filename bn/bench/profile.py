"""Profiles behind docs/benchmarks.md: what each piece of the engine's step costs, and where a
training step's time goes, by XLA kernel.

    python -m bn.bench.profile ablation [--steps 200] [--repeats 9]
    python -m bn.bench.profile kernels [--steps 100] [--seeds 8] [--calls 3]

``ablation`` times, round-robin in one group (:func:`bn.bench.core.measure`), the Ioffe step
with one piece of the engine removed or changed at a time: :func:`ablation_step` is
:func:`bn.train.step_on` written out with switches, checked to give its numbers with every
switch on. Members: the engine before this change (a ``lax.scan`` of the guarded
:func:`bn.train.train_step`: per-step sampler ``lax.cond``, per-step guard), the engine now
(:func:`bn.programs.chunk`), and the step without each of: the divergence guard, the per-step
sampler cond, the accuracy metric, the optimizer chain's weight decay / schedule / per-layer
multipliers (``optax.sgd`` instead), BN's two-pass variance (Flax's estimator instead); plus
``reference_scan``.

``kernels``:
runs each program under ``jax.profiler`` (a Perfetto trace), sums every XLA kernel's
duration per step and groups the kernels by what they compute (read from the compiled HLO):
matmuls (first layer / other), the batch gather, copies and transposes, the rest
(elementwise and reductions: BN, activations, loss, optimizer), and -- not counted in the
total -- loop/cond bookkeeping and waits for a thread pool. Programs: the engine's Ioffe
chunk, ``reference_scan`` (the same step written the usual way, under ``lax.scan``), and N
vmapped runs with independent and with shared data order.

Kernel times are summed over threads (work, not wall time); on a loaded machine they include
preemption, so compare programs profiled in one process, as here, and read the median column.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bn import experiment, pipeline, programs, train
from bn.bench import cases, core

CATEGORIES = ("matmul, first layer", "matmul, other", "gather", "copy/transpose", "elementwise/reduce", "loop/control/wait")


def kernel_times(fn, calls: int) -> dict[str, list[float]]:
  """Durations (us) of every XLA kernel over ``calls`` calls of ``fn`` (after one warm-up call)."""
  jax.block_until_ready(fn())
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(calls):
        jax.block_until_ready(fn())
    (path,) = glob.glob(f"{d}/**/perfetto_trace.json.gz", recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
  out: dict[str, list[float]] = collections.defaultdict(list)
  for e in events:
    if e.get("ph") != "X" or not threads.get((e["pid"], e["tid"]), "").startswith("tf_XLA") or "Execute" in e["name"]:
      continue
    out[e["name"]].append(float(e["dur"]))
  return out


def _computations(hlo: str) -> dict[str, str]:
  """Every computation's body text by name."""
  out, name, lines = {}, None, []
  for line in hlo.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if m:
      name, lines = m.group(1), []
    elif line.startswith("}") and name:
      out[name] = "\n".join(lines)
      name = None
    elif name:
      lines.append(line)
  return out


def categorize(hlo: str, first_layer_dim: int) -> dict[str, str]:
  """Kernel name -> category, from the compiled HLO text; a matmul with a dimension of size
  ``first_layer_dim`` (the input features, 784) is the first layer's."""
  comps = _computations(hlo)
  cat = {}
  for line in hlo.splitlines():
    m = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?)(?:\{[^}]*\})? (\w[\w\-]*)\((.*)", line)
    if not m:
      continue
    name, _, op, rest = m.groups()
    called = re.search(r"calls=%([\w.\-]+)", rest)
    body = comps.get(called.group(1), "") if called else ""
    first = re.search(rf"[\[,]{first_layer_dim}[\],]", line + body) is not None
    if op == "dot" or " dot(" in body or "convolution(" in line + body:
      cat[name] = "matmul, first layer" if first else "matmul, other"
    elif "gather" in name:
      cat[name] = "gather"
    elif op in ("copy", "transpose") or name.startswith(("copy", "transpose")) or "transpose" in name:
      cat[name] = "copy/transpose"
    elif op in ("while", "conditional", "call"):
      cat[name] = "loop/control/wait"
    else:
      cat[name] = "elementwise/reduce"
  return cat


def profile(fn, compiled, steps: int, calls: int, first_layer_dim: int = 784) -> dict:
  """Per step: total kernel time, by category, and the largest kernels (median and 10th percentile)."""
  times = kernel_times(fn, calls)
  cat = categorize(compiled.as_text(), first_layer_dim)
  per_step = {k: (np.median(v) * len(v) / calls / steps, np.percentile(v, 10) * len(v) / calls / steps, len(v) / calls / steps)
              for k, v in times.items()}
  def category(k):  # loops, conds and thread-pool waits are not kernels (loops' tuple shapes escape the HLO parse)
    if k.startswith(("while", "cond")) or "Await" in k or "ThreadPool" in k:
      return "loop/control/wait"
    return cat.get(k, "elementwise/reduce")

  by_cat = collections.defaultdict(float)
  for k, (med, _, _) in per_step.items():
    by_cat[category(k)] += med
  kernels = sum(c >= 0.5 for k, (_, _, c) in per_step.items() if category(k) != "loop/control/wait")  # launched about once a step or more
  top = sorted(per_step.items(), key=lambda kv: -kv[1][0])[:12]
  return {"total_us": sum(v for c, v in by_cat.items() if c != "loop/control/wait"), "by_category_us": dict(by_cat), "kernels_per_step": kernels,
          "top": [(k, round(m, 1), round(p, 1), category(k)) for k, (m, p, _) in top]}


def _engine(s, n: int, shared: bool, steps: int, x, y):
  task = experiment.from_config(cases.ioffe_config(s)).make_task(10)._replace(shared_order=shared)

  def init():
    return programs.init(task, x.shape[0])(np.arange(n, dtype=np.int32), np.full(n, 0.5, np.float32), np.zeros(n, np.float32), x[:2])

  compiled = programs.chunk(task, steps).lower(init(), x, y).compile()
  box = [init()]

  def call():
    box[0], m = compiled(box[0], x, y)
    return m

  return call, compiled


# ----------------------------------------------------------------------------- ablation


def ablation_step(task, state, idx, images, labels, *, guard=True, accuracy=True, optimizer="engine"):
  """:func:`bn.train.step_on` written out with switches (one run, no data parallelism):
  ``guard`` -- the divergence guard; ``accuracy`` -- the per-step accuracy metric;
  ``optimizer`` -- ``"engine"`` (:func:`bn.train.update_rule`) or ``"sgd"`` (``optax.sgd`` at the
  run's LR: no weight-decay term, schedule or per-layer multipliers)."""
  key = jax.random.fold_in(state.key, state.step)
  k_aug, k_noise = jax.random.split(key)
  x, y = images[idx], labels[idx]
  if task.augment:
    x = pipeline.augment(k_aug, x)
  grad_fn = jax.value_and_grad(lambda p: train.loss_and_updates(task, p, state.batch_stats, x, y, k_noise, state.step), has_aux=True)
  (loss, (batch_stats, logits)), grads = grad_fn(state.params)
  if optimizer == "engine":
    updates, opt_state = train.update_rule(task, state.hparams).update(grads, state.opt_state, state.params)
  else:
    updates, opt_state = jax.tree.map(lambda g: -state.hparams.lr * g, grads), state.opt_state
  params = optax.apply_updates(state.params, updates)
  acc = jnp.mean(jnp.argmax(logits, -1) == y) if accuracy else jnp.zeros(())
  new = state._replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
  if not guard:
    return new, train.StepMetrics(loss, acc)
  alive = state.diverged_step < 0
  ok = jnp.isfinite(loss) & train._all_finite(params)
  keep = alive & ok
  kept = train._tree_where(keep, (params, batch_stats, opt_state), (state.params, state.batch_stats, state.opt_state))
  new = new._replace(params=kept[0], batch_stats=kept[1], opt_state=kept[2], diverged_step=jnp.where(alive & ~ok, state.step, state.diverged_step))
  nan = jnp.full((), jnp.nan)
  return new, train.StepMetrics(jnp.where(alive, loss, nan), jnp.where(alive, acc, nan))


def _ablation_chunk(task, steps: int, *, per_step_sampler: bool, **switches):
  """A one-run chunk of :func:`ablation_step`: batches from the per-step sampler (its ``lax.cond``)
  or drawn for the chunk at once (:func:`bn.pipeline.sampler_take`)."""
  def chunk(state, images, labels):
    if per_step_sampler:
      def body(s, _):
        idx, sampler = pipeline.sampler_next(s.sampler, task.batch_size)
        new, m = ablation_step(task, s, idx, images, labels, **switches)
        return new._replace(sampler=sampler), m
      return jax.lax.scan(body, state, None, length=steps)
    idx, sampler = pipeline.sampler_take(state.sampler, task.batch_size, steps)
    new, m = jax.lax.scan(lambda s, i: ablation_step(task, s, i, images, labels, **switches), state, idx)
    return new._replace(sampler=sampler), m
  return chunk


ABLATIONS = {  # name -> (what, per_step_sampler, switches); "engine now" and "reference_scan" are added by ablation()
    "before": ("the engine before: per-step sampler cond and guard (a scan of train.train_step)", True, {}),
    "no guard": ("per-step sampler, no divergence guard", True, {"guard": False}),
    "no sampler cond": ("batches drawn per chunk, guard every step", False, {}),
    "neither": ("batches drawn per chunk, no guard (= the engine's path while no run diverges)", False, {"guard": False}),
    "neither, no accuracy": ("... and no accuracy metric", False, {"guard": False, "accuracy": False}),
    "neither, optax.sgd": ("... and optax.sgd instead of the engine's optimizer chain", False, {"guard": False, "optimizer": "sgd"}),
}


def ablation(steps: int = 200, repeats: int = 9) -> dict:
  """Times every ablation member round-robin; returns ``{name: {"what", "time", "vs_before", "vs_reference_scan"}}``."""
  import dataclasses

  s = dataclasses.replace(core.QUICK, repeats=repeats, min_time=0.3)
  xh, yh, xd, yd = cases._data(s.ioffe_train_size, (s.ioffe_image, s.ioffe_image, 1))
  cfgs = {"two_pass": cases.ioffe_config(s), "fast": cases.ioffe_config(s, variance="fast")}
  tasks = {k: experiment.from_config(c).make_task(10) for k, c in cfgs.items()}

  def one_run(task):
    st = programs.init(task, xd.shape[0])(np.zeros(1, np.int32), np.full(1, 0.5, np.float32), np.zeros(1, np.float32), xd[:2])
    return programs.take_run(st, 0)

  def member(chunk_fn, task, stacked=False):
    init = (lambda: jax.tree.map(lambda v: v, programs.init(task, xd.shape[0])(np.zeros(1, np.int32), np.full(1, 0.5, np.float32),
                                                                                np.zeros(1, np.float32), xd[:2]))) if stacked else (lambda: one_run(task))
    compiled = (chunk_fn if stacked else jax.jit(chunk_fn, donate_argnums=0)).lower(init(), xd, yd).compile()
    box = [init()]

    def call():
      box[0], m = compiled(box[0], xd, yd)
      return m
    return call

  # the written-out step gives the engine's numbers with every switch on
  task = tasks["two_pass"]
  a = jax.jit(_ablation_chunk(task, 5, per_step_sampler=False))(one_run(task), xd, yd)
  b = jax.jit(lambda st, x, y: train.steps_on(task, st, pipeline.sampler_take(st.sampler, task.batch_size, 5)[0], x, y))(one_run(task), xd, yd)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), (a[0].params, a[1]), (b[0].params, b[1]))

  what, fns = {}, {}
  for name, (desc, per_step, sw) in ABLATIONS.items():
    what[name], fns[name] = desc, member(_ablation_chunk(task, steps, per_step_sampler=per_step, **sw), task)
  what["neither, Flax's variance"] = "... and BN's variance as Flax computes it (variance='fast') instead of two-pass"
  fns["neither, Flax's variance"] = member(_ablation_chunk(tasks["fast"], steps, per_step_sampler=False, guard=False), tasks["fast"])
  what["engine now"], fns["engine now"] = "bn.programs.chunk (one run)", member(programs.chunk(task, steps), task, stacked=True)
  what["reference_scan"] = "the plain Flax step under lax.scan (bn bench)"
  _, fns["reference_scan"], _ = cases._reference(s, cases.RefMLP(tuple(s.ioffe_widths)), optax.sgd(0.5), xh, yh, xd, yd, 60, steps)
  la = core.load_avg()
  t = core.measure(fns, s, per_call=steps)
  out = {k: {"what": what[k], "time": t[k], "vs_before": core.ratio(t[k], t["before"]), "vs_reference_scan": core.ratio(t[k], t["reference_scan"])}
         for k in fns}
  out["_meta"] = {"load_avg_start": la, "load_avg_end": core.load_avg(), "steps": steps, "repeats": repeats}
  return out


def _x(r):
  return f"{r['ratio']:.2f}x ({r['paired_min']:.2f}-{r['paired_max']:.2f})"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m bn.bench.profile", description=__doc__.split("\n\n")[0])
  ap.add_argument("what", choices=("ablation", "kernels"))
  ap.add_argument("--steps", type=int, default=None, help="steps per call (ablation 200, kernels 100)")
  ap.add_argument("--seeds", type=int, default=8)
  ap.add_argument("--calls", type=int, default=3)
  ap.add_argument("--repeats", type=int, default=9)
  a = ap.parse_args(argv)
  if a.what == "ablation":
    res = ablation(a.steps or 200, a.repeats)
    meta = res.pop("_meta")
    print(f"load {meta['load_avg_start']} -> {meta['load_avg_end']}; {meta['steps']} steps per call, {meta['repeats']} repeats")
    print("| program | what | time per step | vs before | vs reference_scan |")
    print("|---|---|---|---|---|")
    for k, r in res.items():
      print(f"| {k} | {r['what']} | {r['time']['median_s'] * 1e6:.0f} us | {_x(r['vs_before'])} | {_x(r['vs_reference_scan'])} |")
    return 0
  return kernels(a.steps or 100, a.seeds, a.calls)


MATMULS = {  # (batch of runs or None, m, k, n): the Ioffe step's matmul shapes, one run and 8 runs
    "first layer, one run: 60x784 @ 784x100": (None, 60, 784, 100),
    "first layer, 8 runs sharing x: 60x784 @ 784x800": (None, 60, 784, 800),
    "first layer, 8 runs, own x: 8 x (60x784 @ 784x100)": (8, 60, 784, 100),
    "hidden layer, one run: 60x100 @ 100x100": (None, 60, 100, 100),
    "hidden layer, 8 runs: 8 x (60x100 @ 100x100)": (8, 60, 100, 100),
    "square 1024^3": (None, 1024, 1024, 1024),
}


def matmul_rates(repeats: int = 7) -> dict[str, float]:
  """GFLOP/s of float32 matmuls of the step's shapes, each in a ``fori_loop`` of ~0.2 GFLOP  with a new
  left operand every iteration (round-robin; the loop adds one elementwise pass per matmul)."""
  import dataclasses

  s = dataclasses.replace(core.QUICK, repeats=repeats, min_time=0.2)
  fns, flops = {}, {}
  for name, (r, m, k, n) in MATMULS.items():
    lead = () if r is None else (r,)
    reps = max(1, int(2e8 // (2 * m * k * n * (r or 1))))
    a = jax.random.normal(jax.random.PRNGKey(0), (reps,) + lead + (m, k))  # a new left operand every iteration: nothing to hoist
    b = jax.random.normal(jax.random.PRNGKey(1), lead + (k, n))
    f = jax.jit(lambda a, b, reps=reps, shape=lead + (m, n): jax.lax.fori_loop(
        0, reps, lambda i, c: c + jnp.matmul(jax.lax.dynamic_index_in_dim(a, i, keepdims=False), b), jnp.zeros(shape)))
    compiled = f.lower(a, b).compile()
    fns[name] = lambda c=compiled, a=a, b=b: c(a, b)
    flops[name] = 2 * m * k * n * (r or 1) * reps
  t = core.measure(fns, s)
  return {name: flops[name] / t[name]["median_s"] / 1e9 for name in fns}


def kernels(steps: int, seeds: int, calls: int) -> int:
  s = core.QUICK
  print(f"load {core.load_avg()}; float32 matmul throughput (GFLOP/s, median):")
  for name, rate in matmul_rates().items():
    print(f"  {name:52s} {rate:6.1f}")
  xh, yh, xd, yd = cases._data(s.ioffe_train_size, (s.ioffe_image, s.ioffe_image, 1))
  progs = {"engine (1 run)": _engine(s, 1, False, steps, xd, yd)}
  progs[f"{seeds} runs, independent order"] = _engine(s, seeds, False, steps, xd, yd)
  progs[f"{seeds} runs, shared order"] = _engine(s, seeds, True, steps, xd, yd)
  model = cases.RefMLP(tuple(s.ioffe_widths))
  v = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(xd[:2])
  st = cases.RefState.create(apply_fn=model.apply, params=v["params"], batch_stats=v["batch_stats"], tx=optax.sgd(0.5))
  scan = jax.jit(lambda st, xs, ys, idx: jax.lax.scan(lambda s_, i: cases.ref_step(s_, xs[i], ys[i]), st, idx))
  hb = cases.HostBatches(xh.shape[0], 60, 1)
  ref = scan.lower(st, xd, yd, hb.many(steps)).compile()
  progs["reference_scan"] = (lambda: ref(st, xd, yd, hb.many(steps)), ref)
  print(f"load {core.load_avg()}; {steps} steps per call, {calls} calls; us per step (per run-step for N runs), median kernel durations")
  rows = {}
  for name, (fn, compiled) in progs.items():
    rows[name] = profile(fn, compiled, steps, calls)
  print("| program | kernels/step | total | " + " | ".join(CATEGORIES) + " |")
  print("|---|" + "---|" * (len(CATEGORIES) + 2))
  for name, r in rows.items():
    n = seeds if "runs," in name else 1
    cells = [f"{r['by_category_us'].get(c, 0.0) / n:.0f}" for c in CATEGORIES]
    print(f"| {name} | {r['kernels_per_step']} | {r['total_us'] / n:.0f} | " + " | ".join(cells) + " |")
  for name, r in rows.items():
    print(f"\n{name}: largest kernels (us per step: median, p10; category)")
    for k, med, p10, c in r["top"]:
      print(f"  {k:32s} {med:8.1f} {p10:8.1f}  {c}")
  print(f"load {core.load_avg()}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
