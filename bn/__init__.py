"""bn: Batch Normalization as pure JAX functions, and an instrument to test why it works.

    import bn
    params, state = bn.init(num_features)
    y, state = bn.batch_norm(x, params, state, train=True)

The Flax adapters live in ``bn.linen`` and ``bn.nnx`` (imported lazily, so the
pure core needs no Flax). ``bn.train_and_evaluate(config, workdir)`` trains as ``bn train``
does and ``bn.restore(workdir, run=i)`` loads a run back (:mod:`bn.api`; the ``[train]`` extra).
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


_LAZY = {"restore": "bn.api", "train_and_evaluate": "bn.api"}  # need the [train] extra: imported on first use


def __getattr__(name):
  import importlib

  if name in ("linen", "nnx"):
    return importlib.import_module(f"bn.{name}")
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'bn' has no attribute {name!r}")
