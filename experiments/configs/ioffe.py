"""The Ioffe & Szegedy (2015) MLP, probed: C1, C1', C2, C4 and the attribution claim read it.

Command (one condition; `bn reproduce` runs all of them into OUT/ioffe/<condition>/):

    bn train --config experiments/configs/ioffe.py:quick --config.norm.kind=batch --workdir runs/ioffe_bn

Setup (Ioffe & Szegedy Fig. 1, on Fashion-MNIST): MLP 784-100-100-100-10, sigmoid, the
normalizer before each sigmoid, init N(0, 0.1^2) (assumed), batch 60, plain SGD; BN running
statistics with momentum 0.99. Conditions (all paired by seed):

* `bn`, `none`: learning rates 0.125, 0.5, 2 and 8 trained together (C1's "each net at its best
  LR", chosen on 5,000 held-out training images); only the LR 0.5 runs are probed.
* `noisy_d{0.5,1,2,4}`: BN plus Santurkar et al.'s per-sample noise (their Alg. 1) at 0.5-4x
  their constants (dose 1 = the paper's), LR 0.5: C1' and its dose-response.
* `stopgrad`, `population`, `population_noise`, `frozen`: BN without the gradient through the
  batch statistics; normalizing with running statistics; the same plus noise matched to the
  statistics of a batch of 60 (Luo et al. 2019); BN with scale 1 and bias 0 frozen. LR 0.5.

Probes on a fixed batch of 240 training examples (a multiple of 60, so that population BN's
noise applies in the probes too), every 500 steps: the layer-input statistics of every unit
(noisy BN); for `bn` and `none` (LR 0.5) everything -- also eval-mode statistics
on 1000 test examples, weight norms and effective LR, gradient ICS (raw and at a matched
relative update size), the raw and relative-units landscape, the coupling of two layers'
updates and the normalized Hessian blocks. The attribution rows are not probed.

Evaluation after precise-BN recalibration on 2,000 training images (population BN: its running
statistics). Expected: BN reaches 75% test accuracy in fewer steps than no BN at each net's best LR
(a 3-seed pilot on other seeds: ~430 vs ~590 steps); BN's layer inputs move less; noisy BN
trains about as fast as BN although its inputs move more than without BN.
Runtime on a 2-core CPU: quick (10 seeds x 1,500 steps) 3-6 min (193-336 s measured); full (50,000
steps) ~4 h (estimated from the quick run's rate).
"""

from bn.config import base

STEPS = {"tiny": 40, "quick": 1500, "full": 50_000}
EVERY = {"tiny": 20, "quick": 500, "full": 2500}  # the same cadence for every probed condition (shifts compare intervals)
EVAL = {"tiny": 20, "quick": 100, "full": 500}
LRS = (0.125, 0.5, 2.0, 8.0)
DOSES = (0.5, 1.0, 2.0, 4.0)


def get_config(mode: str = "quick"):
  c = base()
  c.name = "ioffe"
  c.seeds = tuple(range(20)) if mode == "full" else tuple(range(10))
  # 5,000 training images held out (LRs are chosen on them); evaluations on a fixed half of the test set
  c.data.update(train_eval_size=1000, val_size=5000, test_eval_size=5000)
  c.model.update(name="mlp", widths=(100, 100, 100), act="sigmoid", init_std=0.1)
  c.norm.update(kind="batch", position="pre", momentum=0.99)
  c.optimizer.update(name="sgd", lr=0.5)
  c.train.update(steps=STEPS[mode], batch_size=60, eval_every=EVAL[mode], checkpoint_every=STEPS[mode] // 4, target_accuracy=0.75,
                 precise_bn=2000)
  c.probes.update(every=EVERY[mode], batch_size=240, kinds=("act",), lrs=(0.5,), eval_batch_size=1000, hessian_probes=4, rho=1e-2)
  if mode == "tiny":
    c.seeds = (0, 1, 2)
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), train_eval_size=256, val_size=256)
    c.model.update(widths=(16, 16))
    c.probes.update(batch_size=60, eval_batch_size=64, hessian_probes=1)
    c.train.update(precise_bn=256)
    c.train.update(target_accuracy=0.5)
  return c


def conditions(mode: str = "quick"):
  full = {"probes.kinds": ()}  # every probe
  none = {"probes.every": 0}  # the attribution rows need no probes
  out = {
      "bn": {"norm.kind": "batch", "sweep.lr": LRS, **full},
      "none": {"norm.kind": "none", "sweep.lr": LRS, **full},
  }
  for d in (DOSES if mode != "tiny" else (2.0,)):  # tiny: only the primary's dose
    out[f"noisy_d{d:g}"] = {"norm.kind": "noisy", "norm.noise.dose": d}  # layer-input statistics only
  # C1 "because": how far the drift moves its inputs, in eval mode as C1's stable part measures (eval_act)
  out["bn_drift1"] = {"norm.kind": "batch", "norm.drift": 1.0, "norm.drift_period": 200.0, "probes.kinds": ("act", "eval_act")}
  out["stopgrad"] = {"norm.kind": "batch", "norm.stats_gradient": False, **none}
  if mode == "tiny":  # tests: the plumbing of every claim, with as few compiled programs as possible
    return out
  out["population"] = {"norm.kind": "population", **none}
  out["population_noise"] = {"norm.kind": "population", "norm.population_noise": 60, **none}
  out["frozen"] = {"norm.kind": "batch", "norm.affine": False, **none}
  return out
