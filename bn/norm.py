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
  ``unbiased=True`` stores ``var * n / (n - 1)`` like PyTorch; normalization
  always uses the biased batch variance.
* **Variance estimator**: ``variance="two_pass"`` (default) computes
  ``E[(x - E[x])^2]``, stable for large offsets; ``variance="fast"`` computes
  ``E[x^2] - E[x]^2`` clamped at 0 (Flax's default, one reduction fewer).
* **Precision**: statistics are accumulated and stored in float32 even for
  bf16/fp16 inputs (float64 stays float64); the output has ``x``'s dtype unless
  ``dtype`` is given.
* **Normalization** ``y = (x - mean) * (scale * rsqrt(var + epsilon)) + bias``
  (the same operation order as Flax, so results agree to float rounding).

Batch statistics with ``mask`` and ``axis_name`` are merged by *count*:
devices holding different numbers of valid examples still give the exact
statistics of the global batch (Flax averages per-device means instead).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
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

  ``count`` is the number of (valid) elements per feature behind them."""

  mean: Array
  var: Array
  count: Array


class Renorm(NamedTuple):
  """Batch Renormalization clip values (Ioffe 2017, arXiv 1702.03275).

  Pass arrays (or Python floats) -- as arrays, a schedule may change them every
  step without recompiling. ``r_max=1, d_max=0`` is plain batch norm."""

  r_max: Any
  d_max: Any


class Noise(NamedTuple):
  """Non-stationary noise after BN (Santurkar et al. 2018, arXiv 1805.11604).

  Each call draws, per layer, ``mu ~ U(*layer_mean)`` and ``sigma ~ U(*layer_scale)``,
  then per unit ``m ~ U(mu - unit_mean_halfwidth, mu + unit_mean_halfwidth)`` and
  ``s ~ N(sigma, unit_scale_std)``, and returns ``s * y + m``. Defaults follow the
  constants quoted in EXPERIMENTS.md (from a secondary source)."""

  layer_mean: tuple[float, float] = (-0.5, 0.5)
  layer_scale: tuple[float, float] = (1.0, 1.25)
  unit_mean_halfwidth: float = 0.1
  unit_scale_std: float = 0.1


VARIANCES = ("two_pass", "fast")


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
    if not -ndim <= a < ndim:
      raise ValueError(f"feature axis {a} is out of range for an input of rank {ndim}; pass axis= within [-{ndim}, {ndim}).")
    out.append(a % ndim)
  return tuple(sorted(set(out)))


def _is_static_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_hparams(momentum, epsilon, variance):
  if momentum is not None and _is_static_number(momentum) and not 0.0 <= momentum < 1.0:
    raise ValueError(
        f"momentum={momentum} is outside [0, 1). bn uses the Flax convention "
        "running = momentum * running + (1 - momentum) * batch; PyTorch's momentum=0.1 is momentum=0.9 here."
    )
  if _is_static_number(epsilon) and not epsilon > 0:
    raise ValueError(f"epsilon={epsilon} must be > 0 (it keeps rsqrt(var + epsilon) finite); e.g. epsilon=1e-5.")
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


# ----------------------------------------------------------------------------- statistics


def _moments(x, reduce_axes, mask, axis_name, axis_index_groups, variance):
  """Mean, biased variance and element count over ``reduce_axes`` (kept as size-1 dims).

  Sums are psum'ed with the counts, so device shards of unequal size merge exactly."""
  if mask is None and axis_name is None:
    mean = jnp.mean(x, reduce_axes, keepdims=True)
    if variance == "fast":
      var = jnp.maximum(0.0, jnp.mean(lax.square(x), reduce_axes, keepdims=True) - lax.square(mean))
    else:
      var = jnp.mean(lax.square(x - mean), reduce_axes, keepdims=True)
    n = math.prod(x.shape[a] for a in reduce_axes)
    return mean, var, jnp.full(mean.shape, n, x.dtype)

  psum = (lambda t: lax.psum(t, axis_name, axis_index_groups=axis_index_groups)) if axis_name else (lambda t: t)
  w = jnp.ones((), x.dtype) if mask is None else jnp.broadcast_to(mask, x.shape).astype(x.dtype)
  count = jnp.sum(jnp.broadcast_to(w, x.shape), reduce_axes, keepdims=True)
  xs = x * w
  if variance == "fast":
    s, s2, count = psum((jnp.sum(xs, reduce_axes, keepdims=True), jnp.sum(xs * x, reduce_axes, keepdims=True), count))
    safe = jnp.maximum(count, 1.0)
    mean = s / safe
    var = jnp.maximum(0.0, s2 / safe - lax.square(mean))
  else:
    s, count = psum((jnp.sum(xs, reduce_axes, keepdims=True), count))
    safe = jnp.maximum(count, 1.0)
    mean = s / safe
    var = psum(jnp.sum(lax.square(x - mean) * w, reduce_axes, keepdims=True)) / safe
  return mean, var, count


def _ghost_view(x, mask, ghost_batch_size, feature_axes):
  """Reshape the batch axis 0 into (ghosts, ghost_batch_size)."""
  n = x.shape[0]
  if 0 in feature_axes:
    raise ValueError("ghost_batch_size splits axis 0, the batch axis, but axis 0 is a feature axis; use a channels-last axis=.")
  if ghost_batch_size < 1 or n % ghost_batch_size:
    raise ValueError(
        f"ghost_batch_size={ghost_batch_size} does not divide the batch of {n} examples; "
        "choose a ghost size that divides the (per-device) batch size."
    )
  g = n // ghost_batch_size
  xg = x.reshape((g, ghost_batch_size) + x.shape[1:])
  if mask is not None:
    mask = jnp.broadcast_to(mask, x.shape).reshape(xg.shape)
  return xg, mask


def _noise(key, noise: Noise, feature_shape, dtype):
  k_mu, k_sigma, k_m, k_s = jax.random.split(key, 4)
  mu = jax.random.uniform(k_mu, (), dtype, *noise.layer_mean)
  sigma = jax.random.uniform(k_sigma, (), dtype, *noise.layer_scale)
  h = noise.unit_mean_halfwidth
  m = jax.random.uniform(k_m, feature_shape, dtype, mu - h, mu + h)
  s = sigma + noise.unit_scale_std * jax.random.normal(k_s, feature_shape, dtype)
  return s, m


def _affine(y, params: BNParams, bshape):
  if params.bias is not None:
    return y + params.bias.reshape(bshape)
  return y


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
    variance: str = "two_pass",
    unbiased: bool = False,
    mask: Array | None = None,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    ghost_batch_size: int | None = None,
    renorm: Renorm | None = None,
    noise: Noise | None = None,
    key: Array | None = None,
    population: bool = False,
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
    x: input, features on ``axis`` (default last).
    params: :class:`BNParams` (``scale``/``bias`` may be None).
    state: :class:`BNState` of running statistics.
    train: use (and fold in) batch statistics; ``False`` normalizes with the
      running statistics and returns ``state`` unchanged.
    momentum: Flax convention (PyTorch 0.1 == 0.9 here); ``None`` = cumulative
      average (running = running + (batch - running) / (count + 1)).
    epsilon: added to the variance, > 0.
    axis: feature axis or axes.
    variance: ``"two_pass"`` (stable) or ``"fast"`` (E[x^2] - E[x]^2, clamped at 0).
    unbiased: store ``var * n / (n - 1)`` as running variance (PyTorch).
    mask: boolean array broadcastable to ``x``: only True positions enter the statistics.
    axis_name, axis_index_groups: reduce statistics across a mapped axis
      (``vmap``/``shard_map``/``pmap``), merged by count. With ``ghost_batch_size``
      the normalization stays local and only the running update is global.
    ghost_batch_size: normalize each chunk of this many examples along axis 0
      with its own statistics (Hoffer et al. 2017); the running statistics are
      updated once from the count-weighted average of the ghost statistics.
    renorm: :class:`Renorm` clip values for Batch Renormalization:
      ``y = (x - mu_B) / sigma_B * r + d`` with ``r = clip(sigma_B / sigma, 1/r_max, r_max)``,
      ``d = clip((mu_B - mean) / sigma, -d_max, d_max)`` (no gradient through r, d).
    noise: :class:`Noise` applied after the affine transform in training; needs ``key``.
    key: PRNG key for ``noise``.
    population: in training, normalize with the running statistics (as in
      eval) but still fold in the batch statistics: no batch-statistics noise.
    dtype: output dtype (default ``x.dtype``).
    return_stats: also return the :class:`BatchStats` used (for probes).

  Returns:
    ``(y, new_state)`` or ``(y, new_state, batch_stats)`` with ``return_stats``;
    in eval ``batch_stats`` is the running statistics.
  """
  _check_hparams(momentum, epsilon, variance)
  x = jnp.asarray(x)
  out_dtype = x.dtype if dtype is None else dtype
  feature_axes = _canonical_axes(x.ndim, axis)
  feature_shape = tuple(x.shape[a] for a in feature_axes)
  bshape = tuple(x.shape[a] if a in feature_axes else 1 for a in range(x.ndim))
  for name, arr in (("params.scale", params.scale), ("params.bias", params.bias), ("state.mean", state.mean), ("state.var", state.var)):
    _check_shapes(name, arr, feature_shape)
  if mask is not None:
    mask = jnp.asarray(mask)
    try:
      jnp.broadcast_shapes(mask.shape, x.shape)
    except ValueError:
      raise ValueError(f"mask of shape {mask.shape} does not broadcast to the input shape {x.shape}; give a boolean mask such as shape {x.shape[:1] + (1,) * (x.ndim - 1)}.") from None
  x32 = x.astype(_stats_dtype(x))
  run_mean = state.mean.reshape(bshape)
  run_var = state.var.reshape(bshape)
  scale = None if params.scale is None else params.scale.reshape(bshape)

  if not train:
    y = _normalize(x32, run_mean, run_var, scale, epsilon)
    y = _affine(y, params, bshape).astype(out_dtype)
    if return_stats:
      return y, state, BatchStats(state.mean, state.var, jnp.zeros((), jnp.float32))
    return y, state

  _check_axis_name(axis_name)
  if noise is not None and key is None:
    raise ValueError("noise= needs a PRNG key: pass key=jax.random.key(...) (a fresh one each step).")

  # Statistics, possibly per ghost batch.
  if ghost_batch_size is not None:
    xs, mask_s = _ghost_view(x32, mask, ghost_batch_size, feature_axes)
    s_feature = tuple(a + 1 for a in feature_axes)
    reduce_axes = tuple(a for a in range(xs.ndim) if a != 0 and a not in s_feature)
    local_axis = None  # ghost statistics are local; only the running update is global
  else:
    xs, mask_s = x32, mask
    reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
    local_axis = axis_name
  if axis_name is None and mask is None:
    per_group = math.prod(xs.shape[a] for a in reduce_axes)
    if per_group < 2:
      what = f"a ghost batch of {ghost_batch_size}" if ghost_batch_size is not None else "a training batch of one example"
      raise ValueError(
          f"cannot estimate a variance from {what} (1 value per feature); use a batch (or ghost batch) of at least 2, "
          "or train=False to normalize with the running statistics."
      )

  mean_b, var_b, count_b = _moments(xs, reduce_axes, mask_s, local_axis, axis_index_groups, variance)

  # Normalize. Running statistics and params broadcast against the (ghost) view.
  lift = (lambda t: t[None]) if ghost_batch_size is not None else (lambda t: t)
  s_scale = None if scale is None else lift(scale)
  if population:
    y = _normalize(x32, run_mean, run_var, scale, epsilon)
  elif renorm is not None:
    sigma_b = jnp.sqrt(var_b + epsilon)
    sigma = jnp.sqrt(lift(run_var) + epsilon)
    r_max = jnp.asarray(renorm.r_max, x32.dtype)
    d_max = jnp.asarray(renorm.d_max, x32.dtype)
    r = lax.stop_gradient(jnp.clip(sigma_b / sigma, 1.0 / r_max, r_max))
    d = lax.stop_gradient(jnp.clip((mean_b - lift(run_mean)) / sigma, -d_max, d_max))
    ys = (xs - mean_b) / sigma_b * r + d
    y = (ys if s_scale is None else ys * s_scale).reshape(x.shape)
  else:
    y = _normalize(xs, mean_b, var_b, s_scale, epsilon).reshape(x.shape)
  y = _affine(y, params, bshape)
  if noise is not None:
    s, m = _noise(key, noise, feature_shape, y.dtype)
    y = y * s.reshape(bshape) + m.reshape(bshape)
  y = y.astype(out_dtype)

  # Running statistics: pool ghosts (and, with ghosts, devices) by count.
  if ghost_batch_size is None:
    mean_u, var_u, n_stat = (t.reshape(feature_shape) for t in (mean_b, var_b, count_b))
  else:
    g = xs.shape[0]
    mean_g, var_g, cnt_g = (t.reshape((g,) + feature_shape) for t in (mean_b, var_b, count_b))
    psum = (lambda t: lax.psum(t, axis_name, axis_index_groups=axis_index_groups)) if axis_name else (lambda t: t)
    tot, s_mean, s_var, n_ghosts = psum((jnp.sum(cnt_g, 0), jnp.sum(mean_g * cnt_g, 0), jnp.sum(var_g * cnt_g, 0), jnp.asarray(g, cnt_g.dtype)))
    safe = jnp.maximum(tot, 1.0)
    mean_u, var_u, n_stat = s_mean / safe, s_var / safe, tot / n_ghosts
  mean_u, var_u = lax.stop_gradient(mean_u), lax.stop_gradient(var_u)
  var_store = var_u * n_stat / jnp.maximum(n_stat - 1.0, 1.0) if unbiased else var_u
  new_state = _update(state, mean_u, var_store, momentum)
  if return_stats:
    return y, new_state, BatchStats(mean_u, var_u, jnp.mean(n_stat))
  return y, new_state


def _normalize(x, mean, var, scale, epsilon):
  mul = lax.rsqrt(var + epsilon)
  if scale is not None:
    mul = mul * scale
  return (x - mean) * mul


def _update(state: BNState, mean, var, momentum) -> BNState:
  if momentum is None:
    w = 1.0 / (state.count.astype(jnp.float32) + 1.0)
    new_mean = state.mean + (mean - state.mean) * w
    new_var = state.var + (var - state.var) * w
  else:
    new_mean = momentum * state.mean + (1.0 - momentum) * mean
    new_var = momentum * state.var + (1.0 - momentum) * var
  return BNState(new_mean.astype(state.mean.dtype), new_var.astype(state.var.dtype), state.count + 1)


# ----------------------------------------------------------------------------- comparison normalizers


def _per_example_norm(x, params, groups, epsilon, dtype):
  """Normalize each example over its non-batch axes, channels (last axis) split
  into ``groups``; per-channel affine. Float32 two-pass statistics."""
  out_dtype = x.dtype if dtype is None else dtype
  c = x.shape[-1]
  xg = x.astype(_stats_dtype(x)).reshape(x.shape[:-1] + (groups, c // groups))
  axes = tuple(a for a in range(1, xg.ndim) if a != xg.ndim - 2)
  mean = jnp.mean(xg, axes, keepdims=True)
  var = jnp.mean(lax.square(xg - mean), axes, keepdims=True)
  y = ((xg - mean) * lax.rsqrt(var + epsilon)).reshape(x.shape)
  bshape = (1,) * (x.ndim - 1) + (c,)  # explicit: no implicit rank promotion
  if params.scale is not None:
    y = y * params.scale.reshape(bshape)
  if params.bias is not None:
    y = y + params.bias.reshape(bshape)
  return y.astype(out_dtype)


def layer_norm(x, params: BNParams, state=None, *, train: bool = True, epsilon: float = 1e-5, dtype=None, **_):
  """Layer normalization (Ba et al. 2016): each example over all its non-batch
  axes (two-pass, float32 statistics); per-feature affine on the last axis.

  ``state`` passes through unchanged, so the call matches :func:`batch_norm`."""
  _check_hparams(None, epsilon, "two_pass")
  x = jnp.asarray(x)
  _check_shapes("params.scale", params.scale, x.shape[-1:])
  return _per_example_norm(x, params, 1, epsilon, dtype), state


def group_norm(x, params: BNParams, state=None, *, train: bool = True, num_groups: int = 32, epsilon: float = 1e-5, dtype=None, **_):
  """Group normalization (Wu & He 2018): channels (last axis) split into
  ``num_groups`` groups; each example normalized per group over its spatial
  axes and the group's channels. ``num_groups=1`` is LayerNorm over (H, W, C);
  ``num_groups=C`` is InstanceNorm. ``state`` passes through unchanged."""
  _check_hparams(None, epsilon, "two_pass")
  x = jnp.asarray(x)
  c = x.shape[-1]
  _check_shapes("params.scale", params.scale, (c,))
  if num_groups < 1 or c % num_groups:
    raise ValueError(f"num_groups={num_groups} does not divide the {c} channels; pick a divisor of {c}.")
  return _per_example_norm(x, params, num_groups, epsilon, dtype), state


def no_norm(x, params=None, state=None, *, train: bool = True, **_):
  """Identity with the normalizer calling convention (the no-BN baseline)."""
  return x, state


NORMALIZERS = {"batch": batch_norm, "layer": layer_norm, "group": group_norm, "none": no_norm}


def get(name: str):
  """Normalizer by name: one of ``batch``, ``layer``, ``group``, ``none``."""
  try:
    return NORMALIZERS[name]
  except KeyError:
    raise ValueError(f"unknown normalizer {name!r}; choose one of {sorted(NORMALIZERS)}.") from None
