"""The CPU/GPU-agnostic cases of ``bn bench`` (see :mod:`bn.bench.suite` for the method).

Each section is ``fn(settings, results_so_far) -> dict`` (JSON-safe).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import bn
from bn import artifacts, config as bn_config, experiment, programs, train
from bn.bench.core import compile_timed, load_avg, log, measure, ratio


# ----------------------------------------------------------------------------- 1. one BN layer


DEFAULT_VARIANCE = bn.BNOptions().variance  # what ``bn`` times
LAYER_IMPLS = {  # name -> bn.batch_norm's variance= (None: its default); train mode times all, eval (no estimator) the first three
    "flax": None, "bn": None, "none": None, "bn_fast": "fast", "bn_two_pass": "two_pass",
}


def _layer_fns(impl: str, train_mode: bool, x):
  """``(fwd(x, params, state) -> (y, state), params, state)`` of one implementation."""
  c = x.shape[-1]
  if impl == "flax":
    m = nn.BatchNorm(use_running_average=not train_mode, momentum=0.99, epsilon=1e-5, dtype=x.dtype)
    v = jax.jit(m.init)(jax.random.PRNGKey(0), x)

    def fwd(x, p, st):
      if train_mode:
        y, mut = m.apply({"params": p, "batch_stats": st}, x, mutable=["batch_stats"])
        return y, mut["batch_stats"]
      return m.apply({"params": p, "batch_stats": st}, x), st

    return fwd, v["params"], v["batch_stats"]
  params, state = bn.init(c)
  if impl == "none":  # what a layer without BN keeps: the per-feature bias of its linear map
    return (lambda x, p, st: (x + p.bias.astype(x.dtype).reshape((1,) * (x.ndim - 1) + (c,)), st)), params, state
  variance = {} if LAYER_IMPLS[impl] is None else {"variance": LAYER_IMPLS[impl]}
  return (lambda x, p, st: bn.batch_norm(x, p, st, train=train_mode, momentum=0.99, epsilon=1e-5, **variance)), params, state


def _fwd_bwd(fwd):
  """Forward and backward: gradients w.r.t. input and parameters for a given output cotangent."""

  def f(x, p, st, ct):
    _, vjp, new_st = jax.vjp(lambda x, p: fwd(x, p, st), x, p, has_aux=True)
    return vjp(ct), new_st

  return f


def bn_layer(s, res) -> dict:
  """``bn.batch_norm`` with its default estimator vs ``flax.linen.BatchNorm`` (defaults, ``dtype`` =
  input dtype) vs a bias add; in training also ``bn.batch_norm``'s other estimators, ``"fast"``
  (Flax's) and ``"two_pass"``."""
  cases = []
  key = jax.random.PRNGKey(0)
  for shape in s.layer_shapes:
    for dtype in ("float32", "bfloat16"):
      x = jax.random.normal(key, shape, jnp.float32).astype(dtype)
      ct = jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float32).astype(dtype)
      for mode in ("train", "eval"):
        for pas in ("fwd", "fwd+bwd"):
          impls = tuple(LAYER_IMPLS) if mode == "train" else ("flax", "bn", "none")
          fns, compile_s = {}, {}
          for impl in impls:
            fwd, p, st = _layer_fns(impl, mode == "train", x)
            f, args = (fwd, (x, p, st)) if pas == "fwd" else (_fwd_bwd(fwd), (x, p, st, ct))
            compiled, compile_s[impl] = compile_timed(s, jax.jit(f), *args)
            fns[impl] = functools.partial(compiled, *args)
          la = load_avg()
          t = measure(fns, s)
          case = f"{'x'.join(map(str, shape))} {dtype} {mode} {pas}"
          row = {"case": case, "shape": list(shape), "dtype": dtype, "mode": mode, "pass": pas, "load_avg": la,
                 "time": t, "compile_s": compile_s}
          row.update({f"ratio_{impl}_vs_flax": ratio(t[impl], t["flax"]) for impl in impls if impl != "flax"})
          cases.append(row)
          log(f"bn_layer {case}: flax {t['flax']['median_s'] * 1e3:.3f} ms, bn/flax {row['ratio_bn_vs_flax']['ratio']:.2f}x, "
              f"none/flax {row['ratio_none_vs_flax']['ratio']:.2f}x")
  note = "" if s.mode == "full" else f"{s.mode} mode: NHWC shape {s.layer_shapes[0]} instead of (256, 32, 32, 64), {s.repeats} repeats"
  return {"cases": cases, "note": note, "default_variance": DEFAULT_VARIANCE}


