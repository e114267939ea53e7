"""C5 (--full only): the CNN form of small_batch.py, trained for 5 epochs.

Command (one condition):

    bn train --config experiments/configs/small_batch_cnn.py:full --config.norm.kind=ghost --config.norm.ghost_batch_size=2 --workdir runs/cnn_bn2

Setup: small CNN (conv 3x3 16-32-64, ReLU, max-pool, global average pool) on Fashion-MNIST, total
batch 64, SGD momentum 0.9, LR 0.05, 4,700 steps (5 epochs). Ghost batches 2 ... 64; GroupNorm with
C/2 groups per layer (Wu & He's rule when C < 64: 8, 16, 32 groups, so GN is not InstanceNorm),
LayerNorm, Batch Renorm at ghost 2. Precise-BN evaluation. Note that a conv layer's statistics
pool over H x W: "ghost 2" averages 2 x H x W values per channel, far more than the MLP form's 2.
Runtime: about 1.5 h on a 2-core CPU (host loop, unrolled runs); minutes on a GPU.
"""

from bn.config import base

GHOSTS = (2, 4, 8, 16, 32, 64)


def get_config(mode: str = "full"):
  c = base()
  c.name = "small_batch_cnn"
  c.seeds = (0, 1, 2, 3, 4)
  c.model = c.model.__class__(dict(name="cnn", widths=(16, 32, 64), act="relu"))
  c.norm.update(kind="batch", position="pre", momentum=0.9, num_groups=8)
  c.optimizer.update(name="momentum", lr=0.05, momentum=0.9)
  steps = {"tiny": 20, "quick": 20, "full": 4700}[mode]
  c.norm.update(renorm_warmup=steps // 4)
  c.train.update(steps=steps, batch_size=64, eval_every=max(steps // 5, 1), checkpoint_every=max(steps // 5, 1), target_accuracy=0.8,
                 eval_chunk=500, precise_bn=2000)
  c.data.update(train_eval_size=5000)
  if mode in ("tiny", "quick"):
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), train_eval_size=256)
    c.model.update(widths=(4, 8))
    c.train.update(batch_size=16, precise_bn=256)
  return c


def conditions(mode: str = "full"):
  if mode != "full":
    return {}  # --full only
  out = {f"bn_g{g}": ({"norm.kind": "ghost", "norm.ghost_batch_size": g} if g < 64 else {"norm.kind": "batch"}) for g in GHOSTS}
  out["renorm_g2"] = {"norm.kind": "renorm", "norm.ghost_batch_size": 2}
  out["group"] = {"norm.kind": "group", "norm.num_groups": 0}  # 0: C/2 groups in every layer
  out["layer"] = {"norm.kind": "layer"}
  return out
