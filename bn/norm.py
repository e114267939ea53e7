"""Batch Normalization and its variants as pure functions with explicit state.

No Flax, no training, no files here: only the math. Every normalizer has the
same calling convention so models switch between them by name::

    y, state = normalizer(x, params, state, *, train, **options)

Conventions (they differ between libraries; stated once here):

* **Feature axis** ``axis=-1`` (channels last). Statistics reduce over every
  other axis: (N, C), (N, H, W, C) and (N, L, C) all work. ``axis`` may be a
  tuple of feature axes.
* **Momentum** follows Flax/Keras:
  ``running = momentum * running + (1 - momentum) * batch``.
  PyTorch's ``momentum=0.1`` is our ``momentum=0.9``. ``momentum=None`` means
  a cumulative (equal-weight) average over all updates since ``count`` was 0,
  which is what "precise BN" recalibration needs (see :func:`reset`).
* **Running variance** is the *biased* batch variance by default (Flax).
  ``unbiased=True`` stores ``var * n / (n - 1)`` like PyTorch (with ghost
  batches: the pooled within-ghost variance ``sum_g SS_g / sum_g (n_g - 1)``);
  normalization always uses the biased batch variance.
* **Variance estimator**: ``variance="shifted"`` (default) reads the data
  once: ``E[(x - K)^2] - E[x - K]^2`` with ``K`` a per-feature shift taken from
  the batch (its first value; no gradient flows through ``K``, and the
  derivatives are exact because the statistics do not depend on it). Its
  rounding error grows with ``((mean - K) / std)^2`` instead of
  ``(mean / std)^2``: as stable as two passes for large offsets, unless the
  first value is a far outlier. Under a mask it is computed in two passes (the
  same numbers as ``"two_pass"``). ``variance="two_pass"`` computes
  ``E[(x - E[x])^2]``; ``variance="fast"`` computes ``E[x^2] - E[x]^2`` (Flax's
  default; in float32 it cannot resolve e.g. std 1 at mean 1e4). ``"shifted"``
  and ``"fast"`` are clamped at 0.
* **Precision**: statistics are accumulated and stored in float32 even for
  bf16/fp16 inputs (float64 stays float64); the output has ``x``'s dtype unless
  ``dtype`` is given. Integer and bool inputs are promoted to float32 (as Flax
  does), so their output is float32.
* **Complex inputs** (as Flax): complex mean, real variance ``E[|x - mean|^2]``;
  the running mean becomes complex, the running variance stays real.
* **Normalization** ``y = (x - mean) * (scale * rsqrt(var + epsilon)) + bias``
  (the same operation order as Flax, so results agree to float rounding).

**Masks** (``mask=``, True = valid) select the values that enter the
statistics with ``jnp.where``: whatever sits at masked positions (NaN and inf
included) changes neither the statistics, nor the outputs at valid positions,
nor any gradient. Masked positions are normalized like the others when finite;
non-finite values there pass through unchanged.

**Too few values.** A variance needs two values per feature. With
``strict_batch=True`` (the default) a (ghost) batch with fewer than 2 values of
some feature is an error at trace time when that is known then (no mask, or a
concrete NumPy/Python mask). With a traced mask such a feature instead keeps
its running statistics (mean and variance unchanged) and is normalized with
them. ``strict_batch=False`` follows Flax: a single value gives variance 0
(the output is ``bias``) and is folded into the running statistics; only a
feature with *no* valid value keeps its running statistics and is normalized
with them (Flax returns NaN there). ``count`` increments when at least one
feature was updated (so with ``momentum=None`` a feature skipped in some call
is afterwards averaged as if it had taken part with its old value).

Batch statistics with ``mask`` and ``axis_name`` are merged by *count*:
devices holding different numbers of valid examples still give the exact
statistics of the global batch (Flax averages per-device means instead).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bn._moments import Layout, abs_sq, batch_statistics, canonical_axes, layout, lift, prepare_mask, real_dtype, running_update, to_view
from bn._noise import apply_noise, chi2, population_noise as _population_noise
from bn._options import (VARIANCES, BatchStats, BNOptions, BNParams, BNState, Noise, Renorm, _check_epsilon, _check_flag, _check_int,
                         _check_params, _check_shapes, _check_state, _check_training, _options, check_options)  # noqa: F401 -- re-exported

_canonical_axes, _chi2 = canonical_axes, chi2  # the names the adapters and tests import
for _t in (BatchStats, BNOptions, BNParams, BNState, Noise, Renorm):
  _t.__module__ = __name__  # defined in bn._options; their public home (repr, pickles, docs) is here
del _t

Array = jax.Array


def _feature_shape(num_features: int | Sequence[int]) -> tuple[int, ...]:
  if isinstance(num_features, int):
    return (num_features,)
  return tuple(int(n) for n in num_features)


def init(
    num_features: int | Sequence[int],
    *,
    dtype: Any = jnp.float32,
    use_scale: bool = True,
    use_bias: bool = True,
) -> tuple[BNParams, BNState]:
  """Returns ``(params, state)``: scale 1, bias 0; running mean 0, var 1, count 0.

  ``dtype`` is the parameters' dtype; running statistics are always float32."""
  shape = _feature_shape(num_features)
  params = BNParams(
      scale=jnp.ones(shape, dtype) if use_scale else None,
      bias=jnp.zeros(shape, dtype) if use_bias else None,
  )
  return params, init_state(shape)


