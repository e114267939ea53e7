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

import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array


class BNParams(NamedTuple):
  """Learned affine parameters ``scale`` (gamma) and ``bias`` (beta); either may be None."""

  scale: Array | None
  bias: Array | None


class BNState(NamedTuple):
  """Running statistics: ``mean``, (biased unless ``unbiased=True``) ``var``, and
  ``count``, the number of training updates folded in (int32 scalar)."""

  mean: Array
  var: Array
  count: Array


class BatchStats(NamedTuple):
  """The batch statistics a call used, averaged over ghost batches and devices.

  ``count`` is the number of (valid) elements per feature behind them (per
  ghost batch, averaged over features). Features without usable statistics
  (see "Too few values" in the module docstring) report the running statistics."""

  mean: Array
  var: Array
  count: Array


class Renorm(NamedTuple):
  """Batch Renormalization clip values (Ioffe 2017, arXiv 1702.03275).

  Pass arrays (or Python floats) -- as arrays, a schedule may change them every
  step without recompiling. ``r_max=1, d_max=0`` is plain batch norm;
  ``r_max >= 1`` and ``d_max >= 0`` (checked when concrete)."""

  r_max: Any
  d_max: Any


class Noise(NamedTuple):
  """Noisy BN (Santurkar et al. 2018, arXiv 1805.11604, App. A.2.1, Alg. 1).

  At every training call, for each unit (feature) ``j``: ``mu_j ~ U(mean_range)``
  and ``sigma_j ~ U(scale_range)``; then for each sample ``i`` (each element of
  ``x`` along the non-feature axes): ``m_ij ~ U(mu_j - mean_halfwidth, mu_j + mean_halfwidth)``
  and ``s_ij ~ N(sigma_j, scale_std)``; the output is ``s * y + m`` (after the
  affine transform). The defaults are the paper's constants
  ``n_mu = 0.5, n_sigma = 1.25, r_mu = r_sigma = 0.1``.

  ``per_sample=False`` is the earlier form: ``mu`` and ``sigma`` one scalar per
  layer, ``m`` and ``s`` one value per unit, shared by every sample of the batch.

  ``dose`` scales every deviation from the identity: the mean range by ``dose``,
  the scale range to ``1 + (scale_range - 1) * dose``, the halfwidth and the std
  by ``dose``; ``dose=0`` is exactly no noise (it may be an array, for schedules)."""

  mean_range: tuple[float, float] = (-0.5, 0.5)
  scale_range: tuple[float, float] = (1.0, 1.25)
  mean_halfwidth: float = 0.1
  scale_std: float = 0.1
  per_sample: bool = True
  dose: float = 1.0


VARIANCES = ("shifted", "two_pass", "fast")


# ----------------------------------------------------------------------------- init


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


# ----------------------------------------------------------------------------- checks


def _canonical_axes(ndim: int, axis) -> tuple[int, ...]:
  axes = axis if isinstance(axis, (tuple, list)) else (axis,)
  out = []
  for a in axes:
    if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)):
      raise TypeError(f"axis={axis!r} must be an int or a tuple of ints (the feature axes).")
    if not -ndim <= a < ndim:
      raise ValueError(f"feature axis {a} is out of range for an input of rank {ndim}; pass axis= within [-{ndim}, {ndim}).")
    out.append(int(a) % ndim)
  return tuple(sorted(set(out)))


def _is_bool(v) -> bool:
  return isinstance(v, (bool, np.bool_))


def _static_number(v) -> float | None:
  """``float(v)`` for a concrete Python/NumPy real number (bools excluded), else None."""
  if _is_bool(v):
    return None
  if isinstance(v, (int, float, np.integer, np.floating)):
    return float(v)
  if isinstance(v, np.ndarray) and v.ndim == 0 and np.issubdtype(v.dtype, np.number) and not np.iscomplexobj(v):
    return float(v)
  return None


def _check_flag(name: str, v) -> bool:
  if not _is_bool(v):
    raise TypeError(f"{name}={v!r} must be a Python bool (True or False); a traced value cannot choose the code path.")
  return bool(v)


def _check_int(name: str, v, minimum: int) -> int:
  if _is_bool(v) or not isinstance(v, (int, np.integer)):
    raise TypeError(f"{name}={v!r} must be an int (a number of examples), e.g. {name}=16.")
  if v < minimum:
    raise ValueError(f"{name}={v} must be >= {minimum}.")
  return int(v)


