"""Tests for bn.pipeline, the device side of the data: standardization, evaluation batches, the sampler
(epochs without replacement, or with replacement; one step or a chunk's steps at once), augmentation.

References are independent of the code under test: NumPy statistics of the same pixels, every index of an
epoch seen once, brute-force search of the crop window, ``sampler_take`` against as many ``sampler_next`` calls.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bn import data, pipeline

O0 = {"xla_backend_optimization_level": 0}


# ----------------------------------------------------------------------------- standardization


def test_channel_stats_and_standardize():
  x = np.random.default_rng(0).integers(0, 256, (50, 4, 3, 3), dtype=np.uint8)
  x[..., 1] //= 4
  stats = data.channel_stats(x)
  ref = x.astype(np.float64) / 255
  np.testing.assert_allclose(stats.mean, ref.mean((0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(stats.std, ref.std((0, 1, 2)), rtol=1e-6)
  y = jax.jit(pipeline.standardize)(x, stats)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y).mean((0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(y).std((0, 1, 2)), 1, atol=1e-5)
  split = data.Split(x, np.arange(50, dtype=np.int32))
  raw, std = pipeline.to_device(split), pipeline.to_device(split, stats)
  assert raw.x.dtype == jnp.uint8 and isinstance(raw.x, jax.Array)
  np.testing.assert_allclose(std.x, (ref - ref.mean((0, 1, 2))) / ref.std((0, 1, 2)), atol=1e-5)


def test_eval_batches():
  idx, mask = pipeline.eval_batches(10, 4)
  assert idx.shape == mask.shape == (3, 4) and idx.dtype == np.int32
  np.testing.assert_array_equal(idx[mask], np.arange(10))
  assert mask.sum() == 10 and not mask[-1, -2:].any()


# ----------------------------------------------------------------------------- sampler


def run_sampler(key, n, batch_size, steps, mode="epoch"):
  def step(state, _):
    idx, state = pipeline.sampler_next(state, batch_size)
    return state, idx
  _, idx = jax.lax.scan(step, pipeline.sampler_init(key, n, mode), None, length=steps)
  return idx.reshape(-1)


@pytest.mark.parametrize("n,batch_size,typed_key", [(10, 3, False), (12, 4, True), (7, 7, False)])
def test_sampler_epochs_visit_each_index_once(n, batch_size, typed_key):
  steps = 6 * n // batch_size
  key = jax.random.key(0) if typed_key else jax.random.PRNGKey(0)
  stream = np.asarray(jax.jit(run_sampler, static_argnums=(1, 2, 3))(key, n, batch_size, steps))
  epochs = stream[: len(stream) // n * n].reshape(-1, n)
  assert len(epochs) >= 5
  for e in epochs:
    np.testing.assert_array_equal(np.sort(e), np.arange(n))
  assert len({tuple(e) for e in epochs}) > 1  # reshuffled


def test_sampler_with_replacement():
  stream = np.asarray(jax.jit(run_sampler, static_argnums=(1, 2, 3, 4))(
      jax.random.key(3), 7, 5, 400, "replacement"))
  assert stream.dtype == np.int32 and stream.min() >= 0 and stream.max() < 7
  counts = np.bincount(stream, minlength=7)
  assert np.all(np.abs(counts - 2000 / 7) < 0.25 * 2000 / 7)


def test_sampler_vmap_over_seeds():
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  single = jax.jit(lambda k: run_sampler(k, 20, 8, 10))
  run = jax.jit(jax.vmap(single))
  out = np.asarray(run(keys))
  np.testing.assert_array_equal(out, np.asarray(run(keys)))  # same keys, same order
  assert len({tuple(r) for r in out}) == 4  # different keys, different orders
  np.testing.assert_array_equal(out[2], single(keys[2]))
  # The reshuffle stays a real branch under vmap (no sort on every step) when the
  # state is made inside the vmapped function, or vmapped with pos/epoch/n unbatched.
  assert "cond[" in str(jax.make_jaxpr(jax.vmap(lambda k: run_sampler(k, 20, 8, 10)))(keys))
  states = jax.vmap(lambda k: pipeline.sampler_init(k, 20))(keys)
  states = states._replace(pos=states.pos[0], epoch=states.epoch[0], n=states.n[0])
  step = jax.vmap(pipeline.sampler_next, in_axes=(pipeline.SamplerState(0, 0, None, None, None), None))
  assert "cond[" in str(jax.make_jaxpr(step, static_argnums=1)(states, 8))


def test_sampler_rejects_bad_args():
  with pytest.raises(ValueError, match="mode"):
    pipeline.sampler_init(jax.random.PRNGKey(0), 10, "bogus")
  with pytest.raises(ValueError, match="batch_size"):
    pipeline.sampler_next(pipeline.sampler_init(jax.random.PRNGKey(0), 10), 11)


# ----------------------------------------------------------------------------- augmentation


def test_random_flip_is_identity_or_mirror():
  x = np.random.default_rng(0).integers(0, 256, (64, 6, 5, 3), dtype=np.uint8)
  y = np.asarray(jax.jit(pipeline.random_flip)(jax.random.PRNGKey(0), x))
  same = [np.array_equal(y[i], x[i]) for i in range(64)]
  mirrored = [np.array_equal(y[i], x[i, :, ::-1]) for i in range(64)]
  assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)


def test_random_crop_is_a_window_of_the_padded_image():
  x = np.random.default_rng(1).integers(1, 256, (32, 6, 5, 2), dtype=np.uint8)
  y = np.asarray(jax.jit(pipeline.random_crop, static_argnums=2)(jax.random.PRNGKey(2), x, 2))
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  offsets = set()
  for i in range(32):
    hits = [(a, b) for a in range(5) for b in range(5) if np.array_equal(y[i], padded[i, a:a + 6, b:b + 5])]
    assert hits, f"example {i} is not a crop of its padded image"
    offsets.add(hits[0])
  assert len(offsets) > 5


def test_augment_shapes_dtypes_determinism():
  key, augment = jax.random.PRNGKey(0), jax.jit(pipeline.augment, static_argnames=("flip", "padding"))
  for x in (jnp.ones((8, 12, 12, 3), jnp.uint8), jnp.arange(8 * 12 * 12 * 3, dtype=jnp.float32).reshape(8, 12, 12, 3)):
    y = augment(key, x)
    assert y.shape == x.shape and y.dtype == x.dtype
  np.testing.assert_array_equal(augment(key, x), y)
  assert not np.array_equal(augment(jax.random.PRNGKey(1), x), y)
  np.testing.assert_array_equal(augment(key, x, flip=False, padding=0), x)


# ----------------------------------------------------------------------------- sampler


def _next_many(state, batch_size, k):
  """``k`` calls of sampler_next (a scan, compiled unoptimized): the rows and the final state."""
  def step(s, _):
    idx, s = pipeline.sampler_next(s, batch_size)
    return s, idx
  state, rows = jax.jit(lambda s: jax.lax.scan(step, s, None, length=k), compiler_options=O0)(state)
  return rows, state


@pytest.mark.parametrize("mode", pipeline.MODES)
@pytest.mark.parametrize("n,batch,steps,warm", [
    (10, 3, 7, 0), (10, 3, 7, 2), (10, 10, 5, 1), (12, 4, 3, 0), (12, 4, 3, 3),  # straddling, whole epochs, ending on a boundary
    (7, 1, 30, 3), (9, 2, 40, 4), (100, 60, 1, 1), (5, 5, 0, 1),  # many epochs in one chunk, one step, none
])
def test_sampler_take_equals_repeated_sampler_next(mode, n, batch, steps, warm):
  state = pipeline.sampler_init(jax.random.PRNGKey(n * 100 + batch), n, mode)
  _, state = _next_many(state, batch, warm)
  want, want_state = _next_many(state, batch, steps)
  got, got_state = jax.jit(pipeline.sampler_take, static_argnums=(1, 2), compiler_options=O0)(state, batch, steps)
  assert got.shape == (steps, batch) and got.dtype == jnp.int32
  np.testing.assert_array_equal(got, want)
  jax.tree.map(np.testing.assert_array_equal, got_state, want_state)  # integers and keys: exactly


def test_sampler_take_under_vmap_with_a_shared_position():
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  states = jax.vmap(lambda k: pipeline.sampler_init(k, 11))(keys)
  axes = pipeline.SamplerState(0, 0, None, None, None)
  one = pipeline.SamplerState(states.key, states.perm, states.pos[0], states.epoch[0], states.n[0])
  got, got_state = jax.vmap(lambda s: pipeline.sampler_take(s, 4, 9), in_axes=(axes,), out_axes=(0, axes))(one)
  for r in range(3):
    want, want_state = _next_many(jax.tree.map(lambda x: x[r], states), 4, 9)
    np.testing.assert_array_equal(got[r], want)
    np.testing.assert_array_equal(got_state.perm[r], want_state.perm)
    assert int(got_state.pos) == int(want_state.pos) and int(got_state.epoch) == int(want_state.epoch)


def test_sampler_take_rejects_a_batch_larger_than_an_epoch():
  with pytest.raises(ValueError, match="larger than the 5 examples"):
    pipeline.sampler_take(pipeline.sampler_init(jax.random.PRNGKey(0), 5), 6, 2)
