"""Flax NNX adapter for the pure core :func:`bn.norm.batch_norm`.

:class:`BatchNorm` is a drop-in for ``flax.nnx.BatchNorm`` (flax 0.12): the same
constructor, the same attributes ``mean``/``var`` (``nnx.BatchStat``) and
``scale``/``bias`` (``nnx.Param`` or None), the same ``__call__``, and the same
``.train()`` / ``.eval()`` / ``nnx.view(..., use_running_average=...)``
behaviour. All math lives in :mod:`bn.norm`.

Conventions (as in :mod:`bn.norm`):

* ``momentum`` follows Flax: ``running = momentum * running + (1 - momentum) * batch``.
  PyTorch's ``momentum=0.1`` is ``momentum=0.9`` here. ``momentum=None`` is a
  cumulative equal-weight average; only then a ``count`` BatchStat exists.
* The running variance is the biased batch variance (Flax), unless ``unbiased=True``.
* Running statistics are float32 and statistics are computed in at least
  float32.

The known differences from ``flax.nnx.BatchNorm`` are listed in
:class:`BatchNorm`'s docstring.
"""

from __future__ import annotations

import typing as tp
from types import MappingProxyType

import jax
import jax.numpy as jnp
try:
  import flax  # noqa: F401  (the adapters need Flax; the pure core bn.batch_norm does not)
except ModuleNotFoundError as e:  # pragma: no cover - exercised by the core-only install test
  raise ModuleNotFoundError("bn.nnx needs Flax, which is not installed: pip install 'bn-lab[flax]' "
                            "(in a clone: pip install -e '.[flax]'). The pure functions (bn.batch_norm, ...) work without it.") from e
from flax import nnx
from flax.nnx.nn import dtypes, initializers

from bn._adapter import call_core, layer_options
from bn.norm import BNOptions, BNState, Noise

Array = jax.Array


class BNStats(nnx.Intermediate):
  """Variable type of the sown batch statistics; collect them with
  ``nnx.capture(fn, bn.nnx.BNStats)`` (entries ``mean`` and ``var``, tuples with
  one element per training call)."""


