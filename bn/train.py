"""The training engine: pure steps, ``lax.scan``-fused chunks, many runs in one program.

A *run* is one seed with its own numeric hyper-parameters (learning rate,
weight decay). Runs that share shapes are stacked on a leading axis and
trained together with ``jax.vmap`` inside one compiled program. Everything a
step needs (data, sampler position, PRNG key, divergence flag) lives in
:class:`TrainState`, so a chunk of steps is a pure function
``(state, data) -> (state, per_step_metrics)`` and a checkpoint of the state is
a complete resume point.

Conventions:
* keys: ``run key = PRNGKey(seed)``; ``init, data, step = split(run key, 3)``;
  step ``t`` uses ``fold_in(step key, t)`` (big_vision's seed -> split -> fold_in).
* learning rate at step ``t``: ``hparams.lr * schedule(t)``, with ``schedule(0) = 1``
  after warm-up; the base LR is a per-run array, so LR sweeps vmap.
* weight decay: coupled L2 (added to the gradient) for SGD/momentum, decoupled
  (AdamW) for Adam.
* a run whose loss or parameters become non-finite at step ``k`` is frozen at
  its last finite state and ``diverged_step = k``; other runs are unaffected.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bn import pipeline


class HParams(NamedTuple):
  lr: jax.Array
  weight_decay: jax.Array


class TrainState(NamedTuple):
  step: jax.Array  # int32, steps taken (counting frozen ones)
  params: Any
  batch_stats: Any
  opt_state: Any
  hparams: HParams
  key: jax.Array  # raw uint32 key data for the per-step keys
  sampler: Any  # bn.data sampler state
  diverged_step: jax.Array  # int32, -1 while finite


class StepMetrics(NamedTuple):
  loss: jax.Array
  accuracy: jax.Array


# ----------------------------------------------------------------------------- optimizer and schedules


def make_optimizer(name: str, *, momentum: float = 0.9, nesterov: bool = False, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """The optimizer's *direction* without the learning rate (that is applied per run)."""
  if name == "sgd":
    return optax.identity()
  if name in ("momentum", "nesterov"):
    return optax.trace(decay=momentum, nesterov=nesterov or name == "nesterov")
  if name in ("adam", "adamw"):
    return optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  raise ValueError(f"unknown optimizer {name!r}; choose sgd, momentum, nesterov, adam or adamw.")


def make_schedule(name: str, steps: int, *, warmup: int = 0, decay_steps: tuple[int, ...] = (), decay_factor: float = 0.1) -> Callable:
  """Unit-peak schedule ``t -> multiplier``; the run's base LR multiplies it."""
  if name == "constant":
    main = optax.constant_schedule(1.0)
  elif name == "cosine":
    main = optax.cosine_decay_schedule(1.0, max(steps - warmup, 1))
  elif name == "step":
    main = optax.piecewise_constant_schedule(1.0, {int(s) - warmup: decay_factor for s in decay_steps})
  else:
    raise ValueError(f"unknown schedule {name!r}; choose constant, cosine or step.")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), main], [warmup])


def renorm_clips(step, *, r_max: float, d_max: float, warmup: int):
  """Batch Renorm clip schedule: r_max 1 -> r_max and d_max 0 -> d_max linearly over ``warmup`` steps."""
  frac = jnp.clip(step / max(warmup, 1), 0.0, 1.0) if warmup > 0 else jnp.ones(())
  return 1.0 + (r_max - 1.0) * frac, d_max * frac


# ----------------------------------------------------------------------------- the step


def cross_entropy(logits, labels):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _tree_where(cond, a, b):
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)


class Task(NamedTuple):
  """Everything static about a training program (hashable pieces only)."""

  model: Any  # flax.linen.Module: (x, train, renorm) -> logits
  tx: optax.GradientTransformation
  schedule: Callable
  decoupled_wd: bool
  batch_size: int
  sampling: str  # "epoch" | "replacement"
  augment: bool
  renorm: tuple[float, float, int] | None  # (r_max, d_max, warmup) for kind="renorm"
  axis_name: str | None = None  # data-parallel mesh axis (bn.parallel): each device takes its slice of the batch; loss and metrics are averaged over it
  loop: str = "scan"  # "scan": a chunk of steps is one lax.scan; "host": a Python loop over one jitted step (see resolve_layout)
  runs: str = "vmap"  # "vmap": runs batched with jax.vmap; "unroll": one copy of the step per run, in the same program


