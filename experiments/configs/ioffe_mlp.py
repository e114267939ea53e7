"""Ioffe & Szegedy (2015) Fig. 1: MLP 3 x 100 sigmoid, batch 60, 50,000 SGD steps, BN vs none.

Command (BN; add --config.norm.kind=none for the baseline):

    bn train --config experiments/configs/ioffe_mlp.py --workdir runs/ioffe_bn
    bn train --config experiments/configs/ioffe_mlp.py --config.norm.kind=none --workdir runs/ioffe_none

Data: Fashion-MNIST from the offline IDX files (the paper used MNIST:
--config.data.name=mnist once prepared with `bn data prepare mnist`).
Assumed (the paper does not say): plain SGD, LR 0.5 for both nets, init
N(0, 0.1^2), momentum 0.99 for the running statistics.

Expected on Fashion-MNIST (measured, seed 0, 2-core CPU, 2026-11-26): BN reaches
85% test accuracy at ~2.8k steps and ends at 87.8% (best 88.9%); without BN the
sigmoid net learns more slowly (78.4% vs 81.8% at step 1000; 85% at ~4.4k steps)
and ends a little lower, 87.2% (best 88.2%). Both fit the training set to ~97%.
About 1,500 steps/s: ~35 s per 50k-step run, compile ~1.5 s.
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
