"""C1's figure: Ioffe & Szegedy Fig. 1b/c on a run long enough that the drift is visible.

Command (one net; `bn reproduce` runs both into OUT/ioffe_long/{bn,none}/):

    bn train --config experiments/configs/ioffe_long.py:quick --config.norm.kind=none --workdir runs/fig1_none

Setup: the Ioffe MLP of `ioffe.py` (784-100-100-100-10 sigmoid, batch 60, SGD) at LR 0.1 and 0.5
(trained together), 12,000 steps (quick; the paper's 50,000 in --full), 2 seeds (5 in --full).
Probes every 600 steps (quick) record the 15/50/85th percentiles of unit 0's sigmoid input in every hidden
layer, on the fixed training probe batch in train mode and on 1,000 test examples in eval mode.
Expected (the paper): without BN the percentiles drift over tens of thousands of steps, and not
alike in every layer; with BN they stay closer to put. A figure only: no test reads this experiment.
Runtime on a 2-core CPU: quick ~70 s (2 seeds; 45 s measured at 8,000 steps), full ~12 min (estimated).
"""

from bn.config import base

STEPS = {"tiny": 60, "quick": 12_000, "full": 50_000}
EVERY = {"tiny": 20, "quick": 600, "full": 2500}


def get_config(mode: str = "quick"):
  c = base()
  c.name = "ioffe_long"
  c.seeds = tuple(range(5)) if mode == "full" else (0, 1)
  c.data.update(train_eval_size=2000)
  c.model.update(name="mlp", widths=(100, 100, 100), act="sigmoid", init_std=0.1)
  c.norm.update(kind="batch", position="pre", momentum=0.99)
  c.optimizer.update(name="sgd", lr=0.5)
  c.sweep.lr = (0.1, 0.5)
  c.train.update(steps=STEPS[mode], batch_size=60, eval_every=EVERY[mode], checkpoint_every=STEPS[mode] // 2)
  c.probes.update(every=EVERY[mode], batch_size=512, kinds=("act", "eval_act"), eval_batch_size=1000)
  if mode == "tiny":
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), train_eval_size=256)
    c.model.update(widths=(16, 16))
    c.probes.update(batch_size=64, eval_batch_size=64)
  return c


def conditions(mode: str = "quick"):
  return {"bn": {"norm.kind": "batch"}, "none": {"norm.kind": "none"}}
