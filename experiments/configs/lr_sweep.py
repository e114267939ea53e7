"""C2 (Bjorck et al. 2018): BN permits larger learning rates. LR sweep on a deep ReLU MLP, with and without BN.

Command (BN; --config.norm.kind=none for the baseline):

    bn train --config experiments/configs/lr_sweep.py:quick --workdir runs/lr_sweep_bn

Setup: MLP 6 x 100 ReLU (LeCun init), batch 60, plain SGD; the learning rates
of `sweep.lr` train together in one vmapped program with the seeds. A run is
*stable* at an LR when it did not diverge (no NaN/inf) and its final
training-subset accuracy exceeds 50%.
Expected: the largest stable LR is several times larger with BN, and without
BN the large LRs diverge or stall at chance.
"""

from bn.config import base

LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def get_config(mode: str = "quick"):
  c = base()
  c.name = "lr_sweep"
  c.seeds = (0, 1, 2, 3, 4) if mode == "full" else (0, 1, 2)
  c.model.update(name="mlp", widths=(100,) * 6, act="relu", init_std=None)
  c.norm.update(kind="batch", position="pre")
  c.optimizer.update(name="sgd", lr=0.1)
  c.sweep.lr = LRS
  steps = {"tiny": 40, "quick": 1000, "full": 10_000}[mode]
  c.train.update(steps=steps, batch_size=60, eval_every=steps // 4, checkpoint_every=steps, target_accuracy=0.8)
  if mode == "tiny":
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), train_eval_size=512)
    c.model.update(widths=(16,) * 6)
    c.sweep.lr = (0.1, 10.0, 1e4)
  return c


def conditions(mode: str = "quick"):
  return {"bn": {"norm.kind": "batch"}, "none": {"norm.kind": "none"}}
