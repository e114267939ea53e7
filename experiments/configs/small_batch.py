"""C5 (Wu & He 2018, Table 2 shape): BN vs GroupNorm vs LayerNorm vs Batch Renorm at small statistics batches -- MLP form.

Command (one condition):

    bn train --config experiments/configs/small_batch.py:quick --config.norm.kind=ghost --config.norm.ghost_batch_size=2 --workdir runs/bn2

Setup: MLP 3 x 128 ReLU on Fashion-MNIST, total batch 64, SGD momentum 0.9, LR 0.05, 1,000 steps
(quick). The statistics batch is varied with ghost batches (2, 4, 16, 64), which keeps SGD noise
fixed -- the analog of Wu & He's images per GPU. In an MLP a ghost batch of 2 means exactly 2
values per statistic (a conv layer would pool over H x W as well; the CNN form is
small_batch_cnn.py, --full only). GroupNorm with 32 groups (Wu & He's default; groups of 4 of
the 128 features), LayerNorm, and Batch Renorm at ghost 2 (r_max 1 -> 3, d_max 0 -> 5 over the
first quarter of training, assumed). Every BN variant is evaluated after precise-BN
recalibration (2,000 training images), so small ghosts are not judged by a running variance
biased by (g-1)/g -- what is measured is training with noisy small-batch statistics.
Expected: BN's accuracy falls at ghost 2; GN does not depend on the batch.
Runtime on a 2-core CPU: quick ~1.5 min (85 s measured), full ~20 min (estimated).
"""

from bn.config import base

GHOSTS = {"tiny": (2, 16), "quick": (2, 4, 16, 64), "full": (2, 4, 8, 16, 32, 64)}


def get_config(mode: str = "quick"):
  c = base()
  c.name = "small_batch"
  c.seeds = tuple(range(20)) if mode == "full" else tuple(range(10))
  c.data.update(train_eval_size=1000)
  c.model.update(name="mlp", widths=(128, 128, 128), act="relu", init_std=None)
  c.norm.update(kind="batch", position="pre", momentum=0.9, num_groups=32)
  c.optimizer.update(name="momentum", lr=0.05, momentum=0.9)
  steps = {"tiny": 30, "quick": 1000, "full": 6000}[mode]
  c.norm.update(renorm_warmup=steps // 4)
  c.train.update(steps=steps, batch_size=64, eval_every=steps // 5, checkpoint_every=steps // 2, target_accuracy=0.8, precise_bn=2000)
  if mode == "tiny":
    c.seeds = (0, 1, 2)
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), train_eval_size=256)
    c.model.update(widths=(16, 16))
    c.train.update(batch_size=16, precise_bn=256)
    c.norm.update(num_groups=4)
  return c


def conditions(mode: str = "quick"):
  ghosts = GHOSTS[mode]
  full = ghosts[-1]
  out = {f"bn_g{g}": ({"norm.kind": "ghost", "norm.ghost_batch_size": g} if g < full else {"norm.kind": "batch"}) for g in ghosts}
  out["group"] = {"norm.kind": "group"}
  if mode == "tiny":  # tests: the plumbing, with as few compiled programs as possible
    return out
  out[f"renorm_g{ghosts[0]}"] = {"norm.kind": "renorm", "norm.ghost_batch_size": ghosts[0]}
  out["layer"] = {"norm.kind": "layer"}
  return out
