"""Compiled programs over stacked runs: initialization, chunks of training steps, evaluation.

Runs that share shapes are stacked on a leading axis and trained together in one
program. Two independent choices say how (``Task.loop`` / ``Task.runs``; see
:func:`bn.experiment.choose_layout` for the defaults):

* over steps: ``"scan"`` -- a chunk of steps is one ``lax.scan``; or ``"host"`` -- a
  Python loop over one jitted (donating) step;
* over runs: ``"vmap"`` -- ``jax.vmap``; or ``"unroll"`` -- one copy of the step per
  run, in the same program (:func:`map_runs`).

A scanned chunk draws its batches before its first step and checks the divergence guard
once per chunk (:func:`bn.train.train_chunk`); with ``Task.shared_order`` every run takes
run 0's batches (:func:`share_order`).

Every builder takes an optional ``mesh``: then the program runs inside
``shard_map`` over the mesh's data axis (the task must come from
:func:`bn.parallel.parallel_task`), with parameters and state replicated, so the
same layouts serve one device and many. A mesh with a ``'runs'`` axis of several
devices also splits the stacked runs over it (:func:`over_runs`): the program takes and
returns the whole, unpadded state; inside, the runs are padded to a multiple of the
axis and each device trains its share.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from bn import pipeline, train
from bn.parallel import RUNS_AXIS

# vmap axes of a stacked TrainState: everything per run, except the sampler's
# position, which all runs share (same batch size, same step). Keeping it
# unbatched keeps the sampler's epoch-reshuffle ``lax.cond`` a real branch; a
# batched one becomes a select that sorts a new permutation on every step.
STATE_AXES = train.TrainState(0, 0, 0, 0, 0, 0, pipeline.SamplerState(0, 0, None, None, None), 0)
LOOPS = ("scan", "host")
RUNS = ("vmap", "unroll")
# Programs that run once (the stacked init) are compiled unoptimized: XLA:CPU's default
# optimization level spends seconds per >= 3-D threefry draw, and their speed does not matter.
ONCE = {"xla_backend_optimization_level": 0}


def map_runs(fn, how: str, in_axes, out_axes):
  """``fn`` over the stacked runs, like ``jax.vmap(fn, in_axes, out_axes)`` (axes 0 or None,
  as pytree prefixes); ``how="unroll"`` traces one copy of ``fn`` per run instead and
  stacks the results (shared outputs, axis None, are taken from the first run)."""
  if how == "vmap":
    return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)
  if how != "unroll":
    raise ValueError(f"runs={how!r}: expected one of {', '.join(RUNS)}.")

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


def take_run(state: train.TrainState, i: int) -> train.TrainState:
  """Run ``i`` of a stacked state (leaves without the run axis are shared)."""
  return _on_run_axis(lambda x: x[i], STATE_AXES, state)


def take_runs(state: train.TrainState, idx) -> train.TrainState:
  """The stacked state of the runs ``idx`` (an index array), in that order."""
  return _on_run_axis(lambda x: x[idx], STATE_AXES, state)


def _sharded(fn, mesh, in_specs, out_specs):
  return fn if mesh is None else jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs)


def runs_devices(mesh) -> int:
  """Devices on the mesh's runs axis (1 without a mesh or without that axis)."""
  return 1 if mesh is None else dict(mesh.shape).get(RUNS_AXIS, 1)


