"""The engine's fast paths give the numbers of the plain ones (the sampler's, ``sampler_take``: test_pipeline.py).

* :func:`bn.train.train_chunk` / :func:`bn.programs.chunk` (batches drawn first, the divergence
  guard paid only in a chunk where a run diverges) equal a ``lax.scan`` of the guarded
  :func:`bn.train.train_step` -- with no divergence, with a run diverging inside the chunk,
  and with a run that diverged before it;
* ``train.shared_order``: every run takes run 0's batches, and each run equals that run
  trained alone on run 0's data order (scan and host loop alike).

Programs are compiled unoptimized (they run once); the paths compared are compiled the same way.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bn import config as bn_config
from bn import data, experiment, pipeline, programs, train

O0 = {"xla_backend_optimization_level": 0}
STEPS = 12


def close(a, b, rtol=1e-5, atol=1e-6):
  """Equal trees: integers exactly, floats to rounding (NaN where NaN)."""
  def one(x, y):
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape and x.dtype == y.dtype
    if np.issubdtype(x.dtype, np.floating):
      np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
    else:
      np.testing.assert_array_equal(x, y)
  jax.tree.map(one, a, b)


# ----------------------------------------------------------------------------- training chunks


def tiny_config(**train_updates):
  c = bn_config.base()
  c.seeds = (0, 1)
  c.model.update(name="mlp", widths=(16,), act="relu", init_std=None)
  c.norm.update(kind="batch")
  c.optimizer.update(name="momentum", lr=0.1)
  c.train.update(batch_size=16, **train_updates)
  return c


@pytest.fixture(scope="module")
def tiny_data():
  ds = data.synthetic((4, 4, 1), 10, num_train=40, num_test=8)  # 40 examples, batch 16: chunks cross epochs
  return pipeline.to_device(ds.train, data.channel_stats(ds.train.x))


def make(c, lrs, x, seeds=None):
  task = experiment.from_config(c).make_task(10)
  seeds = np.arange(len(lrs), dtype=np.int32) if seeds is None else np.asarray(seeds, np.int32)
  state = programs.init(task, x.shape[0])(seeds, np.asarray(lrs, np.float32), np.zeros(len(lrs), np.float32), x[:2])
  return task, state


def plain_chunk(task, state, x, y, steps=STEPS):
  """The engine before its fast paths: a scan of the guarded per-step train_step, vmapped over runs."""
  one = lambda s: jax.lax.scan(lambda s_, _: train.train_step(task, s_, x, y), s, None, length=steps)  # noqa: E731
  f = jax.vmap(one, in_axes=(programs.STATE_AXES,), out_axes=(programs.STATE_AXES, 0))
  return jax.jit(f, compiler_options=O0)(state)


def engine_chunk(task, state, x, y, steps=STEPS):
  state = jax.tree.map(jnp.copy, state)  # the program donates its state
  return programs.chunk(task, steps).lower(state, x, y).compile(O0)(state, x, y)


@pytest.mark.parametrize("runs", ["vmap", "unroll"])
def test_chunk_equals_scanned_train_steps_while_finite(tiny_data, runs):
  task, state = make(tiny_config(runs=runs, loop="scan"), [0.1, 0.05], tiny_data.x)
  want = plain_chunk(task, state, *tiny_data)
  got = engine_chunk(task, state, *tiny_data)
  close(got, want)
  assert np.all(np.asarray(got[0].diverged_step) == -1) and np.all(np.isfinite(got[1].loss))


def test_chunk_with_a_run_diverging_inside_it_equals_the_guarded_steps(tiny_data):
  task, state = make(tiny_config(loop="scan"), [0.1, 1e6], tiny_data.x)
  want = plain_chunk(task, state, *tiny_data)
  got = engine_chunk(task, state, *tiny_data)
  close(got, want)
  (s, m) = got
  k = int(s.diverged_step[1])
  assert int(s.diverged_step[0]) == -1 and 0 <= k < STEPS  # the chunk in which it diverges
  assert np.all(np.isfinite(m.loss[0])) and np.all(np.isnan(m.loss[1, k + 1:]))
  assert all(np.all(np.isfinite(p[1])) for p in jax.tree.leaves(s.params))  # frozen at its last finite state

  # The next chunk starts with a diverged run: guarded from the start, the healthy run unaffected.
  want2 = plain_chunk(task, want[0], *tiny_data)
  got2 = engine_chunk(task, got[0], *tiny_data)
  close(got2, want2)
  assert np.all(np.isnan(got2[1].loss[1])) and np.all(np.isfinite(got2[1].loss[0]))


def test_one_run_train_chunk_equals_scanned_train_steps(tiny_data):
  task, state = make(tiny_config(seeds=(0,)), [1e6], tiny_data.x)
  one = programs.take_run(state, 0)
  x, y = tiny_data
  want = jax.jit(lambda s: jax.lax.scan(lambda s_, _: train.train_step(task, s_, x, y), s, None, length=STEPS), compiler_options=O0)(one)
  got = jax.jit(functools.partial(train.train_chunk, task, STEPS), compiler_options=O0)(one, x, y)
  close(got, want)
  assert 0 <= int(got[0].diverged_step) < STEPS
  task, state = make(tiny_config(seeds=(0,)), [0.1], tiny_data.x)
  one = programs.take_run(state, 0)
  close(jax.jit(functools.partial(train.train_chunk, task, STEPS), compiler_options=O0)(one, x, y),
        jax.jit(lambda s: jax.lax.scan(lambda s_, _: train.train_step(task, s_, x, y), s, None, length=STEPS), compiler_options=O0)(one))


# ----------------------------------------------------------------------------- shared data order


@pytest.mark.parametrize("loop", ["scan", "host"])
def test_shared_order_runs_equal_each_run_alone_on_run0s_order(tiny_data, loop):
  c = tiny_config(shared_order=True, loop=loop, runs="vmap")
  c.seeds = (3, 4, 5)
  assert experiment.from_config(c).make_task(10).shared_order
  task, state = make(c, [0.1, 0.2, 0.05], tiny_data.x, seeds=(3, 4, 5))
  for r in range(3):  # every run starts with run 0's sampler
    close(programs.take_run(state, r).sampler, programs.take_run(state, 0).sampler)
  got = engine_chunk(task, state, *tiny_data)

  alone_task = task._replace(shared_order=False)
  for r in range(3):  # run r trained alone, with run 0's sampler: the same numbers
    one = programs.take_runs(state, np.asarray([r]))
    want = engine_chunk(alone_task, one, *tiny_data)
    close(programs.take_run(got[0], r), programs.take_run(want[0], 0))
    close(got[1].loss[r], want[1].loss[0])
  for r in range(3):  # and they still share the order afterwards
    close(programs.take_run(got[0], r).sampler, programs.take_run(got[0], 0).sampler)


def test_shared_order_scan_equals_host_loop(tiny_data):
  outs = []
  for loop in ("scan", "host"):
    task, state = make(tiny_config(shared_order=True, loop=loop), [0.1, 0.3], tiny_data.x)
    outs.append(engine_chunk(task, state, *tiny_data))
  close(*outs)


def test_independent_order_by_default(tiny_data):
  task, state = make(tiny_config(), [0.1, 0.1], tiny_data.x)
  assert not task.shared_order
  assert not np.array_equal(state.sampler.perm[0], state.sampler.perm[1])