def _check_momentum(momentum):
  if momentum is None:
    return
  if _is_bool(momentum) or (hasattr(momentum, "dtype") and jnp.issubdtype(momentum.dtype, jnp.bool_)):
    raise TypeError(f"momentum={momentum!r} is a bool; pass a number in [0, 1) such as 0.99 (Flax convention), or None.")
  if isinstance(momentum, str):
    raise TypeError(f"momentum={momentum!r} must be a number in [0, 1) or None.")
  m = _static_number(momentum)
  if m is not None and not 0.0 <= m < 1.0:
    raise ValueError(
        f"momentum={momentum} is outside [0, 1). bn uses the Flax convention "
        "running = momentum * running + (1 - momentum) * batch; PyTorch's momentum=0.1 is momentum=0.9 here."
    )


def _check_epsilon(epsilon):
  if _is_bool(epsilon) or isinstance(epsilon, str):
    raise TypeError(f"epsilon={epsilon!r} must be a positive number, e.g. epsilon=1e-5.")
  e = _static_number(epsilon)
  if e is not None and not e > 0:
    raise ValueError(f"epsilon={epsilon} must be > 0 (it keeps rsqrt(var + epsilon) finite); e.g. epsilon=1e-5.")


def _check_params(params, state, *, need_state: bool):
  if not isinstance(params, BNParams):
    raise TypeError(
        f"params must be bn.BNParams(scale, bias) (either may be None), got {type(params).__name__}; "
        "make them with bn.init(num_features)."
    )
  if need_state and not isinstance(state, BNState):
    raise TypeError(
        f"state must be bn.BNState(mean, var, count), got {type(state).__name__}; make it with bn.init_state(num_features)."
    )


def _check_renorm(renorm):
  if renorm is None:
    return
  if not isinstance(renorm, Renorm):
    raise TypeError(f"renorm must be bn.Renorm(r_max, d_max), got {type(renorm).__name__}.")
  r, d = _static_number(renorm.r_max), _static_number(renorm.d_max)
  if r is not None and r < 1.0:
    raise ValueError(
        f"Renorm(r_max={renorm.r_max}) must be >= 1: r is clipped to [1/r_max, r_max] (r_max=1 turns the scale correction off)."
    )
  if d is not None and d < 0.0:
    raise ValueError(f"Renorm(d_max={renorm.d_max}) must be >= 0: d is clipped to [-d_max, d_max] (d_max=0 turns the shift correction off).")


def _check_noise(noise):
  if noise is None:
    return
  if not isinstance(noise, Noise):
    raise TypeError(f"noise must be bn.Noise(...), got {type(noise).__name__}.")
  for name in ("mean_halfwidth", "scale_std", "dose"):
    v = _static_number(getattr(noise, name))
    if v is not None and v < 0:
      raise ValueError(f"Noise({name}={getattr(noise, name)}) must be >= 0.")
  _check_flag("Noise.per_sample", noise.per_sample)


def _check_variance(variance):
  if variance not in VARIANCES:
    raise ValueError(f"variance={variance!r} is not one of {VARIANCES}.")


def _check_axis_name(axis_name):
  if axis_name is None:
    return
  try:
    lax.psum(1, axis_name)
  except NameError as e:
    raise ValueError(
        f"axis_name={axis_name!r} is not bound: cross-device statistics need the call to run inside "
        f"jax.vmap(..., axis_name={axis_name!r}), shard_map over a mesh axis {axis_name!r}, or pmap. "
        "Outside such a context pass axis_name=None."
    ) from e


def _check_shapes(name: str, arr, feature_shape):
  if arr is not None and tuple(arr.shape) != tuple(feature_shape):
    raise ValueError(
        f"{name} has shape {tuple(arr.shape)} but the input's feature axes have shape {tuple(feature_shape)}; "
        f"create params/state with bn.init({feature_shape if len(feature_shape) > 1 else feature_shape[0]}) "
        "or pass the right axis=."
    )


def _stats_dtype(x):
  return jnp.promote_types(x.dtype, jnp.float32)


def _out_dtype(x, dtype):
  """``dtype`` if given; else ``x``'s dtype when it is floating/complex, float32 for integers and bools (as Flax)."""
  if dtype is not None:
    return dtype
  return x.dtype if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.promote_types(x.dtype, jnp.float32)


def _real_dtype(dt):
  return jnp.finfo(dt).dtype


def _abs_sq(x):
  if jnp.iscomplexobj(x):
    return lax.square(lax.real(x)) + lax.square(lax.imag(x))
  return lax.square(x)


def _is_traced(v) -> bool:
  return isinstance(v, jax.core.Tracer)


