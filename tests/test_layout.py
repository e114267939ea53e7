"""Program layouts of the engine: scan vs host loop over steps, vmap vs unrolled runs.

``train.loop`` / ``train.runs`` change how the steps are compiled (conv models on
XLA:CPU are several times faster as a host loop over unrolled runs), never what is
computed: every layout must give the same states and metrics.
"""

import jax
import numpy as np
import pytest

from bn import config as bn_config
from bn import data, pipeline, run, train

STEPS = 3
LR = 0.05


def tiny_config(kind="batch", model="cnn"):
  c = bn_config.base()
  c.seeds = (0, 1)
  if model == "cnn":
    c.model = c.model.__class__(dict(name="cnn", widths=(4, 8), act="relu"))
  else:
    c.model.update(widths=(16, 16))
  c.norm.update(kind=kind, ghost_batch_size=4)
  c.optimizer.update(name="momentum", lr=LR)
  c.train.update(steps=STEPS, batch_size=8)
  return c


@pytest.fixture(scope="module")
def small_data():
  ds = data.synthetic((8, 8, 1), 10, num_train=64, num_test=16)
  return pipeline.to_device(ds.train, pipeline.channel_stats(ds.train.x))


def train_with(c, x, y, loop, runs):
  c.train.loop, c.train.runs = loop, runs
  task = run.make_task(c, 10)
  assert (task.loop, task.runs) == (loop, runs)
  r = run.run_table(c)
  state = train.vmapped_init(task, [q["seed"] for q in r], [q["lr"] for q in r], [q["weight_decay"] for q in r], x[:2], len(y))
  state, metrics = train.vmapped_chunk(task, STEPS).lower(state, x, y).compile()(state, x, y)
  ev = train.vmapped_eval(task, chunk=16)(state.params, state.batch_stats, x, y)
  return state, metrics, ev


# A CNN with BN is not used here: summation order differs between layouts in the last
# bit, and in a ReLU + max-pool net such a difference can flip which element of a pooling
# window is the largest, which routes that gradient elsewhere (measured: ~1e-4 loss
# difference after 3 steps even at LR 1e-3). The BN MLP is smooth, so its layouts agree to
# rounding; the conv paths are compared without normalization (no reductions whose order
# could differ), where they agree exactly.
_REFS = {}


@pytest.mark.parametrize("model,kind,loop,runs", [
    ("mlp", "batch", "host", "unroll"), ("mlp", "batch", "host", "vmap"),
    ("mlp", "ghost", "scan", "unroll"), ("cnn", "none", "host", "unroll"),
])
def test_host_loop_and_unrolled_runs_equal_scan_and_vmap(small_data, model, kind, loop, runs):
  x, y = small_data
  if (model, kind) not in _REFS:
    _REFS[model, kind] = train_with(tiny_config(kind, model), x, y, "scan", "vmap")
  ref = _REFS[model, kind]
  assert ref[1].loss.shape == (2, STEPS)
  got = train_with(tiny_config(kind, model), x, y, loop, runs)
  assert got[1].loss.shape == (2, STEPS)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), ref, got)


def test_auto_layout_by_model_and_backend():
  assert train.resolve_layout("auto", "auto", "cnn", "cpu") == ("host", "unroll")
  assert train.resolve_layout("auto", "auto", "resnet20", "cpu") == ("host", "unroll")
  assert train.resolve_layout("auto", "auto", "mlp", "cpu") == ("scan", "vmap")
  assert train.resolve_layout("auto", "auto", "cnn", "gpu") == ("scan", "vmap")
  assert train.resolve_layout("scan", "vmap", "cnn", "cpu") == ("scan", "vmap")


def test_bad_layout_values_are_config_errors():
  c = tiny_config()
  c.train.loop = "while"
  with pytest.raises(bn_config.ConfigError, match="train.loop='while': expected one of auto, scan, host"):
    run.make_task(c, 10)
  c = tiny_config()
  c.train.runs = "pmap"
  with pytest.raises(bn_config.ConfigError, match="train.runs='pmap'"):
    run.make_task(c, 10)


def test_bad_layout_value_writes_nothing(tmp_path):
  c = tiny_config()
  c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), synthetic_sizes=(64, 16))
  c.train.runs = "pmap"
  with pytest.raises(bn_config.ConfigError, match="train.runs='pmap'"):
    run.train_workdir(c, tmp_path / "wd", progress=False)
  assert not any((tmp_path / "wd").iterdir())  # no config.json, no checkpoints
