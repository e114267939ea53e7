"""Full-batch BN over a fixed reference set (``reference=R``): the last R rows along axis 0 supply
the statistics, every row is normalized by them, the gradient flows through them, the running
statistics fold them in; ``population_noise=g`` perturbs only the rows before the reference. In
the engine (``norm.reference``) the first R training examples ride along with every batch and
only the batch's rows enter the loss. References: NumPy statistics and a hand-built forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bn
from bn import config as bn_config, data, experiment, train
from bn.config import ConfigError

C = 3


def _init():
  return bn.norm.init(C)


def _x(n=40, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, C)) * 2.0 + 1.0


def test_statistics_come_from_the_reference_rows_only():
  x, (p, s) = _x(), _init()
  y, new = bn.batch_norm(x, p, s, train=True, reference=30, momentum=0.5)
  ref = np.asarray(x[10:], np.float64)
  m, v = ref.mean(0), ref.var(0)
  np.testing.assert_allclose(y, (np.asarray(x) - m) / np.sqrt(v + 1e-5), atol=2e-5)
  np.testing.assert_allclose(new.mean, 0.5 * m, atol=1e-5)  # running mean 0 folds in the reference mean
  np.testing.assert_allclose(new.var, 0.5 + 0.5 * v, rtol=1e-5)
  # the batch rows change nothing: a different batch in front gives the same statistics for the same reference
  x2 = x.at[:10].set(100.0)
  np.testing.assert_allclose(bn.batch_norm(x2, p, s, train=True, reference=30)[0][10:], y[10:], atol=1e-5)


def test_without_reference_the_batch_rows_would_count():
  x, (p, s) = _x(), _init()
  plain = bn.batch_norm(x, p, s, train=True)[0]
  assert np.abs(np.asarray(plain - bn.batch_norm(x, p, s, train=True, reference=30)[0])).max() > 1e-2


def test_gradient_flows_through_the_reference_statistics():
  x, (p, s) = _x(), _init()
  loss = lambda x, **kw: jnp.sum(bn.batch_norm(x, p, s, train=True, reference=30, **kw)[0][:10] ** 3)  # noqa: E731
  g = jax.grad(loss)(x)
  assert np.abs(np.asarray(g[10:])).max() > 1e-3  # the reference rows shape the batch rows' output
  g0 = jax.grad(lambda x: loss(x, stats_gradient=False))(x)
  np.testing.assert_array_equal(g0[10:], 0.0)  # ... unless the statistics are constants


def test_mask_and_reference_combine():
  x, (p, s) = _x(), _init()
  mask = np.ones((40, 1), bool)
  mask[35:] = False
  y = bn.batch_norm(x, p, s, train=True, reference=30, mask=mask)[0]
  ref = np.asarray(x[10:35], np.float64)
  np.testing.assert_allclose(y[:10], (np.asarray(x[:10]) - ref.mean(0)) / np.sqrt(ref.var(0) + 1e-5), atol=2e-5)


def test_noise_perturbs_only_the_rows_before_the_reference():
  x, (p, s) = _x(), _init()
  clean = bn.batch_norm(x, p, s, train=True, reference=32)[0]
  noisy = jax.jit(lambda x, k: bn.batch_norm(x, p, s, train=True, reference=32, population_noise=4, key=k)[0])(x, jax.random.key(1))
  np.testing.assert_allclose(noisy[8:], clean[8:], atol=1e-6)
  assert np.abs(np.asarray(noisy[:8] - clean[:8])).min() > 0


def test_eval_ignores_reference():
  x, (p, s) = _x(), _init()
  np.testing.assert_array_equal(bn.batch_norm(x[:5], p, s, train=False, reference=30)[0], bn.batch_norm(x[:5], p, s, train=False)[0])


@pytest.mark.parametrize("kw, words", [
    (dict(reference=30, ghost_batch_size=10), "ghost_batch_size"),
    (dict(reference=30, population=True), "population"),
    (dict(reference=1), ">= 2"),
    (dict(reference=50), "append the reference set"),
    (dict(population_noise=8), "reference=R"),
    (dict(reference=30, population_noise=4), "does not divide the batch of 10"),
])
def test_bad_reference_options_name_the_problem(kw, words):
  x, (p, s) = _x(), _init()
  with pytest.raises(ValueError, match=words):
    bn.batch_norm(x, p, s, train=True, key=jax.random.key(0), **kw)


def test_reference_refuses_a_mapped_axis():
  x, (p, s) = _x(), _init()
  with pytest.raises(ValueError, match="axis_name"):
    jax.vmap(lambda x: bn.batch_norm(x, p, s, train=True, reference=30, axis_name="d")[0], axis_name="d")(x[None])


def _config(**norm):
  c = bn_config.base()
  c.seeds = (0,)
  c.data.update(source="synthetic", synthetic_shape=(4, 4, 1), train_size=64, train_eval_size=64)
  c.model.update(widths=(8,), act="relu", init_std=None)
  c.norm.update(kind="batch", **norm)
  c.train.update(steps=2, batch_size=8, eval_every=2, checkpoint_every=2)
  return c


def test_engine_step_appends_the_reference_and_trains_on_the_batch_only():
  exp = experiment.from_config(_config(reference=16))
  ds = data.synthetic((4, 4, 1), 10, num_train=64, num_test=16)
  task = exp.make_task(10)
  assert task.reference == 16
  images, labels = jnp.asarray(ds.train.x, jnp.float32) / 255.0, jnp.asarray(ds.train.y)
  state = train.init_state(task, 0, 0.1, 0.0, images[:8], 64)
  idx = jnp.arange(8, 16)
  new, metrics = train.step_on(task, state, idx, images, labels)
  # by hand: the model on batch + reference, the loss over the batch rows
  x = jnp.concatenate([images[idx], images[:16]])
  logits, _ = task.model.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"],
                               rngs={"noise": jax.random.key(0)})
  np.testing.assert_allclose(metrics.loss, train.cross_entropy(logits[:8], labels[idx]), rtol=1e-5)
  # the running statistics fold in the reference set's statistics, not the batch's
  pre = jnp.concatenate([images[idx], images[:16]]).reshape(24, -1) @ state.params["layer0"]["linear"]["kernel"]
  mean = new.batch_stats["layer0"]["norm"]["bn"]["mean"]
  np.testing.assert_allclose(mean, (1 - 0.99) * np.asarray(pre[8:]).mean(0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("norm, words", [
    (dict(kind="ghost", ghost_batch_size=4, reference=16), "kind=batch"),
    (dict(reference=100), "exceeds --config.data.train_size=64"),
])
def test_config_errors(norm, words):
  c = _config()
  c.norm.update(**norm)
  with pytest.raises(ConfigError, match=words):
    experiment.from_config(c)


def test_precise_bn_model_drops_the_reference():
  c = _config(reference=16)
  c.train.precise_bn = 32
  task = experiment.from_config(c).make_task(10)
  assert task.precise_bn.norm.options.reference is None and task.model.norm.options.reference == 16