def init_state(task: Task, seed, lr, weight_decay, sample_x, num_train: int) -> TrainState:
  """One run's initial state (vmap it over seeds/hparams)."""
  k_init, k_data, k_step = jax.random.split(jax.random.PRNGKey(seed), 3)
  variables = task.model.init({"params": k_init, "noise": k_init}, sample_x, train=False)
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=task.tx.init(params),
      hparams=HParams(jnp.asarray(lr, jnp.float32), jnp.asarray(weight_decay, jnp.float32)),
      key=k_step,
      sampler=pipeline.sampler_init(k_data, num_train, task.sampling),
      diverged_step=jnp.full((), -1, jnp.int32),
  )


def model_renorm(task: Task, step):
  if task.renorm is None:
    return None
  r_max, d_max, warmup = task.renorm
  return renorm_clips(step, r_max=r_max, d_max=d_max, warmup=warmup)


def loss_and_updates(task: Task, params, batch_stats, x, y, key, step):
  """Training-mode forward pass: ``(loss, (new_batch_stats, logits))``."""
  logits, mutated = task.model.apply(
      {"params": params, "batch_stats": batch_stats}, x, train=True, renorm=model_renorm(task, step),
      mutable=["batch_stats"], rngs={"noise": key},
  )
  return _device_mean(cross_entropy(logits, y), task.axis_name), (mutated.get("batch_stats", batch_stats), logits)


def _device_mean(x, axis_name):
  """Mean over the data-parallel axis (equal per-device batches); identity on one device."""
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _device_slice(idx, key, axis_name):
  """This device's contiguous slice of the global batch indices and its own augmentation key."""
  if axis_name is None:
    return idx, key
  i, b = jax.lax.axis_index(axis_name), idx.shape[0] // jax.lax.axis_size(axis_name)
  return jax.lax.dynamic_slice_in_dim(idx, i * b, b), jax.random.fold_in(key, i)


def get_batch(task: Task, state: TrainState, images, labels, key):
  idx, sampler = pipeline.sampler_next(state.sampler, task.batch_size)
  idx, key = _device_slice(idx, key, task.axis_name)
  x = images[idx]
  if task.augment:
    x = pipeline.augment(key, x)
  return x, labels[idx], sampler


def train_step(task: Task, state: TrainState, images, labels) -> tuple[TrainState, StepMetrics]:
  """One SGD step of one run on a batch drawn on device; pure."""
  key = jax.random.fold_in(state.key, state.step)
  k_aug, k_noise = jax.random.split(key)
  x, y, sampler = get_batch(task, state, images, labels, k_aug)
  grad_fn = jax.value_and_grad(functools.partial(loss_and_updates, task), has_aux=True)
  (loss, (batch_stats, logits)), grads = grad_fn(state.params, state.batch_stats, x, y, k_noise, state.step)
  wd = state.hparams.weight_decay
  if not task.decoupled_wd:
    grads = jax.tree.map(lambda g, p: g + wd * p, grads, state.params)
  direction, opt_state = task.tx.update(grads, state.opt_state, state.params)
  if task.decoupled_wd:
    direction = jax.tree.map(lambda d, p: d + wd * p, direction, state.params)
  lr = state.hparams.lr * task.schedule(state.step)
  params = jax.tree.map(lambda p, d: p - lr * d, state.params, direction)

  alive = state.diverged_step < 0
  ok = jnp.isfinite(loss) & _all_finite(params)
  keep = alive & ok  # a diverged run keeps its last finite weights; its sampler still advances
  params, batch_stats, opt_state = _tree_where(keep, (params, batch_stats, opt_state), (state.params, state.batch_stats, state.opt_state))
  new = state._replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state, sampler=sampler,
      diverged_step=jnp.where(alive & ~ok, state.step, state.diverged_step),
  )
  acc = _device_mean(jnp.mean(jnp.argmax(logits, -1) == y), task.axis_name)
  nan = jnp.full((), jnp.nan)
  return new, StepMetrics(jnp.where(alive, loss, nan), jnp.where(alive, acc, nan))


