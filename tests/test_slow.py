"""Slow checks on real data, kept out of `make test` (run them with `make test-slow`).

They reproduce, at reduced length, results stated in the configs' docstrings and the
README, so a change that silently breaks learning on real data shows up here.
"""

import pytest

from bn import config as bn_config
from bn import data, experiment, loop

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(data.find_idx("fashion_mnist") is None, reason="needs Fashion-MNIST: apt-get install dataset-fashion-mnist (or make data)"),
]

STEPS = 6000
# Not asserted: that BN reaches 85% sooner. With one seed the first crossing depends on the
# evaluation cadence (none: ~4.4k steps evaluated every 1,000, ~2.4k evaluated every 500);
# the 3-seed comparison is claim C1 of the ledger.


@pytest.fixture(scope="module")
def ioffe(tmp_path_factory):
  """The Ioffe MLP (experiments/configs/ioffe_mlp.py) for 6,000 steps, BN and none, seed 0."""
  out = {}
  for kind in ("batch", "none"):
    c = bn_config.load("experiments/configs/ioffe_mlp.py")
    c.norm.kind = kind
    c.train.update(steps=STEPS, eval_every=500, checkpoint_every=STEPS)
    out[kind] = loop.train_workdir(experiment.from_config(c), tmp_path_factory.mktemp(kind), progress=False)["runs"][0]
  return out


def test_ioffe_both_nets_learn_fashion_mnist(ioffe):
  for kind, r in ioffe.items():
    assert not r["diverged"], kind
    assert r["test_accuracy"] > 0.83 and r["train_accuracy"] > 0.85, (kind, r)


def test_small_cnn_with_ghost_bn_learns_fashion_mnist(tmp_path):
  """C5's CNN on real data through the CPU conv layout (host loop, unrolled runs)."""
  c = bn_config.load("experiments/configs/small_batch_cnn.py:full")
  c.seeds = (0, 1)
  c.norm.update(kind="ghost", ghost_batch_size=4)
  c.train.update(steps=300, eval_every=300, checkpoint_every=300, precise_bn=0)
  exp = experiment.from_config(c)
  task = exp.make_task(10)
  assert (task.loop, task.runs) == ("host", "unroll")
  for r in loop.train_workdir(exp, tmp_path, progress=False)["runs"]:
    assert not r["diverged"] and r["test_accuracy"] > 0.7, r