def over_runs(fn, mesh, in_axes: tuple, out_axes, shared_specs: tuple):
  """``fn(*args)`` over stacked runs (``in_axes`` / ``out_axes``: pytree prefixes of 0 = per run,
  None = shared, as for :func:`map_runs`), split over the mesh's runs axis.

  The result takes and returns whole stacks of ``n`` runs. Inside, every per-run leaf is
  padded to ``m``, the next multiple of the axis size, with copies of run 0 (real runs: no
  NaN or division by zero can come from the padding) and sharded ``P('runs')``; the shared
  leaves of a per-run argument are replicated, and ``shared_specs[i]`` (a spec prefix, or
  None for a per-run argument) places argument ``i`` when it is shared as a whole (e.g.
  split over the data axis). ``fn`` runs inside ``shard_map`` on its device's ``m / R`` runs;
  every per-run output is cut back to the first ``n`` runs. Runs never meet inside ``fn``:
  each run's numbers are those of the whole stack on one device, up to XLA's choice of
  kernels for the per-device shapes (tests/test_runs_mesh.py)."""
  r = runs_devices(mesh)
  is_none = lambda x: x is None  # noqa: E731

  def wrapped(*args):
    sizes = [x.shape[0] for axis, sub in zip(in_axes, args) for x in _leaves_with_axis(axis, sub)]
    n = sizes[0]
    m = -(-n // r) * r
    pad = lambda x: x if m == n else jnp.concatenate([x, jnp.broadcast_to(x[:1], (m - n,) + x.shape[1:])])  # noqa: E731
    padded = _on_run_axis(pad, in_axes, args)
    in_specs = tuple(
        spec if spec is not None else jax.tree.map(lambda axis, sub: jax.tree.map(lambda _: P(RUNS_AXIS) if axis == 0 else P(), sub),
                                                   axis_tree, arg, is_leaf=is_none)
        for axis_tree, arg, spec in zip(in_axes, padded, shared_specs))
    out_specs = jax.tree.map(lambda axis: P(RUNS_AXIS) if axis == 0 else P(), out_axes, is_leaf=is_none)
    # Without a data axis nothing is communicated inside fn, so shard_map's type check of what varies over the
    # devices has nothing to check -- and the per-step sampler's lax.cond (host loop) would trip on it. With one,
    # it must stay on: it turns the broadcast of each run's parameters over 'data' into the gradient's psum.
    out = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=dict(mesh.shape).get("data", 1) > 1)(*padded)
    whole = jax.sharding.NamedSharding(mesh, P())  # gathered: every program takes and returns the state whole
    return _on_run_axis(lambda x: jax.lax.with_sharding_constraint(x[:n], whole), out_axes, out)

  return wrapped


def _leaves_with_axis(axes, tree):
  """The leaves of ``tree`` under a 0 of the prefix ``axes``."""
  out = []
  jax.tree.map(lambda axis, sub: out.extend(jax.tree.leaves(sub)) if axis == 0 else None, axes, tree, is_leaf=lambda x: x is None)
  return out


# ----------------------------------------------------------------------------- init


def init(task: train.Task, num_train: int, mesh=None):
  """``(seeds, lrs, weight_decays, sample_x) -> stacked TrainState`` (replicated over ``mesh``)."""
  f = lambda s, lr, wd, x: train.init_state(task, s, lr, wd, x, num_train)  # noqa: E731
  stacked = jax.vmap(f, in_axes=(0, 0, 0, None), out_axes=STATE_AXES)
  if task.shared_order:
    stacked = lambda *a, g=stacked: share_order(g(*a))  # noqa: E731
  shardings = {} if mesh is None else {"out_shardings": jax.sharding.NamedSharding(mesh, P())}
  return jax.jit(stacked, compiler_options=ONCE, **shardings)


# ----------------------------------------------------------------------------- training chunks


class HostLoop:
  """A chunk of ``num_steps`` steps as a Python loop over one jitted (donating) step.

  Follows the ``jit(...).lower(*args).compile()`` protocol of the scan chunk, so callers
  treat both alike; the compiled object returns ``(state, metrics)`` with metrics
  shaped ``(runs, num_steps)`` as the scan chunk does."""

  def __init__(self, step_fn, num_steps: int, compiled=None):
    self.step_fn, self.num_steps, self.compiled = step_fn, num_steps, compiled

  def lower(self, *args):
    return HostLoop(self.step_fn, self.num_steps, self.step_fn.lower(*args))

  def compile(self, *args, **kw):
    return HostLoop(self.step_fn, self.num_steps, self.compiled.compile(*args, **kw))

  def __call__(self, state, images, labels):
    step = self.compiled or self.step_fn
    metrics = []
    for _ in range(self.num_steps):
      state, m = step(state, images, labels)
      metrics.append(m)
    return state, jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *metrics)