# ----------------------------------------------------------------------------- 2. training steps


def ioffe_config(s, act: str = "sigmoid", **norm):
  """The Ioffe MLP experiment (784-100-100-100-10 sigmoid, BN before the sigmoid, SGD 0.5, batch 60)."""
  c = bn_config.base()
  c.name = "bench_ioffe"
  c.model.update(name="mlp", widths=tuple(s.ioffe_widths), act=act, init_std=0.1)
  c.optimizer.update(name="sgd", lr=0.5)
  c.train.update(batch_size=60)
  c.norm.update(**norm)
  return c


def resnet_config(s):
  """ResNet-20 as experiments/configs/resnet20_cifar.py, without augmentation (the reference has none)."""
  c = bn_config.base()
  c.name = "bench_resnet20"
  c.model = c.model.__class__(dict(name="resnet20", widths=tuple(s.resnet_widths), blocks_per_stage=s.resnet_blocks))
  c.norm.update(kind="batch", momentum=0.9)
  c.optimizer.update(name="momentum", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", warmup=1000)
  c.train.update(steps=64_000, batch_size=s.resnet_batch, augment=False)
  return c


class RefMLP(nn.Module):
  """The Ioffe MLP written the usual way: nn.Dense + nn.BatchNorm + sigmoid."""

  widths: tuple[int, ...] = (100, 100, 100)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool):
    init = nn.initializers.normal(0.1)
    x = x.reshape((x.shape[0], -1))
    for w in self.widths:
      x = nn.Dense(w, use_bias=False, kernel_init=init)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-5)(x)
      x = nn.sigmoid(x)
    return nn.Dense(self.num_classes, kernel_init=init)(x)


class RefResNet20(nn.Module):
  """ResNet-20 written the usual way (same layers as bn.models.ResNet20, with nn.BatchNorm)."""

  widths: tuple[int, ...] = (16, 32, 64)
  blocks: int = 3
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
    conv = functools.partial(nn.Conv, use_bias=False, padding="SAME")
    x = nn.relu(norm()(conv(self.widths[0], (3, 3))(x)))
    for i, w in enumerate(self.widths):
      for b in range(self.blocks):
        stride = 2 if (i > 0 and b == 0) else 1
        y = nn.relu(norm()(conv(w, (3, 3), strides=stride)(x)))
        y = norm()(conv(w, (3, 3))(y))
        if x.shape != y.shape:
          x = norm()(conv(w, (1, 1), strides=stride)(x))
        x = nn.relu(x + y)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class RefState(train_state.TrainState):
  batch_stats: Any


