"""Tests of the pure BN core (bn/norm.py) on one device.

Every expected value comes from an independent reference: a closed form, the
float64 NumPy implementation `np_bn` below, flax.linen, or finite differences.
Cross-device statistics are in test_norm_parallel.py.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bn

EPS = 1e-5


# ----------------------------------------------------------------------------- NumPy reference


def np_moments(x, feature_axes, mask=None):
  """Float64 per-feature mean, biased variance and count over the non-feature axes."""
  x = np.asarray(x, np.float64)
  red = tuple(a for a in range(x.ndim) if a not in feature_axes)
  w = np.ones_like(x) if mask is None else np.broadcast_to(np.asarray(mask), x.shape).astype(np.float64)
  n = w.sum(red, keepdims=True)
  mu = (x * w).sum(red, keepdims=True) / n
  var = ((x - mu) ** 2 * w).sum(red, keepdims=True) / n
  return mu, var, n


def np_bn(x, scale, bias, run_mean, run_var, *, feature_axes=(-1,), momentum=0.99, eps=EPS, mask=None,
          unbiased=False, count=0):
  """Float64 batch norm in training mode: returns (y, new_mean, new_var)."""
  x = np.asarray(x, np.float64)
  feature_axes = tuple(a % x.ndim for a in feature_axes)
  bshape = tuple(x.shape[a] if a in feature_axes else 1 for a in range(x.ndim))
  fshape = tuple(x.shape[a] for a in feature_axes)
  mu, var, n = np_moments(x, feature_axes, mask)
  y = (x - mu) / np.sqrt(var + eps) * np.reshape(scale, bshape) + np.reshape(bias, bshape)
  stored = var * n / (n - 1) if unbiased else var
  mu, stored = mu.reshape(fshape), stored.reshape(fshape)
  if momentum is None:
    new_mean = run_mean + (mu - run_mean) / (count + 1)
    new_var = run_var + (stored - run_var) / (count + 1)
  else:
    new_mean = momentum * np.asarray(run_mean) + (1 - momentum) * mu
    new_var = momentum * np.asarray(run_var) + (1 - momentum) * stored
  return y, new_mean, new_var


def np_bn_grads(x, scale, dy):
  """Closed-form BN backward for y = scale * (x - mu) / sqrt(var + eps) + bias, x of shape (N, C)."""
  x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
  mu, var = x.mean(0), x.var(0)
  s = 1.0 / np.sqrt(var + EPS)
  xhat = (x - mu) * s
  dx = scale * s * (dy - dy.mean(0) - xhat * (dy * xhat).mean(0))
  return dx, (dy * xhat).sum(0), dy.sum(0)


def random_setup(shape, feature_axes, seed=0, offset=0.0):
  """x plus non-trivial params and running state (numpy float32) for features on feature_axes."""
  rng = np.random.default_rng(seed)
  fshape = tuple(shape[a] for a in feature_axes)
  x = (rng.normal(size=shape) * 2.0 + offset + 0.5).astype(np.float32)
  scale = rng.uniform(0.5, 1.5, fshape).astype(np.float32)
  bias = rng.normal(size=fshape).astype(np.float32)
  mean = rng.normal(size=fshape).astype(np.float32)
  var = rng.uniform(0.5, 2.0, fshape).astype(np.float32)
  return x, scale, bias, mean, var


def as_bn(scale, bias, mean, var, count=0):
  return (bn.BNParams(jnp.asarray(scale), jnp.asarray(bias)),
          bn.BNState(jnp.asarray(mean), jnp.asarray(var), jnp.asarray(count, jnp.int32)))


def assert_close(a, b, rtol=1e-5, atol=1e-5):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- closed forms


def test_init_values():
  params, state = bn.init(3)
  assert_close(params.scale, np.ones(3), 0, 0)
  assert_close(params.bias, np.zeros(3), 0, 0)
  assert_close(state.mean, np.zeros(3), 0, 0)
  assert_close(state.var, np.ones(3), 0, 0)
  assert state.count.dtype == jnp.int32 and int(state.count) == 0
  assert bn.init((2, 3))[1].mean.shape == (2, 3)
  assert bn.init(3, use_scale=False, use_bias=False)[0] == bn.BNParams(None, None)


def test_closed_form_train():
  # Feature 0: values 1, 3 -> mean 2, biased var 1. Feature 1: values 0, 4 -> mean 2, var 4.
  x = jnp.array([[1.0, 0.0], [3.0, 4.0]])
  params = bn.BNParams(jnp.array([2.0, 1.0]), jnp.array([0.5, -1.0]))
  state = bn.init_state(2)
  y, new, stats = bn.batch_norm(x, params, state, train=True, momentum=0.9, return_stats=True)
  a, b = 1 / np.sqrt(1 + EPS), 2 / np.sqrt(4 + EPS)
  assert_close(y, [[-2 * a + 0.5, -b - 1.0], [2 * a + 0.5, b - 1.0]], 1e-6, 1e-6)
  assert_close(new.mean, [0.1 * 2, 0.1 * 2], 1e-6, 1e-7)
  assert_close(new.var, [0.9 * 1 + 0.1 * 1, 0.9 * 1 + 0.1 * 4], 1e-6, 1e-7)
  assert int(new.count) == 1
  assert_close(stats.mean, [2, 2], 0, 0)
  assert_close(stats.var, [1, 4], 0, 0)
  assert float(stats.count) == 2
  # PyTorch convention: unbiased running variance n / (n - 1) = 2x.
  _, new_u = bn.batch_norm(x, params, state, train=True, momentum=0.9, unbiased=True)
  assert_close(new_u.var, [0.9 + 0.1 * 2, 0.9 + 0.1 * 8], 1e-6, 1e-7)
  # momentum=0: running statistics become the batch statistics.
  _, new0 = bn.batch_norm(x, params, state, train=True, momentum=0.0)
  assert_close(new0.mean, [2, 2], 0, 0)
  assert_close(new0.var, [1, 4], 0, 0)


def test_closed_form_eval_uses_running_stats_and_returns_state_unchanged():
  x = jnp.array([[3.0], [-1.0], [1.0]])
  params = bn.BNParams(jnp.array([2.0]), jnp.array([0.5]))
  state = bn.BNState(jnp.array([1.0]), jnp.array([4.0]), jnp.array(7, jnp.int32))
  y, out = bn.batch_norm(x, params, state, train=False)
  s = 2 / np.sqrt(4 + EPS)
  assert_close(y, [[2 * s + 0.5], [-2 * s + 0.5], [0.5]], 1e-6, 1e-6)
  assert out is state
  y2, out2, stats = bn.batch_norm(x, params, state, train=False, return_stats=True)
  assert out2 is state
  np.testing.assert_array_equal(y2, y)
  assert_close(stats.mean, [1.0], 0, 0)
  assert_close(stats.var, [4.0], 0, 0)
  # Under jit the returned state has identical values.
  y3, out3 = jax.jit(functools.partial(bn.batch_norm, train=False))(x, params, state)
  for a, b in zip(out3, state):
    np.testing.assert_array_equal(a, b)
  assert_close(y3, y, 1e-6, 1e-6)


# ----------------------------------------------------------------------------- NumPy reference


LAYOUTS = [
    ((6, 3), -1),            # (N, C)
    ((4, 3, 3, 2), -1),      # (N, H, W, C)
    ((4, 5, 3), -1),         # (N, L, C)
    ((4, 3, 2, 2), 1),       # (N, C, H, W)
    ((4, 3, 2, 5), (1, 3)),  # a tuple of feature axes
]


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("variance", ["two_pass", "fast"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_matches_numpy(shape, axis, variance, unbiased):
  faxes = tuple(a % len(shape) for a in (axis if isinstance(axis, tuple) else (axis,)))
  x, scale, bias, mean, var = random_setup(shape, faxes)
  params, state = as_bn(scale, bias, mean, var)
  y, new = bn.batch_norm(x, params, state, train=True, momentum=0.9, axis=axis, variance=variance, unbiased=unbiased)
  y_ref, m_ref, v_ref = np_bn(x, scale, bias, mean, var, feature_axes=faxes, momentum=0.9, unbiased=unbiased)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert new.mean.shape == mean.shape and new.mean.dtype == jnp.float32
  assert_close(y, y_ref, 1e-5, 2e-5)
  assert_close(new.mean, m_ref)
  assert_close(new.var, v_ref)
  # Eval mode with the new state normalizes with it.
  y_eval, _ = bn.batch_norm(x, params, new, train=False, axis=axis)
  bshape = tuple(shape[a] if a in faxes else 1 for a in range(len(shape)))
  ref = (x - m_ref.reshape(bshape)) / np.sqrt(v_ref.reshape(bshape) + EPS) * scale.reshape(bshape) + bias.reshape(bshape)
  assert_close(y_eval, ref, 1e-5, 2e-5)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.99, "array"])
def test_momentum_values_over_two_updates(momentum):
  x, scale, bias, mean, var = random_setup((5, 3), (1,), seed=1)
  x2 = random_setup((5, 3), (1,), seed=2)[0]
  params, state = as_bn(scale, bias, mean, var)
  m = jnp.asarray(0.7) if momentum == "array" else momentum
  m_np = 0.7 if momentum == "array" else momentum
  _, state = bn.batch_norm(x, params, state, train=True, momentum=m)
  _, state = bn.batch_norm(x2, params, state, train=True, momentum=m)
  _, m1, v1 = np_bn(x, scale, bias, mean, var, momentum=m_np)
  _, m2, v2 = np_bn(x2, scale, bias, m1, v1, momentum=m_np)
  assert_close(state.mean, m2)
  assert_close(state.var, v2)
  assert int(state.count) == 2


@pytest.mark.parametrize("unbiased", [False, True])
def test_momentum_none_is_cumulative_average_precise_bn(unbiased):
  _, scale, bias, mean, var = random_setup((4, 3), (1,))
  params, state = as_bn(scale, bias, mean, var, count=5)
  state = bn.reset(state)
  assert int(state.count) == 0 and state.mean.shape == (3,)
  rng = np.random.default_rng(3)
  batches = [(rng.normal(size=(6, 3)) * (k + 1) + k).astype(np.float32) for k in range(4)]
  for xb in batches:
    _, state = bn.batch_norm(xb, params, state, train=True, momentum=None, unbiased=unbiased)
  means = [xb.astype(np.float64).mean(0) for xb in batches]
  vars_ = [xb.astype(np.float64).var(0, ddof=1 if unbiased else 0) for xb in batches]
  assert int(state.count) == 4
  assert_close(state.mean, np.mean(means, 0))
  assert_close(state.var, np.mean(vars_, 0))


@pytest.mark.parametrize("variance", ["two_pass", "fast"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_mask_equals_numpy_on_valid_subset(variance, unbiased):
  x, scale, bias, mean, var = random_setup((8, 3), (1,), seed=4)
  valid = np.array([1, 1, 0, 1, 0, 1, 1, 0], bool)
  params, state = as_bn(scale, bias, mean, var)
  y, new = bn.batch_norm(x, params, state, train=True, momentum=0.8, mask=valid[:, None], variance=variance,
                         unbiased=unbiased)
  y_ref, m_ref, v_ref = np_bn(x[valid], scale, bias, mean, var, momentum=0.8, unbiased=unbiased)
  assert_close(np.asarray(y)[valid], y_ref, 1e-5, 2e-5)
  assert np.all(np.isfinite(np.asarray(y)))
  assert_close(new.mean, m_ref)
  assert_close(new.var, v_ref)


def test_padding_mask_for_sequences():
  # (N, L, C) with per-sequence lengths: statistics over the valid tokens only.
  x, scale, bias, mean, var = random_setup((3, 5, 2), (2,), seed=5)
  x[0, 4:] = 1e3  # padding garbage must not leak into the statistics
  x[2, 1:] = -1e3
  lengths = np.array([4, 5, 1])
  valid = np.arange(5)[None, :] < lengths[:, None]  # (N, L)
  params, state = as_bn(scale, bias, mean, var)
  y, new = bn.batch_norm(x, params, state, train=True, momentum=0.5, mask=valid[..., None])
  tokens = x[valid]  # (num_valid, C)
  y_ref, m_ref, v_ref = np_bn(tokens, scale, bias, mean, var, momentum=0.5)
  assert_close(np.asarray(y)[valid], y_ref, 1e-5, 2e-5)
  assert_close(new.mean, m_ref)
  assert_close(new.var, v_ref)


# ----------------------------------------------------------------------------- jit, grad, vmap


JIT_CASES = {
    "plain": dict(),
    "nchw_mask": dict(axis=1, mask=np.array([1, 0, 1, 1, 1, 0, 1, 1], bool)[:, None, None, None]),
    "fast_unbiased": dict(variance="fast", unbiased=True),
    "ghost": dict(ghost_batch_size=4),
    "renorm": dict(renorm=bn.Renorm(1.5, 0.5)),
    "noise": dict(noise=bn.Noise(), key=jax.random.key(0)),
}


@pytest.mark.parametrize("case", sorted(JIT_CASES))
def test_jit_equals_eager(case):
  kw = dict(JIT_CASES[case])
  axis = kw.pop("axis", -1)
  x, scale, bias, mean, var = random_setup((8, 2, 2, 3), (axis % 4,), seed=6)
  params, state = as_bn(scale, bias, mean, var)
  f = functools.partial(bn.batch_norm, train=True, momentum=0.9, axis=axis, **kw)
  y, new = f(x, params, state)
  yj, newj = jax.jit(f)(x, params, state)
  assert_close(yj, y, 1e-5, 1e-5)
  for a, b in zip(newj, new):
    assert_close(a, b, 1e-6, 1e-6)


def test_grad_matches_closed_form_backward():
  x, scale, bias, mean, var = random_setup((7, 3), (1,), seed=7)
  dy = np.random.default_rng(8).normal(size=x.shape).astype(np.float32)
  _, state = as_bn(scale, bias, mean, var)

  def loss(x, scale, bias):
    y, _ = bn.batch_norm(x, bn.BNParams(scale, bias), state, train=True)
    return jnp.sum(y * dy)

  for g in (jax.grad(loss, (0, 1, 2)), jax.jit(jax.grad(loss, (0, 1, 2)))):
    gx, gs, gb = g(jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias))
    rx, rs, rb = np_bn_grads(x, scale, dy)
    assert_close(gx, rx, 1e-4, 1e-5)
    assert_close(gs, rs, 1e-5, 1e-5)
    assert_close(gb, rb, 1e-5, 1e-5)


@pytest.mark.parametrize("kw", [dict(axis=1, mask=np.array([1, 1, 0, 1, 1, 1], bool)[:, None, None]),
                                dict(ghost_batch_size=3, variance="fast", unbiased=True)],
                         ids=["nchw_mask", "ghost_fast"])
def test_grad_matches_central_differences_in_float64(kw):
  # (Renorm is excluded on purpose: its r, d carry no gradient, so its grad is not the
  # derivative of its output; see test_renorm_matches_numpy_formula.)
  with jax.enable_x64(True):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(6, 3, 2)) * 1.5 + 0.3
    c = x.shape[kw.get("axis", -1)]
    scale, bias = rng.uniform(0.5, 1.5, c), rng.normal(size=c)
    state = bn.BNState(jnp.asarray(rng.normal(size=c)), jnp.asarray(rng.uniform(0.5, 2, c)), jnp.zeros((), jnp.int32))
    w = rng.normal(size=x.shape)

    def loss(x, scale, bias):
      y, _ = bn.batch_norm(x, bn.BNParams(scale, bias), state, train=True, **kw)
      return jnp.sum(jnp.tanh(y) * w)

    args = [jnp.asarray(a, jnp.float64) for a in (x, scale, bias)]
    grads = jax.grad(loss, (0, 1, 2))(*args)
    loss = jax.jit(loss)
    assert grads[0].dtype == jnp.float64
    h = 1e-6
    for i, (a, g) in enumerate(zip(args, grads)):
      flat = np.asarray(a).ravel()
      fd = np.zeros_like(flat)
      for j in range(flat.size):
        up, dn = flat.copy(), flat.copy()
        up[j] += h
        dn[j] -= h
        a_up = [jnp.asarray(up.reshape(a.shape)) if k == i else args[k] for k in range(3)]
        a_dn = [jnp.asarray(dn.reshape(a.shape)) if k == i else args[k] for k in range(3)]
        fd[j] = (float(loss(*a_up)) - float(loss(*a_dn))) / (2 * h)
      assert_close(g, fd.reshape(a.shape), 1e-6, 1e-7)


def test_vmap_over_independent_problems_equals_loop():
  rng = np.random.default_rng(10)
  k = 4
  xs = rng.normal(size=(k, 5, 3)).astype(np.float32) * np.arange(1, k + 1)[:, None, None].astype(np.float32)
  scales = rng.uniform(0.5, 1.5, (k, 3)).astype(np.float32)
  biases = rng.normal(size=(k, 3)).astype(np.float32)
  means = rng.normal(size=(k, 3)).astype(np.float32)
  vars_ = rng.uniform(0.5, 2, (k, 3)).astype(np.float32)
  params, state = as_bn(scales, biases, means, vars_, count=np.zeros(k, np.int32))
  f = functools.partial(bn.batch_norm, train=True, momentum=0.9)
  ys, new = jax.vmap(f)(xs, params, state)
  for i in range(k):
    p_i, s_i = as_bn(scales[i], biases[i], means[i], vars_[i])
    y_i, new_i = f(xs[i], p_i, s_i)
    assert_close(ys[i], y_i, 1e-6, 1e-6)
    assert_close(new.mean[i], new_i.mean, 1e-6, 1e-6)
    assert_close(new.var[i], new_i.var, 1e-6, 1e-6)
    assert int(new.count[i]) == 1
    y_ref, m_ref, _ = np_bn(xs[i], scales[i], biases[i], means[i], vars_[i], momentum=0.9)
    assert_close(ys[i], y_ref, 1e-5, 2e-5)


def test_no_recompilation_for_new_renorm_clips():
  traces = []

  @jax.jit
  def step(x, params, state, r_max, d_max):
    traces.append(1)
    return bn.batch_norm(x, params, state, train=True, renorm=bn.Renorm(r_max, d_max))

  x, scale, bias, mean, var = random_setup((6, 3), (1,), seed=11)
  params, state = as_bn(scale, bias, mean, var)
  y1, _ = step(x, params, state, jnp.asarray(1.0), jnp.asarray(0.0))
  y2, _ = step(x, params, state, jnp.asarray(3.0), jnp.asarray(5.0))
  y3, _ = step(x * 2, params, state, jnp.asarray(2.0), jnp.asarray(1.0))
  assert len(traces) == 1
  assert not np.allclose(y1, y2)  # the new clip values took effect
  del y3


# ----------------------------------------------------------------------------- variants


@pytest.mark.parametrize("shape", [(8, 3), (6, 2, 2, 3)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_ghost_bn_equals_chunkwise_bn(shape, unbiased):
  x, scale, bias, mean, var = random_setup(shape, (len(shape) - 1,), seed=12)
  params, state = as_bn(scale, bias, mean, var)
  g = 2
  y, new = bn.batch_norm(x, params, state, train=True, momentum=0.9, ghost_batch_size=g, unbiased=unbiased)
  chunks = np.split(x, shape[0] // g)
  faxes = (len(shape) - 1,)
  y_ref = np.concatenate([np_bn(c, scale, bias, mean, var, feature_axes=faxes)[0] for c in chunks])
  assert_close(y, y_ref, 1e-5, 2e-5)
  # Ghost BN output also equals bn.batch_norm applied chunk by chunk.
  y_loop = np.concatenate([np.asarray(bn.batch_norm(c, params, state, train=True)[0]) for c in chunks])
  assert_close(y, y_loop, 1e-6, 1e-6)
  # Running update: once, from the average of the chunk statistics.
  cm = [np_moments(c, faxes)[0].ravel() for c in chunks]
  n = chunks[0].size // shape[-1]
  cv = [np_moments(c, faxes)[1].ravel() * (n / (n - 1) if unbiased else 1) for c in chunks]
  assert_close(new.mean, 0.9 * mean + 0.1 * np.mean(cm, 0))
  assert_close(new.var, 0.9 * var + 0.1 * np.mean(cv, 0))
  assert int(new.count) == 1


def test_ghost_bn_with_mask():
  x, scale, bias, mean, var = random_setup((8, 3), (1,), seed=13)
  valid = np.array([1, 1, 1, 0, 1, 1, 0, 1], bool)
  params, state = as_bn(scale, bias, mean, var)
  y, _ = bn.batch_norm(x, params, state, train=True, ghost_batch_size=4, mask=valid[:, None])
  for sl in (slice(0, 4), slice(4, 8)):
    v = valid[sl]
    y_ref = np_bn(x[sl][v], scale, bias, mean, var)[0]
    assert_close(np.asarray(y)[sl][v], y_ref, 1e-5, 2e-5)


def test_renorm_with_unit_clips_equals_bn_outputs_and_grads():
  x, scale, bias, mean, var = random_setup((6, 3), (1,), seed=14, offset=3.0)
  params, state = as_bn(scale, bias, mean, var)

  def run(x, params, renorm):
    return bn.batch_norm(x, params, state, train=True, momentum=0.9, renorm=renorm)

  y0, s0 = run(x, params, None)
  y1, s1 = run(x, params, bn.Renorm(1.0, 0.0))
  assert_close(y1, y0, 1e-5, 1e-5)
  for a, b in zip(s1, s0):
    assert_close(a, b, 1e-6, 1e-6)
  dy = np.random.default_rng(15).normal(size=x.shape).astype(np.float32)

  def loss(x, params, renorm):
    return jnp.sum(run(x, params, renorm)[0] * dy)

  g0 = jax.grad(loss, (0, 1))(jnp.asarray(x), params, None)
  g1 = jax.grad(loss, (0, 1))(jnp.asarray(x), params, bn.Renorm(1.0, 0.0))
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    assert_close(a, b, 1e-4, 1e-5)
  rx = np_bn_grads(x, scale, dy)[0]
  assert_close(g1[0], rx, 1e-4, 1e-5)


@pytest.mark.parametrize("clips", [(1e6, 1e6), (1.3, 0.2)], ids=["wide", "tight"])
def test_renorm_matches_numpy_formula(clips):
  r_max, d_max = clips
  x, scale, bias, mean, var = random_setup((6, 3), (1,), seed=16, offset=1.0)
  params, state = as_bn(scale, bias, mean, var)
  y, new = bn.batch_norm(x, params, state, train=True, momentum=0.9, renorm=bn.Renorm(r_max, d_max))
  xd = x.astype(np.float64)
  mu_b, var_b = xd.mean(0), xd.var(0)
  sig_b, sig = np.sqrt(var_b + EPS), np.sqrt(var.astype(np.float64) + EPS)
  r = np.clip(sig_b / sig, 1 / r_max, r_max)
  d = np.clip((mu_b - mean) / sig, -d_max, d_max)
  y_ref = ((xd - mu_b) / sig_b * r + d) * scale + bias
  assert_close(y, y_ref, 1e-5, 2e-5)
  if r_max > 1e3:  # unclipped: normalization by the running statistics
    assert_close(y, (xd - mean) / sig * scale + bias, 1e-5, 2e-5)
  else:
    assert np.any(r != sig_b / sig) and np.any(d != (mu_b - mean) / sig)  # the clips bind
  _, m_ref, v_ref = np_bn(x, scale, bias, mean, var, momentum=0.9)  # running update as in BN
  assert_close(new.mean, m_ref)
  assert_close(new.var, v_ref)
  # r and d carry no gradient: d/dx = r * (plain BN backward).
  dy = np.random.default_rng(17).normal(size=x.shape).astype(np.float32)
  gx = jax.grad(lambda x: jnp.sum(bn.batch_norm(x, params, state, train=True, renorm=bn.Renorm(r_max, d_max))[0] * dy))(
      jnp.asarray(x))
  assert_close(gx, r * np_bn_grads(x, scale, dy)[0], 1e-4, 1e-5)


def test_population_mode_normalizes_like_eval_but_updates_state():
  x, scale, bias, mean, var = random_setup((6, 2, 3), (2,), seed=18)
  params, state = as_bn(scale, bias, mean, var)
  y, new = bn.batch_norm(x, params, state, train=True, population=True, momentum=0.9)
  y_eval, _ = bn.batch_norm(x, params, state, train=False)
  assert_close(y, y_eval, 1e-6, 1e-6)
  assert_close(y, (x - mean) / np.sqrt(var + EPS) * scale + bias, 1e-5, 2e-5)
  _, m_ref, v_ref = np_bn(x, scale, bias, mean, var, momentum=0.9)
  assert_close(new.mean, m_ref)
  assert_close(new.var, v_ref)
  assert int(new.count) == 1


@functools.partial(jax.jit, static_argnames="noise")
def _noise_scale_shift_jit(x, params, state, noise, key):
  y, _ = bn.batch_norm(x, params, state, train=True)
  yn, _ = bn.batch_norm(x, params, state, train=True, noise=noise, key=key)
  return y, yn


def _noise_scale_shift(x, params, state, noise, key):
  """Recover the per-channel (s, m) of y_noisy = s * y + m from two rows of x."""
  y, yn = _noise_scale_shift_jit(x, params, state, noise, key)
  y, yn = np.asarray(y, np.float64), np.asarray(yn, np.float64)
  s = (yn[0] - yn[1]) / (y[0] - y[1])
  m = yn[0] - s * y[0]
  assert_close(yn, s * y + m, 1e-4, 1e-4)  # the noise is a per-channel affine map
  return s, m, yn


def test_noise_statistics_within_configured_ranges():
  # The earlier form (per_sample=False): one (mu, sigma) per layer, one (m, s) per unit shared by the batch.
  # (The paper's per-sample form is tested in test_norm_variants.py.)
  c = 512
  rng = np.random.default_rng(19)
  x = rng.normal(size=(4, c)).astype(np.float32)
  params, state = bn.init(c)
  noise = bn.Noise(per_sample=False)
  for seed in range(3):
    s, m, _ = _noise_scale_shift(x, params, state, noise, jax.random.key(seed))
    # Unit shifts m ~ U(mu - 0.1, mu + 0.1) with mu ~ U(-0.5, 0.5).
    assert m.max() - m.min() <= 2 * noise.mean_halfwidth + 1e-4
    assert noise.mean_range[0] - 0.1 - 1e-4 <= m.min() and m.max() <= noise.mean_range[1] + 0.1 + 1e-4
    # Unit scales s ~ N(sigma, 0.1) with sigma ~ U(1, 1.25).
    assert noise.scale_range[0] - 0.03 <= s.mean() <= noise.scale_range[1] + 0.03
    assert 0.08 <= s.std() <= 0.12
  # Without unit-level noise the layer-level draws land in their ranges exactly.
  flat = bn.Noise(mean_range=(2.0, 3.0), scale_range=(4.0, 5.0), mean_halfwidth=0.0, scale_std=0.0, per_sample=False)
  for seed in range(3):
    s, m, _ = _noise_scale_shift(x[:, :8], *bn.init(8), flat, jax.random.key(seed))
    assert np.ptp(s) < 1e-5 and np.ptp(m) < 1e-4
    assert 4.0 <= s[0] <= 5.0 and 2.0 <= m[0] <= 3.0


def test_noise_differs_across_keys_and_eval_ignores_it():
  x, scale, bias, mean, var = random_setup((6, 4), (1,), seed=20)
  params, state = as_bn(scale, bias, mean, var)
  y1, s1 = bn.batch_norm(x, params, state, train=True, noise=bn.Noise(), key=jax.random.key(1))
  y1b, _ = bn.batch_norm(x, params, state, train=True, noise=bn.Noise(), key=jax.random.key(1))
  y2, s2 = bn.batch_norm(x, params, state, train=True, noise=bn.Noise(), key=jax.random.key(2))
  np.testing.assert_array_equal(y1, y1b)
  assert not np.allclose(y1, y2, atol=1e-3)
  # The noise does not touch the running statistics.
  _, m_ref, v_ref = np_bn(x, scale, bias, mean, var)
  for st in (s1, s2):
    assert_close(st.mean, m_ref)
    assert_close(st.var, v_ref)
  ye, _ = bn.batch_norm(x, params, state, train=False)
  ye_noise, _ = bn.batch_norm(x, params, state, train=False, noise=bn.Noise())  # no key needed in eval
  ye_key, _ = bn.batch_norm(x, params, state, train=False, noise=bn.Noise(), key=jax.random.key(3))
  np.testing.assert_array_equal(ye_noise, ye)
  np.testing.assert_array_equal(ye_key, ye)


# ----------------------------------------------------------------------------- precision


def test_two_pass_variance_is_stable_for_large_offsets():
  rng = np.random.default_rng(21)
  x = (1e4 + rng.normal(size=(4096, 2))).astype(np.float32)
  params, state = bn.init(2)
  y, _, stats = bn.batch_norm(x, params, state, train=True, variance="two_pass", return_stats=True)
  ref_var = x.astype(np.float64).var(0)  # of the float32 sample, ~1
  assert np.all(np.abs(np.asarray(stats.var) / ref_var - 1) < 0.01)
  assert_close(stats.mean, x.astype(np.float64).mean(0), 1e-6, 0)
  assert np.all(np.abs(np.asarray(y).std(0) - 1) < 0.01)


def test_bf16_input_keeps_float32_statistics():
  x, scale, bias, mean, var = random_setup((16, 2, 3), (2,), seed=22)
  xb = jnp.asarray(x, jnp.bfloat16)
  params, state = as_bn(scale, bias, mean, var)
  y, new, stats = bn.batch_norm(xb, params, state, train=True, momentum=0.9, return_stats=True)
  assert y.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(y, np.float32)))
  assert new.mean.dtype == new.var.dtype == stats.mean.dtype == stats.var.dtype == jnp.float32
  x_exact = np.asarray(xb, np.float64)  # the values the bf16 input actually holds
  y_ref, m_ref, v_ref = np_bn(x_exact, scale, bias, mean, var, momentum=0.9)
  assert_close(new.mean, m_ref, 1e-5, 1e-6)  # float32 accuracy, not bf16
  assert_close(new.var, v_ref, 1e-5, 1e-6)
  assert_close(np.asarray(y, np.float32), y_ref, 1e-2, 2e-2)
  y32, _ = bn.batch_norm(xb, params, state, train=True, dtype=jnp.float32)
  assert y32.dtype == jnp.float32
  assert_close(y32, y_ref, 1e-5, 2e-5)
  y_eval, same = bn.batch_norm(xb, params, new, train=False)
  assert y_eval.dtype == jnp.bfloat16 and same is new


# ----------------------------------------------------------------------------- layer / group norm


def np_group_norm(x, scale, bias, groups):
  x = np.asarray(x, np.float64)
  c = x.shape[-1]
  xg = x.reshape(x.shape[:-1] + (groups, c // groups))
  axes = tuple(a for a in range(1, xg.ndim) if a != xg.ndim - 2)
  mu = xg.mean(axes, keepdims=True)
  var = xg.var(axes, keepdims=True)
  return ((xg - mu) / np.sqrt(var + EPS)).reshape(x.shape) * scale + bias


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 3, 6)])
def test_layer_norm_matches_numpy_and_flax(shape):
  import flax.linen as nn

  x, scale, bias, _, _ = random_setup(shape, (len(shape) - 1,), seed=23, offset=5.0)
  params = bn.BNParams(jnp.asarray(scale), jnp.asarray(bias))
  state = bn.init_state(shape[-1])
  y, out = bn.layer_norm(x, params, state, train=True)
  assert out is state
  assert y.dtype == jnp.float32
  assert_close(y, np_group_norm(x, scale, bias, 1), 1e-5, 2e-5)
  ln = nn.LayerNorm(epsilon=EPS, reduction_axes=tuple(range(1, len(shape))), feature_axes=-1)
  y_flax = ln.apply({"params": {"scale": scale, "bias": bias}}, x)
  assert_close(y, y_flax, 1e-4, 1e-4)
  assert bn.layer_norm(x, params, None)[1] is None


@pytest.mark.parametrize("groups", [1, 3, 6])
def test_group_norm_matches_numpy_and_flax(groups):
  import flax.linen as nn

  x, scale, bias, _, _ = random_setup((2, 3, 2, 6), (3,), seed=24, offset=2.0)
  params = bn.BNParams(jnp.asarray(scale), jnp.asarray(bias))
  state = bn.init_state(6)
  y, out = bn.group_norm(x, params, state, train=False, num_groups=groups)
  assert out is state
  assert_close(y, np_group_norm(x, scale, bias, groups), 1e-5, 2e-5)
  gn = nn.GroupNorm(num_groups=groups, epsilon=EPS)
  y_flax = gn.apply({"params": {"scale": scale, "bias": bias}}, x)
  assert_close(y, y_flax, 1e-4, 1e-4)


def test_layer_and_group_norm_without_affine_and_bf16():
  x = np.random.default_rng(25).normal(size=(3, 4)).astype(np.float32)
  y, _ = bn.group_norm(jnp.asarray(x, jnp.bfloat16), bn.BNParams(None, None), None, num_groups=2)
  assert y.dtype == jnp.bfloat16
  assert_close(np.asarray(y, np.float32), np_group_norm(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64), 1, 0, 2),
               2e-2, 2e-2)
  y, _ = bn.layer_norm(x, bn.BNParams(None, None), None)
  assert_close(y, np_group_norm(x, 1, 0, 1), 1e-5, 2e-5)


def test_get_by_name():
  assert bn.get("batch") is bn.batch_norm
  assert bn.get("layer") is bn.layer_norm
  assert bn.get("group") is bn.group_norm
  assert bn.get("none") is bn.no_norm
  x = jnp.ones((2, 3))
  state = bn.init_state(3)
  y, out = bn.get("none")(x, None, state, train=True)
  assert y is x and out is state
  with pytest.raises(ValueError, match=r"unknown normalizer 'instance'.*'batch'"):
    bn.get("instance")


def test_normalizers_share_the_calling_convention():
  x, scale, bias, mean, var = random_setup((4, 2, 2, 4), (3,), seed=26)
  params, state = as_bn(scale, bias, mean, var)
  for name in ("batch", "layer", "group", "none"):
    kw = dict(num_groups=2) if name == "group" else {}
    y, new = jax.jit(functools.partial(bn.get(name), train=True, **kw))(x, params, state)
    assert y.shape == x.shape
    assert jax.tree.structure(new) == jax.tree.structure(state)


# ----------------------------------------------------------------------------- bad input


def _setup(c=3, n=4):
  x = np.random.default_rng(27).normal(size=(n, c)).astype(np.float32)
  return (x,) + bn.init(c)


def test_error_feature_size_differs_from_state():
  x, params, _ = _setup(c=3)
  with pytest.raises(ValueError, match=r"state.mean has shape \(4,\) but the input's feature axes have shape \(3,\)"):
    bn.batch_norm(x, params, bn.init_state(4), train=True)
  with pytest.raises(ValueError, match=r"params.scale has shape \(5,\)"):
    bn.batch_norm(x, bn.init(5)[0], bn.init_state(3), train=False)


def test_error_training_batch_of_one():
  x, params, state = _setup(n=1)
  with pytest.raises(ValueError, match="a training batch of one example"):
    bn.batch_norm(x, params, state, train=True)
  with pytest.raises(ValueError, match="a training batch of one example"):  # it would still fold in var = 0
    bn.batch_norm(x, params, state, train=True, population=True)
  bn.batch_norm(x, params, state, train=False)  # eval is fine, as the message says


def test_error_ghost_batch_of_one():
  x, params, state = _setup(n=4)
  with pytest.raises(ValueError, match="a ghost batch of 1"):
    bn.batch_norm(x, params, state, train=True, ghost_batch_size=1)


def test_error_ghost_size_does_not_divide_batch():
  x, params, state = _setup(n=6)
  with pytest.raises(ValueError, match="ghost_batch_size=4 does not divide the batch of 6"):
    bn.batch_norm(x, params, state, train=True, ghost_batch_size=4)


def test_error_mask_shape_mismatch():
  x, params, state = _setup(n=4)
  with pytest.raises(ValueError, match=r"mask of shape \(3, 1\) does not broadcast to the input shape \(4, 3\)"):
    bn.batch_norm(x, params, state, train=True, mask=np.ones((3, 1), bool))


@pytest.mark.parametrize("momentum", [1.0, -0.1, 1.5])
def test_error_momentum_outside_unit_interval(momentum):
  x, params, state = _setup()
  with pytest.raises(ValueError, match=rf"momentum={momentum} is outside \[0, 1\).*PyTorch"):
    bn.batch_norm(x, params, state, train=True, momentum=momentum)


@pytest.mark.parametrize("epsilon", [0.0, -1e-5])
def test_error_epsilon_not_positive(epsilon):
  x, params, state = _setup()
  with pytest.raises(ValueError, match=rf"epsilon={epsilon} must be > 0"):
    bn.batch_norm(x, params, state, train=True, epsilon=epsilon)
  with pytest.raises(ValueError, match=rf"epsilon={epsilon} must be > 0"):
    bn.layer_norm(x, params, state, epsilon=epsilon)


def test_error_unknown_variance_estimator():
  x, params, state = _setup()
  with pytest.raises(ValueError, match="variance='welford' is not one of"):
    bn.batch_norm(x, params, state, train=True, variance="welford")


def test_error_noise_without_key():
  x, params, state = _setup()
  with pytest.raises(ValueError, match="noise= needs a PRNG key"):
    bn.batch_norm(x, params, state, train=True, noise=bn.Noise())


def test_error_axis_name_outside_mapped_context():
  x, params, state = _setup()
  with pytest.raises(ValueError, match="axis_name='batch' is not bound"):
    bn.batch_norm(x, params, state, train=True, axis_name="batch")
  with pytest.raises(ValueError, match="axis_name='batch' is not bound"):
    jax.jit(functools.partial(bn.batch_norm, train=True, axis_name="batch"))(x, params, state)


def test_error_feature_axis_out_of_range():
  x, params, state = _setup()
  with pytest.raises(ValueError, match="feature axis 2 is out of range for an input of rank 2"):
    bn.batch_norm(x, params, state, train=True, axis=2)


def test_error_group_norm_groups_do_not_divide_channels():
  x = np.ones((2, 6), np.float32)
  with pytest.raises(ValueError, match="num_groups=4 does not divide the 6 channels"):
    bn.group_norm(x, bn.init(6)[0], None, num_groups=4)


@pytest.mark.parametrize("variance", ["two_pass", "fast"])
def test_matches_flax_linen_batch_norm(variance):
  import flax.linen as nn

  x, scale, bias, mean, var = random_setup((4, 3, 3, 2), (3,), seed=28)
  params, state = as_bn(scale, bias, mean, var)
  y, new = bn.batch_norm(x, params, state, train=True, momentum=0.9, variance=variance)
  layer = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=EPS, use_fast_variance=variance == "fast")
  y_flax, upd = layer.apply({"params": {"scale": scale, "bias": bias}, "batch_stats": {"mean": mean, "var": var}}, x,
                            mutable=["batch_stats"])
  assert_close(y, y_flax, 1e-5, 1e-5)
  assert_close(new.mean, upd["batch_stats"]["mean"], 1e-6, 1e-6)
  assert_close(new.var, upd["batch_stats"]["var"], 1e-6, 1e-6)
  y_eval, _ = bn.batch_norm(x, params, new, train=False)
  y_flax_eval = nn.BatchNorm(use_running_average=True, epsilon=EPS).apply(
      {"params": {"scale": scale, "bias": bias}, "batch_stats": upd["batch_stats"]}, x)
  assert_close(y_eval, y_flax_eval, 1e-5, 1e-5)
