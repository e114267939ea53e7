"""One training step, its optimizer update and evaluation, as pure functions of one run.

A *run* is one seed with its own numeric hyper-parameters (learning rate, weight
decay). Everything a step needs (data position, PRNG key, divergence flag) lives
in :class:`TrainState`, so a chunk of steps is a pure function
``(state, data) -> (state, per_step_metrics)`` and a checkpoint of the state is a
complete resume point. How many runs are stacked and how steps are compiled (scan
or a host loop, vmap or unrolled runs, one device or a mesh) is
:mod:`bn.programs`' business; this module knows one run.

Conventions:

* keys: ``run key = PRNGKey(seed)``; ``init, data, step = split(run key, 3)``;
  step ``t`` uses ``fold_in(step key, t)`` (big_vision's seed -> split -> fold_in).
* the update rule is one optax chain per run (:func:`update_rule`): weight decay,
  the optimizer's direction, then ``-lr * schedule(t)``. Weight decay is coupled L2
  (added to the gradient) for SGD/momentum and decoupled (AdamW) for Adam. The base
  LR and the weight decay are per-run arrays, so LR and weight-decay sweeps vmap.
  Probes that need "the step the optimizer would take" call the same chain.
* a run whose loss or parameters become non-finite at step ``k`` is frozen at its
  last finite state and ``diverged_step = k``; other runs are unaffected. A chunk of steps
  (:func:`train_chunk`) draws its batches at once and pays for this guard only in a chunk
  where a run diverges (:func:`guarded`); the numbers are the per-step ones.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bn import models, pipeline


class HParams(NamedTuple):
  """A run's numeric hyper-parameters (arrays, so that sweeps vmap)."""

  lr: jax.Array
  weight_decay: jax.Array
  layer_lr: jax.Array  # (layers,): per-layer LR multipliers in models.layer_names order (1: trains, 0: frozen)


class TrainState(NamedTuple):
  step: jax.Array  # int32, steps taken (counting frozen ones)
  params: Any
  batch_stats: Any
  opt_state: Any
  hparams: HParams
  key: jax.Array  # raw uint32 key data for the per-step keys
  sampler: Any  # bn.pipeline sampler state
  diverged_step: jax.Array  # int32, -1 while finite


class StepMetrics(NamedTuple):
  loss: jax.Array
  accuracy: jax.Array
  calibration: jax.Array | None = None  # evaluation only: expected calibration error (ECE_BINS equal-width confidence bins)


ECE_BINS = 15


class RenormSchedule(NamedTuple):
  """Batch Renorm clips: ``r_max`` 1 -> ``r_max`` and ``d_max`` 0 -> ``d_max`` linearly over ``warmup`` steps."""

  r_max: float
  d_max: float
  warmup: int


class Task(NamedTuple):
  """Everything static about a training program."""

  model: Any  # flax.linen.Module: (x, train, renorm) -> logits
  direction: optax.GradientTransformation  # the optimizer's direction, without LR and weight decay
  schedule: Callable  # t -> LR multiplier (unit peak)
  decoupled_wd: bool  # AdamW-style weight decay (added after the direction)
  batch_size: int
  sampling: str  # "epoch" | "replacement"
  augment: bool
  renorm: RenormSchedule | None = None  # the clip schedule of norm kind "renorm"
  axis_name: str | None = None  # data-parallel mesh axis: each device takes its slice of the batch; loss and metrics are averaged over it
  loop: str = "scan"  # "scan": a chunk of steps is one lax.scan; "host": a Python loop over one jitted step (bn.programs)
  runs: str = "vmap"  # "vmap": runs batched with jax.vmap; "unroll": one copy of the step per run, in the same program
  precise_bn: Any = None  # a model that re-estimates the BN statistics before evaluation ("precise BN"); None: use the running statistics
  shared_order: bool = False  # every run of a program takes run 0's batches (bn.programs.share_order); False: each run its own data order
  reference: int = 0  # > 0: the first this-many training examples are appended to every batch (norm.reference: their statistics normalize it)


# ----------------------------------------------------------------------------- optimizer and schedules


