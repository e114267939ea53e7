"""Research options of the pure core: per-sample noisy BN (Santurkar et al. 2018),
stop-gradient through the batch statistics, and population mode with matched
noise (Luo et al. 2019). References: closed forms and NumPy."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bn
from test_norm import EPS, as_bn, assert_close, np_bn_grads, random_setup

# ----------------------------------------------------------------------------- noisy BN


@functools.partial(jax.jit, static_argnames="noise")
def _noise_draws(x, noise, key):
  """(s, m) of y_noisy = s * y + m, elementwise: with scale 0 the normalized output is
  the bias, so bias 0 gives m and bias 1 gives s + m (the same key, the same draws)."""
  c = x.shape[-1]
  state = bn.init_state(c)
  zero, one = bn.BNParams(jnp.zeros(c), jnp.zeros(c)), bn.BNParams(jnp.zeros(c), jnp.ones(c))
  m = bn.batch_norm(x, zero, state, train=True, noise=noise, key=key)[0]
  s = bn.batch_norm(x, one, state, train=True, noise=noise, key=key)[0] - m
  return s, m


def test_noise_per_sample_moments_match_the_paper():
  """mu_j ~ U(-0.5, 0.5), sigma_j ~ U(1, 1.25) per unit; m_ij ~ U(mu_j -+ 0.1), s_ij ~ N(sigma_j, 0.1) per sample."""
  n, c = 2000, 400
  x = np.random.default_rng(0).normal(size=(n, c)).astype(np.float32)
  noise = bn.Noise()
  assert noise == bn.Noise((-0.5, 0.5), (1.0, 1.25), 0.1, 0.1, True, 1.0)
  s, m = (np.asarray(a, np.float64) for a in _noise_draws(x, noise, jax.random.key(0)))
  # Shifts: E[m] = 0; per-unit means ~ mu_j with Var = (1)^2/12; within a unit Var = 0.1^2 / 3, range <= 0.2.
  assert abs(m.mean()) < 0.06
  assert np.var(m.mean(0)) == pytest.approx(1 / 12 + 0.01 / 3 / n, rel=0.2)
  assert np.mean(m.var(0)) == pytest.approx(0.01 / 3, rel=0.03)
  assert np.all(np.ptp(m, 0) <= 0.2 + 1e-5) and np.ptp(m, 0).min() > 0.19
  assert -0.6 - 1e-5 <= m.min() and m.max() <= 0.6 + 1e-5
  # Scales: E[s] = 1.125; per-unit means ~ sigma_j with Var = 0.25^2/12; within a unit Var = 0.1^2.
  assert s.mean() == pytest.approx(1.125, abs=0.01)
  assert np.var(s.mean(0)) == pytest.approx(0.25**2 / 12 + 0.01 / n, rel=0.2)
  assert np.mean(s.var(0)) == pytest.approx(0.01, rel=0.03)
  assert 1.0 - 0.01 <= s.mean(0).min() and s.mean(0).max() <= 1.25 + 0.01


def test_noise_per_sample_varies_over_every_non_feature_axis_and_dose_scales_it():
  x = np.random.default_rng(1).normal(size=(4, 3, 5, 8)).astype(np.float32)
  s, m = (np.asarray(a) for a in _noise_draws(x, bn.Noise(), jax.random.key(1)))
  for axis in (0, 1, 2):  # each sample (element along the non-feature axes) has its own draw
    assert np.all(np.ptp(m, axis) > 0) and np.all(np.ptp(s, axis) > 0)
  # per_sample=False: one draw per unit, shared by the batch.
  s1, m1 = (np.asarray(a) for a in _noise_draws(x, bn.Noise(per_sample=False), jax.random.key(1)))
  assert np.ptp(s1.reshape(-1, 8), 0).max() < 1e-6 and np.ptp(m1.reshape(-1, 8), 0).max() < 1e-6
  # dose=0.5 halves every deviation from the identity: sigma_j ~ U(1, 1.125), std 0.05, mu_j ~ U(-0.25, 0.25), h 0.05.
  big = np.random.default_rng(2).normal(size=(1000, 300)).astype(np.float32)
  s, m = (np.asarray(a, np.float64) for a in _noise_draws(big, bn.Noise(dose=0.5), jax.random.key(2)))
  assert s.mean() == pytest.approx(1.0625, abs=0.006)
  assert np.mean(s.var(0)) == pytest.approx(0.05**2, rel=0.04)
  assert np.mean(m.var(0)) == pytest.approx(0.05**2 / 3, rel=0.04)
  assert np.all(np.ptp(m, 0) <= 0.1 + 1e-5) and np.abs(m).max() <= 0.3 + 1e-5


@pytest.mark.parametrize("per_sample", [True, False])
def test_noise_dose_zero_is_exactly_no_noise(per_sample):
  x, scale, bias, mean, var = random_setup((6, 2, 3), (2,), seed=3)
  params, state = as_bn(scale, bias, mean, var)
  y, new = jax.jit(lambda x: bn.batch_norm(x, params, state, train=True))(x)
  f = jax.jit(lambda x, dose, key: bn.batch_norm(x, params, state, train=True, key=key,
                                                 noise=bn.Noise(per_sample=per_sample, dose=dose)))
  for dose in (jnp.float32(0.0), jnp.float32(1.0)):  # a traced dose: a schedule without recompiling
    y_d, new_d = f(x, dose, jax.random.key(4))
    for a, b in zip(new_d, new):
      np.testing.assert_array_equal(a, b)
    if float(dose) == 0.0:
      np.testing.assert_array_equal(y_d, y)
    else:
      assert not np.allclose(y_d, y, atol=1e-2)
  y0, _ = jax.jit(lambda x: bn.batch_norm(x, params, state, train=True, key=jax.random.key(5),
                                          noise=bn.Noise(per_sample=per_sample, dose=0.0)))(x)
  np.testing.assert_array_equal(y0, y)  # a static dose of 0 draws nothing


def test_noise_errors():
  x, params, state = random_setup((4, 3), (1,))[0], *bn.init(3)
  with pytest.raises(TypeError, match="noise must be bn.Noise"):
    bn.batch_norm(x, params, state, train=True, noise=(0.5, 1.25), key=jax.random.key(0))
  for field in ("dose", "mean_halfwidth", "scale_std"):
    with pytest.raises(ValueError, match=rf"Noise\({field}=-1.0\) must be >= 0"):
      bn.batch_norm(x, params, state, train=True, noise=bn.Noise(**{field: -1.0}), key=jax.random.key(0))


# ----------------------------------------------------------------------------- stop-gradient through the statistics


@pytest.mark.parametrize("kw", [{}, dict(ghost_batch_size=4), dict(renorm=bn.Renorm(1.5, 0.5))], ids=["plain", "ghost", "renorm"])
def test_stats_gradient_false_treats_batch_statistics_as_constants(kw):
  x, scale, bias, mean, var = random_setup((8, 3), (1,), seed=6, offset=1.0)
  params, state = as_bn(scale, bias, mean, var)
  dy = np.random.default_rng(7).normal(size=x.shape).astype(np.float32)

  def run(x, params, sg):
    return bn.batch_norm(x, params, state, train=True, momentum=0.9, stats_gradient=sg, **kw)

  fwd = jax.jit(run, static_argnums=2)
  (y1, s1), (y0, s0) = fwd(x, params, True), fwd(x, params, False)
  np.testing.assert_array_equal(y0, y1)  # the forward pass is unchanged
  for a, b in zip(s0, s1):
    np.testing.assert_array_equal(a, b)
  grad = jax.jit(jax.grad(lambda x, p, sg: jnp.sum(run(x, p, sg)[0] * dy), (0, 1)), static_argnums=2)
  (gx0, gp0), (gx1, gp1) = grad(jnp.asarray(x), params, False), grad(jnp.asarray(x), params, True)
  # Analytic with constant c1 = mu_B, c2 = sigma_B: y = (x - c1) / c2 * scale (* r) + bias -> dy/dx = scale / c2 (* r).
  xd = x.astype(np.float64)
  chunks = [xd[i:i + 4] for i in range(0, 8, 4)] if "ghost_batch_size" in kw else [xd]
  sig = np.concatenate([np.broadcast_to(np.sqrt(c.var(0) + EPS), c.shape) for c in chunks])
  r = 1.0
  if "renorm" in kw:
    r = np.clip(np.sqrt(xd.var(0) + EPS) / np.sqrt(var + EPS), 1 / 1.5, 1.5)
  assert_close(gx0, dy * scale * r / sig, 1e-5, 1e-5)
  # d scale, d bias are unchanged (they do not go through the statistics).
  for a, b in zip(jax.tree.leaves(gp0), jax.tree.leaves(gp1)):
    assert_close(a, b, 1e-5, 1e-5)
  assert not np.allclose(gx0, gx1, atol=1e-3)  # the default differentiates through mu_B, sigma_B
  if not kw:
    assert_close(gx1, np_bn_grads(x, scale, dy)[0], 1e-4, 1e-5)


# ----------------------------------------------------------------------------- population mode with matched noise


_pop = jax.jit(bn.batch_norm, static_argnames=("train", "population", "population_noise", "momentum"))


# The law of the noise (against NumPy ghost BN), its gradient and jit/vmap: tests/test_population_noise.py.


def test_population_noise_with_huge_groups_approaches_population_mode_and_updates_like_it():
  x, scale, bias, mean, var = random_setup((4, 64, 64, 2), (3,), seed=9)
  params, state = as_bn(scale, bias, mean, var)
  y_pop, s_pop = _pop(x, params, state, train=True, population=True, momentum=0.9)
  y, s = _pop(x, params, state, train=True, population=True, population_noise=4, key=jax.random.key(4), momentum=0.9)
  for a, b in zip(s, s_pop):  # the running statistics are updated as in plain population mode
    np.testing.assert_array_equal(a, b)
  # n = 4 * 64 * 64 = 16384 values per group and unit: deviation ~ sqrt((1 + E[u^2] / 2) / n), about 1%
  u = (x.astype(np.float64) - mean) / np.sqrt(var + EPS)
  rms = np.sqrt(np.mean(((np.asarray(y) - np.asarray(y_pop)) / scale) ** 2))
  expected = np.sqrt((1 + np.mean(u**2) / 2) / 16384)
  assert expected / 3 < rms < 3 * expected


def test_population_noise_with_a_mask():
  x = np.random.default_rng(10).normal(size=(8, 3)).astype(np.float32)
  scale = np.array([0.5, 1.0, 2.0], np.float32)
  c = 3
  state = bn.BNState(jnp.zeros(c), jnp.full(c, 1.0 - EPS), jnp.zeros((), jnp.int32))
  # With a mask: n counts valid values; a group with fewer than 2 valid values gets no noise.
  valid = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool)[:, None]  # group 0: n = 2; group 1: n = 1
  ym = np.asarray(jax.jit(lambda x, m: bn.batch_norm(x, bn.BNParams(jnp.asarray(scale), None), state, train=True,
                                                     population=True, population_noise=4, key=jax.random.key(3),
                                                     strict_batch=False, mask=m)[0])(x, valid), np.float64)
  assert_close(ym[4:], x[4:] / np.sqrt(1.0) * scale, 1e-5, 1e-5)  # plain population mode (sigma = 1)
  assert not np.allclose(ym[:4], x[:4] * scale, atol=1e-3)


def test_population_noise_errors():
  x, params, state = np.ones((8, 3), np.float32), *bn.init(3)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="population_noise=4 perturbs noise-free statistics: it needs population=True or reference=R"):
    bn.batch_norm(x, params, state, train=True, population_noise=4, key=key)
  with pytest.raises(ValueError, match="population_noise= needs a PRNG key"):
    bn.batch_norm(x, params, state, train=True, population=True, population_noise=4)
  with pytest.raises(ValueError, match="population_noise=3 does not divide the batch of 8 examples"):
    bn.batch_norm(x, params, state, train=True, population=True, population_noise=3, key=key)
  with pytest.raises(ValueError, match=r"population_noise=1 gives groups of 1 value\(s\) per feature"):
    bn.batch_norm(x, params, state, train=True, population=True, population_noise=1, key=key)
  with pytest.raises(TypeError, match=r"population_noise=4.0 must be an int"):
    bn.batch_norm(x, params, state, train=True, population=True, population_noise=4.0, key=key)
  with pytest.raises(ValueError, match="population_noise=0 must be >= 1"):
    bn.batch_norm(x, params, state, train=True, population=True, population_noise=0, key=key)
  with pytest.raises(ValueError, match="complex inputs .* not renorm= or population_noise="):
    bn.batch_norm(x.astype(np.complex64), params, state, train=True, population=True, population_noise=4, key=key)
  # eval: no noise and no key needed
  y, _ = bn.batch_norm(x, params, state, train=False, population=True, population_noise=4)
  assert_close(y, bn.batch_norm(x, params, state, train=False)[0], 0, 0)
