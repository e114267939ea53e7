"""The statistics of a batch: layout, masks, moments, the running update (no public API).

:func:`bn.norm.batch_norm` is built from these pieces: :func:`layout` (which axes are
features, how ghost batches split axis 0), :func:`moments` (mean, biased variance and
valid count, psum'ed over devices by count), :func:`batch_statistics` (per ghost batch,
masked features falling back to the running statistics) and :func:`running_update`
(pooled over ghosts and devices, folded in with the Flax momentum convention).
No Flax, no files; every function is pure and traceable.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def is_bool(v) -> bool:
  return isinstance(v, (bool, np.bool_))


def static_number(v) -> float | None:
  """``float(v)`` for a concrete Python/NumPy real number (bools excluded), else None."""
  if is_bool(v):
    return None
  if isinstance(v, (int, float, np.integer, np.floating)):
    return float(v)
  if isinstance(v, np.ndarray) and v.ndim == 0 and np.issubdtype(v.dtype, np.number) and not np.iscomplexobj(v):
    return float(v)
  return None


def canonical_axes(ndim: int, axis) -> tuple[int, ...]:
  axes = axis if isinstance(axis, (tuple, list)) else (axis,)
  out = []
  for a in axes:
    if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)):
      raise TypeError(f"axis={axis!r} must be an int or a tuple of ints (the feature axes).")
    if not -ndim <= a < ndim:
      raise ValueError(f"feature axis {a} is out of range for an input of rank {ndim}; pass axis= within [-{ndim}, {ndim}).")
    out.append(int(a) % ndim)
  return tuple(sorted(set(out)))


def real_dtype(dt):
  return jnp.finfo(dt).dtype


def abs_sq(x):
  if jnp.iscomplexobj(x):
    return lax.square(lax.real(x)) + lax.square(lax.imag(x))
  return lax.square(x)


def is_traced(v) -> bool:
  return isinstance(v, jax.core.Tracer)


class Layout(NamedTuple):
  """Static facts of one call: where the features are and how statistics group."""

  feature_axes: tuple[int, ...]
  feature_shape: tuple[int, ...]
  bshape: tuple[int, ...]  # feature sizes on the feature axes, 1 elsewhere (x's rank)
  ghost: int | None  # ghost batch size (statistics per chunk of axis 0) or None
  view_shape: tuple[int, ...]  # x's shape, with axis 0 split into (ghosts, ghost) when ghost is set
  reduce_axes: tuple[int, ...]  # the statistics' axes in the view
  local_axis: str | None  # the axis the statistics are merged over (None with ghosts: local)


def layout(x, axis, ghost_batch_size, axis_name) -> Layout:
  feature_axes = canonical_axes(x.ndim, axis)
  feature_shape = tuple(x.shape[a] for a in feature_axes)
  bshape = tuple(x.shape[a] if a in feature_axes else 1 for a in range(x.ndim))
  if ghost_batch_size is None:
    reduce_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
    return Layout(feature_axes, feature_shape, bshape, None, tuple(x.shape), reduce_axes, axis_name)
  g = group_size("ghost_batch_size", ghost_batch_size, x, feature_axes)
  view_shape = (x.shape[0] // g, g) + tuple(x.shape[1:])
  reduce_axes = tuple(a for a in range(1, len(view_shape)) if a - 1 not in feature_axes)
  return Layout(feature_axes, feature_shape, bshape, g, view_shape, reduce_axes, None)


def group_size(name, g, x, feature_axes) -> int:
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


def lift(t, lay: Layout):
  """A (running statistic / parameter) array of shape ``bshape`` into the ghost view's rank."""
  return t if lay.ghost is None else t[None]


def to_view(t, lay: Layout):
  return t if lay.ghost is None else t.reshape(lay.view_shape)


def prepare_mask(mask, x):
  """``mask`` as a bool array broadcastable to ``x`` (checked), plus its concrete NumPy value if it has one."""
  if mask is None:
    return None, None
  concrete = None
  if not is_traced(mask):
    concrete = np.asarray(mask).astype(bool)
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    mask = mask != 0
  if mask.ndim not in (0, x.ndim):  # (N,) against (N, C) would broadcast over the features, silently
    raise ValueError(
        f"mask of shape {mask.shape} has rank {mask.ndim}, the input {x.shape} rank {x.ndim}: give the mask the input's rank "
        f"(a per-example mask as shape {x.shape[:1] + (1,) * (x.ndim - 1)}, e.g. mask[:, None]) or a scalar."
    )
  try:
    jnp.broadcast_shapes(mask.shape, x.shape)
  except ValueError:
    raise ValueError(
        f"mask of shape {mask.shape} does not broadcast to the input shape {x.shape}; "
        f"give a boolean mask such as shape {x.shape[:1] + (1,) * (x.ndim - 1)}."
    ) from None
  if mask.ndim == 0:
    mask = mask.reshape((1,) * x.ndim)
    if concrete is not None:
      concrete = concrete.reshape(mask.shape)
  return mask, concrete


