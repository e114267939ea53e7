"""C2' and C4 (secondary): weight decay, weight norms and the effective learning rate (BN's scale invariance).

Command (BN; --config.norm.kind=none for the baseline):

    bn train --config experiments/configs/wd_sweep.py:quick --workdir runs/wd_bn

Setup: the Ioffe MLP of `ioffe.py` (sigmoid, batch 60, SGD LR 0.5), weight decay 0, 1e-4, 1e-3
and 1e-2 trained together with the seeds in one program (coupled L2), 1,000 steps (quick). Probes
at the start and the end record each layer's weight norm ||W_k|| and effective LR lr / ||W_k||^2 (van
Laarhoven 2017; Hoffer et al. 2018; Li & Arora 2019).
Expected: without weight decay the BN layers' weights grow and their effective LR falls; weight
decay holds ||W|| down. The report asks whether BN's advantage at a fixed nominal LR goes with a
different effective LR. Runtime on a 2-core CPU: quick ~40 s (measured), full ~7 min (estimated).
"""

from bn.config import base

WDS = (0.0, 1e-4, 1e-3, 1e-2)


def get_config(mode: str = "quick"):
  c = base()
  c.name = "wd_sweep"
  c.seeds = tuple(range(10)) if mode != "tiny" else (0, 1, 2)
  c.data.update(train_eval_size=1000)
  c.model.update(name="mlp", widths=(100, 100, 100), act="sigmoid", init_std=0.1)
  c.norm.update(kind="batch", position="pre", momentum=0.99)
  c.optimizer.update(name="sgd", lr=0.5)
  c.sweep.weight_decay = WDS
  steps = {"tiny": 40, "quick": 1000, "full": 10_000}[mode]
  c.train.update(steps=steps, batch_size=60, eval_every=steps // 2, checkpoint_every=steps, target_accuracy=0.8)
  c.probes.update(every=steps, batch_size=240, kinds=("norms",))
  if mode == "tiny":
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), train_eval_size=256)
    c.model.update(widths=(16, 16))
    c.probes.update(batch_size=64)
  return c


def conditions(mode: str = "quick"):
  return {"bn": {"norm.kind": "batch"}, "none": {"norm.kind": "none"}}
