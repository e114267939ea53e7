"""C3 (the seed's claim 3): do BN's noisy batch statistics regularize, and does it fade at large batch?

Command (one cell; `bn reproduce` runs the grid into OUT/c3_grid/<condition>/):

    bn train --config experiments/configs/c3_grid.py:quick --config.train.batch_size=256 --config.norm.kind=ghost \
        --config.norm.ghost_batch_size=8 --config.optimizer.lr=0.1 --workdir runs/c3_b256_g8

Setup: MLP 3 x 64 ReLU on a fixed subset of 2,000 training images (so that it overfits), SGD
momentum 0.9, every cell trained for the same number of **epochs** (20, quick), the LR scaled
as 0.025 * sqrt(B / 64) (Hoffer et al. 2017's square-root rule; linear scaling in --full).
Grid: total batch B in {64, 256, 1024} x statistics (ghost) batch g in {8, 32, B}, and no BN at every B.
At B = 64 also: full-batch BN (`norm.reference=512`: the statistics of the first 512 training images,
which ride along with every batch, the gradient flowing through them -- BN without batch-statistics
noise, lag or missing gradient) with and without the sampling noise of ghost-8 statistics on the batch's
rows (`norm.population_noise=8`, Luo et al. 2019's matched noise): the noise alone; and BN (g = B) with
weight decay 1e-4 / 1e-3 / 1e-2 (one swept condition) or dropout 0.1 / 0.3 / 0.5 after every hidden
layer: the standard regularizers "a little" is sized against (the best chosen on validation loss).
At B = 256 also population BN (normalize with running statistics in training; it does not fit the
training set here -- reported, nothing leans on it) and, for the attribution claim C7, BN without the
gradient through its statistics and BN with scale and bias frozen. Evaluation after precise-BN
recalibration on the 2,000 training images (ghost BN's running variance is biased by (g-1)/g).
At B = 1024 also ghost 64 and ghost 512 (the seed's "fades from 64 to 512" at a fixed total batch),
trained 200 epochs (quick; 400 full: 391 / 781 steps) and evaluated about 20 times, because the
20-epoch cells at B = 1024 (39 steps) are still improving at their last evaluation.
Every other cell is evaluated about 10 times; the analysis takes each run's test loss at the evaluation
with the lowest loss on 1,000 held-out training images (early stopping without the test set).
Expected by the claim: at a fixed B, test loss falls as g shrinks, ghost 64 regularizes more
than ghost 512, the matched noise alone lowers full-batch BN's test loss, and a tuned weight decay
or dropout does more than ghost 8 ("a little"). Runtime on a 2-core CPU: quick ~3-4 min (186 s quiet, 201 s loaded, measured in v3.1 ledgers), full ~12 min (estimated).
"""

import math

from bn.config import base

BATCHES = {"tiny": (16,), "quick": (64, 256, 1024), "full": (64, 128, 256, 512, 1024)}
GHOSTS = (8, 32)
EPOCHS = {"tiny": 4, "quick": 20, "full": 40}
FADE_EPOCHS = {"quick": 200, "full": 400}  # the fading cells (ghost 64 vs 512 at the largest B) train until they stop improving
BASE_LR = 0.025
REFERENCE = 512  # full-batch BN's reference set: the first 512 training images ride along with every batch
WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2)  # the tuned standard regularizers ("a little"): chosen on validation loss
DROPOUTS = (0.1, 0.3, 0.5)


def get_config(mode: str = "quick"):
  c = base()
  c.name = "c3_grid"
  c.seeds = tuple(range(10)) if mode != "tiny" else (0, 1, 2)
  c.data.update(train_size=2000, train_eval_size=2000, val_size=1000)  # early stopping on 1,000 held-out images
  c.model.update(name="mlp", widths=(64, 64, 64), act="relu", init_std=None, dropout=0.0)
  c.norm.update(kind="batch", position="pre", momentum=0.9)
  c.optimizer.update(name="momentum", lr=BASE_LR, momentum=0.9)
  c.train.update(batch_size=64, precise_bn=2000, target_accuracy=0.8)
  c.epochs = EPOCHS[mode]
  if mode == "tiny":
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), train_size=256, train_eval_size=256, val_size=128)
    c.model.update(widths=(16, 16))
    c.train.update(precise_bn=256)
  _schedule(c, 64)
  return c


def _schedule(c, batch: int, epochs: int | None = None, evals: int = 10):
  """Exactly ``epochs`` (default ``c.epochs``) epochs of the training subset (rounded to whole steps), about
  ``evals`` evaluations (the candidate early-stopping points)."""
  steps = max(1, round((epochs or c.epochs) * c.data.train_size / batch))
  c.train.update(batch_size=batch, steps=steps, eval_every=-(-steps // evals), checkpoint_every=steps)


def conditions(mode: str = "quick"):
  out = {}
  linear = mode == "full"
  for b in BATCHES[mode]:
    c = get_config(mode)
    _schedule(c, b)
    lr = BASE_LR * (b / 64 if linear else math.sqrt(b / 64))
    common = {"train.batch_size": b, "train.steps": c.train.steps, "train.eval_every": c.train.eval_every,
              "train.checkpoint_every": c.train.steps, "optimizer.lr": lr}
    for g in GHOSTS + (b,):
      if g > b or (g == b and g in GHOSTS and f"b{b}_g{g}" in out):
        continue
      out[f"b{b}_g{g}"] = {**common, "norm.kind": "batch" if g == b else "ghost", "norm.ghost_batch_size": 0 if g == b else g}
    out[f"b{b}_none"] = {**common, "norm.kind": "none"}
    if mode == "tiny":  # tests: the plumbing, with as few compiled programs as possible
      continue
    if b == BATCHES[mode][-1]:  # "fades from 64 to 512" at the largest B, trained FADE_EPOCHS (the 20-epoch cells still improve)
      f = get_config(mode)
      _schedule(f, b, FADE_EPOCHS[mode], evals=20)
      for g in (64, 512):
        out[f"b{b}_g{g}_long"] = {**common, "train.steps": f.train.steps, "train.eval_every": f.train.eval_every,
                                  "train.checkpoint_every": f.train.steps, "norm.kind": "ghost", "norm.ghost_batch_size": g}
    if b == BATCHES[mode][0]:  # at the smallest batch size: the noise alone, and standard regularizers to size it against
      out[f"b{b}_reference"] = {**common, "norm.reference": REFERENCE}
      out[f"b{b}_reference_noise8"] = {**common, "norm.reference": REFERENCE, "norm.population_noise": 8}
      out[f"b{b}_wd"] = {**common, "sweep.weight_decay": WEIGHT_DECAYS}
      for p in DROPOUTS:
        out[f"b{b}_dropout{p}"] = {**common, "model.dropout": p}
    if b == BATCHES[mode][len(BATCHES[mode]) // 2]:  # at the middle batch size: population BN next to C7's rows
      out[f"b{b}_population"] = {**common, "norm.kind": "population"}
      out[f"b{b}_stopgrad"] = {**common, "norm.kind": "batch", "norm.stats_gradient": False}
      out[f"b{b}_frozen"] = {**common, "norm.kind": "batch", "norm.affine": False}
  return out