def ref_step(state: RefState, x, y):
  """The usual Flax train step (as in flax/examples/imagenet)."""

  def loss_fn(params):
    logits, mutated = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)), (mutated["batch_stats"], logits)

  (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  return state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


class HostBatches:
  """Shuffled epochs drawn on the host with NumPy (the usual input loop)."""

  def __init__(self, n: int, batch: int, seed: int = 0):
    self.n, self.batch, self.rng = n, batch, np.random.default_rng(seed)
    self.perm, self.pos = self.rng.permutation(n), 0

  def next(self) -> np.ndarray:
    if self.pos + self.batch > self.n:
      self.perm, self.pos = self.rng.permutation(self.n), 0
    self.pos += self.batch
    return self.perm[self.pos - self.batch:self.pos]

  def many(self, k: int) -> np.ndarray:
    return np.stack([self.next() for _ in range(k)]).astype(np.int32)


_ENGINES: dict = {}  # compiled engine programs, shared by the sections of one bench run


def _engine(s, cfg, x, y, steps: int, seeds=(0,)):
  """A stacked-runs engine chunk as :class:`bn.loop.Trainer` runs it: ``(step_fn, compile_s, task)``."""
  key = (cfg.to_json(), steps, tuple(seeds), id(x))
  if key not in _ENGINES:
    _ENGINES[key] = _engine_build(s, cfg, x, y, steps, seeds)
  return _ENGINES[key]


def _engine_build(s, cfg, x, y, steps, seeds):
  task = experiment.from_config(cfg).make_task(10)
  n = len(seeds)
  state = programs.init(task, x.shape[0])(np.asarray(seeds, np.int32), np.full(n, cfg.optimizer.lr, np.float32),
                                          np.full(n, cfg.optimizer.weight_decay, np.float32), x[:2])
  compiled, secs = compile_timed(s, programs.chunk(task, steps), state, x, y)
  box = [state]

  def step():
    box[0], metrics = compiled(box[0], x, y)
    return metrics

  return step, secs, task


def _reference(s, model, tx, xh, yh, xd, yd, batch: int, steps: int):
  """The reference loop: ``(jit-per-step fn, lax.scan fn, compile_s)``; both run ``steps`` steps per call."""
  v = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), xd[:2])
  def make():  # a fresh copy each: the programs donate their state
    v2 = jax.tree.map(jnp.copy, v)
    return RefState.create(apply_fn=model.apply, params=v2["params"], batch_stats=v2["batch_stats"], tx=tx)

  st0 = make()
  jstep, c1 = compile_timed(s, jax.jit(ref_step, donate_argnums=0), st0, xh[:batch], yh[:batch])
  scan = jax.jit(lambda st, xs, ys, idx: jax.lax.scan(lambda s_, i: ref_step(s_, xs[i], ys[i]), st, idx), donate_argnums=0)
  hb1, hb2 = HostBatches(xh.shape[0], batch, 1), HostBatches(xh.shape[0], batch, 1)
  jscan, c2 = compile_timed(s, scan, make(), xd, yd, hb2.many(steps))
  box1, box2 = [make()], [make()]

  def per_step():
    st, m = box1[0], None
    for _ in range(steps):
      i = hb1.next()
      st, m = jstep(st, xh[i], yh[i])
    box1[0] = st
    return m

  def scanned():
    box2[0], m = jscan(box2[0], xd, yd, hb2.many(steps))
    return m

  return per_step, scanned, {"reference": c1, "reference_scan": c2}


_DATA: dict = {}


def reset() -> None:
  """Drops the cached data and compiled programs."""
  _ENGINES.clear()
  _DATA.clear()


def _data(n: int, shape, seed: int = 0):
  """Synthetic N(0, 1) images and labels, host and device copies (cached per bench run)."""
  key = (n, tuple(shape), seed)
  if key not in _DATA:
    _DATA[key] = _make_data(n, shape, seed)
  return _DATA[key]


def _make_data(n: int, shape, seed: int):
  rng = np.random.default_rng(seed)
  xh = rng.standard_normal((n,) + tuple(shape), np.float32)
  yh = rng.integers(0, 10, n).astype(np.int32)
  return xh, yh, jax.device_put(xh), jax.device_put(yh)


def _step_group(name: str, s, fns: dict, compile_s: dict, steps: int, ref: str, extra_ratios: dict, repeats: int | None = None) -> dict:
  la = load_avg()
  t = measure(fns, s, per_call=steps, repeats=repeats)
  out = {
      "steps_per_chunk": steps, "load_avg": la, "compile_s": compile_s, "time_per_step": t,
      "steps_per_s": {k: 1.0 / v["median_s"] for k, v in t.items()},
      "ratios": {f"{k}_vs_{ref}": ratio(t[k], t[ref]) for k in t if k != ref},
  }
  out["ratios"].update({label: ratio(t[a], t[b]) for label, (a, b) in extra_ratios.items()})
  log(f"{name}: " + ", ".join(f"{k} {v['median_s'] * 1e6:.0f} us" for k, v in t.items()))
  return out


