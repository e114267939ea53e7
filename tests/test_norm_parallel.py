"""Cross-device statistics of bn.batch_norm on the 8 virtual CPU devices of conftest.py.

The reference is always single-device BN (the float64 NumPy `np_bn`) on the
global batch: synchronized BN must give the same outputs and running stats.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

import bn
from test_norm import EPS, as_bn, assert_close, np_bn, np_moments, random_setup

D = 8
pytestmark = pytest.mark.skipif(jax.device_count() < D, reason="needs 8 (virtual) devices, see conftest.py")


def shard_bn(x, params, state, mask=None, **kw):
  """bn.batch_norm with the batch split over 8 devices (shard_map, statistics synced over 'd')."""
  mesh = Mesh(np.array(jax.devices()[:D]), ("d",))
  f = functools.partial(bn.batch_norm, train=True, axis_name="d", **kw)
  if mask is None:
    body, args, specs = (lambda x, p, s: f(x, p, s)), (x, params, state), (P("d"), P(), P())
  else:
    body, args, specs = (lambda x, p, s, m: f(x, p, s, mask=m)), (x, params, state, mask), (P("d"), P(), P(), P("d"))
  g = jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=(P("d"), P()))
  return jax.jit(g)(*args)


def uneven_mask(per_device):
  """Device i holds i + 1 valid examples (of per_device)."""
  return np.concatenate([np.arange(per_device) < i + 1 for i in range(D)])


@pytest.mark.parametrize("variance", ["two_pass", "fast"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_shard_map_equals_global_bn(variance, unbiased):
  x, scale, bias, mean, var = random_setup((16, 3), (1,), seed=30, offset=2.0)
  params, state = as_bn(scale, bias, mean, var)
  y, new = shard_bn(x, params, state, momentum=0.9, variance=variance, unbiased=unbiased)
  y_ref, m_ref, v_ref = np_bn(x, scale, bias, mean, var, momentum=0.9, unbiased=unbiased)
  assert_close(y, y_ref, 1e-5, 2e-5)
  assert_close(new.mean, m_ref)
  assert_close(new.var, v_ref)
  assert int(new.count) == 1


def test_shard_map_images_equals_global_bn():
  x, scale, bias, mean, var = random_setup((16, 2, 2, 3), (3,), seed=31)
  params, state = as_bn(scale, bias, mean, var)
  y, new = shard_bn(x, params, state, momentum=0.5)
  y_ref, m_ref, v_ref = np_bn(x, scale, bias, mean, var, momentum=0.5)
  assert_close(y, y_ref, 1e-5, 2e-5)
  assert_close(new.mean, m_ref)
  assert_close(new.var, v_ref)


@pytest.mark.parametrize("variance", ["two_pass", "fast"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_shard_map_uneven_masks_give_exact_global_statistics(variance, unbiased):
  per = 8
  valid = uneven_mask(per)  # 1 + 2 + ... + 8 = 36 valid examples of 64
  x, scale, bias, mean, var = random_setup((D * per, 3), (1,), seed=32, offset=1.0)
  x[~valid] = 1e3  # padding must not leak in
  params, state = as_bn(scale, bias, mean, var)
  y, new = shard_bn(x, params, state, mask=valid[:, None], momentum=0.9, variance=variance, unbiased=unbiased)
  y_ref, m_ref, v_ref = np_bn(x[valid], scale, bias, mean, var, momentum=0.9, unbiased=unbiased)
  assert_close(np.asarray(y)[valid], y_ref, 1e-5, 2e-5)
  assert_close(new.mean, m_ref)
  assert_close(new.var, v_ref)
  # Averaging the per-device means (Flax's pmean) would give a different answer here.
  per_device_mean = np.mean([x[i * per:i * per + i + 1].mean(0) for i in range(D)], 0)
  assert not np.allclose(per_device_mean, x[valid].mean(0), atol=1e-3)


def test_shard_map_return_stats_are_global():
  x, scale, bias, mean, var = random_setup((16, 3), (1,), seed=33)
  params, state = as_bn(scale, bias, mean, var)
  mesh = Mesh(np.array(jax.devices()[:D]), ("d",))
  f = jax.shard_map(lambda x, p, s: bn.batch_norm(x, p, s, train=True, axis_name="d", return_stats=True),
                    mesh=mesh, in_specs=(P("d"), P(), P()), out_specs=(P("d"), P(), P()))
  _, _, stats = jax.jit(f)(x, params, state)
  mu, v, _ = np_moments(x, (1,))
  assert_close(stats.mean, mu.ravel())
  assert_close(stats.var, v.ravel())
  assert float(stats.count) == 16


@pytest.mark.parametrize("masked", [False, True])
def test_vmap_axis_name_equals_global_bn(masked):
  per = 8 if masked else 2
  x, scale, bias, mean, var = random_setup((D * per, 3), (1,), seed=34)
  valid = uneven_mask(per) if masked else np.ones(D * per, bool)
  params, state = as_bn(scale, bias, mean, var)
  f = functools.partial(bn.batch_norm, train=True, momentum=0.9, axis_name="i")
  xs, ms = x.reshape(D, per, 3), valid.reshape(D, per, 1)
  g = jax.vmap(lambda x, m: f(x, params, state, mask=m if masked else None), axis_name="i")
  for h in (g, jax.jit(g)):
    ys, new = h(xs, ms)
    y_ref, m_ref, v_ref = np_bn(x[valid], scale, bias, mean, var, momentum=0.9)
    assert_close(np.asarray(ys).reshape(-1, 3)[valid], y_ref, 1e-5, 2e-5)
    for i in range(D):  # every "device" holds the same global running statistics
      assert_close(new.mean[i], m_ref)
      assert_close(new.var[i], v_ref)


@pytest.mark.parametrize("groups", [[[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 2, 4, 6], [1, 3, 5, 7]]], ids=["blocks", "strided"])
def test_pmap_axis_index_groups_give_per_group_statistics(groups):
  # (jax.vmap does not implement axis_index_groups; pmap does.)
  per = 2
  x, scale, bias, mean, var = random_setup((D * per, 3), (1,), seed=35)
  params, state = as_bn(scale, bias, mean, var)
  f = jax.pmap(lambda x: bn.batch_norm(x, params, state, train=True, momentum=0.9, axis_name="i",
                                       axis_index_groups=groups), axis_name="i")
  ys, new = f(x.reshape(D, per, 3))
  xs = x.reshape(D, per, 3)
  for group in groups:
    xg = np.concatenate([xs[i] for i in group])
    y_ref, m_ref, v_ref = np_bn(xg, scale, bias, mean, var, momentum=0.9)
    assert_close(np.concatenate([np.asarray(ys[i]) for i in group]), y_ref, 1e-5, 2e-5)
    for i in group:
      assert_close(new.mean[i], m_ref)
      assert_close(new.var[i], v_ref)


@pytest.mark.parametrize("unbiased", [False, True])
def test_ghost_with_axis_name_normalizes_locally_and_updates_globally(unbiased):
  per, g = 4, 2
  x, scale, bias, mean, var = random_setup((D * per, 2, 3), (2,), seed=36)
  params, state = as_bn(scale, bias, mean, var)
  y, new = shard_bn(x, params, state, momentum=0.9, ghost_batch_size=g, unbiased=unbiased)
  chunks = np.split(x, D * per // g)  # the ghost batches of all devices
  y_ref = np.concatenate([np_bn(c, scale, bias, mean, var)[0] for c in chunks])
  assert_close(y, y_ref, 1e-5, 2e-5)
  n = g * 2  # elements per feature in one ghost batch
  cm = np.mean([np_moments(c, (2,))[0].ravel() for c in chunks], 0)
  cv = np.mean([np_moments(c, (2,))[1].ravel() * (n / (n - 1) if unbiased else 1) for c in chunks], 0)
  assert_close(new.mean, 0.9 * mean + 0.1 * cm)
  assert_close(new.var, 0.9 * var + 0.1 * cv)
  # The same under vmap(axis_name=...).
  f = jax.vmap(lambda x: bn.batch_norm(x, params, state, train=True, momentum=0.9, axis_name="i",
                                       ghost_batch_size=g, unbiased=unbiased), axis_name="i")
  ys, new_v = f(x.reshape((D, per) + x.shape[1:]))
  assert_close(np.asarray(ys).reshape(x.shape), y_ref, 1e-5, 2e-5)
  assert_close(new_v.mean[3], new.mean, 1e-6, 1e-6)
  assert_close(new_v.var[5], new.var, 1e-6, 1e-6)


def test_renorm_and_population_with_axis_name_use_global_statistics():
  x, scale, bias, mean, var = random_setup((16, 3), (1,), seed=37, offset=1.0)
  params, state = as_bn(scale, bias, mean, var)
  y, new = shard_bn(x, params, state, momentum=0.9, renorm=bn.Renorm(1.2, 0.3))
  xd = x.astype(np.float64)
  mu_b, var_b = xd.mean(0), xd.var(0)
  sig_b, sig = np.sqrt(var_b + EPS), np.sqrt(var + EPS)
  r, d = np.clip(sig_b / sig, 1 / 1.2, 1.2), np.clip((mu_b - mean) / sig, -0.3, 0.3)
  assert_close(y, ((xd - mu_b) / sig_b * r + d) * scale + bias, 1e-5, 2e-5)
  _, m_ref, v_ref = np_bn(x, scale, bias, mean, var, momentum=0.9)
  assert_close(new.mean, m_ref)
  assert_close(new.var, v_ref)
  y_pop, new_pop = shard_bn(x, params, state, momentum=0.9, population=True)
  assert_close(y_pop, (xd - mean) / sig * scale + bias, 1e-5, 2e-5)
  assert_close(new_pop.mean, m_ref)
  assert_close(new_pop.var, v_ref)


def test_grad_through_synchronized_statistics_equals_global_bn_backward():
  from test_norm import np_bn_grads

  x, scale, bias, mean, var = random_setup((16, 3), (1,), seed=38)
  dy = np.random.default_rng(39).normal(size=x.shape).astype(np.float32)
  _, state = as_bn(scale, bias, mean, var)
  mesh = Mesh(np.array(jax.devices()[:D]), ("d",))

  def local_loss(x, scale, bias, dy):
    y, _ = bn.batch_norm(x, bn.BNParams(scale, bias), state, train=True, axis_name="d")
    return jax.lax.psum(jnp.sum(y * dy), "d")

  f = jax.shard_map(jax.grad(local_loss, (0, 1, 2)), mesh=mesh, in_specs=(P("d"), P(), P(), P("d")),
                    out_specs=(P("d"), P(), P()))
  gx, gs, gb = jax.jit(f)(x, scale, bias, dy)
  rx, rs, rb = np_bn_grads(x, scale, dy)
  assert_close(gx, rx, 1e-4, 1e-5)
  assert_close(gs, rs, 1e-4, 1e-5)
  assert_close(gb, rb, 1e-4, 1e-5)
  # vmap(axis_name=...): differentiate the summed loss over all "devices".
  def total(x):
    ys, _ = jax.vmap(lambda x: bn.batch_norm(x, bn.BNParams(jnp.asarray(scale), jnp.asarray(bias)), state, train=True,
                                             axis_name="i"), axis_name="i")(x)
    return jnp.sum(ys * dy.reshape(D, 2, 3))

  gx_v = jax.grad(total)(jnp.asarray(x).reshape(D, 2, 3))
  assert_close(np.asarray(gx_v).reshape(16, 3), rx, 1e-4, 1e-5)
