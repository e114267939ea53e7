"""C2 (secondary): does each layer learn faster on its own with BN? A freezing ablation on the Ioffe MLP.

Command: part of `bn reproduce` (its own two-phase loop):

    bn reproduce --quick --only freeze --out runs/ledger

Setup: the Ioffe MLP of `ioffe.py` (sigmoid, batch 60, SGD LR 0.5), BN or none. Phase 1: 500 steps
(quick). Phase 2, from that state, 200 steps of each variant -- all layers, or one layer alone with
the others frozen (per-layer LR multiplier 0) -- all (variant, seed) pairs in one program, with the
same batches per seed. Recorded: the training-mode loss on a fixed batch of 2,000 training examples
before and after phase 2. The test reads the loss reduction a hidden layer achieves alone, as a
fraction of the loss at the branch point (mean over hidden layers). Expected by "BN decouples layers
so each learns faster on its own": a larger fraction with BN. Runtime on a 2-core CPU: ~25 s quick (measured), ~50 s full.
"""

import ml_collections

from bn.config import base


def get_config(mode: str = "quick"):
  c = base()
  c.name = "freeze"
  c.seeds = tuple(range(20)) if mode == "full" else tuple(range(10))
  c.model.update(name="mlp", widths=(100, 100, 100), act="sigmoid", init_std=0.1)
  c.norm.update(kind="batch", position="pre", momentum=0.99)
  c.optimizer.update(name="sgd", lr=0.5)
  c.train.update(batch_size=60)
  c.freeze = ml_collections.ConfigDict(dict(before={"tiny": 20, "quick": 500, "full": 2000}[mode],
                                            budget={"tiny": 10, "quick": 200, "full": 500}[mode], batch=2000))
  if mode == "tiny":
    c.seeds = (0, 1, 2)
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1))
    c.model.update(widths=(16, 16))
    c.freeze.batch = 256
  return c


def conditions(mode: str = "quick"):
  return {"bn": {"norm.kind": "batch"}, "none": {"norm.kind": "none"}}