def train_steps(s, res) -> dict:
  """Ioffe MLP and ResNet-20 steps: engine vs reference loop (per-step jit) vs reference under lax.scan."""
  out = {}
  xh, yh, xd, yd = _data(s.ioffe_train_size, (s.ioffe_image, s.ioffe_image, 1))
  k = s.ioffe_steps
  fns, comp = {}, {}
  fns["engine"], comp["engine"], _ = _engine(s, ioffe_config(s), xd, yd, k)
  fns["engine_none"], comp["engine_none"], _ = _engine(s, ioffe_config(s, kind="none"), xd, yd, k)
  fns["matmul_only"], comp["matmul_only"], _ = _engine(s, ioffe_config(s, "linear", kind="none"), xd, yd, k)
  fns["reference"], fns["reference_scan"], c = _reference(s, RefMLP(tuple(s.ioffe_widths)), optax.sgd(0.5), xh, yh, xd, yd, 60, k)
  comp.update(c)
  log("ioffe: compiled " + ", ".join(f"{a} {b:.1f}s" for a, b in comp.items()))
  out["ioffe"] = _step_group("ioffe", s, fns, comp, k, "reference", {
      "engine_vs_engine_none": ("engine", "engine_none"), "engine_vs_matmul_only": ("engine", "matmul_only"),
      "engine_vs_reference_scan": ("engine", "reference_scan"),
  })
  out["ioffe"]["data"] = f"synthetic N(0,1) images, {s.ioffe_train_size} x {s.ioffe_image}x{s.ioffe_image}x1 (timing does not depend on values)"
  if s.resnet:
    img = (s.resnet_image, s.resnet_image, 3)
    xh, yh, xd, yd = _data(s.resnet_train_size, img)
    k = s.resnet_steps
    cfg = resnet_config(s)
    fns, comp = {}, {}
    fns["engine"], comp["engine"], _ = _engine(s, cfg, xd, yd, k)
    sched = optax.warmup_cosine_decay_schedule(0.0, 0.1, 1000, 64_000)
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(sched, momentum=0.9))
    model = RefResNet20(tuple(s.resnet_widths), s.resnet_blocks)
    fns["reference"], fns["reference_scan"], c = _reference(s, model, tx, xh, yh, xd, yd, s.resnet_batch, k)
    comp.update(c)
    log("resnet20: compiled " + ", ".join(f"{a} {b:.1f}s" for a, b in comp.items()))
    out["resnet20"] = _step_group("resnet20", s, fns, comp, k, "reference", {"engine_vs_reference_scan": ("engine", "reference_scan")}, s.resnet_repeats)
    out["resnet20"]["data"] = (f"synthetic N(0,1) images, {s.resnet_train_size} x {s.resnet_image}x{s.resnet_image}x3, batch {s.resnet_batch}"
                               f"{'' if s.resnet_batch == 128 else ' (not 128: the convolutions of reference_scan inside lax.scan take ~1 min per batch-128 step on XLA:CPU)'}, no augmentation")
  return out


# ----------------------------------------------------------------------------- 3. roofline


def _flops(cost) -> float | None:
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost["flops"]) if cost and "flops" in cost else None


def step_flops(s, cfg, x, y) -> float | None:
  """FLOPs of one (unvmapped) engine step, from XLA's cost analysis."""
  task = experiment.from_config(cfg).make_task(10)
  state = jax.eval_shape(lambda: train.init_state(task, 0, cfg.optimizer.lr, cfg.optimizer.weight_decay, x[:2], x.shape[0]))
  compiled, _ = compile_timed(s, jax.jit(functools.partial(train.train_step, task)), state, x, y)
  return _flops(compiled.cost_analysis())


def roofline(s, res) -> dict:
  n = s.matmul_n
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  mm, comp = compile_timed(s, jax.jit(jnp.dot), a, b)
  la = load_avg()
  t = measure({"matmul": functools.partial(mm, a, b)}, s)["matmul"]
  peak = 2 * n**3 / t["median_s"]
  best = 2 * n**3 / t["min_s"]
  log(f"roofline: fp32 matmul {n}^3: {peak / 1e9:.1f} GFLOP/s (best {best / 1e9:.1f})")
  out = {"matmul_n": n, "matmul": t, "matmul_compile_s": comp, "load_avg": la, "peak_flops": peak, "best_flops": best}
  _, _, xd, yd = _data(s.ioffe_train_size, (s.ioffe_image, s.ioffe_image, 1))
  lin = ioffe_config(s, "linear", kind="none")
  out["flops_per_step"] = {"engine": step_flops(s, ioffe_config(s), xd, yd), "matmul_only": step_flops(s, lin, xd, yd)}
  io = res.get("train_step", {}).get("ioffe")
  if io:
    out["fraction_of_peak"] = {}
    for name in ("engine", "matmul_only"):
      f = out["flops_per_step"][name]
      step = io["time_per_step"][name]["median_s"]
      out["fraction_of_peak"][name] = None if f is None else f / step / peak
    f = out["flops_per_step"]["engine"]
    out["floor_at_peak_s"] = None if f is None else f / peak
    out["engine_vs_matmul_only"] = io["ratios"]["engine_vs_matmul_only"]
    log(f"roofline: engine step {out['flops_per_step']['engine'] or 0:.3g} FLOP, {100 * (out['fraction_of_peak']['engine'] or 0):.1f}% of peak")
  return out