def init_state(num_features: int | Sequence[int]) -> BNState:
  shape = _feature_shape(num_features)
  return BNState(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32), jnp.zeros((), jnp.int32))


def reset(state: BNState) -> BNState:
  """Fresh statistics of the same shape; with ``momentum=None`` the next updates
  form an exact equal-weight average ("precise BN" recalibration)."""
  return init_state(state.mean.shape)


# ----------------------------------------------------------------------------- dtypes


def _stats_dtype(x):
  return jnp.promote_types(x.dtype, jnp.float32)


def _out_dtype(x, dtype):
  """``dtype`` if given; else ``x``'s dtype when it is floating/complex, float32 for integers and bools (as Flax)."""
  if dtype is not None:
    return dtype
  return x.dtype if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.promote_types(x.dtype, jnp.float32)


# ----------------------------------------------------------------------------- normalization


def _normalize(x, mean, var, scale, epsilon):
  mul = lax.rsqrt(var + epsilon)
  if scale is not None:
    mul = mul * scale
  return (x - mean) * mul


def _train_normalize(x32, lay: Layout, mean_b, var_b, run_mean, run_var, scale, *, epsilon, renorm, population,
                     population_noise, key, mask, stats_gradient, reference=0):
  """The normalized (not yet shifted by ``bias``) training output, in x's shape."""
  if population:
    if population_noise is None:
      return _normalize(x32, run_mean, run_var, scale, epsilon)
    u = _normalize(x32, run_mean, run_var, None, epsilon)
    u = _population_noise(key, u, lay, population_noise, mask)
    return u if scale is None else u * scale
  if not stats_gradient:
    mean_b, var_b = lax.stop_gradient(mean_b), lax.stop_gradient(var_b)
  xs = to_view(x32, lay)
  s_scale = None if scale is None else lift(scale, lay)
  if renorm is None and population_noise is not None:  # reference statistics plus a ghost batch's noise, on the rows before the reference
    u = _normalize(xs, mean_b, var_b, None, epsilon).reshape(x32.shape)
    n = u.shape[0] - reference
    m = None if mask is None else (mask[:n] if mask.shape[0] == u.shape[0] else mask)
    u = jnp.concatenate([_population_noise(key, u[:n], lay, population_noise, m), u[n:]]) if n else u
    return u if scale is None else u * scale
  if renorm is None:
    return _normalize(xs, mean_b, var_b, s_scale, epsilon).reshape(x32.shape)
  rdt = real_dtype(x32.dtype)
  sigma_b = jnp.sqrt(var_b + epsilon)
  sigma = jnp.sqrt(lift(run_var, lay) + epsilon)
  r_max, d_max = jnp.asarray(renorm.r_max, rdt), jnp.asarray(renorm.d_max, rdt)
  r = lax.stop_gradient(jnp.clip(sigma_b / sigma, 1.0 / r_max, r_max))
  d = lax.stop_gradient(jnp.clip((mean_b - lift(run_mean, lay)) / sigma, -d_max, d_max))
  ys = (xs - mean_b) / sigma_b * r + d
  return (ys if s_scale is None else ys * s_scale).reshape(x32.shape)


