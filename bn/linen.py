"""Flax Linen adapter for the pure core :func:`bn.norm.batch_norm`.

:class:`BatchNorm` is a drop-in for ``flax.linen.BatchNorm``: the same
attributes (names, order, defaults), the same ``__call__`` and the same
variables ``params/{scale,bias}`` and ``batch_stats/{mean,var}``, so
checkpoints move between the two. All math lives in :mod:`bn.norm`; this
module only maps Flax variables to ``BNParams``/``BNState`` and back.

Conventions (as in :mod:`bn.norm`):

* ``momentum`` follows Flax: ``running = momentum * running + (1 - momentum) * batch``.
  PyTorch's ``momentum=0.1`` is ``momentum=0.9`` here. ``momentum=None`` is a
  cumulative equal-weight average; only then a ``batch_stats/count`` variable exists.
* The running variance is the biased batch variance (Flax), unless ``unbiased=True``.
* Statistics are computed in at least float32 (also with
  ``force_float32_reductions=False``, which here only sets the running
  statistics' stored dtype to ``param_dtype`` as in Flax).

The known differences from ``flax.linen.BatchNorm`` are listed in
:class:`BatchNorm`'s docstring.

:func:`recalibrate` ("precise BN") re-estimates every layer's running
statistics as the equal-weight average over K batches.
"""

from __future__ import annotations

from typing import Any, Callable

try:
  import flax  # noqa: F401  (the adapters need Flax; the pure core bn.batch_norm does not)
except ModuleNotFoundError as e:  # pragma: no cover - exercised by the core-only install test
  raise ModuleNotFoundError("bn.linen needs Flax, which is not installed: pip install 'bn-lab[flax]' "
                            "(in a clone: pip install -e '.[flax]'). The pure functions (bn.batch_norm, ...) work without it.") from e
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import initializers
from flax.traverse_util import flatten_dict, unflatten_dict
from jax import lax

from bn._adapter import call_core, layer_options, sow_requested, sowing_stats
from bn.norm import BNOptions, BNState, Noise, _canonical_axes

Array = jax.Array