class BatchNorm(nnx.Module):
  """Batch Normalization; a drop-in for ``flax.nnx.BatchNorm`` with research extras.

  Flax's arguments (same meaning and defaults):
    num_features: number of features on ``axis``.
    use_running_average: normalize with the running statistics (eval) instead
      of the batch statistics (train); ``.train()`` / ``.eval()`` set it.
    axis: the feature axis; statistics reduce over all other axes.
    momentum: Flax convention, ``running = momentum * running + (1 - momentum) * batch``
      (PyTorch's 0.1 == 0.9 here). ``None``: cumulative average, with a
      ``count`` BatchStat (absent otherwise, as in Flax).
    epsilon: added to the variance.
    dtype: the dtype inputs and parameters are promoted to (default: their result type).
    param_dtype: dtype of ``scale`` and ``bias``.
    use_bias, use_scale, bias_init, scale_init, bias_metadata, scale_metadata:
      the affine parameters.
    axis_name, axis_index_groups: synchronize statistics across a mapped axis
      (merged by count: exact for unequal per-device batches).
    use_fast_variance: ``True`` -> ``E[x^2] - E[x]^2`` (core ``variance='fast'``),
      ``False`` -> two-pass ``E[(x - E[x])^2]``.
    promote_dtype: promotes ``(x, mean, var, scale, bias)`` to a common dtype;
      here only ``x``, ``scale`` and ``bias`` are taken from its result.
    rngs: ``nnx.Rngs``; ``params`` keys for the initializers (as in Flax) and,
      only when ``noise`` is set, a forked ``'noise'`` stream (falls back to
      ``'default'``; then the layer also holds that stream's RngKey/RngCount state).

  Extras (all off by default):
    ghost_batch_size: normalize each chunk of this many examples (axis 0) with
      its own statistics (Ghost BN).
    r_max, d_max: Batch Renormalization clip values; off when both are None.
      If only one is set the other correction is disabled (``r_max=1`` / ``d_max=0``).
      The call-time keyword ``renorm=(r_max, d_max)`` overrides both.
    noise: a :class:`bn.Noise` applied in training; keys come from the
      call-time ``rngs=`` if given, else from the stream forked at construction.
    population: in training normalize with the running statistics but still
      update them (no batch-statistics noise).
    unbiased: store the unbiased (``n / (n - 1)``) running variance (PyTorch).
    population_noise: with ``population=True``, perturb the normalization by the
      sampling noise of the statistics of groups of this many examples (core
      ``population_noise``); keys as for ``noise``.
    stats_gradient: ``False``: no gradient through the batch mean and variance.
    strict_batch: ``False`` (default, Flax's behaviour): a feature with a single
      value in the batch gets variance 0 (the output is ``bias``), e.g. under a
      per-example ``nnx.vmap``. ``True``: the core's error for fewer than 2
      values per feature (a traced mask instead keeps and uses the running
      statistics of such features).
    variance: the core's estimator, ``"shifted"``, ``"two_pass"`` or ``"fast"``
      (:func:`bn.batch_norm`); when set it wins over ``use_fast_variance``, which
      stays Flax's alias (``True`` -> ``"fast"``, ``False`` -> ``"two_pass"``).
    options: a :class:`bn.BNOptions` with any core option (also ones without an
      argument here, e.g. ``skip_nonfinite``); the arguments above that are left
      at their defaults take its values, the others replace them.

  Known differences from ``flax.nnx.BatchNorm`` (everything else agrees to
  float rounding, outputs, running statistics and gradients):

  * a feature with *no* valid value under ``mask``: Flax returns NaN and pulls
    NaN into its running statistics; here the running statistics of that feature
    stay unchanged and it is normalized with them (finite output);
  * masked positions holding NaN/inf: Flax's outputs there are NaN/inf and its
    parameter gradients NaN; here such values pass through to the output
    unchanged and reach no gradient (finite values at masked positions are
    normalized exactly as in Flax);
  * statistics are always computed in at least float32 and the running
    statistics stay float32: with ``dtype=bfloat16`` Flax normalizes with bf16
    running statistics at eval, this adapter with the float32 ones (then casts
    to ``dtype``);
  * complex inputs: Flax casts the complex batch mean into its float32 running
    mean (dropping the imaginary part, with a ComplexWarning); here the running
    mean becomes complex, as in ``flax.linen.BatchNorm``;
  * with ``axis_name`` the statistics are merged by count (exact for devices
    holding different numbers of valid values); Flax averages per-device means;
  * with ``momentum=None`` a ``count`` BatchStat exists (Flax has no such option).

  Probes: inside ``nnx.capture(fn, bn.nnx.BNStats)`` a training call sows the
  batch statistics it used (biased, pooled over ghosts and devices) as
  ``mean`` and ``var``; outside a capture nothing is stored.
  """

  def __init__(
      self,
      num_features: int,
      *,
      use_running_average: bool | None = False,
      axis: int = -1,
      momentum: float | None = 0.99,
      epsilon: float = 1e-5,
      dtype: tp.Any = None,
      param_dtype: tp.Any = jnp.float32,
      use_bias: bool = True,
      use_scale: bool = True,
      bias_init: tp.Callable = initializers.zeros_init(),
      scale_init: tp.Callable = initializers.ones_init(),
      axis_name: str | None = None,
      axis_index_groups: tp.Any = None,
      use_fast_variance: bool = True,
      promote_dtype: tp.Callable = dtypes.promote_dtype,
      rngs: nnx.Rngs,
      bias_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
      scale_metadata: tp.Mapping[str, tp.Any] = MappingProxyType({}),
      ghost_batch_size: int | None = None,
      r_max: float | None = None,
      d_max: float | None = None,
      noise: Noise | None = None,
      population: bool = False,
      unbiased: bool = False,
      population_noise: int | None = None,
      stats_gradient: bool = True,
      strict_batch: bool = False,
      variance: str | None = None,
      options: BNOptions | None = None,
  ):
    feature_shape = (num_features,)
    self.mean = nnx.BatchStat(jnp.zeros(feature_shape, jnp.float32))
    self.var = nnx.BatchStat(jnp.ones(feature_shape, jnp.float32))
    if momentum is None:
      self.count = nnx.BatchStat(jnp.zeros((), jnp.int32))

    self.scale: nnx.Param[jax.Array] | None
    if use_scale:
      self.scale = nnx.Param(scale_init(rngs.params(), feature_shape, param_dtype), **scale_metadata)
    else:
      self.scale = nnx.data(None)
    self.bias: nnx.Param[jax.Array] | None
    if use_bias:
      self.bias = nnx.Param(bias_init(rngs.params(), feature_shape, param_dtype), **bias_metadata)
    else:
      self.bias = nnx.data(None)
    noisy = noise is not None or population_noise is not None or (options is not None and (options.noise is not None or options.population_noise is not None))
    if noisy and ("noise" in rngs or "default" in rngs):
      self.rngs = rngs["noise"].fork()
    else:
      self.rngs = nnx.data(None)

    self.num_features = num_features
    self.use_running_average = use_running_average
    self.axis = axis
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.use_bias = use_bias
    self.use_scale = use_scale
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype
    self.ghost_batch_size = ghost_batch_size
    self.r_max = r_max
    self.d_max = d_max
    self.noise = noise
    self.population = population
    self.unbiased = unbiased
    self.population_noise = population_noise
    self.stats_gradient = stats_gradient
    self.strict_batch = strict_batch
    self.variance = variance
    self.options = options

  def __call__(
      self,
      x,
      use_running_average: bool | None = None,
      *,
      mask: Array | None = None,
      renorm=None,
      rngs: nnx.Rngs | nnx.RngStream | Array | None = None,
  ):
    """Normalizes ``x``; in training also updates ``mean``/``var`` (and ``count``).

    Args:
      x: input, features on ``self.axis``.
      use_running_average: overrides the attribute (takes precedence, as in Flax).
      mask: boolean, broadcastable to ``x``; only True positions enter the statistics
        (values at False positions never matter, NaN included).
      renorm: ``(r_max, d_max)`` or :class:`bn.Renorm` of (traced) scalars;
        overrides the ``r_max``/``d_max`` attributes for this call.
      rngs: key source for ``noise`` (``nnx.Rngs`` -> its ``'noise'`` stream,
        an ``nnx.RngStream``, or a key); overrides the stream stored at construction.

    Returns:
      The normalized input, same shape as ``x``.
    """
    if use_running_average is None:
      use_running_average = self.use_running_average
    if use_running_average is None:
      raise ValueError(
          "No `use_running_average` argument was provided to BatchNorm: pass it to the constructor, "
          "to __call__, or use model.train() / model.eval() / nnx.view(model, use_running_average=...)."
      )
    scale = self.scale[...] if self.scale is not None else None
    bias = self.bias[...] if self.bias is not None else None
    x, _, _, scale, bias = self.promote_dtype((x, self.mean[...], self.var[...], scale, bias), dtype=self.dtype)
    count = self.count[...] if self.momentum is None else jnp.zeros((), jnp.int32)
    state = BNState(self.mean[...], self.var[...], count)
    train = not use_running_average
    o = layer_options(self, renorm)
    noisy = o.noise is not None or o.population_noise is not None
    key = self._noise_key(rngs) if train and noisy else None

    y, new_state, stats = call_core(self, x, scale, bias, state, train=train, mask=mask, axis_name=self.axis_name, renorm=renorm,
                                    key=key)
    if train:
      if new_state.mean.dtype == self.mean.dtype:
        self.mean[...] = new_state.mean
      else:  # a complex batch mean makes the running mean complex (flax.linen keeps it too)
        self.mean.set_value(new_state.mean)
      self.var[...] = new_state.var
      if self.momentum is None:
        self.count[...] = new_state.count
      if hasattr(self, "__captures__"):  # inside nnx.capture; outside, sow would add attributes
        self.sow(BNStats, "mean", stats.mean)
        self.sow(BNStats, "var", stats.var)
    return y

  def _noise_key(self, rngs) -> Array:
    rngs = self.rngs if rngs is None else rngs
    if isinstance(rngs, nnx.Rngs):
      return rngs["noise"]()
    if isinstance(rngs, nnx.RngStream):
      return rngs()
    if isinstance(rngs, jax.Array):
      return rngs
    if rngs is None:
      raise ValueError(
          "BatchNorm(noise=... or population_noise=...) draws random noise in training but has no rng stream: "
          "construct it with rngs=nnx.Rngs(0) (or a 'noise' stream) or call layer(x, rngs=nnx.Rngs(noise=key))."
      )
    raise TypeError(f"rngs must be nnx.Rngs, nnx.RngStream or a key array, got {type(rngs).__name__}.")

  def set_view(self, use_running_average: bool | None = None):
    """Class method used by ``nnx.view``.

    Args:
      use_running_average: if True, the stored batch statistics will be
        used instead of computing the batch statistics on the input.
    """
    if use_running_average is not None:
      self.use_running_average = use_running_average
