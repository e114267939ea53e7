"""Ioffe & Szegedy (2015) Fig. 1: MLP 3 x 100 sigmoid, batch 60, 50,000 SGD steps, BN vs none.

Command (BN; add --config.norm.kind=none for the baseline):

    bn train --config experiments/configs/ioffe_mlp.py --workdir runs/ioffe_bn
    bn train --config experiments/configs/ioffe_mlp.py --config.norm.kind=none --workdir runs/ioffe_none

Data: Fashion-MNIST from the offline IDX files (the paper used MNIST:
--config.data.name=mnist once prepared with `bn data prepare mnist`).
Assumed (the paper does not say): plain SGD, LR 0.5 for both nets, init
N(0, 0.1^2), momentum 0.99 for the running statistics.

Expected on Fashion-MNIST: BN reaches ~85% test accuracy within ~2k steps and
ends near 88-89%; without BN the sigmoid net learns more slowly (lower accuracy
for the first several thousand steps) and ends a little lower. Runs at roughly
1-2k steps/s on a 2-core CPU (about 1 min per 50k-step run).
"""

from bn.config import base


def get_config():
  c = base()
  c.name = "ioffe_mlp"
  c.model.update(name="mlp", widths=(100, 100, 100), act="sigmoid", init_std=0.1)
  c.norm.update(kind="batch", position="pre")
  c.optimizer.update(name="sgd", lr=0.5)
  c.train.update(steps=50_000, batch_size=60, eval_every=1000, checkpoint_every=5000, target_accuracy=0.85)
  return c