def _check_options(train, params, state, *, momentum, epsilon, variance, renorm, noise, ghost_batch_size, population,
                   population_noise, flags):
  """Checks every argument that needs no input; returns ``(train, ghost_batch_size, population_noise)``."""
  train = _check_flag("train", train)
  for name, flag in flags.items():
    _check_flag(name, flag)
  _check_params(params, state, need_state=True)
  _check_momentum(momentum)
  _check_epsilon(epsilon)
  _check_variance(variance)
  _check_renorm(renorm)
  _check_noise(noise)
  if ghost_batch_size is not None:
    ghost_batch_size = _check_int("ghost_batch_size", ghost_batch_size, 1)
  if population_noise is not None:
    population_noise = _check_int("population_noise", population_noise, 1)
    if not population:
      raise ValueError(
          f"population_noise={population_noise} perturbs population-mode normalization: it needs population=True."
      )
  return train, ghost_batch_size, population_noise


# ----------------------------------------------------------------------------- the call's layout


class _Layout(NamedTuple):
  """Static facts of one call: where the features are and how statistics group."""

  feature_axes: tuple[int, ...]
  feature_shape: tuple[int, ...]
  bshape: tuple[int, ...]  # feature sizes on the feature axes, 1 elsewhere (x's rank)
  ghost: int | None  # ghost batch size (statistics per chunk of axis 0) or None
  view_shape: tuple[int, ...]  # x's shape, with axis 0 split into (ghosts, ghost) when ghost is set
  reduce_axes: tuple[int, ...]  # the statistics' axes in the view
  local_axis: str | None  # the axis the statistics are merged over (None with ghosts: local)


