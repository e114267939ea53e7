"""C1' (secondary): Santurkar et al.'s 25-layer deep linear network, gradient ICS with and without BN,
at three learning rates below the no-BN net's stability edge.

Command: part of `bn reproduce` (its own full-batch gradient-descent loop, no dataset):

    bn reproduce --quick --only deep_linear --out runs/ledger

Setup (Santurkar et al. 2018, §2.2): 25 linear layers of width 10, loss mean_i ||W25...W1 x_i - A x_i||^2
with A a random 10x10 matrix (entries N(0, 1/10)) and x_i ~ N(0, I), 256 examples in one full
batch, plain gradient descent; BN (training mode, full-batch statistics) after each of the
first 24 layers, or none. Assumed (the paper does not say): LeCun-normal init, 1,000 steps
(quick), and per seed LRs at stated fractions of the no-BN net's stability edge at
initialization (`deep.lr_fractions=(0.1, 0.25, 0.5)` of 2 / lambda_max of its loss Hessian, by
power iteration; the edge spans 1e-4 to 1e-2 over seeds, so v2's fixed LR 0.003 was above it for
some seeds and one of them diverged). Both nets of a seed train at the same LRs, all three
fractions in one runner call (one batch of fractions x seeds); `deep.lr_fraction=0.25` is the run
the original secondary test reads (the top level of results.json), the other two get a row each.
Per seed and fraction, every `deep.every` steps: Santurkar's gradient ICS of every layer
(1 - cos of its weight gradient before/after the earlier layers' update), under the actual
update and with every earlier layer's weights moving by rho = 1e-3 of their norm (matched).
Expected (the paper): BN *increases* gradient ICS here. Pilot (quick, seeds 0-9, `--seed-base 0`):
0 of 10 runs diverged at any fraction, BN or none (every final loss below the initial); BN - none,
log10 (1 - cos) matched, mean over points after step 0 and layers k >= 1: +1.85 [+1.34, +2.36]
decades at 0.1, +1.50 [+0.96, +2.04] at 0.25, +1.10 [+0.49, +1.71] at 0.5 (the edge on these
seeds: 1.4e-4 to 1.2e-2). Runtime (quick): 273 s for both conditions on the shared 2-core CPU
under load ~8, where the one-fraction experiment took 134-148 s (1.8-2x: the compile time is
fixed, the training triples); unloaded, expect ~80-100 s (the one-fraction one: 44-50 s).
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
