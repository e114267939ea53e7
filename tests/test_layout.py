"""Program layouts of the engine: scan vs host loop over steps, vmap vs unrolled runs.

``train.loop`` / ``train.runs`` change how the steps are compiled (conv models on
XLA:CPU are several times faster as a host loop over unrolled runs), never what is
computed: every layout must give the same states and metrics, to rounding (RTOL/ATOL below):
the BN MLP, a CNN with batch and ghost BN (and one without normalization), and a small ResNet-20.
Which layout "auto" picks (bn.experiment.choose_layout) is test_experiment.py.
"""

import jax
import numpy as np
import pytest

from bn import config as bn_config
from bn import data, experiment, loop, parallel, programs

STEPS = 3
LR = 0.05


def tiny_config(kind="batch", model="cnn"):
  c = bn_config.base()
  c.seeds = (0, 1)
  if model == "cnn":
    c.model = c.model.__class__(dict(name="cnn", widths=(4, 8), act="relu"))
  elif model == "resnet20":  # ResNet-20's blocks (strided convs, 1x1 projections), 1 block per stage
    c.model = c.model.__class__(dict(name="resnet20", widths=(4, 8, 8), blocks_per_stage=1))
  else:
    c.model.update(widths=(16, 16))
  c.norm.update(kind=kind, ghost_batch_size=4 if kind == "ghost" else 0)
  c.optimizer.update(name="momentum", lr=LR)
  c.train.update(steps=STEPS, batch_size=8)
  return c


@pytest.fixture(scope="module")
def small_data():
  return data.synthetic((8, 8, 1), 10, num_train=64, num_test=16).train


def train_with(c, split, loop_, runs):
  c.train.loop, c.train.runs = loop_, runs
  exp = experiment.from_config(c)
  task = exp.make_task(10)
  assert (task.loop, task.runs) == (loop_, runs)
  stats = data.channel_stats(split.x)
  x, y = parallel.place_train(split, stats)
  r = exp.runs
  init = programs.init(task, len(y))
  state = init(np.asarray([q.seed for q in r]), np.asarray([q.lr for q in r], np.float32), np.asarray([q.weight_decay for q in r], np.float32), x[:2])
  state, metrics = programs.chunk(task, STEPS).lower(state, x, y).compile()(state, x, y)
  ev = programs.evaluate(task, 1)(state.params, state.batch_stats, (parallel.place_eval(split, stats, None, 16),), None)
  return state, metrics, ev


# Layouts sum in different orders, so they agree to rounding, not bit for bit: after 3 steps the
# largest difference of any state entry or metric is ~6e-7 (measured for the BN CNN and ResNet-20;
# 0 or ~1e-7 for the MLP). RTOL/ATOL bound it; max-pooling's argmax and ReLU could amplify a
# last-bit difference in principle, and do not here.
RTOL, ATOL = 2e-5, 2e-6
_REFS = {}


@pytest.mark.parametrize("model,kind,loop,runs", [
    ("mlp", "batch", "host", "unroll"), ("mlp", "batch", "host", "vmap"), ("mlp", "ghost", "scan", "unroll"),
    ("cnn", "none", "host", "unroll"),
    ("cnn", "batch", "host", "unroll"), ("cnn", "ghost", "host", "unroll"), ("cnn", "batch", "scan", "unroll"),
    ("resnet20", "batch", "host", "unroll"), ("resnet20", "ghost", "host", "vmap"),
])
def test_host_loop_and_unrolled_runs_equal_scan_and_vmap(small_data, model, kind, loop, runs):
  if (model, kind) not in _REFS:
    _REFS[model, kind] = train_with(tiny_config(kind, model), small_data, "scan", "vmap")
  ref = _REFS[model, kind]
  assert ref[1].loss.shape == (2, STEPS)
  got = train_with(tiny_config(kind, model), small_data, loop, runs)
  assert got[1].loss.shape == (2, STEPS)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL), ref, got)


def test_bad_layout_values_are_config_errors():
  c = tiny_config()
  c.train.loop = "while"
  with pytest.raises(bn_config.ConfigError, match="train.loop='while': expected one of auto, scan, host"):
    experiment.from_config(c)
  c = tiny_config()
  c.train.runs = "pmap"
  with pytest.raises(bn_config.ConfigError, match="train.runs='pmap'"):
    experiment.from_config(c)


def test_bad_layout_value_writes_nothing(tmp_path):
  c = tiny_config()
  c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), synthetic_sizes=(64, 16))
  c.train.runs = "pmap"
  with pytest.raises(bn_config.ConfigError, match="train.runs='pmap'"):
    loop.train_workdir(experiment.from_config(c), tmp_path / "wd", progress=False)
  assert not (tmp_path / "wd").exists()  # nothing written