def _affine_bias(y, params: BNParams, bshape):
  if params.bias is not None:
    return y + params.bias.reshape(bshape)
  return y


def _finish(y, x32, ok, out_dtype):
  """Masked non-finite inputs pass through; cast to the output dtype."""
  if ok is not None:
    y = jnp.where(ok, y, x32)
  return y.astype(out_dtype)


def reference_mask(x, reference: int, mask, mask_np, axis_name):
  """The statistics mask of ``reference=R``: the last ``R`` rows along axis 0 (and ``mask``, if given), with its
  concrete NumPy value when ``mask`` has one (or is None)."""
  if axis_name is not None:
    raise ValueError(f"reference={reference} takes its statistics from the last rows of this call's input; it does not "
                     f"reduce over axis_name={axis_name!r} (run it on one device, or drop reference).")
  n = x.shape[0] if x.ndim else 0
  if not 2 <= reference <= n:
    raise ValueError(f"reference={reference} needs at least that many rows along axis 0 (the input has {n}): append the "
                     "reference set to every training batch.")
  rows = (np.arange(n) >= n - reference).reshape((n,) + (1,) * (x.ndim - 1))
  if mask is None:
    return jnp.asarray(rows), rows
  return mask & rows, None if mask_np is None else (mask_np & rows)


def _mask_guard(x32, mask):
  """Where ``mask`` is False and ``x`` not finite, replace ``x`` by 0 (its output is
  ``x`` itself, see :func:`_finish`): no NaN/inf reaches the backward pass."""
  if mask is None:
    return x32, None
  ok = mask | jnp.isfinite(x32)
  return jnp.where(ok, x32, 0), ok