class BatchNorm(nn.Module):
  """Batch Normalization; a drop-in for ``flax.linen.BatchNorm`` with research extras.

  Flax's attributes (same meaning and defaults):
    use_running_average: normalize with the stored running statistics
      (eval) instead of the batch statistics (train).
    axis: feature axis (or axes); statistics reduce over all other axes.
    momentum: Flax convention, ``running = momentum * running + (1 - momentum) * batch``
      (PyTorch's 0.1 == 0.9 here). ``None``: cumulative average, with a
      ``batch_stats/count`` variable (absent otherwise, as in Flax).
    epsilon: added to the variance.
    dtype: output dtype; default as Flax, the result type of ``x``, ``scale`` and ``bias``.
    param_dtype: dtype of ``scale`` and ``bias``.
    use_bias, use_scale, bias_init, scale_init: the affine parameters.
    axis_name, axis_index_groups: synchronize statistics across a mapped axis
      (merged by count: exact for unequal per-device batches).
    use_fast_variance: ``True`` -> ``E[x^2] - E[x]^2`` (core ``variance='fast'``),
      ``False`` -> two-pass ``E[(x - E[x])^2]``.
    force_float32_reductions: ``True`` stores the running statistics in float32,
      ``False`` in ``param_dtype``; statistics are always computed (and updated) in
      >= float32, but *stored* in ``param_dtype``: with float16 a running variance
      above 65504 (a feature std above ~256) is stored as inf, as in Flax. Keep the
      default for float16 parameters.

  Extras (all off by default):
    ghost_batch_size: normalize each chunk of this many examples (axis 0) with
      its own statistics (Ghost BN).
    r_max, d_max: Batch Renormalization clip values; off when both are None.
      If only one is set the other correction is disabled (``r_max=1`` / ``d_max=0``).
      The call-time keyword ``renorm=(r_max, d_max)`` overrides both; pass arrays
      so a schedule changes them every step without recompiling.
    noise: a :class:`bn.Noise` applied in training; draws from the ``'noise'``
      rng stream (``apply(..., rngs={'noise': key})``).
    population: in training normalize with the running statistics but still
      update them (no batch-statistics noise).
    unbiased: store the unbiased (``n / (n - 1)``) running variance (PyTorch).
    population_noise: with ``population=True``, perturb the normalization by the
      sampling noise of the statistics of groups of this many examples (core
      ``population_noise``); draws from the ``'noise'`` rng stream.
    stats_gradient: ``False``: no gradient through the batch mean and variance.
    strict_batch: ``False`` (default, Flax's behaviour): a feature with a single
      value in the batch gets variance 0 (the output is ``bias``), e.g. under a
      per-example ``jax.vmap``. ``True``: the core's error for fewer than 2
      values per feature (a traced mask instead keeps and uses the running
      statistics of such features).
    variance: the core's estimator, ``"shifted"``, ``"two_pass"`` or ``"fast"``
      (:func:`bn.batch_norm`); when set it wins over ``use_fast_variance``, which
      stays Flax's alias (``True`` -> ``"fast"``, ``False`` -> ``"two_pass"``).
    options: a :class:`bn.BNOptions` with any core option (also ones without an
      attribute here, e.g. ``skip_nonfinite``); the attributes above that are left
      at their defaults take its values, the others replace them.
    sow_stats: sow the batch statistics used (see Probes below).

  Known differences from ``flax.linen.BatchNorm`` (everything else agrees to
  float rounding, outputs, running statistics and gradients):

  * a feature with *no* valid value under ``mask``: Flax returns NaN and pulls
    NaN into its running statistics; here the running statistics of that feature
    stay unchanged and it is normalized with them (finite output);
  * masked positions holding NaN/inf: Flax's outputs there are NaN/inf and its
    parameter gradients NaN; here such values pass through to the output
    unchanged and reach no gradient (finite values at masked positions are
    normalized exactly as in Flax);
  * statistics are always computed in at least float32, also with
    ``force_float32_reductions=False``;
  * with ``axis_name`` the statistics are merged by count (exact for devices
    holding different numbers of valid values); Flax averages per-device means;
  * with ``momentum=None`` a ``batch_stats/count`` variable exists (Flax has no
    such option).

  Initialization: as in Flax, running statistics are not updated and
  ``axis_name`` is not used while ``self.is_initializing()``; in addition ghost
  batches and noise are off and ``strict_batch`` does not apply (a single value
  per feature gives Flax's output), so any dummy input initializes the layer.

  Probes: with ``sow_stats=True`` a training call (not at init) sows the batch
  statistics it used -- the biased mean and variance, pooled over ghost batches and
  devices -- as ``bn_stats/mean`` and ``bn_stats/var`` (tuples, one entry per call;
  a no-op unless ``'bn_stats'`` is mutable). Off by default, as in Flax, whose layer
  writes only ``batch_stats``: with ``apply(..., mutable=True)`` a sown collection
  comes back, and fed back in it would grow by one entry per call and step.
  :func:`recalibrate` turns sowing on for its own calls.
  """

  use_running_average: bool | None = None
  axis: int = -1
  momentum: float | None = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Callable = initializers.zeros
  scale_init: Callable = initializers.ones
  axis_name: str | None = None
  axis_index_groups: Any = None
  use_fast_variance: bool = True
  force_float32_reductions: bool = True
  ghost_batch_size: int | None = None
  r_max: float | None = None
  d_max: float | None = None
  noise: Noise | None = None
  population: bool = False
  unbiased: bool = False
  population_noise: int | None = None
  stats_gradient: bool = True
  strict_batch: bool = False
  variance: str | None = None
  options: BNOptions | None = None
  sow_stats: bool = False

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *, mask: Array | None = None, renorm=None):
    """Normalizes ``x``; updates ``batch_stats`` in training (not at init).

    Args:
      x: input, features on ``self.axis``.
      use_running_average: overrides the attribute (one of the two must be set).
      mask: boolean, broadcastable to ``x``; only True positions enter the statistics
        (values at False positions never matter, NaN included).
      renorm: ``(r_max, d_max)`` or :class:`bn.Renorm` of (traced) scalars;
        overrides the ``r_max``/``d_max`` attributes for this call.

    Returns:
      The normalized input, same shape as ``x``.
    """
    use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    x = jnp.asarray(x)
    feature_axes = _canonical_axes(x.ndim, self.axis)
    feature_shape = tuple(x.shape[a] for a in feature_axes)

    stat_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, stat_dtype), feature_shape)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, stat_dtype), feature_shape)
    ra_count = self.variable("batch_stats", "count", lambda: jnp.zeros((), jnp.int32)) if self.momentum is None else None
    scale = self.param("scale", self.scale_init, feature_shape, self.param_dtype) if self.use_scale else None
    bias = self.param("bias", self.bias_init, feature_shape, self.param_dtype) if self.use_bias else None

    count = jnp.zeros((), jnp.int32) if ra_count is None else ra_count.value
    state = BNState(ra_mean.value, ra_var.value, count)
    train = not use_running_average
    initializing = self.is_initializing()
    key = None
    if train and not initializing:
      o = layer_options(self, renorm)
      if o.noise is not None or o.population_noise is not None:
        if not self.has_rng("noise"):
          what = "noise" if o.noise is not None else "population_noise"
          raise ValueError(
              f"BatchNorm({what}=...) draws random noise in training: pass an rng stream named 'noise', "
              "e.g. model.apply(variables, x, rngs={'noise': key}, mutable=['batch_stats'])."
          )
        key = self.make_rng("noise")

    y, new_state, stats = call_core(self, x, scale, bias, state, train=train, mask=mask,
                                    axis_name=None if initializing else self.axis_name, renorm=renorm, key=key,
                                    initializing=initializing)
    if train and not initializing:
      ra_mean.value, ra_var.value = new_state.mean, new_state.var
      if ra_count is not None:
        ra_count.value = new_state.count
      if sow_requested(self):
        self.sow("bn_stats", "mean", stats.mean)
        self.sow("bn_stats", "var", stats.var)
    return y


