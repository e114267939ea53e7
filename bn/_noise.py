"""Perturbations of a normalized output: Santurkar et al.'s noise and population BN's sampling noise.

Used by :func:`bn.norm.batch_norm` (no public API here). Pure and traceable; every
draw comes from the ``key`` the caller passes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from bn._moments import Layout, layout, real_dtype, static_number


_CHI2_EXACT_DF = 32  # up to this many degrees of freedom a chi-square draw is a sum of squared normals


def chi2(key, df: int, shape, dtype):
  """``chi2(df)`` draws for a static ``df >= 1``: exactly, as a sum of ``df`` squared normals, up
  to :data:`_CHI2_EXACT_DF`; above it by the Wilson-Hilferty cube of a normal,
  ``df (1 - 2/(9 df) + z sqrt(2/(9 df)))^3`` (quantile error below 1e-3 of the mean there), clipped
  at 0. Both are a few elementwise ops per draw; ``jax.random.chisquare`` (a rejection loop per
  element) made a population-noise step 10x slower than a population step on CPU."""
  if df <= _CHI2_EXACT_DF:
    z = jax.random.normal(key, (df,) + tuple(shape), dtype)
    return jnp.sum(lax.square(z), axis=0)
  c = 2.0 / (9.0 * df)
  z = jax.random.normal(key, shape, dtype)
  return df * lax.square(jnp.maximum(1.0 - c + z * math.sqrt(c), 0.0)) * jnp.maximum(1.0 - c + z * math.sqrt(c), 0.0)


def population_noise(key, u, lay: Layout, g: int, mask):
  """Each standardized value ``u`` as one member of a ghost batch: with ``n`` the
  (valid) values per feature in ``u``'s group of ``g`` examples, ``u`` joins
  ``n - 1`` synthetic i.i.d. ``N(0, 1)`` companions (drawn afresh for every
  value) and leaves as ``(u - m) / s``, ``m`` and ``s^2`` the mean and biased
  variance of the ``n`` values. This is the exact law of ``(x_i - mu_B) / sigma_B``
  (``sigma_B`` the biased std) for i.i.d. Gaussian ``x`` given ``u = (x_i - mu) / sigma``;
  for ``u ~ N(0, 1)`` it has mean 0 and variance 1, and always ``|y| <= sqrt(n - 1)``
  (``n = 2``: ``y = +-1``). Values of one group get independent companions, so the
  dependence between members of one ghost batch (e.g. that their outputs sum to 0)
  is not reproduced.

  Drawn from sufficient statistics: the companions' sum ``S = sqrt(n - 1) z``,
  ``z ~ N(0, 1)``, and their sum of squared deviations ``Q ~ chi2(n - 2)``
  (``Q = 0`` for ``n = 2``), independent; with ``d = u - m = ((n - 1) u - S) / n``,
  ``s^2 = d^2 / (n - 1) + Q / n`` (``Q`` by :func:`chi2`: exact up to 34 values per group, the
  Wilson-Hilferty approximation above). Fewer than 2 valid values: ``u`` unchanged.

  No gradient flows through the synthetic statistics ``m`` and ``s`` (as none flows
  through the population statistics): ``dy/du = 1 / s``."""
  pl = layout(u, lay.feature_axes, g, None)  # u's groups of g examples, as a ghost-batch view
  view, axes = pl.view_shape, pl.reduce_axes
  rdt = real_dtype(u.dtype)
  uv = u.reshape(view)
  k_z, k_q = jax.random.split(key)
  z = jax.random.normal(k_z, view, rdt)
  if mask is None:
    n = float(math.prod(view[a] for a in axes))
    q = jnp.zeros(view, rdt) if n <= 2 else chi2(k_q, int(n) - 2, view, rdt)
  else:
    count = jnp.sum(jnp.broadcast_to(mask, u.shape).reshape(view), axes, keepdims=True, dtype=rdt)
    df = jnp.broadcast_to(jnp.maximum(count - 2.0, 1.0), view)
    q = jnp.where(count > 2, jax.random.chisquare(k_q, df, view, rdt), 0.0)
    n = jnp.maximum(count, 2.0)  # groups with fewer than 2 valid values are restored below
  d = ((n - 1.0) * uv - jnp.sqrt(n - 1.0) * z) / n
  var = lax.square(d) / (n - 1.0) + q / n  # the n values' biased variance
  inv = lax.stop_gradient(lax.rsqrt(var + jnp.finfo(rdt).tiny))
  y = (lax.stop_gradient(d) + (uv - lax.stop_gradient(uv))) * inv  # the value d / s; the gradient 1 / s (m and s held fixed)
  if mask is not None:  # fewer than 2 valid values: no statistics to perturb
    y = jnp.where(count >= 2, y, uv)
  return y.reshape(u.shape)


def apply_noise(y, noise, key, bshape):
  """Santurkar et al.'s noise ``s * y + m`` (``noise`` a :class:`bn.norm.Noise`)."""
  dose = noise.dose
  if static_number(dose) == 0.0:
    return y
  rdt = real_dtype(y.dtype)
  (mlo, mhi), (slo, shi) = noise.mean_range, noise.scale_range
  h, std = noise.mean_halfwidth * dose, noise.scale_std * dose
  k_mu, k_sigma, k_m, k_s = jax.random.split(key, 4)
  unit_shape = bshape if noise.per_sample else ()
  value_shape = y.shape if noise.per_sample else bshape
  mu = jax.random.uniform(k_mu, unit_shape, rdt, mlo * dose, mhi * dose)
  sigma = jax.random.uniform(k_sigma, unit_shape, rdt, 1.0 + (slo - 1.0) * dose, 1.0 + (shi - 1.0) * dose)
  m = mu + h * jax.random.uniform(k_m, value_shape, rdt, -1.0, 1.0)
  s = sigma + std * jax.random.normal(k_s, value_shape, rdt)
  return y * s + m