def batch_norm(
    x: Array,
    params: BNParams,
    state: BNState,
    *,
    train: bool,
    options: BNOptions | None = None,
    mask: Array | None = None,
    key: Array | None = None,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    dtype: Any = None,
    return_stats: bool = False,
    **option_keywords,
):
  """Batch Normalization (Ioffe & Szegedy 2015) and its research variants.

  With batch statistics ``mu_B, var_B`` of the features over every non-feature
  axis::

      y = (x - mu_B) * scale / sqrt(var_B + epsilon) + bias          (train)
      y = (x - mean) * scale / sqrt(var + epsilon) + bias            (eval)
      running <- momentum * running + (1 - momentum) * batch         (train)

  The options (every field of :class:`BNOptions`, with its defaults) are keywords, or one
  ``options=bn.BNOptions(...)`` value whose fields the keywords replace:
  ``batch_norm(x, p, s, train=True, ghost_batch_size=16)`` equals
  ``batch_norm(x, p, s, train=True, options=bn.BNOptions(ghost_batch_size=16))``.

  Args:
    x: input, features on ``axis`` (default last). Integer/bool inputs are
      promoted to float32; complex inputs get a complex mean and a real variance.
    params: :class:`BNParams` (``scale``/``bias`` may be None).
    state: :class:`BNState` of running statistics: floating ``mean``/``var`` of at
      least float32 (the storage; an update in bfloat16 or float16 would be lost to
      rounding or overflow) and an integer scalar ``count``.
    train: a Python bool. Use (and fold in) batch statistics; ``False``
      normalizes with the running statistics and returns ``state`` unchanged.
    options: a :class:`BNOptions`; keywords replace its fields.
    mask: boolean array of ``x``'s rank (or a scalar) broadcastable to ``x``: only True
      positions enter the statistics (values at False positions never matter, NaN
      included). A per-example mask of an (N, C) input has shape (N, 1): a mask of
      lower rank is refused, since (N,) would broadcast over the features.
    key: PRNG key for ``noise`` and ``population_noise`` (training only).
    axis_name, axis_index_groups: reduce statistics across a mapped axis
      (``vmap``/``shard_map``/``pmap``), merged by count. With ``ghost_batch_size``
      the normalization stays local and only the running update is global.
    dtype: output dtype (default ``x.dtype``; float32 for integer inputs).
    return_stats: also return the :class:`BatchStats` used (for probes).

  Options (keywords, or fields of ``options``):
    momentum: Flax convention (PyTorch 0.1 == 0.9 here); ``None`` = cumulative
      average (running = running + (batch - running) / (count + 1)).
    epsilon: added to the variance, > 0.
    axis: feature axis or axes.
    variance: ``"shifted"`` (one pass, ``E[(x-K)^2] - E[x-K]^2`` with ``K`` the
      first value of the batch: stable and fast), ``"two_pass"``
      (``E[(x - E[x])^2]``) or ``"fast"`` (``E[x^2] - E[x]^2``, Flax's default);
      clamped at 0.
    unbiased: store ``var * n / (n - 1)`` as running variance (PyTorch); with
      ghost batches the pooled ``sum_g SS_g / sum_g (n_g - 1)`` over the ghosts'
      sums of squared deviations ``SS_g`` and valid counts ``n_g``.
    ghost_batch_size: an int; normalize each chunk of this many examples along
      axis 0 with its own statistics (Hoffer et al. 2017); the running
      statistics are updated once from the count-pooled ghost statistics.
    renorm: :class:`Renorm` clip values for Batch Renormalization:
      ``y = (x - mu_B) / sigma_B * r + d`` with ``r = clip(sigma_B / sigma, 1/r_max, r_max)``,
      ``d = clip((mu_B - mean) / sigma, -d_max, d_max)`` (no gradient through r, d).
    noise: :class:`Noise` applied after the affine transform in training; needs ``key``.
    population: in training, normalize with the running statistics (as in
      eval) but still fold in the batch statistics: no batch-statistics noise.
    population_noise: with ``population=True`` (or ``reference``), an int ``g``: give the output
      the sampling noise of the statistics of a batch of ``g`` examples (Luo et
      al. 2019). Axis 0 splits into groups of ``g``; ``n`` = ``g`` times the
      values per example and feature (valid ones under a mask). Each value
      ``u = (x - mean) / sigma`` (``sigma^2 = var + epsilon``) is normalized as one
      member of a synthetic ghost batch of ``n`` values whose other ``n - 1``
      are fresh i.i.d. ``N(0, 1)`` draws: ``y = (u - m_B) / s_B`` with the
      batch's mean and biased std, drawn from sufficient statistics. Per value
      this is exactly the law of ghost BN's ``(x_i - mu_B) / sigma_B`` for
      i.i.d. Gaussian ``x`` given ``u`` (variance 1 for standard-normal ``u``;
      always ``|y| <= sqrt(n - 1)``); each value gets its own companions, so
      the dependence between the outputs of one ghost batch is not reproduced. Groups with fewer than 2
      valid values are left unperturbed. No gradient flows through the synthetic
      ``m_B`` and ``s_B`` (``dy/du = 1 / s_B``), as none flows through population
      statistics. Needs ``key``.
    stats_gradient: ``False`` treats ``mu_B`` and ``sigma_B`` as constants in the
      backward pass (the forward pass is unchanged).
    strict_batch: ``True``: fewer than 2 values of a feature in a (ghost) batch
      is an error (when known at trace time; under a traced mask such features
      keep and use their running statistics). ``False``: Flax's behaviour, a
      single value gives variance 0. See the module docstring.
    skip_nonfinite: ``True``: a feature whose batch statistics are not finite (a NaN or
      inf in the batch) keeps its running statistics (its output is still NaN).
      ``False`` (as Flax and PyTorch): one non-finite training batch poisons that
      feature's running statistics for good.
    reference: an int ``R`` (training only): the last ``R`` entries along axis 0 are a
      reference set (e.g. a fixed sample of the training set the caller appends to every
      batch); the statistics come from them alone (and ``mask``) and normalize every row,
      the gradient flowing through them, and the running statistics fold them in. With a
      large fixed reference this is BN without batch-statistics noise ("full-batch BN":
      no lag and no missing gradient, unlike ``population``); ``population_noise=g`` then
      adds the sampling noise of a batch of ``g`` on top, to the rows before the reference
      (which stay noise-free, so every layer's statistics do). Not with ghost batches, renorm,
      population mode or ``axis_name``.

  Returns:
    ``(y, new_state)`` or ``(y, new_state, batch_stats)`` with ``return_stats``;
    in eval ``batch_stats`` is the running statistics.
  """
  o = check_options(_options(options, option_keywords))
  train = _check_flag("train", train)
  _check_flag("return_stats", return_stats)
  _check_params(params, state, need_state=True)
  x = jnp.asarray(x)
  out_dtype = _out_dtype(x, dtype)
  lay = layout(x, o.axis, o.ghost_batch_size if train else None, axis_name if train else None)
  for name, arr in (("params.scale", params.scale), ("params.bias", params.bias), ("state.mean", state.mean), ("state.var", state.var)):
    _check_shapes(name, arr, lay.feature_shape)
  if train:
    _check_state(state)
  mask, mask_np = prepare_mask(mask, x)
  stats_mask, stats_np = (reference_mask(x, o.reference, mask, mask_np, axis_name) if train and o.reference is not None
                          else (mask, mask_np))
  x32 = x.astype(_stats_dtype(x))
  run_mean, run_var = state.mean.reshape(lay.bshape), state.var.reshape(lay.bshape)
  scale = None if params.scale is None else params.scale.reshape(lay.bshape)
  x_in, ok = _mask_guard(x32, mask)

  if not train:
    y = _affine_bias(_normalize(x_in, run_mean, run_var, scale, o.epsilon), params, lay.bshape)
    y = _finish(y, x32, ok, out_dtype)
    if return_stats:
      return y, state, BatchStats(state.mean, state.var, jnp.zeros((), jnp.float32))
    return y, state

  _check_training(x32, lay, stats_np, axis_name=axis_name, axis_index_groups=axis_index_groups, renorm=o.renorm, noise=o.noise,
                  population_noise=o.population_noise, key=key, strict_batch=o.strict_batch, reference=o.reference or 0)
  key_noise = key_pop = key
  if o.noise is not None and o.population_noise is not None:
    key_noise, key_pop = jax.random.split(key)

  mean_b, var_b, count_b, valid = batch_statistics(x_in, lay, stats_mask, run_mean, run_var, variance=o.variance,
                                                   axis_index_groups=axis_index_groups, strict_batch=o.strict_batch)
  y = _train_normalize(x_in, lay, mean_b, var_b, run_mean, run_var, scale, epsilon=o.epsilon, renorm=o.renorm,
                       population=o.population, population_noise=o.population_noise, key=key_pop, mask=mask,
                       stats_gradient=o.stats_gradient, reference=o.reference or 0)
  y = _affine_bias(y, params, lay.bshape)
  if o.noise is not None:
    y = apply_noise(y, o.noise, key_noise, lay.bshape)
  y = _finish(y, x32, ok, out_dtype)

  new_state, used = running_update(state, lay, mean_b, var_b, count_b, valid, momentum=o.momentum, unbiased=o.unbiased,
                                   axis_name=axis_name, axis_index_groups=axis_index_groups, skip_nonfinite=o.skip_nonfinite)
  return (y, new_state, BatchStats(*used)) if return_stats else (y, new_state)