def _layout(x, axis, ghost_batch_size, axis_name) -> _Layout:
  feature_axes = _canonical_axes(x.ndim, axis)
  feature_shape = tuple(x.shape[a] for a in feature_axes)
  bshape = tuple(x.shape[a] if a in feature_axes else 1 for a in range(x.ndim))
  if ghost_batch_size is None:
    reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
    return _Layout(feature_axes, feature_shape, bshape, None, tuple(x.shape), reduce_axes, axis_name)
  g = _group_size("ghost_batch_size", ghost_batch_size, x, feature_axes)
  view_shape = (x.shape[0] // g, g) + tuple(x.shape[1:])
  reduce_axes = tuple(a for a in range(1, len(view_shape)) if a - 1 not in feature_axes)
  return _Layout(feature_axes, feature_shape, bshape, g, view_shape, reduce_axes, None)


def _group_size(name, g, x, feature_axes) -> int:
  """Checks a size ``g`` that splits the batch axis 0 into groups (ghost batches, noise groups)."""
  n = x.shape[0]
  if 0 in feature_axes:
    raise ValueError(f"{name} splits axis 0, the batch axis, but axis 0 is a feature axis; use a channels-last axis=.")
  if g < 1 or n % g:
    raise ValueError(
        f"{name}={g} does not divide the batch of {n} examples; "
        f"choose a {name.replace('_', ' ')} that divides the (per-device) batch size."
    )
  return g


def _lift(t, lay: _Layout):
  """A (running statistic / parameter) array of shape ``bshape`` into the ghost view's rank."""
  return t if lay.ghost is None else t[None]


def _to_view(t, lay: _Layout):
  return t if lay.ghost is None else t.reshape(lay.view_shape)


def _prepare_mask(mask, x):
  """``mask`` as a bool array broadcastable to ``x`` (checked), plus its concrete NumPy value if it has one."""
  if mask is None:
    return None, None
  concrete = None
  if not _is_traced(mask):
    concrete = np.asarray(mask).astype(bool)
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    mask = mask != 0
  try:
    jnp.broadcast_shapes(mask.shape, x.shape)
  except ValueError:
    raise ValueError(
        f"mask of shape {mask.shape} does not broadcast to the input shape {x.shape}; "
        f"give a boolean mask such as shape {x.shape[:1] + (1,) * (x.ndim - 1)}."
    ) from None
  if mask.ndim != x.ndim:  # explicit rank (no implicit rank promotion)
    mask = mask.reshape((1,) * (x.ndim - mask.ndim) + mask.shape)
    if concrete is not None:
      concrete = concrete.reshape(mask.shape)
  return mask, concrete


def _check_counts(x, lay: _Layout, mask_np, strict: bool, axis_index_groups):
  """Trace-time checks of the number of values per feature in each (ghost) batch."""
  per_group = math.prod(lay.view_shape[a] for a in lay.reduce_axes)
  what = f"a ghost batch of {lay.ghost}" if lay.ghost is not None else "a training batch of one example"
  if math.prod(x.shape[a] for a in range(x.ndim) if a not in lay.feature_axes) == 0:
    raise ValueError(
        f"the training batch is empty: the input of shape {x.shape} has no values along the reduced axes; "
        "give at least 2 examples (or call with train=False)."
    )
  if not strict:
    return
  devices = 1
  if lay.local_axis is not None:
    devices = lax.psum(1, lay.local_axis, axis_index_groups=axis_index_groups)
  if mask_np is None:
    if per_group * devices < 2:
      raise ValueError(
          f"cannot estimate a variance from {what} (1 value per feature); use a batch (or ghost batch) of at least 2, "
          "or train=False to normalize with the running statistics (or strict_batch=False for Flax's variance 0)."
      )
    return
  if lay.local_axis is not None:
    return  # the valid count is the global one, known only at run time
  counts = np.broadcast_to(mask_np, x.shape).reshape(lay.view_shape).sum(lay.reduce_axes)
  fewest = int(counts.min()) if counts.size else 2
  if fewest < 2:
    where = f"a ghost batch of {lay.ghost}" if lay.ghost is not None else "the batch"
    raise ValueError(
        f"the mask leaves {int((counts < 2).sum())} feature(s) of {where} with fewer than 2 valid values "
        f"(fewest: {fewest}); no variance can be estimated from them. Give every feature at least 2 valid values "
        "per (ghost) batch, or pass strict_batch=False (Flax's behaviour: variance 0 for a single value; "
        "features without any valid value keep their running statistics)."
    )


def _check_training(x32, lay: _Layout, mask_np, *, axis_name, axis_index_groups, renorm, noise, population_noise, key,
                    strict_batch):
  """Trace-time checks of a training call against its input."""
  _check_axis_name(axis_name)
  if jnp.iscomplexobj(x32) and (renorm is not None or population_noise is not None):
    raise ValueError("complex inputs support plain, ghost, masked, noisy and population BN; not renorm= or population_noise=.")
  if (noise is not None or population_noise is not None) and key is None:
    what = "noise=" if noise is not None else "population_noise="
    raise ValueError(f"{what} needs a PRNG key: pass key=jax.random.key(...) (a fresh one each step).")
  _check_counts(x32, lay, mask_np, strict_batch, axis_index_groups)
  if population_noise is not None:
    _group_size("population_noise", population_noise, x32, lay.feature_axes)
    per_example = math.prod(x32.shape[a] for a in range(1, x32.ndim) if a not in lay.feature_axes)
    if population_noise * per_example < 2:
      raise ValueError(
          f"population_noise={population_noise} gives groups of {population_noise * per_example} value(s) per feature; "
          "the noise of a variance estimate needs at least 2 (a larger population_noise)."
      )


# ----------------------------------------------------------------------------- statistics


def _pilot(xs, reduce_axes):
  """Per-feature shift ``K`` of the one-pass estimator: the first value of each
  (ghost) batch. No gradient flows through ``K`` (the statistics do not depend on it)."""
  idx = tuple(slice(0, 1) if a in reduce_axes else slice(None) for a in range(xs.ndim))
  return lax.stop_gradient(xs[idx])


def _stage_size(size: int) -> int | None:
  """The largest divisor of ``size`` in [8, 32], or None."""
  return next((d for d in range(32, 7, -1) if size % d == 0), None)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _sum_and_sum_sq(d, reduce_axes):
  """``(sum(d), sum(d^2))`` over ``reduce_axes`` (kept), reading ``d`` once.

  Both sums come from one variadic reduction, in which XLA also fuses the
  subtraction that produced ``d`` (a pair of plain sums over ``x - K`` reads the
  data twice, or materializes ``x - K``). At most 32 values per feature: one
  stage. Otherwise the first reduced axis with a divisor ``k`` in [8, 32] is
  split and the variadic reduction runs over its ``k`` chunks (XLA:CPU emits
  such a short loop fast, a longer one slowly); the partials are summed by one
  more variadic reduction when short, else by plain sums. Without such an
  axis, or for complex ``d``: two plain sums."""
  if jnp.iscomplexobj(d):
    return jnp.sum(d, reduce_axes, keepdims=True), jnp.sum(_abs_sq(d), reduce_axes, keepdims=True)
  zero = np.zeros((), d.dtype)

  def sums(ts, axes):  # (sum t0, sum t1) in one variadic reduction
    return lax.reduce(ts, (zero, zero), lambda a, b: (a[0] + b[0], a[1] + b[1]), axes)

  def short(shape):
    return math.prod(shape[a] for a in reduce_axes) <= 32

  if short(d.shape):
    return tuple(lax.expand_dims(t, reduce_axes) for t in sums((d, lax.square(d)), reduce_axes))
  for a in reduce_axes:
    k = _stage_size(d.shape[a])
    if k is not None:
      v = d.reshape(d.shape[:a] + (k, d.shape[a] // k) + d.shape[a + 1:])
      p1, p2 = sums((v, lax.square(v)), (a,))
      if short(p1.shape):
        return tuple(lax.expand_dims(t, reduce_axes) for t in sums((p1, p2), reduce_axes))
      return jnp.sum(p1, reduce_axes, keepdims=True), jnp.sum(p2, reduce_axes, keepdims=True)
  return jnp.sum(d, reduce_axes, keepdims=True), jnp.sum(_abs_sq(d), reduce_axes, keepdims=True)


@_sum_and_sum_sq.defjvp
def _sum_and_sum_sq_jvp(reduce_axes, primals, tangents):
  (d,), (t,) = primals, tangents
  out = _sum_and_sum_sq(d, reduce_axes)
  t_sq = 2.0 * (lax.real(d) * lax.real(t) + lax.imag(d) * lax.imag(t)) if jnp.iscomplexobj(d) else 2.0 * d * t
  return out, (jnp.sum(t, reduce_axes, keepdims=True), jnp.sum(t_sq, reduce_axes, keepdims=True))


def _moments(xs, reduce_axes, mask, axis_name, axis_index_groups, variance):
  """Mean, biased variance and valid count over ``reduce_axes`` (kept as size-1 dims).

  Masked positions enter through ``jnp.where`` only (their values never reach an
  arithmetic op, nor the backward pass). Sums are psum'ed with the counts, so
  device shards of unequal size merge exactly. ``"shifted"`` needs a shift
  among the valid values; under a mask it is computed in two passes instead
  (the same numbers as ``"two_pass"``)."""
  rdt = _real_dtype(xs.dtype)
  psum = (lambda t: lax.psum(t, axis_name, axis_index_groups=axis_index_groups)) if axis_name else (lambda t: t)
  if mask is None:
    n = math.prod(xs.shape[a] for a in reduce_axes)
    if axis_name:
      n = n * lax.psum(1, axis_name, axis_index_groups=axis_index_groups)
    count = None
  else:
    count = jnp.sum(jnp.broadcast_to(mask, xs.shape), reduce_axes, keepdims=True, dtype=rdt)
  select = (lambda t: t) if mask is None else (lambda t: jnp.where(mask, t, 0))

  if variance == "two_pass" or (variance == "shifted" and mask is not None):
    s1 = jnp.sum(select(xs), reduce_axes, keepdims=True)
    if count is not None:
      s1, count = psum((s1, count))
      n = jnp.maximum(count, 1.0)
    else:
      s1 = psum(s1)
    mean = s1 / n
    var = psum(jnp.sum(_abs_sq(select(xs - mean)), reduce_axes, keepdims=True)) / n
  else:
    if variance == "shifted":
      k = _pilot(xs, reduce_axes)
      if axis_name:  # one shift for all devices, so their sums add up
        k = lax.pmean(k, axis_name, axis_index_groups=axis_index_groups)
      d = select(xs - k)
      s1, s2 = _sum_and_sum_sq(d, reduce_axes) if reduce_axes else (d, _abs_sq(d))
    else:
      k, d = None, select(xs)
      s1, s2 = jnp.sum(d, reduce_axes, keepdims=True), jnp.sum(_abs_sq(d), reduce_axes, keepdims=True)
    if count is not None:
      s1, s2, count = psum((s1, s2, count))
      n = jnp.maximum(count, 1.0)
    else:
      s1, s2 = psum((s1, s2))
    mean_d = s1 / n
    var = jnp.maximum(0.0, s2 / n - _abs_sq(mean_d))
    mean = mean_d if k is None else k + mean_d
  if count is None:
    count = jnp.full(mean.shape, n, rdt)
  return mean, var, count


def _batch_statistics(x_in, lay: _Layout, mask, run_mean, run_var, *, variance, axis_index_groups, strict_batch):
  """Per (ghost) batch: mean, biased variance, valid count (in the view, reduced axes kept)
  and ``valid`` (None: all features usable, known statically). Under a mask, features
  with too few valid values get the running statistics instead."""
  mask_v = None if mask is None else _to_view(jnp.broadcast_to(mask, x_in.shape), lay)
  mean_b, var_b, count_b = _moments(_to_view(x_in, lay), lay.reduce_axes, mask_v, lay.local_axis, axis_index_groups,
                                    variance)
  if mask is None:
    return mean_b, var_b, count_b, None
  valid = count_b >= (2.0 if strict_batch else 1.0)
  mean_b = jnp.where(valid, mean_b, _lift(run_mean, lay))
  var_b = jnp.where(valid, var_b, _lift(run_var, lay))
  return mean_b, var_b, count_b, valid


# ----------------------------------------------------------------------------- normalization


def _normalize(x, mean, var, scale, epsilon):
  mul = lax.rsqrt(var + epsilon)
  if scale is not None:
    mul = mul * scale
  return (x - mean) * mul


_CHI2_EXACT_DF = 32  # up to this many degrees of freedom a chi-square draw is a sum of squared normals


def _chi2(key, df: int, shape, dtype):
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


def _population_noise(key, u, lay: _Layout, g: int, mask):
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
  ``s^2 = d^2 / (n - 1) + Q / n`` (``Q`` by :func:`_chi2`: exact up to 34 values per group, the
  Wilson-Hilferty approximation above). Fewer than 2 valid values: ``u`` unchanged.

  No gradient flows through the synthetic statistics ``m`` and ``s`` (as none flows
  through the population statistics): ``dy/du = 1 / s``."""
  pl = _layout(u, lay.feature_axes, g, None)  # u's groups of g examples, as a ghost-batch view
  view, axes = pl.view_shape, pl.reduce_axes
  rdt = _real_dtype(u.dtype)
  uv = u.reshape(view)
  k_z, k_q = jax.random.split(key)
  z = jax.random.normal(k_z, view, rdt)
  if mask is None:
    n = float(math.prod(view[a] for a in axes))
    q = jnp.zeros(view, rdt) if n <= 2 else _chi2(k_q, int(n) - 2, view, rdt)
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


def _train_normalize(x32, lay: _Layout, mean_b, var_b, run_mean, run_var, scale, *, epsilon, renorm, population,
                     population_noise, key, mask, stats_gradient):
  """The normalized (not yet shifted by ``bias``) training output, in x's shape."""
  if population:
    if population_noise is None:
      return _normalize(x32, run_mean, run_var, scale, epsilon)
    u = _normalize(x32, run_mean, run_var, None, epsilon)
    u = _population_noise(key, u, lay, population_noise, mask)
    return u if scale is None else u * scale
  if not stats_gradient:
    mean_b, var_b = lax.stop_gradient(mean_b), lax.stop_gradient(var_b)
  xs = _to_view(x32, lay)
  s_scale = None if scale is None else _lift(scale, lay)
  if renorm is None:
    return _normalize(xs, mean_b, var_b, s_scale, epsilon).reshape(x32.shape)
  rdt = _real_dtype(x32.dtype)
  sigma_b = jnp.sqrt(var_b + epsilon)
  sigma = jnp.sqrt(_lift(run_var, lay) + epsilon)
  r_max, d_max = jnp.asarray(renorm.r_max, rdt), jnp.asarray(renorm.d_max, rdt)
  r = lax.stop_gradient(jnp.clip(sigma_b / sigma, 1.0 / r_max, r_max))
  d = lax.stop_gradient(jnp.clip((mean_b - _lift(run_mean, lay)) / sigma, -d_max, d_max))
  ys = (xs - mean_b) / sigma_b * r + d
  return (ys if s_scale is None else ys * s_scale).reshape(x32.shape)


def _apply_noise(y, noise: Noise, key, bshape):
  """Santurkar et al.'s noise ``s * y + m`` (see :class:`Noise`)."""
  dose = noise.dose
  if _static_number(dose) == 0.0:
    return y
  rdt = _real_dtype(y.dtype)
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


def _affine_bias(y, params: BNParams, bshape):
  if params.bias is not None:
    return y + params.bias.reshape(bshape)
  return y


def _finish(y, x32, ok, out_dtype):
  """Masked non-finite inputs pass through; cast to the output dtype."""
  if ok is not None:
    y = jnp.where(ok, y, x32)
  return y.astype(out_dtype)


def _mask_guard(x32, mask):
  """Where ``mask`` is False and ``x`` not finite, replace ``x`` by 0 (its output is
  ``x`` itself, see :func:`_finish`): no NaN/inf reaches the backward pass."""
  if mask is None:
    return x32, None
  ok = mask | jnp.isfinite(x32)
  return jnp.where(ok, x32, 0), ok


# ----------------------------------------------------------------------------- running statistics


def _pool(lay: _Layout, mean_b, var_b, count_b, valid, axis_name, axis_index_groups, unbiased):
  """The running update's batch statistics (feature shape): pooled over ghost batches
  (and, with ghosts, devices) by count. Returns ``(mean, biased var, stored var, count, updated)``;
  ``updated`` is None when every feature has usable statistics (known statically)."""
  fshape = lay.feature_shape
  if lay.ghost is None:
    mean_u, var_u, n = (t.reshape(fshape) for t in (mean_b, var_b, count_b))
    stored = var_u * (n / jnp.maximum(n - 1.0, 1.0)) if unbiased else var_u
    return mean_u, var_u, stored, jnp.mean(n), None if valid is None else valid.reshape(fshape)
  g = lay.view_shape[0]
  mean_g, var_g, cnt_g = (t.reshape((g,) + fshape) for t in (mean_b, var_b, count_b))
  w = cnt_g if valid is None else jnp.where(valid.reshape((g,) + fshape), cnt_g, 0.0)
  dof = jnp.maximum(w - 1.0, 0.0)
  psum = (lambda t: lax.psum(t, axis_name, axis_index_groups=axis_index_groups)) if axis_name else (lambda t: t)
  tot, s_mean, ss, s_dof, ghosts = psum((jnp.sum(w, 0), jnp.sum(mean_g * w, 0), jnp.sum(var_g * w, 0), jnp.sum(dof, 0),
                                         jnp.asarray(g, w.dtype)))
  safe = jnp.maximum(tot, 1.0)
  mean_u, var_u = s_mean / safe, ss / safe
  stored = ss / jnp.maximum(s_dof, 1.0) if unbiased else var_u
  return mean_u, var_u, stored, jnp.mean(tot) / ghosts, None if valid is None else tot > 0


def _update(state: BNState, mean, var, momentum, updated=None) -> BNState:
  if momentum is None:
    w = 1.0 / (state.count.astype(jnp.float32) + 1.0)
    new_mean = state.mean + (mean - state.mean) * w
    new_var = state.var + (var - state.var) * w
  else:
    new_mean = momentum * state.mean + (1.0 - momentum) * mean
    new_var = momentum * state.var + (1.0 - momentum) * var
  mean_dtype = state.mean.dtype
  if jnp.iscomplexobj(new_mean) and not jnp.issubdtype(mean_dtype, jnp.complexfloating):
    mean_dtype = jnp.result_type(mean_dtype, jnp.complex64)  # a complex running mean stays complex (as Flax)
  new_mean, new_var = new_mean.astype(mean_dtype), new_var.astype(state.var.dtype)
  if updated is None:
    return BNState(new_mean, new_var, state.count + 1)
  return BNState(
      jnp.where(updated, new_mean, state.mean.astype(mean_dtype)),
      jnp.where(updated, new_var, state.var),
      state.count + jnp.any(updated).astype(state.count.dtype),
  )


def _running_update(state: BNState, lay: _Layout, mean_b, var_b, count_b, valid, *, momentum, unbiased, axis_name,
                    axis_index_groups) -> tuple[BNState, BatchStats]:
  """The new running statistics (no gradient) and the :class:`BatchStats` behind them."""
  mean_u, var_u, stored, n_stat, updated = _pool(lay, mean_b, var_b, count_b, valid, axis_name, axis_index_groups, unbiased)
  mean_u, var_u, stored = lax.stop_gradient(mean_u), lax.stop_gradient(var_u), lax.stop_gradient(stored)
  new_state = _update(state, mean_u, stored, momentum, updated)
  if updated is not None:
    mean_u, var_u = jnp.where(updated, mean_u, state.mean), jnp.where(updated, var_u, state.var)
  return new_state, BatchStats(mean_u, var_u, n_stat)


# ----------------------------------------------------------------------------- batch norm


def batch_norm(
    x: Array,
    params: BNParams,
    state: BNState,
    *,
    train: bool,
    momentum: float | None = 0.99,
    epsilon: float = 1e-5,
    axis: int | Sequence[int] = -1,
    variance: str = "shifted",
    unbiased: bool = False,
    mask: Array | None = None,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    ghost_batch_size: int | None = None,
    renorm: Renorm | None = None,
    noise: Noise | None = None,
    key: Array | None = None,
    population: bool = False,
    population_noise: int | None = None,
    stats_gradient: bool = True,
    strict_batch: bool = True,
    dtype: Any = None,
    return_stats: bool = False,
):
  """Batch Normalization (Ioffe & Szegedy 2015) and its research variants.

  With batch statistics ``mu_B, var_B`` of the features over every non-feature
  axis::

      y = (x - mu_B) * scale / sqrt(var_B + epsilon) + bias          (train)
      y = (x - mean) * scale / sqrt(var + epsilon) + bias            (eval)
      running <- momentum * running + (1 - momentum) * batch         (train)

  Args:
    x: input, features on ``axis`` (default last). Integer/bool inputs are
      promoted to float32; complex inputs get a complex mean and a real variance.
    params: :class:`BNParams` (``scale``/``bias`` may be None).
    state: :class:`BNState` of running statistics.
    train: a Python bool. Use (and fold in) batch statistics; ``False``
      normalizes with the running statistics and returns ``state`` unchanged.
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
    mask: boolean array broadcastable to ``x``: only True positions enter the
      statistics (values at False positions never matter, NaN included).
    axis_name, axis_index_groups: reduce statistics across a mapped axis
      (``vmap``/``shard_map``/``pmap``), merged by count. With ``ghost_batch_size``
      the normalization stays local and only the running update is global.
    ghost_batch_size: an int; normalize each chunk of this many examples along
      axis 0 with its own statistics (Hoffer et al. 2017); the running
      statistics are updated once from the count-pooled ghost statistics.
    renorm: :class:`Renorm` clip values for Batch Renormalization:
      ``y = (x - mu_B) / sigma_B * r + d`` with ``r = clip(sigma_B / sigma, 1/r_max, r_max)``,
      ``d = clip((mu_B - mean) / sigma, -d_max, d_max)`` (no gradient through r, d).
    noise: :class:`Noise` applied after the affine transform in training; needs ``key``.
    key: PRNG key for ``noise`` and ``population_noise`` (training only).
    population: in training, normalize with the running statistics (as in
      eval) but still fold in the batch statistics: no batch-statistics noise.
    population_noise: with ``population=True``, an int ``g``: give the output
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
      valid values are left unperturbed. Gradients flow through ``u``'s own
      share of ``m_B`` and ``s_B``. Needs ``key``.
    stats_gradient: ``False`` treats ``mu_B`` and ``sigma_B`` as constants in the
      backward pass (the forward pass is unchanged).
    strict_batch: ``True``: fewer than 2 values of a feature in a (ghost) batch
      is an error (when known at trace time; under a traced mask such features
      keep and use their running statistics). ``False``: Flax's behaviour, a
      single value gives variance 0. See the module docstring.
    dtype: output dtype (default ``x.dtype``; float32 for integer inputs).
    return_stats: also return the :class:`BatchStats` used (for probes).

  Returns:
    ``(y, new_state)`` or ``(y, new_state, batch_stats)`` with ``return_stats``;
    in eval ``batch_stats`` is the running statistics.
  """
  train, ghost_batch_size, population_noise = _check_options(
      train, params, state, momentum=momentum, epsilon=epsilon, variance=variance, renorm=renorm, noise=noise,
      ghost_batch_size=ghost_batch_size, population=population, population_noise=population_noise,
      flags=dict(unbiased=unbiased, population=population, stats_gradient=stats_gradient, strict_batch=strict_batch,
                 return_stats=return_stats))
  x = jnp.asarray(x)
  out_dtype = _out_dtype(x, dtype)
  lay = _layout(x, axis, ghost_batch_size if train else None, axis_name if train else None)
  for name, arr in (("params.scale", params.scale), ("params.bias", params.bias), ("state.mean", state.mean), ("state.var", state.var)):
    _check_shapes(name, arr, lay.feature_shape)
  mask, mask_np = _prepare_mask(mask, x)
  x32 = x.astype(_stats_dtype(x))
  run_mean, run_var = state.mean.reshape(lay.bshape), state.var.reshape(lay.bshape)
  scale = None if params.scale is None else params.scale.reshape(lay.bshape)
  x_in, ok = _mask_guard(x32, mask)

  if not train:
    y = _affine_bias(_normalize(x_in, run_mean, run_var, scale, epsilon), params, lay.bshape)
    y = _finish(y, x32, ok, out_dtype)
    if return_stats:
      return y, state, BatchStats(state.mean, state.var, jnp.zeros((), jnp.float32))
    return y, state

  _check_training(x32, lay, mask_np, axis_name=axis_name, axis_index_groups=axis_index_groups, renorm=renorm, noise=noise,
                  population_noise=population_noise, key=key, strict_batch=strict_batch)
  key_noise = key_pop = key
  if noise is not None and population_noise is not None:
    key_noise, key_pop = jax.random.split(key)

  mean_b, var_b, count_b, valid = _batch_statistics(x_in, lay, mask, run_mean, run_var, variance=variance,
                                                    axis_index_groups=axis_index_groups, strict_batch=strict_batch)
  y = _train_normalize(x_in, lay, mean_b, var_b, run_mean, run_var, scale, epsilon=epsilon, renorm=renorm,
                       population=population, population_noise=population_noise, key=key_pop, mask=mask,
                       stats_gradient=stats_gradient)
  y = _affine_bias(y, params, lay.bshape)
  if noise is not None:
    y = _apply_noise(y, noise, key_noise, lay.bshape)
  y = _finish(y, x32, ok, out_dtype)

  new_state, used = _running_update(state, lay, mean_b, var_b, count_b, valid, momentum=momentum, unbiased=unbiased,
                                    axis_name=axis_name, axis_index_groups=axis_index_groups)
  return (y, new_state, used) if return_stats else (y, new_state)


# ----------------------------------------------------------------------------- comparison normalizers


def _per_example_norm(x, params, groups, epsilon, dtype):
  """Normalize each example over its non-batch axes, channels (last axis) split
  into ``groups``; per-channel affine. Float32 two-pass statistics."""
  out_dtype = _out_dtype(x, dtype)
  c = x.shape[-1]
  xg = x.astype(_stats_dtype(x)).reshape(x.shape[:-1] + (groups, c // groups))
  axes = tuple(a for a in range(1, xg.ndim) if a != xg.ndim - 2)
  mean = jnp.mean(xg, axes, keepdims=True)
  var = jnp.mean(_abs_sq(xg - mean), axes, keepdims=True)
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
