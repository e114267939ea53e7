"""C3 (b, c): separate batch-statistics noise from SGD noise (Hoffer et al. 2017 Ghost BN; Luo et al. 2019).

Command (one ghost size):

    bn train --config experiments/configs/ghost.py:quick --config.norm.kind=ghost --config.norm.ghost_batch_size=16 --workdir runs/ghost16

Setup: the batch_gap.py network and data, total batch fixed at 512 (so the
SGD noise is fixed), LR 0.05 * sqrt(512/64). Only the statistics batch changes:
ghost sizes 8 ... 512 (512 = plain BN). Controls: population mode (normalize with
running statistics during training: no batch-statistics noise) and no BN.
Expected by the regularization claim: smaller ghost batches give smaller gaps;
population mode gives a larger gap than BN with batch statistics.
"""

import math

from bn.config import base

GHOSTS = {"tiny": (8, 64), "quick": (8, 32, 128, 512), "full": (8, 16, 32, 64, 128, 256, 512)}


def get_config(mode: str = "quick"):
  c = base()
  c.name = "ghost"
  c.seeds = (0, 1, 2, 3, 4) if mode == "full" else (0, 1, 2)
  c.data.update(train_size=5000, train_eval_size=5000)
  c.model.update(name="mlp", widths=(256, 256, 256), act="relu", init_std=None)
  c.norm.update(kind="batch", position="pre", momentum=0.9)
  c.optimizer.update(name="momentum", lr=0.05 * math.sqrt(512 / 64), momentum=0.9)
  steps = {"tiny": 40, "quick": 1000, "full": 10_000}[mode]
  c.train.update(steps=steps, batch_size=512, eval_every=steps // 5, checkpoint_every=steps, target_accuracy=0.8)
  if mode == "tiny":
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), train_size=512, train_eval_size=512)
    c.model.update(widths=(16, 16))
    c.train.update(batch_size=64)
  return c


def conditions(mode: str = "quick"):
  full = GHOSTS[mode][-1]
  out = {f"ghost{g}": ({"norm.kind": "ghost", "norm.ghost_batch_size": g} if g < full else {"norm.kind": "batch"}) for g in GHOSTS[mode]}
  out["population"] = {"norm.kind": "population"}
  out["none"] = {"norm.kind": "none"}
  return out