def chunk(task: train.Task, num_steps: int, mesh=None):
  """``num_steps`` steps of every stacked run in one compiled program: ``(state, images, labels)
  -> (state, metrics)``, metrics shaped (runs, steps); the data arrays are shared, the state is
  donated. ``task.loop`` / ``task.runs`` choose scan or a host loop, vmap or unrolled runs.

  The scan draws the chunk's batches before its first step (:func:`bn.pipeline.sampler_take`)
  and pays the divergence guard only in a chunk where a run diverges (:func:`bn.train.guarded`);
  the host loop runs :func:`bn.train.train_step` as it is. ``task.shared_order``: every run
  takes run 0's batches (:func:`share_order`), drawn once per step for all runs.

  On one device a stack of one run is trained without ``vmap`` (its run axis is taken off
  and put back): XLA:CPU compiles size-1 batched dots and updates into slower kernels."""
  if task.loop not in LOOPS:
    raise ValueError(f"loop={task.loop!r}: expected one of {', '.join(LOOPS)}.")
  if task.loop == "host":
    one = functools.partial(train.train_step, task)
    many = _shared_host_step(task) if task.shared_order else map_runs(one, task.runs, (STATE_AXES, None, None), (STATE_AXES, 0))
  else:
    one = functools.partial(train.train_chunk, task, num_steps)
    many = functools.partial(_scan_chunk, task, num_steps)
  if runs_devices(mesh) > 1:  # each device its share of the runs (without data parallelism a lone run without vmap)
    local = _single_or_many(one, many) if task.axis_name is None else many
    body = over_runs(local, mesh, (STATE_AXES, None, None), (STATE_AXES, 0), (None, P(), P()))
  else:
    body = _single_or_many(one, many) if mesh is None else _sharded(many, mesh, (P(), P(), P()), (P(), P()))
  program = jax.jit(body, donate_argnums=0)
  return HostLoop(program, num_steps) if task.loop == "host" else program


def _scan_chunk(task: train.Task, num_steps: int, state: train.TrainState, images, labels):
  """:func:`bn.train.train_chunk` of stacked runs: the batches of every run (or run 0's, shared)
  drawn first, then the steps of all runs, guarded as one (:func:`bn.train.guarded`)."""
  take = functools.partial(pipeline.sampler_take, batch_size=task.batch_size, num_steps=num_steps)
  if task.shared_order:
    idx, sampler = take(_run0(state.sampler))
    sampler, idx_axis = _broadcast_runs(sampler, state.step.shape[0]), None
  else:
    idx, sampler = map_runs(take, task.runs, (STATE_AXES.sampler,), (0, STATE_AXES.sampler))(state.sampler)
    idx_axis = 0

  def steps(guard):
    return map_runs(functools.partial(train.steps_on, task, guard=guard), task.runs, (STATE_AXES, idx_axis, None, None), (STATE_AXES, 0))

  new, metrics = train.guarded(steps, state, idx, images, labels)
  return new._replace(sampler=sampler), metrics


def _shared_host_step(task: train.Task):
  """One step of all runs on run 0's batch (``task.shared_order``, host loop)."""
  step = map_runs(functools.partial(train.step_on, task), task.runs, (STATE_AXES, None, None, None), (STATE_AXES, 0))

  def f(state, images, labels):
    idx, sampler = train.next_batch(task, _run0(state.sampler))
    new, metrics = step(state, idx, images, labels)
    return new._replace(sampler=_broadcast_runs(sampler, state.step.shape[0])), metrics

  return f


def _run0(sampler):
  return _on_run_axis(lambda x: x[0], STATE_AXES.sampler, sampler)


def _broadcast_runs(sampler, n: int):
  return _on_run_axis(lambda x: jnp.broadcast_to(x[None], (n,) + x.shape), STATE_AXES.sampler, sampler)


def share_order(state: train.TrainState) -> train.TrainState:
  """Every run's sampler set to run 0's: the runs then see the same batches in the same order
  (``train.shared_order``). :func:`init` does this for a task with ``shared_order``."""
  return state._replace(sampler=_broadcast_runs(_run0(state.sampler), state.step.shape[0]))


def _single_or_many(one, many):
  def f(state, images, labels):
    if state.step.shape[0] != 1:
      return many(state, images, labels)
    new, metrics = one(take_run(state, 0), images, labels)
    return _on_run_axis(lambda x: x[None], STATE_AXES, new), jax.tree.map(lambda x: x[None], metrics)

  return f


# ----------------------------------------------------------------------------- evaluation


def evaluate(task: train.Task, num_sets: int, mesh=None):
  """Eval metrics of every stacked run: ``(params, batch_stats, sets, recal_images) -> (StepMetrics, ...)``,
  one per set, each of shape (runs,). ``sets`` holds ``num_sets`` splits laid out by
  :func:`bn.parallel.place_eval` (sharded over ``mesh``); ``recal_images`` (replicated) feeds
  precise BN when ``task.precise_bn`` is set (else pass None)."""
  f = map_runs(functools.partial(train.evaluate_all, task), task.runs, (0, 0, None, None), 0)
  rows = P(None, task.axis_name)  # (chunks, rows): each device holds its rows of every chunk
  sets = ((rows, rows, rows),) * num_sets
  if runs_devices(mesh) > 1:
    return jax.jit(over_runs(f, mesh, (0, 0, None, None), 0, (None, None, sets, P())))
  return jax.jit(_sharded(f, mesh, (P(), P(), sets, P()), P()))
