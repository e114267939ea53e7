"""C1, C1', C2 (coupling), C4: the Ioffe MLP with BN, without, and with noisy BN, probed during training.

Command (one condition; `bn reproduce` runs all three and the report reads them):

    bn train --config experiments/configs/mlp_probed.py:quick --config.norm.kind=batch --workdir runs/mlp_bn

Setup: Ioffe & Szegedy Fig. 1 -- MLP 784-100-100-100-10, sigmoid, BN before the
sigmoid, init N(0, 0.1^2) (assumed), batch 60, plain SGD at LR 0.5 for every
condition (assumed; the paper gives none). Probes every `probes.every` steps on a
fixed batch of 512 training examples: layer-input percentiles and shift (C1),
gradient ICS (C1'), layer coupling (C2), landscape smoothness (C4).
Noisy BN: Santurkar et al.'s non-stationary noise after every BN layer.

Expected: BN reaches a given test accuracy in fewer steps than no BN; BN's
layer inputs move less (smaller Wasserstein shift); noisy BN trains nearly as
well as BN though its inputs move most; gradient ICS is not lower with BN;
BN's landscape is smoother (lower beta-smoothness, gradient predictiveness).
Quick: 3 seeds x 3000 steps (about 1-2 min on 2 cores); full: 5 seeds x 50,000 steps.
"""

from bn.config import base

STEPS = {"tiny": 60, "quick": 3000, "full": 50_000}
EVERY = {"tiny": 20, "quick": 250, "full": 2500}


def get_config(mode: str = "quick"):
  c = base()
  c.name = "mlp_probed"
  c.seeds = (0, 1, 2, 3, 4) if mode == "full" else (0, 1, 2)
  c.model.update(name="mlp", widths=(100, 100, 100), act="sigmoid", init_std=0.1)
  c.norm.update(kind="batch", position="pre", momentum=0.99)
  c.optimizer.update(name="sgd", lr=0.5)
  c.train.update(steps=STEPS[mode], batch_size=60, eval_every=EVERY[mode], checkpoint_every=EVERY[mode] * 4, target_accuracy=0.8)
  c.probes.update(every=EVERY[mode], batch_size=512)
  if mode == "tiny":
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), train_eval_size=512)
    c.model.update(widths=(16, 16, 16))
    c.probes.update(batch_size=64)
  return c


def conditions(mode: str = "quick"):
  return {"bn": {"norm.kind": "batch"}, "none": {"norm.kind": "none"}, "noisy": {"norm.kind": "noisy"}}
