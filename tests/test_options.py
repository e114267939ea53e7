"""BN options as one value (``bn.BNOptions``): every option a config or an adapter sets reaches the core.

Guarantees: each variance estimator of a config arrives in ``bn.batch_norm`` (before, ``shifted`` trained as
``two_pass``); ``options=`` and keywords are the same call; the adapters gather their attributes over
``options`` by one documented rule; the running state is checked (dtype, shape) also under ``jit``;
``skip_nonfinite`` keeps a feature's statistics through a non-finite batch (the default, as Flax, does not);
a per-example mask of lower rank than the input is refused.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bn
import bn._adapter
import bn.linen as bl
import bn.nnx as bx
from bn import config, experiment


def _recording(monkeypatch):
  seen = []
  real = bn._adapter.batch_norm

  def spy(*args, **kw):
    seen.append(kw["options"])
    return real(*args, **kw)

  monkeypatch.setattr(bn._adapter, "batch_norm", spy)
  return seen


@pytest.mark.parametrize("variance", bn.norm.VARIANCES)
def test_every_variance_of_a_config_reaches_the_core(monkeypatch, variance):
  c = config.base()
  c.data.update(source="synthetic")
  c.model.update(widths=(4,))
  c.norm.variance = variance
  task = experiment.from_config(c).make_task(10, "cpu")
  seen = _recording(monkeypatch)
  x = jnp.ones((6, 8, 8, 1)) * jnp.arange(6.0)[:, None, None, None]
  v = task.model.init(jax.random.key(0), x, train=False)
  task.model.apply(v, x, train=True, mutable=["batch_stats"])
  assert seen and {o.variance for o in seen} == {variance}


@pytest.mark.parametrize("variance", bn.norm.VARIANCES)
def test_adapters_take_the_variance_attribute(monkeypatch, variance):
  seen = _recording(monkeypatch)
  x = jnp.arange(12.0).reshape(4, 3)
  layer = bl.BatchNorm(variance=variance, use_running_average=False)
  v = layer.init(jax.random.key(0), x)
  layer.apply(v, x, mutable=["batch_stats"])
  linen = seen[-1].variance
  bx.BatchNorm(3, variance=variance, rngs=bn.nnx.nnx.Rngs(0))(x)
  assert [linen, seen[-1].variance] == [variance, variance]


def test_use_fast_variance_stays_flax_alias(monkeypatch):
  seen = _recording(monkeypatch)
  x = jnp.arange(12.0).reshape(4, 3)
  got = []
  for fast in (True, False):
    layer = bl.BatchNorm(use_fast_variance=fast, use_running_average=False)
    v = layer.init(jax.random.key(0), x)
    layer.apply(v, x, mutable=["batch_stats"])
    got.append(seen[-1].variance)
  assert got == ["fast", "two_pass"]


def test_options_value_equals_keywords():
  x = jax.random.normal(jax.random.key(1), (16, 5)) * 3 + 1
  p, s = bn.init(5)
  kw = dict(momentum=0.8, ghost_batch_size=4, unbiased=True, variance="two_pass")
  a = bn.batch_norm(x, p, s, train=True, **kw)
  b = bn.batch_norm(x, p, s, train=True, options=bn.BNOptions(**kw))
  c = bn.batch_norm(x, p, s, train=True, options=bn.BNOptions(momentum=0.1, variance="fast"), momentum=0.8, ghost_batch_size=4,
                    unbiased=True, variance="two_pass")  # keywords replace the fields of options
  for other in (b, c):
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, other)
  with pytest.raises(TypeError, match="unexpected keyword argument 'ghost_size'"):
    bn.batch_norm(x, p, s, train=True, ghost_size=4)
  with pytest.raises(TypeError, match="options must be bn.BNOptions"):
    bn.batch_norm(x, p, s, train=True, options={"momentum": 0.9})


def test_adapter_attributes_over_options():
  base = bn.BNOptions(ghost_batch_size=4, momentum=0.5, variance="two_pass", skip_nonfinite=True)
  o = bn._adapter.layer_options(bl.BatchNorm(options=base))
  assert o == base  # every attribute at its default: options as given
  o = bn._adapter.layer_options(bl.BatchNorm(options=base, momentum=0.9, ghost_batch_size=2))
  assert (o.momentum, o.ghost_batch_size, o.variance, o.skip_nonfinite) == (0.9, 2, "two_pass", True)
  o = bn._adapter.layer_options(bl.BatchNorm())  # no options: Flax's defaults
  assert (o.variance, o.strict_batch, o.momentum) == ("fast", False, 0.99)
  o = bn._adapter.layer_options(bl.BatchNorm(options=base, variance="shifted", r_max=2.0))
  assert o.variance == "shifted" and o.renorm == bn.Renorm(2.0, 0.0)


@pytest.mark.parametrize("bad, match", [
    (lambda s: s._replace(mean=s.mean.astype(jnp.int32)), "state.mean has dtype int32"),
    (lambda s: s._replace(var=s.var.astype(jnp.bfloat16)), "float32 or wider"),
    (lambda s: s._replace(var=s.var.astype(jnp.float16)), "float32 or wider"),
    (lambda s: s._replace(count=jnp.zeros((8,), jnp.int32)), "integer scalar"),
    (lambda s: s._replace(count=jnp.zeros((), jnp.bfloat16)), "integer scalar"),
])
@pytest.mark.parametrize("jit", [False, True])
def test_running_state_is_checked(bad, match, jit):
  x = jax.random.normal(jax.random.key(2), (8, 3)) + 100.0
  p, s = bn.init(3)
  f = (lambda x, s: bn.batch_norm(x, p, s, train=True, momentum=None))
  with pytest.raises(TypeError, match=match):
    (jax.jit(f) if jit else f)(x, bad(s))


def test_skip_nonfinite_keeps_the_running_statistics():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(8, 3)), jnp.float32).at[2, 1].set(jnp.nan)
  p, s = bn.init(3)
  s = s._replace(mean=jnp.full(3, 0.5), var=jnp.full(3, 2.0))
  _, poisoned = bn.batch_norm(x, p, s, train=True, momentum=0.9)  # as Flax and PyTorch: feature 1 is NaN for good
  assert np.isnan(poisoned.mean[1]) and np.isfinite(np.asarray(poisoned.mean)[[0, 2]]).all()
  _, kept = jax.jit(lambda x, s: bn.batch_norm(x, p, s, train=True, momentum=0.9, skip_nonfinite=True))(x, s)
  np.testing.assert_array_equal(np.asarray(kept.mean[1]), 0.5)
  np.testing.assert_array_equal(np.asarray(kept.var[1]), 2.0)
  np.testing.assert_allclose(np.asarray(kept.mean)[[0, 2]], np.asarray(poisoned.mean)[[0, 2]])
  assert int(kept.count) == 1


def test_lower_rank_mask_is_refused():
  x = jnp.ones((3, 3)) * jnp.arange(3.0)[:, None]  # N == C: a (N,) mask would broadcast over the features
  p, s = bn.init(3)
  with pytest.raises(ValueError, match=r"rank 1.*mask\[:, None\]"):
    jax.jit(lambda m: bn.batch_norm(x, p, s, train=True, mask=m))(jnp.array([True, True, False]))
  y, _ = bn.batch_norm(x, p, s, train=True, mask=np.array([True, True, False])[:, None], strict_batch=False)
  assert y.shape == (3, 3)
