"""C2 ("so each layer learns faster on its own"): branch at matched training loss, then one layer alone vs all layers.

Command: part of `bn reproduce` (its own two-phase loop, `bn.measure.alone`):

    bn reproduce --quick --only alone --out runs/ledger

Setup: the Ioffe MLP of `ioffe.py` (3 x 100 sigmoid, N(0, 0.1^2) init, SGD LR 0.5, batch 60), BN or none.
Phase 1 trains each seed with SGD until its training-mode loss on a fixed batch of 256 training images
first falls to each level of `alone.levels` (checked every `alone.every` steps): the branch points, so
both nets are compared at the same loss. Phase 2, from each branch point: `alone.budget` steps of
full-batch gradient descent on those 256 images (no SGD noise) for every variant -- all layers, or one
layer alone (the others frozen by a per-layer LR multiplier of 0) -- at every LR of `alone.lrs`; each
variant's LR is the one with the largest mean loss drop (its own tuned LR). Phase 3: all layers
together, each at the LR it did best with alone ("together").
Read by C2's *alone* part: the loss drop a hidden layer achieves alone minus the all-layer drop, over
the loss at the branch point (mean over hidden layers and levels), BN - none > 0. Decoupled layers
("each learns essentially by itself") would also make the together run realize the sum of the solo
drops: the additivity gap 1 - together / sum is 0; secondary tests read it. Pilot (seeds 0-9): the
primary +0.13 [+0.07, +0.19]; additivity gap BN 1.18, none 0.93 (both nets' layers interfere: the
together run gains little or loses).
Runtime on a 2-core CPU: quick ~45 s (42 s and 45 s measured in the ledger, both conditions), full ~2 min (20 seeds).
"""

import ml_collections

from bn.config import base


def get_config(mode: str = "quick"):
  c = base()
  c.name = "alone"
  c.seeds = tuple(range(20)) if mode == "full" else tuple(range(10))
  c.model.update(name="mlp", widths=(100, 100, 100), act="sigmoid", init_std=0.1)
  c.norm.update(kind="batch", position="pre", momentum=0.99)
  c.optimizer.update(name="sgd", lr=0.5)
  c.train.update(batch_size=60)
  c.alone = ml_collections.ConfigDict(dict(levels=(1.0, 0.6), every=5, max_steps=4000, batch=256, budget=10,
                                           lrs=(1 / 16, 1 / 4, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0)))
  if mode == "tiny":
    c.seeds = (0, 1, 2)
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1))
    c.model.update(widths=(16, 16))
    c.alone.update(levels=(2.0,), every=5, max_steps=40, batch=128, budget=3, lrs=(0.1, 1.0))
  return c


def conditions(mode: str = "quick"):
  return {"bn": {"norm.kind": "batch"}, "none": {"norm.kind": "none"}}
