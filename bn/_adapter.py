"""What the Flax Linen and NNX BatchNorm adapters share: their attributes gathered into one
:class:`bn.norm.BNOptions`, and one call into the pure core.

Both adapters carry the same attribute names (those of ``flax.linen.BatchNorm`` plus
bn's options and an ``options`` attribute); :func:`layer_options` maps them onto
:class:`~bn.norm.BNOptions` and :func:`call_core` onto :func:`bn.norm.batch_norm`, so the
two layers cannot drift apart, and a new core option reaches both through ``options``
without a new attribute.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import jax.numpy as jnp
from flax.linen import dtypes

from bn.norm import BNOptions, BNParams, BNState, Renorm, batch_norm

# The adapters' own defaults where they differ from the core's: Flax's batch of one (variance 0).
DEFAULTS = BNOptions(strict_batch=False)
# Attributes whose value, when left at the adapter's default, comes from ``options`` (when given).
GATHERED = {"momentum": 0.99, "epsilon": 1e-5, "axis": -1, "ghost_batch_size": None, "noise": None, "population": False,
            "unbiased": False, "population_noise": None, "stats_gradient": True, "strict_batch": False}

_SOWING = contextvars.ContextVar("bn_sow_stats", default=False)


@contextlib.contextmanager
def sowing_stats():
  """Inside this context (while tracing), training calls of the Linen adapter sow the batch
  statistics they used into ``bn_stats`` whatever their ``sow_stats`` attribute says
  (:func:`bn.linen.recalibrate` and the probes use it)."""
  token = _SOWING.set(True)
  try:
    yield
  finally:
    _SOWING.reset(token)


def sow_requested(layer) -> bool:
  return bool(getattr(layer, "sow_stats", False)) or _SOWING.get()


def layer_options(layer, renorm=None) -> BNOptions:
  """The :class:`BNOptions` of a layer for one call.

  ``layer.options`` (a ``BNOptions``, or None) is the base; every attribute of :data:`GATHERED`
  that is *not* at the adapter's default replaces the base's field (without ``options``, every
  attribute is taken as it is, over :data:`DEFAULTS`). ``variance``: the ``variance`` attribute if
  set; else ``"two_pass"`` for ``use_fast_variance=False``; else the base's ``variance`` when
  ``options`` is given, Flax's ``"fast"`` when not. Batch Renorm: ``renorm`` given at call time
  (a schedule), else the ``r_max``/``d_max`` attributes (either one set turns it on), else the base's."""
  base = layer.options
  if base is not None and not isinstance(base, BNOptions):
    raise TypeError(f"options must be bn.BNOptions(...) or None, got {type(base).__name__}.")
  changes = {name: getattr(layer, name) for name, default in GATHERED.items()
             if base is None or getattr(layer, name) != default}
  if layer.variance is not None:
    changes["variance"] = layer.variance
  elif not layer.use_fast_variance:
    changes["variance"] = "two_pass"
  elif base is None:
    changes["variance"] = "fast"
  if renorm is not None:
    changes["renorm"] = Renorm(*renorm)
  elif layer.r_max is not None or layer.d_max is not None:
    changes["renorm"] = Renorm(1.0 if layer.r_max is None else layer.r_max, 0.0 if layer.d_max is None else layer.d_max)
  return (DEFAULTS if base is None else base)._replace(**changes)


def call_core(layer, x, scale, bias, state: BNState, *, train: bool, mask, axis_name, renorm, key, initializing: bool = False
              ) -> tuple[Any, BNState, Any]:
  """``batch_norm`` with the layer's options; returns ``(y, new_state, batch_stats)``.

  While a layer initializes, ghost batches, noise and ``strict_batch`` are off (any dummy
  input initializes it). Running statistics stored below float32 (Linen's
  ``force_float32_reductions=False`` with a 16-bit ``param_dtype``) are updated in float32
  and cast back to their stored dtype (as Flax stores them)."""
  o = layer_options(layer, renorm)
  if initializing:
    o = o._replace(ghost_batch_size=None, noise=None, population_noise=None, strict_batch=False)
  stored = (state.mean.dtype, state.var.dtype)
  wide = state._replace(mean=state.mean.astype(jnp.promote_types(stored[0], jnp.float32)),
                        var=state.var.astype(jnp.promote_types(stored[1], jnp.float32)))
  y, new, stats = batch_norm(
      x, BNParams(scale, bias), wide, train=train, options=o, mask=mask, key=key, axis_name=axis_name,
      axis_index_groups=layer.axis_index_groups, dtype=dtypes.canonicalize_dtype(x, scale, bias, dtype=layer.dtype),
      return_stats=True,
  )
  mean_dtype = new.mean.dtype if jnp.issubdtype(new.mean.dtype, jnp.complexfloating) else stored[0]
  return y, new._replace(mean=new.mean.astype(mean_dtype), var=new.var.astype(stored[1])), stats
