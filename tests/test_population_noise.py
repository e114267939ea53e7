"""Population mode with matched noise (``population_noise=g``): each output must have
the law of a ghost-batch-normalized value, ``(x_i - mean_B) / std_B`` with the biased
std over the n values of its ghost batch, for i.i.d. Gaussian x. References: NumPy
ghost BN on real ghost batches and NumPy simulations of the conditional law."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bn

EPS = 1e-12  # population statistics mean 0, var 1: u = x (to float32 rounding)
C = 8  # features
VALUES = 200_000  # Monte Carlo values per check
QUANTILES = (0.05, 0.25, 0.75, 0.95)


@functools.partial(jax.jit, static_argnames=("g", "strict_batch"))
def _pop_noise(x, key, g, mask=None, strict_batch=True):
  c = x.shape[-1]
  params = bn.BNParams(jnp.ones(c), jnp.zeros(c))
  state = bn.BNState(jnp.zeros(c), jnp.ones(c), jnp.zeros((), jnp.int32))
  return bn.batch_norm(x, params, state, train=True, population=True, population_noise=g, key=key, epsilon=EPS,
                       mask=mask, strict_batch=strict_batch)[0]


def _np_ghost_bn(x, g):
  """NumPy ghost BN (biased std) of x (batch axis 0, features last) in groups of g examples."""
  xg = x.astype(np.float64).reshape((x.shape[0] // g, g) + x.shape[1:])
  axes = tuple(range(1, xg.ndim - 1))
  mean = xg.mean(axes, keepdims=True)
  std = np.sqrt(((xg - mean) ** 2).mean(axes, keepdims=True))
  return ((xg - mean) / std).reshape(x.shape)


def _old_law(u, n, rng):
  """The previous implementation, ``(u - z / sqrt(n)) * sqrt(n / c)`` with ``z ~ N(0, 1)``,
  ``c ~ chi2(n - 1)`` (per value here; only the marginal law matters): the law of a value
  normalized by the statistics of a batch it is *not* a member of."""
  z, c = rng.normal(size=u.shape), rng.chisquare(n - 1, size=u.shape)
  return (u - z / np.sqrt(n)) * np.sqrt(n / c)


def _mismatches(y, ref, n):
  """What is wrong with the sample ``y`` as a sample of the law of the reference sample
  ``ref`` (ghost-BN values over n values): empty if nothing. Tolerances are several
  Monte Carlo standard errors at 200k values."""
  y, ref = np.asarray(y, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
  bad = []
  if not np.all(np.isfinite(y)):
    bad.append("non-finite values")
    return bad
  if abs(y.mean() - ref.mean()) > 0.02:
    bad.append(f"mean {y.mean():.4f} vs {ref.mean():.4f}")
  if abs(y.var() - ref.var()) > 0.03:
    bad.append(f"variance {y.var():.4f} vs {ref.var():.4f}")
  if np.abs(y).max() > np.sqrt(n - 1) + 1e-5:
    bad.append(f"max |y| {np.abs(y).max():.3f} > sqrt(n - 1) = {np.sqrt(n - 1):.3f}")
  for q, a, b in zip(QUANTILES, np.quantile(y, QUANTILES), np.quantile(ref, QUANTILES)):
    if abs(a - b) > 0.04:
      bad.append(f"{q:.0%} quantile {a:.4f} vs {b:.4f}")
  return bad


def _gaussian(rows, c, seed, extra=()):
  return np.random.default_rng(seed).normal(size=(rows,) + extra + (c,)).astype(np.float32)


@pytest.mark.parametrize("n", [2, 4, 8, 60])
def test_marginal_law_matches_numpy_ghost_bn(n):
  rows = n * (VALUES // (n * C))
  x = _gaussian(rows, C, seed=n)
  y = np.asarray(_pop_noise(jnp.asarray(x), jax.random.key(n), n), np.float64)
  ref = _np_ghost_bn(x, n)
  assert ref.var() == pytest.approx(1.0, abs=1e-9)  # exactly 1 per group for the biased std
  assert _mismatches(y, ref, n) == []
  assert y.var() == pytest.approx(1.0, abs=0.03)
  if n == 2:  # two values normalize to -1 and +1
    np.testing.assert_allclose(np.abs(y), 1.0, atol=1e-5)


def test_the_old_law_fails_this_check():
  """The previous formula (variance 1.8 and unbounded tails at n = 8) does not pass."""
  n = 8
  x = _gaussian(n * (VALUES // (n * C)), C, seed=n)
  old = _old_law(x.astype(np.float64), n, np.random.default_rng(1))
  bad = _mismatches(old, _np_ghost_bn(x, n), n)
  assert any(b.startswith("variance") for b in bad) and any(b.startswith("max |y|") for b in bad), bad


def test_values_per_example_count_in_n():
  """(N, H, W, C) with g = 2 examples of 2 x 2 positions: n = 8 values per group and feature."""
  g, n = 2, 8
  x = _gaussian(g * (VALUES // (n * C)), C, seed=11, extra=(2, 2))
  y = np.asarray(_pop_noise(jnp.asarray(x), jax.random.key(11), g), np.float64)
  assert _mismatches(y, _np_ghost_bn(x, g), n) == []


def _np_conditional(u, n, draws, rng):
  """Simulated ``(x_1 - mean) / std`` given ``x_1 = u`` with n - 1 i.i.d. N(0, 1) companions."""
  xs = np.concatenate([np.full((draws, 1), u), rng.normal(size=(draws, n - 1))], 1)
  return (u - xs.mean(1)) / xs.std(1)


@pytest.mark.parametrize("n,u", [(8, 2.0), (4, 2.0), (8, -0.5), (60, 3.0)])
def test_conditional_law_given_u(n, u):
  rows = n * (VALUES // (n * C))
  x = jnp.full((rows, C), u, jnp.float32)  # every value gets its own companions: independent draws given u
  y = np.asarray(_pop_noise(x, jax.random.key(5), n), np.float64).ravel()
  ref = _np_conditional(u, n, VALUES, np.random.default_rng(5))
  assert y.mean() == pytest.approx(ref.mean(), abs=0.01)
  assert y.std() == pytest.approx(ref.std(), abs=0.01)
  np.testing.assert_allclose(np.quantile(y, QUANTILES), np.quantile(ref, QUANTILES), atol=0.03)
  assert np.abs(y).max() <= np.sqrt(n - 1) + 1e-5


def test_mask_counts_valid_values_and_leaves_small_groups_unchanged():
  g, c, groups = 4, 3, 2000
  x = _gaussian(g * groups, c, seed=3)
  # per group of 4 examples: groups 0 mod 4 have 2 valid values, 1 mod 4 have 1, 2 mod 4 none, 3 mod 4 have 3
  pattern = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1]], bool)
  mask = np.tile(pattern, (groups // 4, 1)).reshape(-1, 1)
  y = np.asarray(_pop_noise(jnp.asarray(x), jax.random.key(3), g, mask=jnp.asarray(mask), strict_batch=False),
                 np.float64).reshape(groups, g, c)
  xg = x.astype(np.float64).reshape(groups, g, c)
  kind = np.arange(groups) % 4
  # n = 2 valid values: every value of the group (valid or not) normalizes to +-1, not the +-sqrt(3) bound of n = 4
  np.testing.assert_allclose(np.abs(y[kind == 0]), 1.0, atol=1e-5)
  # fewer than 2 valid values: unchanged
  np.testing.assert_allclose(y[(kind == 1) | (kind == 2)], xg[(kind == 1) | (kind == 2)], rtol=1e-6, atol=1e-6)
  # n = 3: bounded by sqrt(2), and the valid values have the law of ghost BN over 3 values
  y3 = y[kind == 3]
  assert np.abs(y3).max() <= np.sqrt(2) + 1e-5
  assert np.abs(y3).max() > 1.2  # not the n = 2 law
  valid3 = pattern[3]
  ref3 = _np_ghost_bn(xg[kind == 3][:, valid3].reshape(-1, c), 3)
  assert abs(y3[:, valid3].var() - ref3.var()) < 0.05


def test_jit_grad_and_vmap_over_keys():
  g, c = 4, 3
  x = jnp.asarray(_gaussian(16, c, seed=7))
  key = jax.random.key(7)
  f = lambda x, key: _pop_noise(x, key, g)  # noqa: E731
  y_jit = np.asarray(f(x, key))
  y_eager = np.asarray(bn.batch_norm(x, bn.BNParams(jnp.ones(c), jnp.zeros(c)),
                                     bn.BNState(jnp.zeros(c), jnp.ones(c), jnp.zeros((), jnp.int32)), train=True,
                                     population=True, population_noise=g, key=key, epsilon=EPS)[0])
  np.testing.assert_allclose(y_jit, y_eager, rtol=1e-5, atol=1e-6)
  assert np.all(np.abs(y_jit) <= np.sqrt(g - 1) + 1e-5)

  # grad w.r.t. the input (u = x): the synthetic statistics are held fixed, dy/du = 1/s. The function itself (the same
  # key, the same draws) has dy/du = (1/s) (n - 1 - y^2) / n (u also moves m and s), so 1/s = fd * n / (n - 1 - y^2)
  # from central differences of the output
  n = g
  gx = np.asarray(jax.jit(jax.grad(lambda x: jnp.sum(f(x, key))))(x))
  assert np.all(np.isfinite(gx)) and np.all(gx > 0)
  h = 1e-3
  checked = 0
  for i in range(x.shape[0]):
    for j in range(c):
      if n - 1 - y_jit[i, j] ** 2 < 0.5:  # near the bound sqrt(n - 1) the conversion is ill-conditioned
        continue
      e = jnp.zeros_like(x).at[i, j].set(h)
      fd = (float(f(x + e, key)[i, j]) - float(f(x - e, key)[i, j])) / (2 * h)
      assert gx[i, j] == pytest.approx(fd * n / (n - 1 - y_jit[i, j] ** 2), rel=2e-2, abs=2e-3)
      checked += 1
  assert checked >= 10

  # vmap over keys: each key gives what a separate call gives
  keys = jax.random.split(jax.random.key(9), 5)
  ys = np.asarray(jax.vmap(lambda k: f(x, k))(keys))
  for k in range(5):
    np.testing.assert_allclose(ys[k], np.asarray(f(x, keys[k])), rtol=1e-5, atol=1e-6)
  assert not np.allclose(ys[0], ys[1])


@pytest.mark.parametrize("df", [1, 6, 32, 33, 58])
def test_chi2_draws_against_numpy(df):
  # exact (a sum of squared normals) up to 32 degrees of freedom, Wilson-Hilferty above: mean df, variance 2 df, quantiles
  from bn.norm import _chi2

  q = np.asarray(jax.jit(lambda k: _chi2(k, df, (VALUES,), jnp.float32))(jax.random.key(df)), np.float64)
  ref = np.random.default_rng(df).chisquare(df, VALUES)
  assert np.all(q >= 0)
  assert q.mean() == pytest.approx(df, rel=0.01)
  assert q.var() == pytest.approx(2 * df, rel=0.03)
  for a, b in zip(np.quantile(q, QUANTILES), np.quantile(ref, QUANTILES)):
    assert a == pytest.approx(b, rel=0.02, abs=0.01)
