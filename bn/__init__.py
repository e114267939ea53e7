"""bn: Batch Normalization as pure JAX functions, and an instrument to test why it works.

    import bn
    params, state = bn.init(num_features)
    y, state = bn.batch_norm(x, params, state, train=True)

The Flax adapters live in ``bn.linen`` and ``bn.nnx`` (imported lazily, so the
pure core needs no Flax).
"""

from bn.norm import (
    BatchStats,
    BNOptions,
    BNParams,
    BNState,
    Noise,
    Renorm,
    batch_norm,
    get,
    group_norm,
    init,
    init_state,
    layer_norm,
    no_norm,
    reset,
)

__version__ = "0.1.0"

__all__ = [
    "BatchStats", "BNOptions", "BNParams", "BNState", "Noise", "Renorm", "batch_norm", "get", "group_norm",
    "init", "init_state", "layer_norm", "no_norm", "reset",
]


def __getattr__(name):
  if name in ("linen", "nnx"):
    import importlib

    return importlib.import_module(f"bn.{name}")
  raise AttributeError(f"module 'bn' has no attribute {name!r}")
