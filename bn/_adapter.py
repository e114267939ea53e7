"""What the Flax Linen and NNX BatchNorm adapters share: one call into the pure core.

Both adapters carry the same attribute names (those of ``flax.linen.BatchNorm`` plus
bn's options); this maps them onto :func:`bn.norm.batch_norm`, so the two layers
cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from flax.linen import dtypes

from bn.norm import BNParams, BNState, Renorm, batch_norm


def renorm_clips(layer, renorm) -> Renorm | None:
  """Clip values for this call: ``renorm`` given at call time (a schedule), else the layer's
  ``r_max``/``d_max`` (either one set turns Batch Renorm on), else None."""
  if renorm is not None:
    return Renorm(*renorm)
  if layer.r_max is None and layer.d_max is None:
    return None
  return Renorm(1.0 if layer.r_max is None else layer.r_max, 0.0 if layer.d_max is None else layer.d_max)


def call_core(layer, x, scale, bias, state: BNState, *, train: bool, mask, axis_name, ghost_batch_size, renorm, noise,
              population_noise, key, strict_batch: bool) -> tuple[Any, BNState, Any]:
  """``batch_norm`` with the layer's settings; returns ``(y, new_state, batch_stats)``.

  The variance estimator follows Flax's flag (``use_fast_variance``: ``"fast"``,
  else ``"two_pass"``), so the numbers agree with Flax's to float rounding."""
  return batch_norm(
      x, BNParams(scale, bias), state,
      train=train,
      momentum=layer.momentum,
      epsilon=layer.epsilon,
      axis=layer.axis,
      variance="fast" if layer.use_fast_variance else "two_pass",
      unbiased=layer.unbiased,
      mask=mask,
      axis_name=axis_name,
      axis_index_groups=layer.axis_index_groups,
      ghost_batch_size=ghost_batch_size,
      renorm=renorm_clips(layer, renorm),
      noise=noise,
      key=key,
      population=layer.population,
      population_noise=population_noise,
      stats_gradient=layer.stats_gradient,
      strict_batch=strict_batch,
      dtype=dtypes.canonicalize_dtype(x, scale, bias, dtype=layer.dtype),
      return_stats=True,
  )
