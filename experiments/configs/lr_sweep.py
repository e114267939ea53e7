"""C2' (Bjorck et al. 2018): is BN's benefit the larger learning rate it permits? An LR sweep of a deep ReLU MLP.

Command (BN; --config.norm.kind=none for the baseline):

    bn train --config experiments/configs/lr_sweep.py:quick --workdir runs/lr_sweep_bn

Setup: MLP 6 x 64 ReLU (LeCun init), batch 60, plain SGD, 1,000 steps (quick); the learning
rates of `sweep.lr` (0.03 ... 10, half-decades) train together with the 10 seeds in one program.
A run is *stable* when it did not diverge and ends above 50% training accuracy. Learning rates
are chosen on 5,000 held-out training images; evaluation after precise-BN recalibration.
Expected (Bjorck et al.): BN is stable at larger LRs; its best LR is larger than the no-BN net's;
at the no-BN net's best LR BN helps little, at its own best LR it beats no BN.
Runtime on a 2-core CPU: quick ~1 min (65 s measured), full ~20 min (estimated).
"""

from bn.config import base

LRS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def get_config(mode: str = "quick"):
  c = base()
  c.name = "lr_sweep"
  c.seeds = tuple(range(20)) if mode == "full" else tuple(range(10))
  c.data.update(train_eval_size=1000, val_size=5000)  # LRs are chosen on 5,000 held-out training images
  c.model.update(name="mlp", widths=(64,) * 6, act="relu", init_std=None)
  c.norm.update(kind="batch", position="pre", momentum=0.99)
  c.optimizer.update(name="sgd", lr=0.1)
  c.sweep.lr = LRS
  steps = {"tiny": 40, "quick": 1000, "full": 10_000}[mode]
  c.train.update(steps=steps, batch_size=60, eval_every=steps // 5, checkpoint_every=steps // 2, target_accuracy=0.8, precise_bn=2000)
  if mode == "tiny":
    c.seeds = (0, 1, 2)
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), train_eval_size=256, val_size=256)
    c.train.update(precise_bn=256)
    c.model.update(widths=(16,) * 6)
    c.sweep.lr = (0.1, 1.0, 1e4)
  return c


def conditions(mode: str = "quick"):
  return {"bn": {"norm.kind": "batch"}, "none": {"norm.kind": "none"}}