def make_direction(name: str, *, momentum: float = 0.9, nesterov: bool = False, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> optax.GradientTransformation:
  """The optimizer's *direction* without learning rate and weight decay (:func:`update_rule` adds them)."""
  if name == "sgd":
    return optax.identity()
  if name in ("momentum", "nesterov"):
    return optax.trace(decay=momentum, nesterov=nesterov or name == "nesterov")
  if name in ("adam", "adamw"):
    return optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  raise ValueError(f"unknown optimizer {name!r}; choose sgd, momentum, nesterov, adam or adamw.")


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")


def make_schedule(name: str, steps: int, *, warmup: int = 0, decay_steps: tuple[int, ...] = (), decay_factor: float = 0.1) -> Callable:
  """Unit-peak schedule ``t -> multiplier``; the run's base LR multiplies it."""
  if name == "constant":
    main = optax.constant_schedule(1.0)
  elif name == "cosine":
    main = optax.cosine_decay_schedule(1.0, max(steps - warmup, 1))
  elif name == "step":
    main = optax.piecewise_constant_schedule(1.0, {int(s) - warmup: decay_factor for s in decay_steps})
  else:
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}.")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), main], [warmup])


def update_rule(task: Task, hparams: HParams) -> optax.GradientTransformation:
  """The run's whole update: weight decay, direction, ``-lr * schedule(count)``, per-layer LR
  multipliers, as one optax chain.

  ``hparams`` may be traced (a vmapped LR sweep); the state's structure does not depend on them."""
  decay = optax.add_decayed_weights(hparams.weight_decay)
  lr = optax.scale_by_learning_rate(lambda count: hparams.lr * task.schedule(count))
  parts = (task.direction, decay) if task.decoupled_wd else (decay, task.direction)
  return optax.chain(*parts, lr, scale_layers(hparams.layer_lr))


def scale_layers(multipliers) -> optax.GradientTransformation:
  """Multiplies layer ``k``'s updates by ``multipliers[k]`` (layers in :func:`bn.models.layer_names`
  order; other top-level entries unchanged). Stateless; multiplying by 1 changes no bit."""
  def update_fn(updates, state, params=None):
    names = models.layer_names(updates)
    return {k: (jax.tree.map(lambda u, m=multipliers[names.index(k)]: u * m.astype(u.dtype), v) if k in names else v)
            for k, v in updates.items()}, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def renorm_clips(task: Task, step):
  """``(r_max, d_max)`` of the task's Batch Renorm schedule at ``step``, or None."""
  if task.renorm is None:
    return None
  r_max, d_max, warmup = task.renorm
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


def init_state(task: Task, seed, lr, weight_decay, sample_x, num_train: int) -> TrainState:
  """One run's initial state (vmap it over seeds/hparams)."""
  k_init, k_data, k_step = jax.random.split(jax.random.PRNGKey(seed), 3)
  variables = task.model.init({"params": k_init, "noise": k_init}, sample_x, train=False)
  params = variables["params"]
  hparams = HParams(jnp.asarray(lr, jnp.float32), jnp.asarray(weight_decay, jnp.float32), jnp.ones(len(models.layer_names(params)), jnp.float32))
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=update_rule(task, hparams).init(params),
      hparams=hparams,
      key=k_step,
      sampler=pipeline.sampler_init(k_data, num_train, task.sampling),
      diverged_step=jnp.full((), -1, jnp.int32),
  )


def loss_and_updates(task: Task, params, batch_stats, x, y, key, step):
  """Training-mode forward pass: ``(loss, (new_batch_stats, logits))``."""
  logits, mutated = task.model.apply(
      {"params": params, "batch_stats": batch_stats}, x, train=True, renorm=renorm_clips(task, step),
      mutable=["batch_stats"], rngs={"noise": key},
  )
  logits = logits[: y.shape[0]]  # rows after the batch: a reference set (Task.reference), not trained on
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


def _batch_at(task: Task, idx, images, labels, key):
  """The batch of the global indices ``idx`` (this device's slice of it), augmented with ``key``."""
  idx, key = _device_slice(idx, key, task.axis_name)
  x = images[idx]
  if task.augment:
    x = pipeline.augment(key, x)
  return x, labels[idx]


def train_step(task: Task, state: TrainState, images, labels) -> tuple[TrainState, StepMetrics]:
  """One optimizer step of one run on a batch drawn on device; pure."""
  idx, sampler = next_batch(task, state.sampler)
  new, metrics = step_on(task, state, idx, images, labels)
  return new._replace(sampler=sampler), metrics