# ----------------------------------------------------------------------------- 4. many runs at once


SEED_MODES = {"independent": False, "shared": True}  # data order of the runs in one program -> train.shared_order


def _sequential(s, cfg, x, y, steps: int, runs: int = 2):
  """``runs`` separate one-run programs, one after another (the same compiled program, each run
  with its own seed and state): ``(fn, compile_s)``; ``fn`` trains each run ``steps`` steps."""
  task = experiment.from_config(cfg).make_task(10)
  init = programs.init(task, x.shape[0])
  states = [init(np.asarray([r], np.int32), np.full(1, cfg.optimizer.lr, np.float32), np.full(1, cfg.optimizer.weight_decay, np.float32), x[:2])
            for r in range(runs)]
  compiled, secs = compile_timed(s, programs.chunk(task, steps), states[0], x, y)

  def fn():
    out = None
    for r in range(runs):
      states[r], out = compiled(states[r], x, y)
    return out

  return fn, secs


def seeds(s, res) -> dict:
  """Cost per run-step of N runs in one program (vmapped), with independent and with shared data
  order (``train.shared_order``), against N runs one after another: ``sequential`` trains separate
  one-run programs (seeds 0 and 1, each its own state) back to back and is measured in the same
  round-robin group; N runs one after another cost N times that, so its cost per run-step is
  the baseline for every N."""
  xh, yh, xd, yd = _data(s.ioffe_train_size, (s.ioffe_image, s.ioffe_image, 1))
  k = s.seeds_steps
  fns, comp = {}, {}
  seq_runs = 2
  fns["sequential"], comp["sequential"] = _sequential(s, ioffe_config(s), xd, yd, k, seq_runs)
  for mode, shared in SEED_MODES.items():
    cfg = ioffe_config(s)
    cfg.train.shared_order = shared
    for n in s.seeds:
      if shared and n == 1:  # one run has one order: the same program as independent N = 1, timed once
        continue
      fns[f"{mode}{n}"], comp[f"{mode}{n}"], _ = _engine(s, cfg, xd, yd, k, seeds=tuple(range(n)))
  la = load_avg()
  t = measure(fns, s, per_call=k)
  seq = _per_run(t["sequential"], seq_runs)
  out = {"steps_per_chunk": k, "load_avg": la, "sequential": {"time_per_run_step": seq, "runs_per_call": seq_runs, "compile_s": comp["sequential"]},
         "modes": {}, "target_n": 8 if 8 in s.seeds else s.seeds[-1]}
  for mode in SEED_MODES:
    rows = []
    for n in s.seeds:
      key = f"{mode}{n}" if f"{mode}{n}" in t else f"independent{n}"
      per_run = _per_run(t[key], n)
      r = ratio(per_run, seq)
      rows.append({"n": n, "time_per_step": t[key], "time_per_run_step": per_run, "ratio_vs_sequential": r, "compile_s": comp[key],
                   "program": key})
      log(f"seeds {mode} N={n}: {per_run['median_s'] * 1e6:.0f} us per run-step, {r['ratio']:.2f}x sequential")
    out["modes"][mode] = {"rows": rows, "ratio_at_target_n": next(x["ratio_vs_sequential"] for x in rows if x["n"] == out["target_n"])}
  return out


