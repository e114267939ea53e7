"""The types of :mod:`bn.norm` (parameters, running state, options) and their checks.

Pure like :mod:`bn.norm` (no Flax, no files). Every public name here is re-exported by :mod:`bn.norm`
(and by ``bn``), which is where user code imports them from; the checks raise ``TypeError`` for a wrong
type and ``ValueError`` for a value out of range, naming the argument and the fix.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bn._moments import Layout, check_counts, group_size, is_bool, static_number

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
  (see "Too few values" in :mod:`bn.norm`'s docstring) report the running statistics."""

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


class BNOptions(NamedTuple):
  """Every option of :func:`bn.norm.batch_norm` as one value (defaults as :func:`bn.norm.batch_norm`'s).

  The Flax adapters gather their attributes into one (:mod:`bn.linen`, :mod:`bn.nnx`),
  and :class:`bn.models.NormSpec` embeds one, so an option is declared once, here:
  a new option is a new field (plus its check in :func:`check_options`, below, and its use in
  :func:`bn.norm.batch_norm`), and the adapters, models and configs pass it on unchanged.
  Per-call arguments (``mask``, ``key``, ``axis_name``, ``dtype``) are not options.

  ``batch_norm(x, p, s, train=True, options=opts, ghost_batch_size=8)`` takes ``opts``
  with ``ghost_batch_size`` replaced; ``opts._replace(...)`` does the same for a value."""

  momentum: float | None = 0.99
  epsilon: float = 1e-5
  axis: int | tuple[int, ...] = -1
  variance: str = "shifted"
  unbiased: bool = False
  ghost_batch_size: int | None = None
  renorm: Renorm | None = None
  noise: Noise | None = None
  population: bool = False
  population_noise: int | None = None
  stats_gradient: bool = True
  strict_batch: bool = True
  skip_nonfinite: bool = False
  reference: int | None = None


# ----------------------------------------------------------------------------- checks


def _check_flag(name: str, v) -> bool:
  if not is_bool(v):
    raise TypeError(f"{name}={v!r} must be a Python bool (True or False); a traced value cannot choose the code path.")
  return bool(v)


def _check_int(name: str, v, minimum: int) -> int:
  if is_bool(v) or not isinstance(v, (int, np.integer)):
    raise TypeError(f"{name}={v!r} must be an int (a number of examples), e.g. {name}=16.")
  if v < minimum:
    raise ValueError(f"{name}={v} must be >= {minimum}.")
  return int(v)


def _check_momentum(momentum):
  if momentum is None:
    return
  if is_bool(momentum) or (hasattr(momentum, "dtype") and jnp.issubdtype(momentum.dtype, jnp.bool_)):
    raise TypeError(f"momentum={momentum!r} is a bool; pass a number in [0, 1) such as 0.99 (Flax convention), or None.")
  if isinstance(momentum, str):
    raise TypeError(f"momentum={momentum!r} must be a number in [0, 1) or None.")
  m = static_number(momentum)
  if m is not None and not 0.0 <= m < 1.0:
    raise ValueError(
        f"momentum={momentum} is outside [0, 1). bn uses the Flax convention "
        "running = momentum * running + (1 - momentum) * batch; PyTorch's momentum=0.1 is momentum=0.9 here."
    )


def _check_epsilon(epsilon):
  if is_bool(epsilon) or isinstance(epsilon, str):
    raise TypeError(f"epsilon={epsilon!r} must be a positive number, e.g. epsilon=1e-5.")
  e = static_number(epsilon)
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
  r, d = static_number(renorm.r_max), static_number(renorm.d_max)
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
    v = static_number(getattr(noise, name))
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


def _check_state(state: BNState):
  """Running statistics that can hold an update: floating ``mean``/``var`` of at least float32 (the update
  is computed in float32 and stored in the state's own dtype) and an integer scalar ``count``."""
  for name, arr in (("mean", state.mean), ("var", state.var)):
    dt = jnp.asarray(arr).dtype
    ok = jnp.issubdtype(dt, jnp.inexact) and (name == "mean" or jnp.issubdtype(dt, jnp.floating))
    if not ok:
      raise TypeError(f"state.{name} has dtype {dt}; running statistics must be floating point (an integer state would truncate "
                      "every update): make the state with bn.init_state(num_features), or cast it with .astype(jnp.float32).")
    if jnp.finfo(dt).bits < 32:
      raise TypeError(f"state.{name} has dtype {dt}; running statistics must be stored in float32 or wider: in {dt} the updates "
                      "are lost to rounding (a bfloat16 count stops at 256) or overflow (float16 variance is inf above 65504). "
                      "Keep the state in float32 (bn.init_state does), whatever the input's dtype.")
  count = jnp.asarray(state.count)
  if count.shape != () or not jnp.issubdtype(count.dtype, jnp.integer):
    raise TypeError(f"state.count must be an integer scalar (the number of updates folded in), got dtype {count.dtype} and shape "
                    f"{count.shape}; make the state with bn.init_state(num_features).")