def check_counts(x, lay: Layout, mask_np, strict: bool, axis_index_groups):
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
    return jnp.sum(d, reduce_axes, keepdims=True), jnp.sum(abs_sq(d), reduce_axes, keepdims=True)
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
  return jnp.sum(d, reduce_axes, keepdims=True), jnp.sum(abs_sq(d), reduce_axes, keepdims=True)


@_sum_and_sum_sq.defjvp
def _sum_and_sum_sq_jvp(reduce_axes, primals, tangents):
  (d,), (t,) = primals, tangents
  out = _sum_and_sum_sq(d, reduce_axes)
  t_sq = 2.0 * (lax.real(d) * lax.real(t) + lax.imag(d) * lax.imag(t)) if jnp.iscomplexobj(d) else 2.0 * d * t
  return out, (jnp.sum(t, reduce_axes, keepdims=True), jnp.sum(t_sq, reduce_axes, keepdims=True))


def moments(xs, reduce_axes, mask, axis_name, axis_index_groups, variance):
  """Mean, biased variance and valid count over ``reduce_axes`` (kept as size-1 dims).

  Masked positions enter through ``jnp.where`` only (their values never reach an
  arithmetic op, nor the backward pass). Sums are psum'ed with the counts, so
  device shards of unequal size merge exactly. ``"shifted"`` needs a shift
  among the valid values; under a mask it is computed in two passes instead
  (the same numbers as ``"two_pass"``)."""
  rdt = real_dtype(xs.dtype)
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
    var = psum(jnp.sum(abs_sq(select(xs - mean)), reduce_axes, keepdims=True)) / n
  else:
    if variance == "shifted":
      k = _pilot(xs, reduce_axes)
      if axis_name:  # one shift for all devices, so their sums add up
        k = lax.pmean(k, axis_name, axis_index_groups=axis_index_groups)
      d = select(xs - k)
      s1, s2 = _sum_and_sum_sq(d, reduce_axes) if reduce_axes else (d, abs_sq(d))
    else:
      k, d = None, select(xs)
      s1, s2 = jnp.sum(d, reduce_axes, keepdims=True), jnp.sum(abs_sq(d), reduce_axes, keepdims=True)
    if count is not None:
      s1, s2, count = psum((s1, s2, count))
      n = jnp.maximum(count, 1.0)
    else:
      s1, s2 = psum((s1, s2))
    mean_d = s1 / n
    var = jnp.maximum(0.0, s2 / n - abs_sq(mean_d))
    mean = mean_d if k is None else k + mean_d
  if count is None:
    count = jnp.full(mean.shape, n, rdt)
  return mean, var, count


def batch_statistics(x_in, lay: Layout, mask, run_mean, run_var, *, variance, axis_index_groups, strict_batch):
  """Per (ghost) batch: mean, biased variance, valid count (in the view, reduced axes kept)
  and ``valid`` (None: all features usable, known statically). Under a mask, features
  with too few valid values get the running statistics instead."""
  mask_v = None if mask is None else to_view(jnp.broadcast_to(mask, x_in.shape), lay)
  mean_b, var_b, count_b = moments(to_view(x_in, lay), lay.reduce_axes, mask_v, lay.local_axis, axis_index_groups,
                                    variance)
  if mask is None:
    return mean_b, var_b, count_b, None
  valid = count_b >= (2.0 if strict_batch else 1.0)
  mean_b = jnp.where(valid, mean_b, lift(run_mean, lay))
  var_b = jnp.where(valid, var_b, lift(run_var, lay))
  return mean_b, var_b, count_b, valid


def pool(lay: Layout, mean_b, var_b, count_b, valid, axis_name, axis_index_groups, unbiased):
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


def update(state, mean, var, momentum, updated=None):
  """The running statistics after folding in ``(mean, var)``: the state's own type with ``mean``, ``var``, ``count``
  replaced (features where ``updated`` is False keep theirs)."""
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
    return state._replace(mean=new_mean, var=new_var, count=state.count + 1)
  return state._replace(
      mean=jnp.where(updated, new_mean, state.mean.astype(mean_dtype)),
      var=jnp.where(updated, new_var, state.var),
      count=state.count + jnp.any(updated).astype(state.count.dtype),
  )


def running_update(state, lay: Layout, mean_b, var_b, count_b, valid, *, momentum, unbiased, axis_name,
                   axis_index_groups, skip_nonfinite: bool = False):
  """``(new running statistics (no gradient), (mean, var, count) behind them)``. ``skip_nonfinite``: a feature
  whose batch statistics are not finite keeps its running statistics."""
  mean_u, var_u, stored, n_stat, updated = pool(lay, mean_b, var_b, count_b, valid, axis_name, axis_index_groups, unbiased)
  mean_u, var_u, stored = lax.stop_gradient(mean_u), lax.stop_gradient(var_u), lax.stop_gradient(stored)
  if skip_nonfinite:
    finite = jnp.isfinite(mean_u) & jnp.isfinite(stored)
    updated = finite if updated is None else updated & finite
  new_state = update(state, mean_u, stored, momentum, updated)
  if updated is not None:
    mean_u, var_u = jnp.where(updated, mean_u, state.mean), jnp.where(updated, var_u, state.var)
  return new_state, (mean_u, var_u, n_stat)