def next_batch(task: Task, sampler):
  """The next batch's global indices and the sampler after it (:func:`bn.pipeline.sampler_next`). Data
  parallel: drawn as a chunk of one step (:func:`bn.pipeline.sampler_take`, the same indices) -- no
  ``lax.cond``, whose branches shard_map requires to agree on what varies over the mesh, which a fresh
  epoch's permutation of runs spread over devices does not say."""
  if task.axis_name is None:
    return pipeline.sampler_next(sampler, task.batch_size)
  idx, sampler = pipeline.sampler_take(sampler, task.batch_size, 1)
  return idx[0], sampler


def step_on(task: Task, state: TrainState, idx, images, labels, *, guard: bool = True) -> tuple[TrainState, StepMetrics]:
  """:func:`train_step` on the batch of the global example indices ``idx`` (batch_size,); the
  sampler is neither used nor advanced (the caller draws ``idx`` and owns the sampler).

  ``guard=False`` leaves out the divergence guard: the result equals the guarded step's whenever
  the loss and the new parameters are finite and the run is alive (:func:`guarded` decides when)."""
  key = jax.random.fold_in(state.key, state.step)
  k_aug, k_noise = jax.random.split(key)
  x, y = _batch_at(task, idx, images, labels, k_aug)
  if task.reference:  # full-batch BN: the fixed reference set rides along; only the batch's rows enter the loss
    x = jnp.concatenate([x, images[: task.reference].astype(x.dtype)])
  grad_fn = jax.value_and_grad(functools.partial(loss_and_updates, task), has_aux=True)
  (loss, (batch_stats, logits)), grads = grad_fn(state.params, state.batch_stats, x, y, k_noise, state.step)
  updates, opt_state = update_rule(task, state.hparams).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  acc = _device_mean(jnp.mean(jnp.argmax(logits, -1) == y), task.axis_name)
  if not guard:
    new = state._replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new, StepMetrics(loss, acc)

  alive = state.diverged_step < 0
  ok = jnp.isfinite(loss) & _all_finite(params)
  keep = alive & ok  # a diverged run keeps its last finite weights; its sampler still advances
  params, batch_stats, opt_state = _tree_where(keep, (params, batch_stats, opt_state), (state.params, state.batch_stats, state.opt_state))
  new = state._replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
      diverged_step=jnp.where(alive & ~ok, state.step, state.diverged_step),
  )
  nan = jnp.full((), jnp.nan)
  return new, StepMetrics(jnp.where(alive, loss, nan), jnp.where(alive, acc, nan))


def steps_on(task: Task, state: TrainState, idx, images, labels, *, guard: bool = True):
  """:func:`step_on` over the rows of ``idx`` (steps, batch_size), fused with ``lax.scan``; one run."""
  return jax.lax.scan(lambda s, i: step_on(task, s, i, images, labels, guard=guard), state, idx)


def guarded(steps: Callable[[bool], Callable], state: TrainState, *args):
  """``steps(guard)(state, *args) -> (state, metrics)`` -- a chunk of one run or of stacked
  runs (leading run axis) -- with the divergence guard's result at the unguarded steps' cost
  while no run diverges.

  The unguarded chunk runs first. A run that had diverged before it is put back to its frozen
  state (its step count advanced) and its metrics set to NaN, as the guard would have. For the
  others, the unguarded result is the guarded one exactly when every step's loss and the final
  parameters are finite: a non-finite parameter stays non-finite under ``params + update``, so
  finite final parameters mean every step's were finite, every step's guard kept its update and
  every select was the identity. Else (a run diverges in this chunk) the guarded chunk runs from
  the same start state. Both are compiled into the program (about twice the chunk's compile
  time). The choice is one scalar ``lax.cond``: call this outside ``vmap`` (under ``vmap`` it
  becomes a select that runs both chunks)."""
  new, metrics = steps(False)(state, *args)
  alive = state.diverged_step < 0  # () for one run, (runs,) for stacked runs

  def per_run(mask, x):
    return mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))

  frozen = lambda a, b: jnp.where(per_run(alive, a), a, b)  # noqa: E731
  new = new._replace(params=jax.tree.map(frozen, new.params, state.params), batch_stats=jax.tree.map(frozen, new.batch_stats, state.batch_stats),
                     opt_state=jax.tree.map(frozen, new.opt_state, state.opt_state))
  metrics = jax.tree.map(lambda m: jnp.where(per_run(alive, m), m, jnp.nan), metrics)
  finite = lambda x: jnp.all(jnp.isfinite(x) | ~per_run(alive, x))  # noqa: E731  (only the runs alive at the start count)
  ok = finite(metrics.loss) & jnp.all(jnp.stack([finite(x) for x in jax.tree.leaves(new.params)]))
  return jax.lax.cond(ok, lambda: (new, metrics), lambda: steps(True)(state, *args))