def check_options(options: BNOptions) -> BNOptions:
  """Checks every option that needs no input (types, ranges) and returns them with the ints made Python ints.

  Raises ``TypeError`` for a wrong type and ``ValueError`` for a value out of range, naming the option
  (e.g. ``momentum=1.5``) and the fix. Traced values (e.g. renorm clips of a schedule) are checked only
  when concrete; :mod:`bn.experiment` checks a config's values itself."""
  if not isinstance(options, BNOptions):
    raise TypeError(f"options must be bn.BNOptions(...), got {type(options).__name__}.")
  o = options
  for name in ("unbiased", "population", "stats_gradient", "strict_batch", "skip_nonfinite"):
    _check_flag(name, getattr(o, name))
  _check_momentum(o.momentum)
  _check_epsilon(o.epsilon)
  _check_variance(o.variance)
  _check_renorm(o.renorm)
  _check_noise(o.noise)
  ghost = None if o.ghost_batch_size is None else _check_int("ghost_batch_size", o.ghost_batch_size, 1)
  pop = None if o.population_noise is None else _check_int("population_noise", o.population_noise, 1)
  ref = None if o.reference is None else _check_int("reference", o.reference, 2)
  if pop is not None and not (o.population or ref):
    raise ValueError(f"population_noise={pop} perturbs noise-free statistics: it needs population=True or reference=R.")
  if ref is not None:
    clash = [n for n, on in (("ghost_batch_size", ghost), ("renorm", o.renorm), ("population", o.population)) if on]
    if clash:
      raise ValueError(f"reference={ref} normalizes with the statistics of a fixed reference set; it does not combine with "
                       f"{', '.join(clash)} (drop one of them).")
  return o._replace(ghost_batch_size=ghost, population_noise=pop, reference=ref)


def _options(options: BNOptions | None, changes: dict) -> BNOptions:
  """``options`` (default ``BNOptions()``) with the keyword ``changes`` (unknown keywords: TypeError)."""
  unknown = sorted(set(changes) - set(BNOptions._fields))
  if unknown:
    raise TypeError(f"batch_norm() got an unexpected keyword argument {unknown[0]!r}; its options are {', '.join(BNOptions._fields)} "
                    "(and the per-call mask, key, axis_name, axis_index_groups, dtype, return_stats).")
  if options is not None and not isinstance(options, BNOptions):
    raise TypeError(f"options must be bn.BNOptions(...), got {type(options).__name__}.")
  return (BNOptions() if options is None else options)._replace(**changes)


def _check_training(x32, lay: Layout, mask_np, *, axis_name, axis_index_groups, renorm, noise, population_noise, key,
                    strict_batch, reference=0):
  """Trace-time checks of a training call against its input."""
  _check_axis_name(axis_name)
  if jnp.iscomplexobj(x32) and (renorm is not None or population_noise is not None):
    raise ValueError("complex inputs support plain, ghost, masked, noisy and population BN; not renorm= or population_noise=.")
  if (noise is not None or population_noise is not None) and key is None:
    what = "noise=" if noise is not None else "population_noise="
    raise ValueError(f"{what} needs a PRNG key: pass key=jax.random.key(...) (a fresh one each step).")
  check_counts(x32, lay, mask_np, strict_batch, axis_index_groups)
  if population_noise is not None:
    group_size("population_noise", population_noise, jax.ShapeDtypeStruct((x32.shape[0] - reference, *x32.shape[1:]), x32.dtype)
               if reference else x32, lay.feature_axes)
    per_example = math.prod(x32.shape[a] for a in range(1, x32.ndim) if a not in lay.feature_axes)
    if population_noise * per_example < 2:
      raise ValueError(
          f"population_noise={population_noise} gives groups of {population_noise * per_example} value(s) per feature; "
          "the noise of a variance estimate needs at least 2 (a larger population_noise)."
      )
