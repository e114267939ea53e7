"""Precise BN before evaluation (``train.precise_bn``): the recalibrated statistics against a NumPy
forward pass with full-batch statistics, and the engine's evaluation with it."""

import numpy as np
import pytest

from bn import config as bn_config, experiment, train

EPS = 1e-5


def task_for(kind="ghost", precise=64):
  c = bn_config.base()
  c.data.update(source="synthetic", synthetic_shape=(2, 2, 1), synthetic_classes=3)
  c.model.update(widths=(5, 4), act="sigmoid", init_std=0.5)
  c.norm.update(kind=kind, ghost_batch_size=4)
  c.train.update(batch_size=16, precise_bn=precise)
  return experiment.from_config(c).make_task(3)


def numpy_stats(params, xs):
  """Per layer: the equal-weight average over batches of the biased batch mean/var of each BN input,
  every layer normalizing with the statistics of its whole batch (scale/bias applied)."""
  out = {}
  for x in xs:
    h = x.reshape(len(x), -1).astype(np.float64)
    for name in ("layer0", "layer1"):
      z = h @ np.asarray(params[name]["linear"]["kernel"], np.float64)
      m, v = z.mean(0), z.var(0)
      out.setdefault(name, []).append((m, v))
      bnp = params[name]["norm"]["bn"]
      y = (z - m) / np.sqrt(v + EPS) * np.asarray(bnp["scale"]) + np.asarray(bnp["bias"])
      h = 1 / (1 + np.exp(-y))
  return {k: (np.mean([a for a, _ in v], 0), np.mean([b for _, b in v], 0)) for k, v in out.items()}


def test_recalibrate_equals_full_batch_statistics():
  task = task_for()
  assert task.precise_bn is not None and task.precise_bn.norm.kind == "batch" and task.precise_bn.norm.options.ghost_batch_size is None
  rng = np.random.default_rng(0)
  state = train.init_state(task, 0, 0.1, 0.0, np.zeros((2, 2, 2, 1), np.float32), 64)
  params = jax_tree_perturb(state.params, rng)
  xs = rng.standard_normal((3, 8, 2, 2, 1)).astype(np.float32)
  got = train.recalibrate(task, params, state.batch_stats, xs)
  want = numpy_stats(params, xs)
  for name in ("layer0", "layer1"):
    np.testing.assert_allclose(got[name]["norm"]["bn"]["mean"], want[name][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[name]["norm"]["bn"]["var"], want[name][1], rtol=1e-4, atol=1e-5)


def jax_tree_perturb(params, rng):
  import jax

  return jax.tree.map(lambda p: np.asarray(p) + 0.3 * rng.standard_normal(np.shape(p)).astype(np.float32), params)


def test_precise_bn_is_off_by_default_and_for_models_without_running_statistics():
  assert task_for(precise=0).precise_bn is None
  assert task_for(kind="layer").precise_bn is None
  assert task_for(kind="population").precise_bn is None  # it trains with its running statistics: evaluated with them
  assert task_for(kind="noisy").precise_bn.norm.kind == "batch"  # recalibrated without the noise


def test_negative_precise_bn_is_a_config_error():
  c = bn_config.base()
  c.train.precise_bn = -1
  with pytest.raises(bn_config.ConfigError, match="train.precise_bn=-1"):
    experiment.from_config(c)