def recalibrate(apply_fn: Callable[..., tuple[Any, Any]], variables, batches):
  """Precise BN: running statistics = equal-weight average over K batches.

  Every :class:`BatchNorm` layer's ``batch_stats/mean`` and ``batch_stats/var``
  become the plain average of the batch statistics it used on the K batches
  (the biased batch variance, Flax convention), instead of an exponential
  moving average dominated by the last few hundred steps of training. Each
  batch is run with the *given* ``variables``; a layer called several times
  per batch averages all its calls. Layers with ``momentum=None`` also get
  ``count = K``, so later updates continue the same average.

  Args:
    apply_fn: runs the model in *training* mode on one batch with the given
      variables, with the signature of ``Module.apply``:
      ``apply_fn(variables, batch, mutable=...) -> (output, mutated)``;
      it is called with ``mutable=['batch_stats', 'bn_stats']``. E.g.
      ``functools.partial(model.apply, train=True)``, or a lambda that takes the
      rng for dropout/noise from ``batch``.
    variables: the model's variables (with a ``batch_stats`` collection).
    batches: a pytree whose leaves stack K batches on a leading axis, e.g. an
      array of shape (K, B, ...); ``batch`` is one slice of it. The K batches
      are visited with ``lax.scan`` (one compiled forward pass).

  Returns:
    A copy of ``variables`` with the recalibrated ``batch_stats``.

  Raises:
    ValueError: no layer sowed statistics (``apply_fn`` does not run the model
      in training mode, or the model has no ``bn.linen.BatchNorm``).
  """

  def batch_stats_of(batch):
    with sowing_stats():  # every bn.linen.BatchNorm sows the statistics it used, whatever its sow_stats says
      _, mutated = apply_fn(variables, batch, mutable=["batch_stats", "bn_stats"])
    sown = flatten_dict(dict(mutated.get("bn_stats", {})))
    return {path: sum(calls) / len(calls) for path, calls in sown.items()}

  first = jax.tree.map(lambda b: b[0], batches)
  shapes = jax.eval_shape(batch_stats_of, first)
  if not shapes:
    raise ValueError(
        "recalibrate found no sown 'bn_stats': apply_fn must run the model in training mode "
        "(e.g. functools.partial(model.apply, train=True)) and the model must use bn.linen.BatchNorm."
    )

  def body(total, batch):
    return jax.tree.map(jnp.add, total, batch_stats_of(batch)), None

  # the first batch's statistics start the sum (0 + b0 is b0: the same numbers as a sum from zeros), so the carry
  # has the statistics' own type, varying over a shard_map axis when they do (runs spread over devices)
  first_stats = jax.tree.map(lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), batch_stats_of(first))
  total, _ = lax.scan(body, first_stats, jax.tree.map(lambda b: b[1:], batches))
  k = jax.tree.leaves(batches)[0].shape[0]
  stats = flatten_dict(dict(variables["batch_stats"]))
  for path, value in total.items():
    if path not in stats:
      raise ValueError(f"sown statistics {'/'.join(path)} have no matching batch_stats variable.")
    stats[path] = (value / k).astype(stats[path].dtype)
    count = path[:-1] + ("count",)
    if count in stats:
      stats[count] = jnp.full((), k, stats[count].dtype)
  return {**variables, "batch_stats": unflatten_dict(stats)}
