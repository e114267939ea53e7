"""bn.train_and_evaluate and bn.restore: a finished workdir back to a model whose evaluation reproduces
its summary, whose variables a plain flax.linen model (flax.linen.BatchNorm) loads, and whose recorded
config rebuilds the experiment."""

import json

import flax.linen as nn
import ml_collections
import numpy as np
import pytest

import bn
from bn import config, experiment
from bn.errors import UsageError

pytestmark = pytest.mark.usefixtures("compile_cache")


def tiny(**norm):
  c = config.base()
  c.name = "api"
  c.seeds = (0, 1)
  c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), synthetic_sizes=(1024, 300), train_eval_size=256)
  c.model.update(name="mlp", widths=(16,), act="relu", init_std=None)
  c.norm.update(kind="batch", **norm)
  c.optimizer.update(name="sgd", lr=0.1)
  c.train.update(steps=200, batch_size=32, eval_every=100, checkpoint_every=100)
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  wd = tmp_path_factory.mktemp("api") / "run"
  summary = bn.train_and_evaluate(tiny(), wd, progress=False)
  return wd, summary


class PlainBlock(nn.Module):  # bn.models.Block with norm.position="pre", as a reader would write it in plain Flax
  features: int

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.features, use_bias=False, name="linear")(x)
    x = PlainNorm(name="norm")(x)
    return nn.relu(x)


class PlainNorm(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.BatchNorm(use_running_average=True, momentum=0.99, epsilon=1e-5, name="bn")(x)


class PlainMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = PlainBlock(16, name="layer0")(x.reshape((x.shape[0], -1)))
    return nn.Dense(10, name="head")(x)


def test_train_and_evaluate_writes_the_workdir_bn_train_writes(finished):
  wd, summary = finished
  assert summary == json.loads((wd / "summary.json").read_text())
  assert summary["steps"] == 200 and [r["seed"] for r in summary["runs"]] == [0, 1]
  assert bn.train_and_evaluate(tiny(), wd, progress=False) == summary  # finished: not trained again


@pytest.mark.parametrize("run", [0, 1])
def test_restore_reproduces_the_summary_exactly(finished, run):
  wd, summary = finished
  r = bn.restore(wd, run=run)
  want = summary["runs"][run]
  assert r.step == 200 and r.run["seed"] == want["seed"] and r.summary == want
  got = r.evaluate(*r.test_split)
  assert got["accuracy"] == want["test_accuracy"]
  assert got["loss"] == pytest.approx(want["test_loss"], rel=1e-5)
  assert r.evaluate(*r.train_eval_split)["accuracy"] == want["train_accuracy"]
  x, y = r.test_split
  logits = r.predict(x, batch_size=128)
  assert logits.shape == (len(y), 10) and np.mean(np.argmax(logits, -1) == y) == pytest.approx(want["test_accuracy"], abs=1e-6)
  assert [m["step"] for m in r.metrics] == [100, 200] and r.metrics[-1]["test_accuracy"] == want["test_accuracy"]


def test_restored_variables_load_into_a_plain_flax_model(finished):
  wd, _ = finished
  r = bn.restore(wd, run=1)
  assert set(r.variables) == {"params", "batch_stats"}
  assert set(r.variables["batch_stats"]["layer0"]["norm"]["bn"]) == {"mean", "var"}
  x = r.test_split.x[:64]
  z = r.transform(x)  # the training's standardization: float32, zero mean / unit std per channel on the training set
  assert z.dtype == np.float32 and np.asarray(r.transform(r.dataset.train.x)).mean() == pytest.approx(0.0, abs=1e-4)
  plain = PlainMLP().apply(r.variables, z)
  np.testing.assert_allclose(np.asarray(plain), r.predict(x), rtol=1e-5, atol=1e-5)


def test_the_recorded_config_rebuilds_the_experiment(finished):
  wd, _ = finished
  recorded = json.loads((wd / "config.json").read_text())["config"]
  assert "coordinator" not in recorded["parallel"]  # launch keys are not recorded ...
  exp = experiment.from_config(ml_collections.ConfigDict(recorded))  # ... and not needed
  assert exp.config == recorded and exp.fingerprint == experiment.from_config(tiny()).fingerprint
  assert bn.restore(wd).experiment.fingerprint == exp.fingerprint


def test_restore_refuses_what_a_workdir_does_not_hold(finished, tmp_path):
  wd, _ = finished
  with pytest.raises(UsageError, match=r"run=2: .* holds runs 0\.\.1"):
    bn.restore(wd, run=2)
  with pytest.raises(UsageError, match="holds no checkpoints/"):
    bn.restore(tmp_path)


def test_restore_with_precise_bn_uses_the_recalibrated_statistics(tmp_path):
  c = tiny()
  c.seeds = (0,)
  c.train.update(steps=100, precise_bn=128)
  summary = bn.train_and_evaluate(c, tmp_path / "p", progress=False)
  r = bn.restore(tmp_path / "p")
  assert r.evaluate(*r.test_split)["accuracy"] == summary["runs"][0]["test_accuracy"]
  from bn import loop

  raw = loop.restore(tmp_path / "p").batch_stats[0]["layer0"]["norm"]["bn"]["var"]
  assert not np.allclose(raw, r.variables["batch_stats"]["layer0"]["norm"]["bn"]["var"])  # recalibrated, not the running ones