def train_chunk(task: Task, num_steps: int, state: TrainState, images, labels):
  """``num_steps`` steps of one run fused with ``lax.scan``."""
  return jax.lax.scan(lambda s, _: train_step(task, s, images, labels), state, None, length=num_steps)


def evaluate(task: Task, params, batch_stats, images, labels, chunk: int = 1000) -> StepMetrics:
  """Eval-mode (running statistics) loss and accuracy over a whole (standardized) split, in chunks."""
  n = images.shape[0]
  chunk = min(chunk, n)
  k = n // chunk
  variables = {"params": params, "batch_stats": batch_stats}

  def one(xy):
    x, y = xy
    logits = task.model.apply(variables, x, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(losses), jnp.sum(jnp.argmax(logits, -1) == y)

  xs = images[: k * chunk].reshape((k, chunk) + images.shape[1:])
  ys = labels[: k * chunk].reshape((k, chunk))
  loss, correct = jax.lax.map(one, (xs, ys))
  loss, correct = jnp.sum(loss), jnp.sum(correct)
  if k * chunk < n:  # the remainder, one more (smaller) batch
    l2, c2 = one((images[k * chunk:], labels[k * chunk:]))
    loss, correct = loss + l2, correct + c2
  return StepMetrics(loss / n, correct / n)


# ----------------------------------------------------------------------------- many runs in one program

# vmap axes of a stacked TrainState: everything per run, except the sampler's
# position, which all runs share (same batch size, same step). Keeping it
# unbatched keeps the sampler's epoch-reshuffle ``lax.cond`` a real branch; a
# batched one becomes a select that sorts a new permutation on every step.
STATE_AXES = TrainState(0, 0, 0, 0, 0, 0, pipeline.SamplerState(0, 0, None, None, None), 0)


def vmapped_init(task: Task, seeds, lrs, wds, sample_x, num_train: int):
  f = lambda s, lr, wd: init_state(task, s, lr, wd, sample_x, num_train)
  # Runs once, so compile it unoptimized: XLA:CPU's default optimization level takes seconds per
  # >= 3-D threefry draw (every kernel once vmapped, conv kernels even alone), e.g. ~15 s for a
  # two-run 3-layer MLP on 2 cores vs ~1.5 s here. Values may differ from an optimized build in the last ulp.
  init = jax.jit(jax.vmap(f, out_axes=STATE_AXES), compiler_options={"xla_backend_optimization_level": 0})
  return init(jnp.asarray(seeds, jnp.int32), jnp.asarray(lrs, jnp.float32), jnp.asarray(wds, jnp.float32))


CONV_MODELS = ("cnn", "vgg", "resnet20")
LOOPS = ("auto", "scan", "host")
RUNS = ("auto", "vmap", "unroll")


def resolve_layout(loop: str, runs: str, model_name: str, backend: str | None = None) -> tuple[str, str]:
  """Resolve ``train.loop`` / ``train.runs`` = "auto" for a model on a backend.

  "auto" is ``("scan", "vmap")`` except for convolutional models on XLA:CPU, which get
  ``("host", "unroll")``. Measured on the 2-core CPU (small CNN, batch 64, one SGD step):
  31 ms jitted alone, 137 ms inside ``lax.scan`` (inside a while body the weight- and
  input-gradient convolutions keep transposed dimension labels that XLA:CPU runs with a
  generic loop instead of its Eigen kernel), and 3 runs cost 181 ms under ``vmap``
  (per-run kernels become one grouped convolution) against 73 ms unrolled. GPU and TPU
  keep scan + vmap. A host loop dispatches one jitted step at a time, which only costs
  ~0.1 ms a step, small next to a conv step.
  """
  for key, value, ok in (("loop", loop, LOOPS), ("runs", runs, RUNS)):
    if value not in ok:
      raise ValueError(f"train.{key}={value!r}: expected one of {', '.join(ok)}.")
  slow_convs = (backend or jax.default_backend()) == "cpu" and model_name in CONV_MODELS
  if loop == "auto":
    loop = "host" if slow_convs else "scan"
  if runs == "auto":
    runs = "unroll" if slow_convs else "vmap"
  return loop, runs


def map_runs(fn, how: str, in_axes, out_axes):
  """``fn`` over the stacked runs, like ``jax.vmap(fn, in_axes, out_axes)`` (axes 0 or None,
  as pytree prefixes); ``how="unroll"`` traces one copy of ``fn`` per run instead and
  stacks the results (shared outputs, axis None, are taken from the first run)."""
  if how == "vmap":
    return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)

  def unrolled(*args):
    sizes = jax.tree.map(lambda axis, sub: None if axis is None else jax.tree.map(lambda x: x.shape[0], sub), in_axes, args, is_leaf=lambda x: x is None)
    n = jax.tree.leaves(sizes)[0]
    outs = [fn(*_on_run_axis(lambda x, i=i: x[i], in_axes, args)) for i in range(n)]
    return jax.tree.map(
        lambda axis, *subs: subs[0] if axis is None else jax.tree.map(lambda *xs: jnp.stack(xs), *subs),
        out_axes, *outs, is_leaf=lambda x: x is None)

  return unrolled