# ----------------------------------------------------------------------------- comparison normalizers


def _per_example_norm(x, params, groups, epsilon, dtype):
  """Normalize each example over its non-batch axes, channels (last axis) split
  into ``groups``; per-channel affine. Float32 two-pass statistics."""
  out_dtype = _out_dtype(x, dtype)
  c = x.shape[-1]
  xg = x.astype(_stats_dtype(x)).reshape(x.shape[:-1] + (groups, c // groups))
  axes = tuple(a for a in range(1, xg.ndim) if a != xg.ndim - 2)
  mean = jnp.mean(xg, axes, keepdims=True)
  var = jnp.mean(abs_sq(xg - mean), axes, keepdims=True)
  y = ((xg - mean) * lax.rsqrt(var + epsilon)).reshape(x.shape)
  bshape = (1,) * (x.ndim - 1) + (c,)  # explicit: no implicit rank promotion
  if params.scale is not None:
    y = y * params.scale.reshape(bshape)
  if params.bias is not None:
    y = y + params.bias.reshape(bshape)
  return y.astype(out_dtype)


def _check_per_example(x, params, train, epsilon):
  _check_flag("train", train)
  _check_params(params, None, need_state=False)
  _check_epsilon(epsilon)
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"the input of shape {x.shape} needs a batch axis and a feature axis (rank >= 2).")
  _check_shapes("params.scale", params.scale, x.shape[-1:])
  _check_shapes("params.bias", params.bias, x.shape[-1:])
  return x


def layer_norm(x, params: BNParams, state=None, *, train: bool = True, epsilon: float = 1e-5, dtype=None):
  """Layer normalization (Ba et al. 2016): each example over all its non-batch
  axes (two-pass, float32 statistics); per-feature affine on the last axis.

  ``state`` passes through unchanged and ``train`` is accepted and ignored, so the
  call matches :func:`batch_norm`; any other keyword is a TypeError."""
  x = _check_per_example(x, params, train, epsilon)
  return _per_example_norm(x, params, 1, epsilon, dtype), state


def group_norm(x, params: BNParams, state=None, *, train: bool = True, num_groups: int = 32, epsilon: float = 1e-5,
               dtype=None):
  """Group normalization (Wu & He 2018): channels (last axis) split into
  ``num_groups`` groups; each example normalized per group over its spatial
  axes and the group's channels. ``num_groups=1`` is LayerNorm over (H, W, C);
  ``num_groups=C`` is InstanceNorm. ``state`` passes through unchanged,
  ``train`` is ignored; any other keyword is a TypeError."""
  x = _check_per_example(x, params, train, epsilon)
  c = x.shape[-1]
  num_groups = _check_int("num_groups", num_groups, 1)
  if c % num_groups:
    raise ValueError(f"num_groups={num_groups} does not divide the {c} channels; pick a divisor of {c}.")
  return _per_example_norm(x, params, num_groups, epsilon, dtype), state


def no_norm(x, params=None, state=None, *, train: bool = True):
  """Identity with the normalizer calling convention (the no-BN baseline);
  ``train`` is ignored, any other keyword is a TypeError."""
  _check_flag("train", train)
  return x, state


NORMALIZERS = {"batch": batch_norm, "layer": layer_norm, "group": group_norm, "none": no_norm}


def get(name: str):
  """Normalizer by name: one of ``batch``, ``layer``, ``group``, ``none``."""
  try:
    return NORMALIZERS[name]
  except KeyError:
    raise ValueError(f"unknown normalizer {name!r}; choose one of {sorted(NORMALIZERS)}.") from None
