"""The pure core on bad or unusual input: integer and complex inputs (against Flax),
non-finite values under a mask, degenerate masks, the one-pass shifted variance
estimator, and argument checks. References: NumPy (float64), flax.linen, closed forms."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bn
from test_norm import EPS, as_bn, assert_close, np_bn, random_setup


# Compiled once per configuration (eager op-by-op dispatch compiles every primitive: slower here).
_bnj = jax.jit(bn.batch_norm, static_argnames=("train", "momentum", "epsilon", "variance", "unbiased", "ghost_batch_size",
                                                "return_stats", "strict_batch", "dtype"))


def _flax_train(x, scale, bias, mean, var, **kw):
  layer = nn.BatchNorm(use_running_average=False, epsilon=EPS, **kw)
  v = {"params": {"scale": scale, "bias": bias}, "batch_stats": {"mean": mean, "var": var}}
  return jax.jit(lambda v, x: layer.apply(v, x, mutable=["batch_stats"]))(v, x)


# ----------------------------------------------------------------------------- integer and complex inputs


def assert_close_c(a, b, rtol, atol):
  """assert_close for complex values (real and imaginary parts)."""
  np.testing.assert_allclose(np.asarray(a, np.complex128), np.asarray(b, np.complex128), rtol=rtol, atol=atol)



@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.bool_])
def test_integer_and_bool_inputs_are_promoted_to_float32_like_flax(dtype):
  rng = np.random.default_rng(0)
  x = (rng.integers(0, 2, (6, 3)) if dtype is np.bool_ else rng.integers(0, 200, (6, 3))).astype(dtype)
  _, scale, bias, mean, var = random_setup((6, 3), (1,), seed=1)
  params, state = as_bn(scale, bias, mean, var)
  y, new = _bnj(x, params, state, train=True, momentum=0.9, variance="fast")
  y_f, upd = _flax_train(x, scale, bias, mean, var, momentum=0.9)
  assert y.dtype == y_f.dtype == jnp.float32
  assert_close(y, y_f, 1e-5, 1e-5)
  assert_close(new.mean, upd["batch_stats"]["mean"], 1e-6, 1e-5)
  assert_close(new.var, upd["batch_stats"]["var"], 1e-6, 1e-5)
  y_ref, _, _ = np_bn(x.astype(np.float64), scale, bias, mean, var, momentum=0.9)
  assert_close(_bnj(x, params, state, train=True)[0], y_ref, 1e-5, 2e-5)  # default estimator
  y_eval, _ = _bnj(x, params, state, train=False)
  assert y_eval.dtype == jnp.float32
  assert_close(y_eval, (x - mean) / np.sqrt(var + EPS) * scale + bias, 1e-5, 1e-5)
  assert _bnj(x, params, state, train=False, dtype=jnp.bfloat16)[0].dtype == jnp.bfloat16
  # The reporter's case: uint8 [[1], [0], [0]]-like input used to come back as uint8.
  y_ln, _ = bn.layer_norm(x, params, None)
  y_ln_f = nn.LayerNorm(epsilon=EPS).apply({"params": {"scale": scale, "bias": bias}}, x)
  assert y_ln.dtype == y_ln_f.dtype == jnp.float32
  assert_close(y_ln, y_ln_f, 1e-4, 1e-4)
  y_gn, _ = bn.group_norm(x.reshape(6, 1, 3), params, None, num_groups=3)
  assert y_gn.dtype == jnp.float32


@pytest.mark.parametrize("fast", [True, False])
def test_complex_inputs_like_flax(fast):
  rng = np.random.default_rng(2)
  x = (rng.normal(size=(8, 2, 3)) + 1j * rng.normal(size=(8, 2, 3)) + (0.5 - 1j)).astype(np.complex64)
  _, scale, bias, mean, var = random_setup((8, 2, 3), (2,), seed=3)
  params, state = as_bn(scale, bias, mean, var)
  variance = "fast" if fast else "two_pass"
  y_f, upd = _flax_train(x, scale, bias, mean, var, momentum=0.9, use_fast_variance=fast)
  for v in (variance, "shifted"):
    y, new, stats = _bnj(x, params, state, train=True, momentum=0.9, variance=v, return_stats=True)
    assert y.dtype == y_f.dtype == jnp.complex64
    assert new.mean.dtype == upd["batch_stats"]["mean"].dtype == jnp.complex64  # the running mean stays complex
    assert new.var.dtype == jnp.float32 and stats.var.dtype == jnp.float32  # the variance is real
    assert_close_c(y, y_f, 1e-5, 1e-5)
    assert_close_c(new.mean, upd["batch_stats"]["mean"], 1e-6, 1e-6)
    assert_close_c(new.var, upd["batch_stats"]["var"], 1e-6, 1e-6)
  # NumPy: complex mean, E|x - mean|^2.
  xd = x.astype(np.complex128).reshape(-1, 3)
  mu = xd.mean(0)
  assert_close_c(stats.mean, mu, 1e-6, 1e-6)
  assert_close_c(stats.var, (np.abs(xd - mu) ** 2).mean(0), 1e-5, 1e-6)
  # Eval with the complex running mean, as Flax.
  y_e = _bnj(x, params, new, train=False)[0]
  y_e_f = nn.BatchNorm(use_running_average=True, epsilon=EPS).apply(
      {"params": {"scale": scale, "bias": bias}, "batch_stats": upd["batch_stats"]}, x)
  assert_close_c(y_e, y_e_f, 1e-5, 1e-5)
  # A second training step continues from the complex running mean.
  _, new2 = _bnj(x, params, new, train=True, momentum=0.9, variance=variance)
  assert new2.mean.dtype == jnp.complex64
  with pytest.raises(ValueError, match="complex inputs .* not renorm="):
    _bnj(x, params, state, train=True, renorm=bn.Renorm(2.0, 1.0))


# ----------------------------------------------------------------------------- non-finite values under a mask


@pytest.mark.parametrize("variance", ["shifted", "two_pass", "fast"])
@pytest.mark.parametrize("ghost", [None, 4])
def test_masked_nan_and_inf_do_not_matter(variance, ghost):
  x, scale, bias, mean, var = random_setup((8, 3), (1,), seed=4)
  valid = np.array([0, 1, 1, 0, 1, 1, 1, 0], bool)  # the first example is masked
  garbage = x.copy()
  garbage[~valid] = np.array([np.nan, np.inf, -np.inf], np.float32)
  finite = x.copy()
  finite[~valid] = 1e3
  params, state = as_bn(scale, bias, mean, var)
  w = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)

  @jax.jit
  def run(x, params):
    def loss(x, params):
      y, new = bn.batch_norm(x, params, state, train=True, momentum=0.9, variance=variance, mask=valid[:, None],
                             ghost_batch_size=ghost)
      return jnp.sum(jnp.where(valid[:, None], y, 0.0) * w), (y, new)
    return jax.value_and_grad(loss, (0, 1), has_aux=True)(x, params)

  (_, (y_g, s_g)), (gx_g, gp_g) = run(garbage, params)
  (_, (y_f, s_f)), (gx_f, gp_f) = run(finite, params)
  for t in jax.tree.leaves(((y_g[valid], s_g), gx_g, gp_g)):
    assert np.all(np.isfinite(np.asarray(t)))
  assert_close(y_g[valid], y_f[valid], 1e-6, 1e-6)
  for a, b in zip(jax.tree.leaves((s_g, gx_g, gp_g)), jax.tree.leaves((s_f, gx_f, gp_f))):
    assert_close(a, b, 1e-5, 1e-6)
  np.testing.assert_array_equal(np.asarray(gx_g)[~valid], 0.0)  # nothing flows to masked positions
  np.testing.assert_array_equal(np.asarray(y_g)[~valid], garbage[~valid])  # non-finite values pass through
  # ... and the valid positions and statistics are those of NumPy on the valid subset.
  if ghost is None:
    y_ref, m_ref, v_ref = np_bn(x[valid], scale, bias, mean, var, momentum=0.9)
    assert_close(np.asarray(y_g)[valid], y_ref, 1e-5, 2e-5)
    assert_close(s_g.mean, m_ref)
    assert_close(s_g.var, v_ref)
  # Finite garbage at masked positions is normalized like any value (as Flax does).
  y_eval, _ = bn.batch_norm(garbage, params, state, train=False, mask=valid[:, None])
  np.testing.assert_array_equal(np.asarray(y_eval)[~valid], garbage[~valid])
  assert_close(np.asarray(y_eval)[valid], ((x - mean) / np.sqrt(var + EPS) * scale + bias)[valid], 1e-5, 1e-5)


def test_masked_nan_under_axis_name():
  x, scale, bias, mean, var = random_setup((4, 4, 3), (2,), seed=6)
  valid = np.ones((4, 4), bool)
  valid[:, 1] = False
  x[~valid] = np.nan
  params, state = as_bn(scale, bias, mean, var)
  f = jax.jit(jax.vmap(lambda x, m: bn.batch_norm(x, params, state, train=True, momentum=0.9, axis_name="i", mask=m),
                       axis_name="i"))
  ys, new = f(x, valid[..., None])
  y_ref, m_ref, v_ref = np_bn(x[valid], scale, bias, mean, var, momentum=0.9)
  assert_close(np.asarray(ys)[valid], y_ref, 1e-5, 2e-5)
  assert_close(new.mean[0], m_ref)
  assert_close(new.var[2], v_ref)


# ----------------------------------------------------------------------------- degenerate masks


def test_concrete_masks_with_fewer_than_two_valid_values_are_errors():
  x, scale, bias, mean, var = random_setup((6, 3), (1,), seed=7)
  params, state = as_bn(scale, bias, mean, var)
  with pytest.raises(ValueError, match=r"the mask leaves 3 feature\(s\) of the batch with fewer than 2 valid values \(fewest: 0\)"):
    bn.batch_norm(x, params, state, train=True, mask=np.zeros((6, 1), bool))
  one_row = np.array([0, 0, 1, 0, 0, 0], bool)[:, None]
  with pytest.raises(ValueError, match=r"fewer than 2 valid values \(fewest: 1\).*strict_batch=False"):
    bn.batch_norm(x, params, state, train=True, mask=one_row)
  with pytest.raises(ValueError, match=r"fewer than 2 valid values"):  # a Python bool is concrete too
    bn.batch_norm(x, params, state, train=True, mask=False)
  per_feature = np.ones((6, 3), bool)
  per_feature[1:, 2] = False
  with pytest.raises(ValueError, match=r"leaves 1 feature\(s\) of the batch"):
    bn.batch_norm(x, params, state, train=True, mask=per_feature)
  ghost_mask = np.array([1, 1, 1, 1, 0, 0], bool)[:, None]
  with pytest.raises(ValueError, match=r"feature\(s\) of a ghost batch of 2 with fewer than 2"):
    bn.batch_norm(x, params, state, train=True, mask=ghost_mask, ghost_batch_size=2)
  bn.batch_norm(x, params, state, train=False, mask=np.zeros((6, 1), bool))  # eval is fine
  bn.batch_norm(x, params, state, train=True, mask=one_row, strict_batch=False)  # Flax's behaviour on request


@pytest.mark.parametrize("momentum", [0.9, None])
def test_traced_masks_with_too_few_values_keep_the_running_statistics(momentum):
  x, scale, bias, mean, var = random_setup((6, 3), (1,), seed=8)
  params, state = as_bn(scale, bias, mean, var, count=2)
  f = jax.jit(functools.partial(bn.batch_norm, train=True, momentum=momentum, return_stats=True),
              static_argnames="strict_batch")
  eval_y = (x - mean) / np.sqrt(var + EPS) * scale + bias
  # All-zero mask: finite output (normalized with the running statistics), state untouched, count unchanged.
  y, new, stats = f(x, params, state, mask=np.zeros((6, 1), bool) == 1)  # a traced mask: a jit argument
  assert_close(y, eval_y, 1e-5, 1e-5)
  np.testing.assert_array_equal(new.mean, mean)
  np.testing.assert_array_equal(new.var, var)
  assert int(new.count) == 2
  assert_close(stats.mean, mean, 0, 0)
  # Per feature: feature 0 has 4 valid values, feature 1 one, feature 2 none.
  m = np.zeros((6, 3), bool)
  m[:4, 0] = True
  m[2, 1] = True
  for strict in (True, False):
    y, new, stats = f(x, params, state, mask=m, strict_batch=strict)
    assert np.all(np.isfinite(np.asarray(y)))
    y0, m0, v0 = np_bn(x[:4, :1], scale[:1], bias[:1], mean[:1], var[:1], momentum=momentum, count=2)
    assert_close(np.asarray(y)[:4, 0], y0.ravel(), 1e-5, 2e-5)
    assert_close(new.mean[0], m0[0])
    assert_close(new.var[0], v0[0])
    assert int(new.count) == 3  # one update (some features took part)
    assert_close(y[:, 2], eval_y[:, 2], 1e-5, 1e-5)  # no valid value: the running statistics
    np.testing.assert_array_equal(new.mean[2], mean[2])
    np.testing.assert_array_equal(new.var[2], var[2])
    if strict:  # one value: no variance -> the running statistics, untouched
      assert_close(y[:, 1], eval_y[:, 1], 1e-5, 1e-5)
      np.testing.assert_array_equal(new.mean[1], mean[1])
      np.testing.assert_array_equal(new.var[1], var[1])
    else:  # Flax: variance 0, so the valid position's output is the bias; folded in
      assert_close(y[2, 1], bias[1], 1e-6, 1e-6)
      _, m1, v1 = np_bn(x[2:3, 1:2], scale[1:2], bias[1:2], mean[1:2], var[1:2], momentum=momentum, count=2)
      assert_close(new.mean[1], m1[0])
      assert_close(new.var[1], v1[0])


def test_traced_mask_under_axis_name_uses_the_global_count():
  x, scale, bias, mean, var = random_setup((8, 2, 3), (2,), seed=9)
  params, state = as_bn(scale, bias, mean, var)
  f = jax.jit(jax.vmap(lambda x, m: bn.batch_norm(x, params, state, train=True, momentum=0.9, axis_name="i", mask=m),
                       axis_name="i"))
  one_each = np.zeros((8, 2), bool)
  one_each[:, 0] = True  # one valid value per device, 8 globally: fine
  ys, new = f(x, one_each[..., None])
  y_ref, m_ref, v_ref = np_bn(x[one_each], scale, bias, mean, var, momentum=0.9)
  assert_close(np.asarray(ys)[one_each], y_ref, 1e-5, 2e-5)
  assert_close(new.mean[5], m_ref)
  only_one = np.zeros((8, 2), bool)
  only_one[3, 1] = True  # one valid value globally: the running statistics are kept
  ys, new = f(x, only_one[..., None])
  np.testing.assert_array_equal(new.mean, np.broadcast_to(mean, (8, 3)))
  np.testing.assert_array_equal(new.var, np.broadcast_to(var, (8, 3)))
  assert_close(ys, (x - mean) / np.sqrt(var + EPS) * scale + bias, 1e-5, 1e-5)


def test_ghost_mask_unbiased_pools_within_ghost_variances():
  """Definition: with ghosts g of n_g valid values and sums of squared deviations SS_g,
  the biased running variance is sum SS_g / sum n_g and the unbiased one sum SS_g / sum (n_g - 1)."""
  x, scale, bias, mean, var = random_setup((12, 2), (1,), seed=10)
  valid = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0], bool)  # ghosts of 4: n_g = 4, 2, 2
  params, state = as_bn(scale, bias, mean, var)
  ghosts = [x[i:i + 4][valid[i:i + 4]].astype(np.float64) for i in (0, 4, 8)]
  ss = sum(((g - g.mean(0)) ** 2).sum(0) for g in ghosts)
  n = sum(len(g) for g in ghosts)
  pooled_mean = sum(g.sum(0) for g in ghosts) / n
  for unbiased, ref in ((False, ss / n), (True, ss / (n - 3))):
    _, new = _bnj(x, params, state, train=True, momentum=0.0, ghost_batch_size=4, mask=valid[:, None],
                           unbiased=unbiased)
    assert_close(new.var, ref)
    assert_close(new.mean, pooled_mean)
  # Equal ghosts without a mask: the same as the mean over ghosts of var * n / (n - 1).
  _, new = _bnj(x, params, state, train=True, momentum=0.0, ghost_batch_size=4, unbiased=True)
  assert_close(new.var, np.mean([x[i:i + 4].astype(np.float64).var(0, ddof=1) for i in (0, 4, 8)], 0))


# ----------------------------------------------------------------------------- the shifted one-pass estimator


def test_shifted_is_the_default_and_stable_for_large_offsets():
  rng = np.random.default_rng(11)
  x = (1e4 + rng.normal(size=(4096, 2))).astype(np.float32)
  params, state = bn.init(2)
  ref_var = x.astype(np.float64).var(0)
  runs = {
      "default": _bnj(x, params, state, train=True, return_stats=True),
      "masked": _bnj(x, params, state, train=True, mask=np.arange(4096)[:, None] % 3 > 0, return_stats=True),
      "ghost": _bnj(x, params, state, train=True, ghost_batch_size=512, return_stats=True),
  }
  for name, (y, _, stats) in runs.items():
    ref = ref_var if name != "masked" else x[np.arange(4096) % 3 > 0].astype(np.float64).var(0)
    assert np.all(np.abs(np.asarray(stats.var) / ref - 1) < 0.01), name
    assert np.all(np.abs(np.asarray(y).std(0) - 1) < 0.01), name
  # E[x^2] - E[x]^2 cannot resolve this variance in float32; the shifted estimator can.
  _, _, fast = _bnj(x, params, state, train=True, variance="fast", return_stats=True)
  assert np.any(np.abs(np.asarray(fast.var) / ref_var - 1) > 0.1)
  # Across devices the shift is shared: the merged statistics are exact.
  f = jax.vmap(lambda x: bn.batch_norm(x, params, state, train=True, axis_name="i", return_stats=True)[2], axis_name="i")
  stats = jax.jit(f)(x.reshape(8, 512, 2))
  assert np.all(np.abs(np.asarray(stats.var[0]) / ref_var - 1) < 0.01)


@pytest.mark.parametrize("kw", [{}, dict(mask=np.array([1, 0, 1, 1, 1, 0, 1, 1], bool)[:, None, None]),
                                dict(ghost_batch_size=4)], ids=["plain", "mask", "ghost"])
def test_shifted_gradients_equal_two_pass_gradients(kw):
  with jax.enable_x64(True):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(8, 2, 3)) * 1.5 + 3.0
    scale, bias = rng.uniform(0.5, 1.5, 3), rng.normal(size=3)
    state = bn.BNState(jnp.zeros(3), jnp.ones(3), jnp.zeros((), jnp.int32))
    w = rng.normal(size=x.shape)

    def loss(x, scale, bias, variance):
      y, new = bn.batch_norm(x, bn.BNParams(scale, bias), state, train=True, variance=variance, **kw)
      return jnp.sum(jnp.tanh(y) * w)

    g = jax.jit(jax.grad(loss, (0, 1, 2)), static_argnums=3)
    args = [jnp.asarray(a, jnp.float64) for a in (x, scale, bias)]
    for a, b in zip(g(*args, "shifted"), g(*args, "two_pass")):
      assert_close(a, b, 1e-10, 1e-12)


@pytest.mark.parametrize("shape", [(16, 3), (96, 2), (2, 24, 24, 2)])
def test_shifted_single_read_path_under_jit_grad_vmap(shape):
  """The single-read (variadic) reductions: one stage for at most 32 values per feature,
  else two stages over the first reduced axis with a divisor in [8, 32] (here axis 0 with
  3 partial rows, finished by a variadic reduction; then axis 1 with 48, by plain sums)."""
  from test_norm import np_bn_grads

  x, scale, bias, mean, var = random_setup(shape, (len(shape) - 1,), seed=15, offset=2.0)
  params, state = as_bn(scale, bias, mean, var)
  f = jax.jit(functools.partial(bn.batch_norm, train=True, momentum=0.9))
  y, new = f(x, params, state)
  y_ref, m_ref, v_ref = np_bn(x, scale, bias, mean, var, feature_axes=(len(shape) - 1,), momentum=0.9)
  assert_close(y, y_ref, 1e-5, 2e-5)
  assert_close(new.mean, m_ref)
  assert_close(new.var, v_ref)
  ys, news = jax.vmap(f, in_axes=(0, None, None))(np.stack([x, 2 * x]), params, state)
  assert_close(ys[0], y, 1e-6, 1e-6)
  assert_close(news.var[1], np_bn(2 * x, scale, bias, mean, var, feature_axes=(len(shape) - 1,), momentum=0.9)[2])
  if len(shape) == 2:
    dy = np.random.default_rng(16).normal(size=shape).astype(np.float32)
    grads = jax.jit(jax.grad(lambda x, p: jnp.sum(bn.batch_norm(x, p, state, train=True)[0] * dy), (0, 1)))(x, params)
    rx, rs, rb = np_bn_grads(x, scale, dy)
    assert_close(grads[0], rx, 1e-4, 1e-5)
    assert_close(grads[1].scale, rs, 1e-5, 1e-5)
    assert_close(grads[1].bias, rb, 1e-5, 1e-5)
  if shape == (96, 2):  # second order (e.g. gradient penalties) goes through the custom JVP too
    hvp = jax.jvp(jax.grad(lambda x: jnp.sum(jnp.tanh(bn.batch_norm(x, params, state, train=True)[0]))), (x,), (dy,))[1]
    hvp2 = jax.jvp(jax.grad(lambda x: jnp.sum(jnp.tanh(bn.batch_norm(x, params, state, train=True, variance="two_pass")[0]))),
                   (x,), (dy,))[1]
    assert_close(hvp, hvp2, 1e-3, 1e-4)


@pytest.mark.parametrize("shape", [(4096, 2), (16, 8, 8, 4)])
def test_shifted_matches_float64_two_pass_at_a_large_offset(shape):
  """At mean 1e4 and std 1, where E[x^2] - E[x]^2 in float32 fails, the one-pass shifted sums
  (float32, under jit; 2-D: one variadic stage, 4-D: two stages) agree with NumPy's float64
  two-pass statistics."""
  rng = np.random.default_rng(18)
  x = (1e4 + rng.normal(size=shape)).astype(np.float32)
  c = shape[-1]
  params, state = bn.init(c)
  y, _, stats = _bnj(x, params, state, train=True, return_stats=True)
  ref = x.astype(np.float64).reshape(-1, c)
  assert_close(stats.mean, ref.mean(0), 1e-7, 1e-3)
  assert np.all(np.abs(np.asarray(stats.var) / ref.var(0) - 1) < 2e-3)
  y_ref = (ref - ref.mean(0)) / np.sqrt(ref.var(0) + EPS)
  assert_close(np.asarray(y).reshape(-1, c), y_ref, 0, 5e-3)
  _, _, fast = _bnj(x, params, state, train=True, variance="fast", return_stats=True)
  assert np.any(np.abs(np.asarray(fast.var) / ref.var(0) - 1) > 0.1)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_shifted_half_precision_input_like_its_float32_value(dtype):
  """A bfloat16/float16 input: statistics (float32), outputs and gradients equal those of the
  same values given as float32."""
  rng = np.random.default_rng(19)
  x = jnp.asarray((300.0 + 2.0 * rng.normal(size=(64, 4, 3))).astype(np.float32)).astype(dtype)
  x32 = x.astype(jnp.float32)
  params, state = bn.init(3)
  w = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))

  def run(x):
    y, new, stats = bn.batch_norm(x, params, state, train=True, return_stats=True)
    return y, new, stats, jax.grad(lambda x: jnp.sum(bn.batch_norm(x, params, state, train=True)[0].astype(jnp.float32) * w))(x)

  y, new, stats, g = jax.jit(run)(x)
  y32, new32, stats32, g32 = jax.jit(run)(x32)
  assert y.dtype == dtype and g.dtype == dtype
  ref = np.asarray(x32, np.float64).reshape(-1, 3)
  assert_close(stats.mean, ref.mean(0), 1e-7, 1e-4)
  assert_close(stats.var, ref.var(0), 1e-5, 0)
  for a, b in ((stats.mean, stats32.mean), (stats.var, stats32.var), (new.mean, new32.mean), (new.var, new32.var)):
    assert_close(a, b, 1e-6, 0)
  assert_close(y, y32.astype(dtype), 0, 2e-2)
  assert_close(g, g32.astype(dtype), 2e-2, 2e-2 * float(np.abs(g32).max()))


# ----------------------------------------------------------------------------- argument checks


def _setup(c=3, n=4):
  x = np.random.default_rng(13).normal(size=(n, c)).astype(np.float32)
  return (x,) + bn.init(c)


@pytest.mark.parametrize("momentum", [np.float32(1.0), np.float64(-0.5), np.array(1.5)])
def test_error_numpy_momentum_outside_unit_interval(momentum):
  x, params, state = _setup()
  with pytest.raises(ValueError, match=r"momentum=.* is outside \[0, 1\).*PyTorch"):
    bn.batch_norm(x, params, state, train=True, momentum=momentum)


@pytest.mark.parametrize("momentum", [True, np.bool_(False)])
def test_error_bool_momentum(momentum):
  x, params, state = _setup()
  with pytest.raises(TypeError, match="momentum=.* is a bool; pass a number in"):
    bn.batch_norm(x, params, state, train=True, momentum=momentum)


def test_numpy_hyperparameters_in_range_are_fine():
  x, params, state = _setup()
  _, a = _bnj(x, params, state, train=True, momentum=np.float32(0.5), epsilon=np.float64(1e-3))
  _, b = _bnj(x, params, state, train=True, momentum=0.5, epsilon=1e-3)
  assert_close(a.var, b.var, 0, 0)
  _bnj(x, params, state, train=np.bool_(True), ghost_batch_size=np.int64(2))


def test_error_renorm_clips():
  x, params, state = _setup()
  with pytest.raises(ValueError, match=r"Renorm\(r_max=0.5\) must be >= 1"):
    bn.batch_norm(x, params, state, train=True, renorm=bn.Renorm(0.5, 1.0))
  with pytest.raises(ValueError, match=r"Renorm\(d_max=-1.0\) must be >= 0"):
    bn.batch_norm(x, params, state, train=True, renorm=bn.Renorm(2.0, -1.0))
  with pytest.raises(TypeError, match=r"renorm must be bn.Renorm\(r_max, d_max\)"):
    bn.batch_norm(x, params, state, train=True, renorm=(2.0, 1.0))
  # traced clip values are not checked (they are a schedule's values)
  jax.jit(lambda r: bn.batch_norm(x, params, state, train=True, renorm=bn.Renorm(r, r))[0])(jnp.float32(0.5))


@pytest.mark.parametrize("train", ["no", 1, None, jnp.array(True)])
def test_error_train_not_a_bool(train):
  x, params, state = _setup()
  with pytest.raises(TypeError, match="train=.* must be a Python bool"):
    bn.batch_norm(x, params, state, train=train)


def test_error_flags_not_bools():
  x, params, state = _setup()
  with pytest.raises(TypeError, match="unbiased='yes' must be a Python bool"):
    bn.batch_norm(x, params, state, train=True, unbiased="yes")
  with pytest.raises(TypeError, match="stats_gradient=0 must be a Python bool"):
    bn.batch_norm(x, params, state, train=True, stats_gradient=0)


@pytest.mark.parametrize("ghost", [4.0, True, "2"])
def test_error_ghost_batch_size_not_an_int(ghost):
  x, params, state = _setup(n=8)
  with pytest.raises(TypeError, match="ghost_batch_size=.* must be an int"):
    bn.batch_norm(x, params, state, train=True, ghost_batch_size=ghost)


def test_error_params_and_state_types():
  x, params, state = _setup()
  with pytest.raises(TypeError, match=r"params must be bn.BNParams\(scale, bias\).*got NoneType.*bn.init"):
    bn.batch_norm(x, None, state, train=True)
  with pytest.raises(TypeError, match=r"params must be bn.BNParams.*got tuple"):
    bn.batch_norm(x, (params.scale, params.bias), state, train=True)
  with pytest.raises(TypeError, match=r"state must be bn.BNState\(mean, var, count\), got dict"):
    bn.batch_norm(x, params, {"mean": state.mean}, train=False)
  with pytest.raises(TypeError, match=r"params must be bn.BNParams"):
    bn.layer_norm(x, None, None)


def test_error_empty_batch():
  x, params, state = _setup(n=0)
  with pytest.raises(ValueError, match=r"the training batch is empty: the input of shape \(0, 3\)"):
    bn.batch_norm(x, params, state, train=True)
  with pytest.raises(ValueError, match="the training batch is empty"):
    bn.batch_norm(x, params, state, train=True, strict_batch=False, ghost_batch_size=2)
  y, _ = bn.batch_norm(x, params, state, train=False)  # nothing to estimate in eval
  assert y.shape == (0, 3)


def test_error_batch_of_one_under_axis_name_counts_all_devices():
  x, params, state = _setup(n=1)
  f = jax.vmap(lambda x: bn.batch_norm(x, params, state, train=True, axis_name="i")[0], axis_name="i")
  assert f(np.stack([x, x + 1.0])).shape == (2, 1, 3)  # 2 values per feature globally
  with pytest.raises(ValueError, match="a training batch of one example"):
    jax.vmap(lambda x: bn.batch_norm(x, params, state, train=True, axis_name="i")[0], axis_name="i")(x[None])


def test_strict_batch_false_gives_flax_batch_of_one():
  x, scale, bias, mean, var = random_setup((1, 3), (1,), seed=14)
  params, state = as_bn(scale, bias, mean, var)
  y, new = _bnj(x, params, state, train=True, momentum=0.9, strict_batch=False)
  y_f, upd = _flax_train(x, scale, bias, mean, var, momentum=0.9)
  assert_close(y, y_f, 0, 0)
  assert_close(y, bias[None], 0, 0)
  assert_close(new.mean, upd["batch_stats"]["mean"], 1e-6, 1e-6)
  assert_close(new.var, upd["batch_stats"]["var"], 1e-6, 1e-6)
  # An unbatched (rank-1) input is one value per feature too.
  y1, _ = _bnj(x[0], params, state, train=True, strict_batch=False)
  assert_close(y1, bias, 0, 0)


@pytest.mark.parametrize("fn,kw,name", [
    (bn.layer_norm, dict(epsilom=1e-3), "epsilom"),
    (bn.group_norm, dict(num_group=2), "num_group"),
    (bn.no_norm, dict(momentum=0.9), "momentum"),
    (bn.layer_norm, dict(momentum=0.9), "momentum"),
])
def test_error_unknown_keywords_of_comparison_normalizers(fn, kw, name):
  x, params, state = _setup(c=4)
  with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
    fn(x, params, state, train=True, **kw)


def test_comparison_normalizers_check_their_arguments():
  x, params, state = _setup(c=4)
  with pytest.raises(TypeError, match="train='yes' must be a Python bool"):
    bn.layer_norm(x, params, state, train="yes")
  with pytest.raises(TypeError, match="num_groups=2.0 must be an int"):
    bn.group_norm(x, params, state, num_groups=2.0)
  with pytest.raises(ValueError, match=r"params.bias has shape \(4,\) but the input's feature axes have shape \(3,\)"):
    bn.layer_norm(x[:, :3], bn.BNParams(None, params.bias), state)
