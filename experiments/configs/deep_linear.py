"""C1' (secondary): Santurkar et al.'s 25-layer deep linear network, gradient ICS with and without BN.

Command: part of `bn reproduce` (its own full-batch gradient-descent loop, no dataset):

    bn reproduce --quick --only deep_linear --out runs/ledger

Setup (Santurkar et al. 2018, §2.2): 25 linear layers of width 10, loss mean_i ||W25...W1 x_i - A x_i||^2
with A a random 10x10 matrix (entries N(0, 1/10)) and x_i ~ N(0, I), 256 examples in one full
batch, plain gradient descent; BN (training mode, full-batch statistics) after each of the
first 24 layers, or none. Assumed (the paper does not say): LeCun-normal init, 1,000 steps
(quick), and per seed an LR of a quarter of the no-BN net's stability edge at initialization
(`deep.lr_fraction=0.25` of 2 / lambda_max of its loss Hessian, by power iteration; the edge
spans 1e-4 to 1e-2 over seeds, so v2's fixed LR 0.003 was above it for some seeds and one of
them diverged). Both nets of a seed train at that LR; a pilot on seeds 0-9: 0 diverged. Per seed, every `deep.every` steps: Santurkar's gradient ICS of every layer
(1 - cos of its weight gradient before/after the earlier layers' update), under the actual
update and with every earlier layer's weights moving by rho = 1e-3 of their norm (matched).
Expected (the paper): BN *increases* gradient ICS here. Runtime: ~40 s on a 2-core CPU (quick and full).
"""

import ml_collections

from bn.config import base


def get_config(mode: str = "quick"):
  c = base()
  c.name = "deep_linear"
  c.seeds = tuple(range(10)) if mode != "tiny" else (0, 1)
  c.data.update(name="synthetic", source="synthetic", synthetic_shape=(10, 1, 1))  # unused: the runner draws its own data
  c.model.update(name="mlp", widths=(10,) * 24, act="linear", init_std=None)
  c.deep = ml_collections.ConfigDict(dict(
      depth=25, width=10, examples=256, lr_fraction=0.25, lr_fractions=(0.1, 0.25, 0.5), rho=1e-3,
      steps={"tiny": 20, "quick": 1000, "full": 5000}[mode], every={"tiny": 10, "quick": 100, "full": 250}[mode],
  ))
  if mode == "tiny":
    c.deep.update(depth=6, examples=64)
  return c


def conditions(mode: str = "quick"):
  return {"bn": {"norm.kind": "batch"}, "none": {"norm.kind": "none"}}
