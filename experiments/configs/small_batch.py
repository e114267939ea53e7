"""C5 (Wu & He 2018, Table 2 shape): BN vs GroupNorm vs LayerNorm vs Batch Renorm at small statistics batches.

Command (one condition):

    bn train --config experiments/configs/small_batch.py:quick --config.norm.kind=ghost --config.norm.ghost_batch_size=2 --workdir runs/bn2

Setup: small CNN (conv 3x3 16-32-64 in --full, 8-16-32 in --quick to fit the
quick ledger's time budget on a 2-core CPU; ReLU, max-pool, global average pool) on
Fashion-MNIST, total batch 64, SGD momentum 0.9, LR 0.05. The statistics batch
is varied with ghost batches (2 ... 64), which keeps SGD noise fixed -- the
CPU analog of Wu & He's images per GPU. GroupNorm (8 groups) and LayerNorm do
not depend on the batch, so one run each stands for every size. Batch Renorm:
r_max 1 -> 3, d_max 0 -> 5 over the first quarter of training (assumed).
Expected: BN degrades at the smallest statistics batch; GN beats BN there;
Batch Renorm recovers part of the loss.
"""

from bn.config import base

GHOSTS = {"tiny": (2, 16), "quick": (2, 4, 16, 64), "full": (2, 4, 8, 16, 32, 64)}


def get_config(mode: str = "quick"):
  c = base()
  c.name = "small_batch"
  c.seeds = (0, 1, 2, 3, 4) if mode == "full" else (0, 1, 2)
  c.model = c.model.__class__(dict(name="cnn", widths=(16, 32, 64) if mode == "full" else (8, 16, 32), act="relu"))
  c.norm.update(kind="batch", position="pre", momentum=0.9, num_groups=8)
  c.optimizer.update(name="momentum", lr=0.05, momentum=0.9)
  steps = {"tiny": 30, "quick": 600, "full": 6000}[mode]
  c.norm.update(renorm_warmup=steps // 4)
  c.train.update(steps=steps, batch_size=64, eval_every=steps // 3, checkpoint_every=steps, target_accuracy=0.8, eval_chunk=500)
  c.data.update(train_eval_size=5000)
  if mode == "tiny":
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), train_eval_size=256)
    c.model.update(widths=(4, 8))
    c.train.update(batch_size=16)
    c.norm.update(num_groups=2)
  return c


def conditions(mode: str = "quick"):
  ghosts = GHOSTS[mode]
  full = ghosts[-1]
  out = {f"bn_g{g}": ({"norm.kind": "ghost", "norm.ghost_batch_size": g} if g < full else {"norm.kind": "batch"}) for g in ghosts}
  out.update({f"renorm_g{g}": {"norm.kind": "renorm", "norm.ghost_batch_size": g} for g in (ghosts[0], full)})
  out["group"] = {"norm.kind": "group"}
  out["layer"] = {"norm.kind": "layer"}
  return out