def runs_over_devices(s, res) -> dict:
  """Cost per run-step of ``s.devices_runs`` Ioffe runs in one program on one device vs spread over
  every local device (the ``'runs'`` mesh axis, :func:`bn.programs.over_runs`), and of one run of
  ``reference_scan``; one round-robin group in this process (its devices: on CPU the ``bn`` command
  gives one per core, ``BN_HOST_DEVICES``). The one-device program is the engine as it runs
  without a mesh (on device 0); the spread one is what ``bn train`` runs by default on a CPU."""
  from bn import parallel

  d = jax.local_device_count()
  if d < 2:
    return {"status": "not run", "note": "one local device (on CPU: run `bn bench` without BN_HOST_DEVICES=1, or set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=N)"}
  n, k = s.devices_runs, s.seeds_steps
  xh, yh, xd, yd = _data(s.ioffe_train_size, (s.ioffe_image, s.ioffe_image, 1))
  cfg = ioffe_config(s)
  fns, comp = {}, {}
  fns["one_device"], comp["one_device"], task = _engine(s, cfg, xd, yd, k, seeds=tuple(range(n)))
  plan = parallel.make_plan("1", "sync", cfg.train.batch_size, runs=n, runs_devices="all")
  gx, gy = jax.device_put(xd, plan.replicated), jax.device_put(yd, plan.replicated)
  state = programs.init(task, xd.shape[0], plan.mesh)(np.arange(n, dtype=np.int32), np.full(n, cfg.optimizer.lr, np.float32),
                                                      np.full(n, cfg.optimizer.weight_decay, np.float32), gx[:2])
  compiled, comp["all_devices"] = compile_timed(s, programs.chunk(task, k, plan.mesh), state, gx, gy)
  box = [state]

  def spread():
    box[0], metrics = compiled(box[0], gx, gy)
    return metrics

  fns["all_devices"] = spread
  _, fns["reference_scan"], c = _reference(s, RefMLP(tuple(s.ioffe_widths)), optax.sgd(0.5), xh, yh, xd, yd, 60, k)
  comp["reference_scan"] = c["reference_scan"]
  la = load_avg()
  t = measure(fns, s, per_call=k)
  per = {"one_device": _per_run(t["one_device"], n), "all_devices": _per_run(t["all_devices"], n), "reference_scan": t["reference_scan"]}
  out = {"status": "run", "runs": n, "devices": plan.runs_devices, "steps_per_chunk": k, "load_avg": la, "compile_s": comp,
         "time_per_run_step": per,
         "ratios": {"all_devices_vs_one_device": ratio(per["all_devices"], per["one_device"]),
                    "all_devices_vs_reference_scan": ratio(per["all_devices"], per["reference_scan"]),
                    "one_device_vs_reference_scan": ratio(per["one_device"], per["reference_scan"])}}
  log(f"runs over devices: {n} runs, per run-step: " + ", ".join(f"{a} {b['median_s'] * 1e6:.0f} us" for a, b in per.items()))
  return out


def _per_run(t: dict, n: int) -> dict:
  """A timing summary divided by ``n`` runs (every time field and the per-repeat times)."""
  out = {key: (v / n if key.endswith("_s") else v) for key, v in t.items() if key != "times_s"}
  out["times_s"] = [v / n for v in t["times_s"]]
  return out


# ----------------------------------------------------------------------------- 5. end to end


TINY_SLICE_NOTE = ("skipped in tiny mode: two fresh processes compiling the slice's programs take ~40 s even on the tiny "
                   "ledger's configs (tests/test_bench.py runs the slice's code in-process on one tiny condition instead)")


def ledger_slice(s, res) -> dict:
  """A slice of the quick ledger (:data:`bn.bench.ledger_slice.SLICE`: two conditions through
  :func:`bn.loop.train_workdir`) in a child process on every local device, then in one on one device:
  wall times, their ratio, and whether every evaluation's metrics agree. Not in tiny mode (see
  :data:`TINY_SLICE_NOTE`)."""
  from bn.bench import ledger_slice as sl

  d = jax.local_device_count()
  what = sl.describe()
  if not s.ledger_slice:
    return {"status": "not run", "note": TINY_SLICE_NOTE if s.mode == "tiny" else f"skipped in {s.mode} mode"}
  if d < 2:
    return {"status": "not run", "note": "one local device (on CPU: run `bn bench` without BN_HOST_DEVICES=1)"}
  try:
    with tempfile.TemporaryDirectory() as tmp:
      t = {}
      for name, n in (("all_devices", d), ("one_device", 1)):
        log(f"ledger slice ({what}) on {n} device(s) ...")
        t[name] = sl.on_devices(Path(tmp) / name, "quick", n)
        log(f"ledger slice on {n} device(s): {t[name]['total']:.1f} s (compile {t[name]['compile_s']:.1f} s)")
      same = sl.compare(Path(tmp) / "all_devices", Path(tmp) / "one_device")
  except Exception as e:  # a broken slice must not lose the rest of the bench
    return {"status": "failed", "note": f"{type(e).__name__}: {e}"}
  r = t["all_devices"]["total"] / t["one_device"]["total"]
  agree = (f"{same['checked']} evaluation points' metrics {'agree' if same['same'] else 'DIFFER'} ({same['not_identical']} not "
           f"bit-identical: training {'identical' if same['training_identical'] else 'DIFFERS'}, losses within "
           f"{same['max_loss_rel_diff']:.1e} relative, {same['accuracies_differing']} accuracies or ECEs by <= {same['max_accuracy_diff']:.4f}; "
           f"steps to target {'equal' if same['steps_to_target_same'] else 'DIFFER'})")
  note = (f"SLICE of the quick ledger ({what}): {t['all_devices']['total']:.0f} s on {d} devices vs "
          f"{t['one_device']['total']:.0f} s on one ({r:.2f}x); {agree}")
  return {"status": "run", "mode": "quick", "conditions": what, "devices": d,
          "timings_s": t, "ratio": r, "same_results": same, "note": note}


