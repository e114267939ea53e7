"""The Ioffe & Szegedy (2015) MLP, probed: C1, C1', C2, C4 and the attribution claim read it.

Command (one condition; `bn reproduce` runs all of them into OUT/ioffe/<condition>/):

    bn train --config experiments/configs/ioffe.py:quick --config.norm.kind=batch --workdir runs/ioffe_bn

Setup (Ioffe & Szegedy Fig. 1, on Fashion-MNIST): MLP 784-100-100-100-10, sigmoid, the
normalizer before each sigmoid, init N(0, 0.1^2) (assumed), batch 60, plain SGD; BN running
statistics with momentum 0.99. Conditions (all paired by seed):

* `bn`, `none`: learning rates 0.1, 0.5 and 2.0 trained together (C1's "each net at its best
  LR"); only the LR 0.5 runs are probed.
* `noisy_d{0.5,1,2,4}`: BN plus Santurkar et al.'s per-sample noise (their Alg. 1) at 0.5-4x
  their constants (dose 1 = the paper's), LR 0.5: C1' and its dose-response.
* `stopgrad`, `population`, `population_noise`, `frozen`: BN without the gradient through the
  batch statistics; normalizing with running statistics; the same plus noise matched to the
  statistics of a batch of 60 (Luo et al. 2019); BN with scale 1 and bias 0 frozen. LR 0.5.

Probes every `probes.every` steps on a fixed batch of 480 training examples (and 1000 test
examples in eval mode): layer-input statistics of every unit, weight norms and effective LR;
for `bn` and `none` also gradient ICS (raw and at a matched relative update size), the
raw and relative-units landscape, the coupling of two layers' updates and the normalized
Hessian blocks.

Expected: BN reaches 80% test accuracy in fewer steps than no BN at each net's best LR
(the seed's C1 pilot: ~440 vs ~760 steps at LR 0.5); BN's layer inputs move less; noisy BN
trains about as fast as BN although its inputs move more than without BN.
Runtime (quick, 10 seeds x 2,000 steps, 2-core CPU): see docs/ledger.md.
"""

from bn.config import base

STEPS = {"tiny": 60, "quick": 2000, "full": 50_000}
EVERY = {"tiny": 20, "quick": 200, "full": 2500}
EVAL = {"tiny": 20, "quick": 100, "full": 500}
LRS = (0.1, 0.5, 2.0)
DOSES = (0.5, 1.0, 2.0, 4.0)
CHEAP = ("act", "eval_act", "norms")


def get_config(mode: str = "quick"):
  c = base()
  c.name = "ioffe"
  c.seeds = tuple(range(20)) if mode == "full" else tuple(range(10))
  c.data.update(train_eval_size=2000)
  c.model.update(name="mlp", widths=(100, 100, 100), act="sigmoid", init_std=0.1)
  c.norm.update(kind="batch", position="pre", momentum=0.99)
  c.optimizer.update(name="sgd", lr=0.5)
  c.train.update(steps=STEPS[mode], batch_size=60, eval_every=EVAL[mode], checkpoint_every=STEPS[mode] // 4, target_accuracy=0.8)
  # probe batch: a multiple of 60, so that population BN's noise (groups of 60) applies in the probes too
  c.probes.update(every=EVERY[mode], batch_size=480, kinds=CHEAP, lrs=(0.5,), eval_batch_size=1000)
  if mode == "tiny":
    c.seeds = (0, 1, 2)
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), train_eval_size=256)
    c.model.update(widths=(16, 16, 16))
    c.probes.update(batch_size=60, eval_batch_size=64)
    c.train.update(target_accuracy=0.5)
  return c


def conditions(mode: str = "quick"):
  full = {"probes.kinds": ()}  # every probe
  out = {
      "bn": {"norm.kind": "batch", "sweep.lr": LRS, **full},
      "none": {"norm.kind": "none", "sweep.lr": LRS, **full},
  }
  for d in DOSES:
    out[f"noisy_d{d:g}"] = {"norm.kind": "noisy", "norm.noise.dose": d}
  out["stopgrad"] = {"norm.kind": "batch", "norm.stats_gradient": False}
  out["population"] = {"norm.kind": "population"}
  out["population_noise"] = {"norm.kind": "population", "norm.population_noise": 60}
  out["frozen"] = {"norm.kind": "batch", "norm.affine": False}
  return out