def train_chunk(task: Task, num_steps: int, state: TrainState, images, labels):
  """``num_steps`` steps of one run fused with ``lax.scan``: the same states and metrics as
  ``num_steps`` calls of :func:`train_step`, with the batches drawn at once
  (:func:`bn.pipeline.sampler_take`) and the divergence guard paid only in a chunk where a
  run diverges (:func:`guarded`). One run: vmap :func:`steps_on` for many (:func:`bn.programs.chunk`)."""
  idx, sampler = pipeline.sampler_take(state.sampler, task.batch_size, num_steps)
  new, metrics = guarded(lambda guard: functools.partial(steps_on, task, guard=guard), state, idx, images, labels)
  return new._replace(sampler=sampler), metrics


# ----------------------------------------------------------------------------- evaluation


def recalibrate(task: Task, params, batch_stats, images):
  """Precise BN (Wu & Johnson 2021): every BN layer's statistics re-estimated as the equal-weight
  average of full-batch training-mode statistics over the ``K`` batches ``images (K, B, ...)``.

  ``task.precise_bn`` is the model with plain batch statistics (no ghost batches, noise,
  renorm or population mode), so each layer sees its input as it is when every earlier
  layer normalizes with the statistics of a batch of ``B`` examples. This removes the bias of
  a ghost-BN running variance (the mean within-ghost variance, (g-1)/g of the variance) and
  the lag of an exponential average. Returns the new ``batch_stats``; training is untouched."""
  from bn import linen as bn_linen  # the Flax adapter's recalibration (models use its BatchNorm)

  apply_fn = functools.partial(task.precise_bn.apply, train=True)
  return bn_linen.recalibrate(apply_fn, {"params": params, "batch_stats": batch_stats}, images)["batch_stats"]


def evaluate_all(task: Task, params, batch_stats, sets, recal_images=None) -> tuple[StepMetrics, ...]:
  """:func:`evaluate` on every ``(images, labels, weights)`` of ``sets``, after :func:`recalibrate`
  on ``recal_images`` when the task asks for precise BN."""
  if task.precise_bn is not None:
    batch_stats = recalibrate(task, params, batch_stats, recal_images)
  return tuple(evaluate(task, params, batch_stats, *s) for s in sets)


def evaluate(task: Task, params, batch_stats, images, labels, weights) -> StepMetrics:
  """Eval-mode (running statistics) mean loss, accuracy and expected calibration error of a split laid out in chunks.

  ``images (K, B, ...)``, ``labels (K, B)``, ``weights (K, B)``: 1 on examples, 0 on
  padding (:func:`bn.parallel.place_eval` lays a split out this way). Chunks are
  visited with ``lax.map``. With ``task.axis_name`` the rows are this device's share
  and the sums are ``psum``'ed over the mesh axis. Calibration: the top-class probability
  binned into :data:`ECE_BINS` equal-width bins, ``sum_b |correct_b - confidence_b| / n``
  (Guo et al. 2017's ECE, from per-bin sums)."""
  variables = {"params": params, "batch_stats": batch_stats}

  def one(xyw):
    x, y, w = xyw
    logits = task.model.apply(variables, x, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    real = w > 0
    right = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    conf = jnp.max(jax.nn.softmax(logits.astype(jnp.float32), -1), -1)
    onehot = jax.nn.one_hot(jnp.clip(jnp.floor(conf * ECE_BINS).astype(jnp.int32), 0, ECE_BINS - 1), ECE_BINS)
    wr = jnp.where(real, w, 0.0)[:, None] * onehot
    return (jnp.sum(jnp.where(real, losses * w, 0.0)), jnp.sum(jnp.where(real, right * w, 0.0)),
            jnp.sum(wr * (right - conf)[:, None], axis=0))

  loss, correct, gap = jax.lax.map(one, (images, labels, weights))
  sums = (jnp.sum(loss), jnp.sum(correct), jnp.sum(weights), jnp.sum(gap, axis=0))
  if task.axis_name is not None:
    sums = jax.lax.psum(sums, task.axis_name)
  loss, correct, n, gap = sums
  return StepMetrics(loss / n, correct / n, jnp.sum(jnp.abs(gap)) / n)
