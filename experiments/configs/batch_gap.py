"""C3 (a): generalization gap vs batch size, with and without BN.

Command (one batch size):

    bn train --config experiments/configs/batch_gap.py:quick --config.train.batch_size=64 --workdir runs/gap_bn_64

Setup: MLP 3 x 256 ReLU on a fixed 5,000-example training subset (so the nets
overfit within the run), SGD momentum 0.9, LR 0.05 * sqrt(B / 64) (Hoffer et al.'s
square-root scaling), the same number of steps at every batch size. Gap = test
loss - train-subset loss (eval mode); the accuracy gap is reported too.
Expected by the regularization claim: at small batches BN's gap is smaller than
the no-BN gap, and the difference fades toward large batches.
"""

import math

from bn.config import base

BATCHES = {"tiny": (16, 64), "quick": (16, 64, 256, 1024), "full": (16, 32, 64, 128, 256, 512, 1024)}


def get_config(mode: str = "quick"):
  c = base()
  c.name = "batch_gap"
  c.seeds = (0, 1, 2, 3, 4) if mode == "full" else (0, 1, 2)
  c.data.update(train_size=5000, train_eval_size=5000)
  c.model.update(name="mlp", widths=(256, 256, 256), act="relu", init_std=None)
  c.norm.update(kind="batch", position="pre", momentum=0.9)
  c.optimizer.update(name="momentum", lr=0.05, momentum=0.9)
  steps = {"tiny": 40, "quick": 1500, "full": 10_000}[mode]
  c.train.update(steps=steps, batch_size=64, eval_every=steps // 5, checkpoint_every=steps, target_accuracy=0.8)
  if mode == "tiny":
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), train_size=512, train_eval_size=512)
    c.model.update(widths=(16, 16))
  return c


def conditions(mode: str = "quick"):
  out = {}
  for b in BATCHES[mode]:
    lr = 0.05 * math.sqrt(b / 64)
    for kind in ("batch", "none"):
      out[f"{'bn' if kind == 'batch' else 'none'}_b{b}"] = {"norm.kind": kind, "train.batch_size": b, "optimizer.lr": lr}
  return out