def _on_run_axis(fn, axes, tree):
  """``fn`` on every leaf of ``tree`` that has the run axis (``axes`` a prefix of 0/None)."""
  return jax.tree.map(lambda axis, sub: sub if axis is None else jax.tree.map(fn, sub), axes, tree, is_leaf=lambda x: x is None)


class _HostLoop:
  """A chunk of ``num_steps`` steps as a Python loop over one jitted (donating) step.

  Mirrors the ``jit(...).lower(*args).compile()`` protocol of the scan chunk, so callers
  treat both alike; the compiled object returns ``(state, metrics)`` with metrics
  shaped ``(runs, num_steps)`` as the scan chunk does."""

  def __init__(self, step_fn, num_steps: int, compiled=None):
    self.step_fn, self.num_steps, self.compiled = step_fn, num_steps, compiled

  def lower(self, *args):
    return _HostLoop(self.step_fn, self.num_steps, self.step_fn.lower(*args))

  def compile(self, **kw):
    return _HostLoop(self.step_fn, self.num_steps, self.compiled.compile(**kw))

  def __call__(self, state, images, labels):
    step = self.compiled or self.step_fn
    metrics = []
    for _ in range(self.num_steps):
      state, m = step(state, images, labels)
      metrics.append(m)
    return state, jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *metrics)


def vmapped_chunk(task: Task, num_steps: int):
  """``num_steps`` steps of every stacked run in one compiled program; data arrays are
  shared, state is donated. Returns ``(state, metrics)`` with metrics shaped (runs, steps).

  ``task.loop`` / ``task.runs`` choose scan or a host loop, vmap or unrolled runs
  (:func:`resolve_layout`). A stack of one run is trained without ``vmap`` (its run
  axis is taken off and put back): XLA:CPU compiles size-1 batched dots and updates
  into slower kernels (the Ioffe MLP step spent ~1.5x the kernel time; see docs/benchmarks.md)."""
  if task.loop == "host":
    step = functools.partial(train_step, task)
    return _HostLoop(jax.jit(_single_or_many(step, _runs_of(step, task)), donate_argnums=0), num_steps)
  chunk = functools.partial(train_chunk, task, num_steps)
  return jax.jit(_single_or_many(chunk, _runs_of(chunk, task)), donate_argnums=0)


def _runs_of(fn, task: Task):
  """``fn(state, images, labels) -> (state, metrics)`` over the stacked runs; data shared."""
  return map_runs(fn, task.runs, (STATE_AXES, None, None), (STATE_AXES, 0))


def _single_or_many(one, many):
  def f(state, images, labels):
    if state.step.shape[0] != 1:
      return many(state, images, labels)
    new, metrics = one(_map_run_axis(lambda x: x[0], state), images, labels)
    return _map_run_axis(lambda x: x[None], new), jax.tree.map(lambda x: x[None], metrics)

  return f


def _map_run_axis(fn, state: TrainState) -> TrainState:
  """``fn`` on every leaf of ``state`` that has the run axis (per :data:`STATE_AXES`)."""
  return _on_run_axis(fn, STATE_AXES, state)


def vmapped_eval(task: Task, chunk: int = 1000):
  """Eval-mode metrics of every stacked run: ``(params, batch_stats, images, labels) -> StepMetrics``
  of shape (runs,), vmapped or unrolled per run as ``task.runs`` says."""
  f = lambda p, bs, x, y: evaluate(task, p, bs, x, y, chunk)
  return jax.jit(map_runs(f, task.runs, (0, 0, None, None), 0))
