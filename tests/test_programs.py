"""Tests for bn.programs' run-axis machinery, against NumPy loops over the runs: ``map_runs`` (vmap or one copy per
run) and ``over_runs`` (runs split over a mesh axis, padded when they do not divide it) compute every run's function
of its own arguments and the shared ones; ``take_run`` / ``take_runs`` cut runs out of a stacked state, ``init``
stacks independent runs, and ``share_order`` gives every run run 0's data order and nothing else of it.
That the layouts train to the same states is test_layout.py; sharded training, test_runs_mesh.py and test_parallel.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from bn import config as bn_config
from bn import experiment, programs

RNG = np.random.default_rng(0)


def fn(w, x, b):
  """Per run: ``w`` (3, 2) and ``b["scale"]`` (); shared: ``x`` (5, 3) and ``b["shift"]`` (1, 2)."""
  y = x @ w * b["scale"] + b["shift"]
  return {"y": y, "total": jnp.sum(y)}, x.sum()


def numpy_runs(w, x, b):
  ys = [x @ w[i] * b["scale"][i] + b["shift"] for i in range(len(w))]
  return np.stack(ys), np.array([y.sum() for y in ys]), x.sum()


def args(n):
  w = RNG.normal(size=(n, 3, 2)).astype(np.float32)
  x = RNG.normal(size=(5, 3)).astype(np.float32)
  b = {"scale": RNG.normal(size=(n,)).astype(np.float32), "shift": RNG.normal(size=(1, 2)).astype(np.float32)}
  return w, x, b


IN_AXES = (0, None, {"scale": 0, "shift": None})
OUT_AXES = ({"y": 0, "total": 0}, None)


@pytest.mark.parametrize("how", programs.RUNS)
def test_map_runs_is_each_run_on_its_own_arguments(how):
  w, x, b = args(4)
  (got, shared) = jax.jit(programs.map_runs(fn, how, IN_AXES, OUT_AXES))(w, x, b)
  ys, totals, xsum = numpy_runs(w, x, b)
  np.testing.assert_allclose(got["y"], ys, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["total"], totals, rtol=1e-5, atol=1e-5)
  assert np.shape(shared) == () and float(shared) == pytest.approx(xsum, rel=1e-6)  # a shared output is not stacked


def test_map_runs_refuses_an_unknown_layout():
  with pytest.raises(ValueError, match="runs='pmap': expected one of vmap, unroll"):
    programs.map_runs(fn, "pmap", IN_AXES, OUT_AXES)


@pytest.mark.parametrize("n,r", [(4, 4), (3, 4), (5, 2)])  # dividing the axis, and padded with copies of run 0
def test_over_runs_splits_the_runs_over_the_mesh_and_gives_every_run_back(n, r):
  mesh = Mesh(np.array(jax.devices()[:r]), (programs.RUNS_AXIS,))
  assert programs.runs_devices(mesh) == r and programs.runs_devices(None) == 1
  assert programs.runs_devices(Mesh(np.array(jax.devices()[:2]), ("data",))) == 1
  w, x, b = args(n)
  inner = programs.map_runs(fn, "vmap", IN_AXES, OUT_AXES)
  got, _ = jax.jit(programs.over_runs(inner, mesh, IN_AXES, OUT_AXES, (None, programs.P(), None)))(w, x, b)
  ys, totals, _ = numpy_runs(w, x, b)
  assert got["y"].shape == (n, 5, 2)
  np.testing.assert_allclose(got["y"], ys, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["total"], totals, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def stacked():
  """A stacked state of 3 runs of a tiny MLP (seeds 4, 5, 6), made by ``programs.init``."""
  c = bn_config.base()
  c.model.update(widths=(4,))
  c.seeds = (4, 5, 6)
  exp = experiment.from_config(c)
  task = exp.make_task(10)
  x = np.zeros((2, 28, 28, 1), np.float32)
  init = programs.init(task, 50)
  state = init(np.array([4, 5, 6]), np.full(3, 0.1, np.float32), np.zeros(3, np.float32), x)
  return task, init, state, x


def _key_data(k):
  return np.asarray(jax.random.key_data(k)) if jnp.issubdtype(k.dtype, jax.dtypes.prng_key) else np.asarray(k)


def test_take_run_and_take_runs_cut_runs_out_of_the_stack(stacked):
  _, _, state, _ = stacked
  leaves = jax.tree.leaves(state.params)
  one = programs.take_run(state, 1)
  for got, whole in zip(jax.tree.leaves(one.params), leaves):
    np.testing.assert_array_equal(got, np.asarray(whole)[1])
  assert int(one.sampler.pos) == int(state.sampler.pos)  # shared by every run: not cut
  np.testing.assert_array_equal(one.sampler.perm, np.asarray(state.sampler.perm)[1])
  two = programs.take_runs(state, np.array([2, 0]))
  for got, whole in zip(jax.tree.leaves(two.params), leaves):
    np.testing.assert_array_equal(got, np.asarray(whole)[[2, 0]])
  assert any(not np.array_equal(l[0], l[1]) for l in leaves)  # the runs differ (their seeds), so the cut is seen


def test_init_stacks_runs_that_equal_one_run_initialized_alone(stacked):
  task, init, state, x = stacked
  alone = init(np.array([5]), np.full(1, 0.1, np.float32), np.zeros(1, np.float32), x)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(_key_data(a), _key_data(b)),
               programs.take_run(alone, 0), programs.take_run(state, 1))


def test_share_order_gives_every_run_run_0s_data_order_only(stacked):
  _, _, state, _ = stacked
  shared = programs.share_order(state)
  perm = np.asarray(state.sampler.perm)
  assert not np.array_equal(perm[0], perm[1])  # independent orders before
  np.testing.assert_array_equal(np.asarray(shared.sampler.perm), np.broadcast_to(perm[0], perm.shape))
  np.testing.assert_array_equal(_key_data(shared.sampler.key), np.broadcast_to(_key_data(state.sampler.key)[0], _key_data(state.sampler.key).shape))
  jax.tree.map(np.testing.assert_array_equal, shared.params, state.params)  # the models stay each run's own