def end_to_end(s, res) -> dict:
  """The quick claims ledger (``bn reproduce --quick``) timed by experiment."""
  if not s.ledger:
    # Quick mode does not run the ledger; report the last quick ledger run here, labelled as such.
    f = Path(s.ledger_timings) if s.ledger_timings else None
    try:
      t = artifacts.read_json(f) if f and f.exists() else None
    except (OSError, ValueError):
      t = None
    if t and t.get("mode") == "quick" and (t.get("cumulative_s") or t.get("last_invocation_s")):
      return {"status": "read", "mode": "quick", "timings_s": t.get("cumulative_s") or t["last_invocation_s"], "load_avg": "n/a",
              "note": f"not timed by this bench: read from {f} (`make reproduce` in this checkout, summed over its invocations)"}
    return {"status": "not run", "note": f"skipped in {s.mode} mode" + (f" (and no {f} from a quick ledger run to report)" if f else "")}
  from bn import ledger  # here: only the full bench runs the ledger

  la = load_avg()
  try:
    with tempfile.TemporaryDirectory() as d:
      timings = ledger.run_ledger(Path(d) / "spread", "quick", progress=False)
      devices = _ledger_on_one_device(Path(d), timings) if jax.local_device_count() > 1 else None
  except Exception as e:  # a broken ledger must not lose the rest of the bench
    return {"status": "failed", "note": f"{type(e).__name__}: {e}", "load_avg": la}
  return {"status": "run", "mode": "quick", "load_avg": la, "timings_s": timings, **({"devices": devices} if devices else {})}


def _ledger_on_one_device(d: Path, spread: dict) -> dict:
  """The quick ledger again in a process with one CPU device (``BN_HOST_DEVICES=1``): its wall time
  against this process's (runs over every local device), and whether every condition's final
  metrics agree (to 1e-6 relative: evaluation sums may differ in the last ulp)."""
  import os
  import subprocess
  import sys

  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["BN_HOST_DEVICES"] = "1"
  la = load_avg()
  subprocess.run([sys.executable, "-m", "bn", "reproduce", "--quick", "--out", str(d / "one"), "--no-progress"], env=env, check=True,
                 capture_output=True)
  one = artifacts.read_json(d / "one" / "timings.json")["last_invocation_s"]
  same, checked = True, 0
  for f in (d / "spread").glob("*/*/summary.json"):
    a, b = artifacts.read_json(f)["runs"], artifacts.read_json(d / "one" / f.relative_to(d / "spread"))["runs"]
    for x, y in zip(a, b, strict=True):
      for k in ("test_accuracy", "train_accuracy", "test_loss", "train_loss"):
        if k in x and x[k] is not None:
          checked += 1
          same &= abs(x[k] - y[k]) <= 1e-6 * max(abs(y[k]), 1e-30)
  r = spread["total"] / one["total"]
  return {"one_device_s": one["total"], "all_devices_s": spread["total"], "ratio": r, "same_results": bool(same), "load_avg": la,
          "note": (f"{spread['total']:.0f} s over {jax.local_device_count()} devices vs {one['total']:.0f} s on one ({r:.2f}x); "
                   f"{checked} final metrics {'agree' if same else 'DIFFER'} (1e-6 relative); load {la}")}
