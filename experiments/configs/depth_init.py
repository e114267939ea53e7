"""C6 (Yang et al. 2019): gradient norms per layer at initialization vs depth, with and without BN.

Command: part of `bn reproduce` (no training: one gradient per seed and depth).

Setup: MLPs of depth L in `depths`, width 100, tanh, LeCun-normal init, no skip
connections, BN before every tanh (or none); cross-entropy on one batch of 256
training examples in training mode. Measured per seed: the gradient norm of
every layer; summarized as log10(||grad layer 0|| / ||grad last hidden layer||).
Expected (mean-field theory of BN): with BN the ratio grows about linearly in L
(gradients explode exponentially with depth); without BN it stays near 0.
Runtime on a 2-core CPU: ~35 s quick (measured), ~1 min full.
"""

from bn.config import base

DEPTHS = {"tiny": (2, 4), "quick": (4, 8, 16, 32), "full": (4, 8, 16, 32, 48, 64)}


def get_config(mode: str = "quick"):
  c = base()
  c.name = "depth_init"
  c.seeds = tuple(range(20)) if mode == "full" else tuple(range(10))
  c.model.update(name="mlp", widths=(100,), act="tanh", init_std=None)
  c.norm.update(kind="batch", position="pre")
  c.probes.update(batch_size=256)
  c.depths = DEPTHS[mode]
  if mode == "tiny":
    c.data.update(source="synthetic", synthetic_shape=(8, 8, 1))
    c.seeds = (0, 1, 2)
    c.model.update(widths=(16,))
    c.probes.update(batch_size=32)
  return c


def conditions(mode: str = "quick"):
  return {"bn": {"norm.kind": "batch"}, "none": {"norm.kind": "none"}}
