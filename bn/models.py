"""Flax Linen models with a ``norm=`` switch: MLP (Ioffe & Szegedy), small CNN, VGG, ResNet-20.

Every model:

* takes ``(x, train: bool, renorm=None)`` -- ``renorm`` is an optional
  ``(r_max, d_max)`` pair of arrays for Batch Renorm schedules;
* groups its parameters by layer at the top level (``layer0``, ``layer1``, ...,
  ``head``) so probes can split gradients and updates by layer;
* sows the input of every nonlinearity as ``intermediates/<layer>/preact``
  (read it with ``mutable=['intermediates']``).

The normalizer is described by a hashable :class:`NormSpec`; its ``kind`` is one
of :data:`NORM_KINDS`, and ``position`` puts it before (``"pre"``, Ioffe's
choice) or after (``"post"``) the nonlinearity. A model class says whether it
convolves (:func:`is_convolutional`), which is what the engine's layout choice
for XLA:CPU is keyed on.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

import bn
from bn import linen as bn_linen

NORM_KINDS = ("batch", "ghost", "renorm", "noisy", "population", "group", "layer", "none")
ACTIVATIONS: dict[str, Callable] = {
    "sigmoid": nn.sigmoid,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
    "linear": lambda x: x,
}


POSITIONS = ("pre", "post")
# The models' BN options unless a NormSpec says otherwise: the core's, with Flax's batch of one and two-pass variance.
MODEL_OPTIONS = bn.BNOptions(variance="two_pass", strict_batch=False)


@dataclasses.dataclass(frozen=True)
class NormSpec:
  """Which normalizer, where, and its options (hashable: a Linen attribute).

  ``options`` is the core's :class:`bn.BNOptions`, passed to the BN layers as it is, except
  what ``kind`` decides (:meth:`bn_options`): ``ghost`` needs ``options.ghost_batch_size``
  (which every batch-statistics kind honours), ``noisy`` adds ``options.noise`` (default
  ``bn.Noise()``), ``population`` sets ``population=True`` (and keeps ``population_noise``),
  ``renorm`` clips at ``r_max=1, d_max=0`` unless the call passes its schedule's clips."""

  kind: str = "batch"
  position: str = "pre"  # "pre": dense -> norm -> act (Ioffe); "post": dense -> act -> norm
  options: bn.BNOptions = MODEL_OPTIONS
  num_groups: int = 8  # kind="group": the largest divisor of the channel count not above it; 0: C/2 groups (Wu & He for C < 64)
  affine: bool = True  # False: scale and bias frozen at 1 and 0 (BN and the per-example norms)
  axis_name: str | None = None  # data-parallel mesh axis (set by bn.parallel); None on one device
  per_device: bool = False  # with axis_name: each device normalizes with its own shard (ghost BN, ghost = shard)
  drift: float = 0.0  # > 0: a slow drift added to the normalizer's output (:class:`Drift`, an intervention: ICS put back)
  drift_period: float = 200.0  # the drift's shortest period in training steps (periods span [P, 2P))

  def __post_init__(self):
    if self.kind not in NORM_KINDS:
      raise ValueError(f"norm kind {self.kind!r} is not one of {NORM_KINDS}.")
    if self.position not in POSITIONS:
      raise ValueError(f"norm position {self.position!r} must be one of {POSITIONS}.")
    if not isinstance(self.options, bn.BNOptions):
      raise TypeError(f"NormSpec(options=...) must be bn.BNOptions, got {type(self.options).__name__}.")
    if self.kind == "ghost" and not self.options.ghost_batch_size:
      raise ValueError("norm kind 'ghost' needs ghost_batch_size (e.g. --config.norm.ghost_batch_size=16).")
    if self.options.population_noise and self.kind != "population" and not self.options.reference:
      raise ValueError(f"norm population_noise={self.options.population_noise} needs norm kind 'population' or a reference set (it "
                       "perturbs noise-free statistics); set --config.norm.kind=population or --config.norm.reference.")
    if self.options.reference and self.kind != "batch":
      raise ValueError(f"norm reference={self.options.reference} needs norm kind 'batch' (got {self.kind!r}).")
    bn.norm.check_options(self.bn_options())
    if not (math.isfinite(self.drift) and self.drift >= 0 and math.isfinite(self.drift_period) and self.drift_period > 0):
      raise ValueError(f"norm drift={self.drift} must be >= 0 and drift_period={self.drift_period} > 0 (training steps).")

  def bn_options(self) -> bn.BNOptions:
    """The options the BN layers get for this kind (see the class docstring)."""
    o = self.options
    return o._replace(noise=(o.noise or bn.Noise()) if self.kind == "noisy" else None, population=self.kind == "population",
                      population_noise=o.population_noise if self.kind == "population" or o.reference else None,
                      renorm=bn.Renorm(1.0, 0.0) if self.kind == "renorm" else None)


def norm_spec(kind: str = "batch", position: str = "pre", *, num_groups: int = 8, affine: bool = True, **options) -> NormSpec:
  """A :class:`NormSpec` with ``options`` given as keywords over :data:`MODEL_OPTIONS`, e.g.
  ``norm_spec("ghost", ghost_batch_size=16, momentum=0.9)``."""
  return NormSpec(kind, position, MODEL_OPTIONS._replace(**options), num_groups, affine)


def activation(name: str) -> Callable:
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.") from None


class PerExampleNorm(nn.Module):
  """``bn.layer_norm`` / ``bn.group_norm`` with Linen parameters (no state)."""

  kind: str
  num_groups: int = 8
  epsilon: float = 1e-5
  affine: bool = True

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if self.affine:
      params = bn.BNParams(self.param("scale", nn.initializers.ones, (c,)), self.param("bias", nn.initializers.zeros, (c,)))
    else:
      params = bn.BNParams(None, None)
    if self.kind == "layer":
      return bn.layer_norm(x, params, None, epsilon=self.epsilon)[0]
    groups = max(c // 2, 1) if self.num_groups == 0 else _divisor_at_most(c, self.num_groups)
    return bn.group_norm(x, params, None, num_groups=groups, epsilon=self.epsilon)[0]


def _divisor_at_most(c: int, g: int) -> int:
  g = max(1, min(g, c))
  while c % g:
    g -= 1
  return g


class Norm(nn.Module):
  """The normalizer chosen by ``spec``; identity for ``kind="none"``.

  ``renorm``: the ``(r_max, d_max)`` clip values for ``kind="renorm"`` in training (the
  engine passes its warm-up schedule's values every step); without them a renorm layer
  clips at ``r_max=1, d_max=0``, i.e. trains as plain batch norm."""

  spec: NormSpec

  @nn.compact
  def __call__(self, x, train: bool, renorm=None):
    s = self.spec
    if s.kind == "none":
      return x
    if s.kind in ("layer", "group"):
      return PerExampleNorm(s.kind, s.num_groups, s.options.epsilon, s.affine, name="norm")(x)
    o = s.bn_options()
    if s.per_device and s.axis_name is not None and o.ghost_batch_size is None:
      o = o._replace(ghost_batch_size=x.shape[0])  # the device's whole shard is one ghost batch: per-device statistics
    layer = bn_linen.BatchNorm(options=o, axis_name=s.axis_name, use_scale=s.affine, use_bias=s.affine, name="bn")
    return layer(x, use_running_average=not train, renorm=renorm if s.kind == "renorm" else None)


class Drift(nn.Module):
  """A slow, data-independent drift of a layer's inputs: internal covariate shift put back on purpose.

  Adds ``amplitude * sqrt(2) * sin(2 pi t / P_j + phi_j)`` to unit ``j`` (its RMS over time is
  ``amplitude``, in units of the normalized output's std), with ``t`` the number of training calls
  so far (a ``batch_stats`` variable ``drift_step``, counted in training only; evaluation uses the
  current ``t``), periods ``P_j = period * (1 + frac(j sqrt 2))`` in ``[period, 2 period)`` and phases
  ``phi_j = 2 pi frac(j / golden ratio)``: fixed per unit, the same for every seed. Placed after the
  normalizer, before the nonlinearity (where Santurkar et al.'s noisy BN puts its noise), it moves the
  distribution of the next layer's inputs as training goes on without adding per-step jitter."""

  amplitude: float
  period: float

  @nn.compact
  def __call__(self, x, train: bool):
    t = self.variable("batch_stats", "drift_step", lambda: jnp.zeros((), jnp.int32))
    j = jnp.arange(x.shape[-1], dtype=jnp.float32)
    frac = lambda v: v - jnp.floor(v)  # noqa: E731
    periods = self.period * (1.0 + frac(j * math.sqrt(2.0)))
    phases = 2.0 * math.pi * frac(j * 0.6180339887498949)
    m = self.amplitude * math.sqrt(2.0) * jnp.sin(2.0 * math.pi * t.value.astype(jnp.float32) / periods + phases)
    if train and not self.is_initializing():
      t.value = t.value + 1
    return x + jnp.broadcast_to(m.astype(x.dtype), x.shape)


class Block(nn.Module):
  """One layer: linear map, normalizer, nonlinearity (order set by ``norm.position``).

  ``conv=None`` gives a Dense layer; otherwise a 3x3 (or ``conv``-sized) convolution."""

  features: int
  norm: NormSpec
  act: str = "relu"
  conv: tuple[int, int] | None = None
  strides: int = 1
  kernel_init: Any = nn.initializers.lecun_normal()
  dropout: float = 0.0  # > 0: dropout after the nonlinearity (and the normalizer), in training calls given a "noise" RNG

  @nn.compact
  def __call__(self, x, train: bool, renorm=None):
    bias = self.norm.kind == "none" or self.norm.position == "post"
    if self.conv is None:
      x = nn.Dense(self.features, use_bias=bias, kernel_init=self.kernel_init, name="linear")(x)
    else:
      x = nn.Conv(self.features, self.conv, strides=self.strides, padding="SAME", use_bias=bias, kernel_init=self.kernel_init, name="linear")(x)
    if self.norm.position == "pre":
      x = Norm(self.norm, name="norm")(x, train, renorm)
      if self.norm.drift:
        x = Drift(self.norm.drift, self.norm.drift_period, name="drift")(x, train)
    self.sow("intermediates", "preact", x)
    x = activation(self.act)(x)
    if self.norm.position == "post":
      x = Norm(self.norm, name="norm")(x, train, renorm)
      if self.norm.drift:
        x = Drift(self.norm.drift, self.norm.drift_period, name="drift")(x, train)
    if self.dropout and train and self.has_rng("noise"):  # precise-BN recalibration (no RNG) sees the net as evaluation does
      x = nn.Dropout(self.dropout, deterministic=False, rng_collection="noise")(x)
    return x


class MLP(nn.Module):
  """Fully connected net; the default is Ioffe & Szegedy's Fig. 1 setup
  (3 x 100 sigmoid units, BN before the sigmoid, small Gaussian init)."""

  convolutional: ClassVar[bool] = False
  widths: Sequence[int] = (100, 100, 100)
  num_classes: int = 10
  act: str = "sigmoid"
  norm: NormSpec = NormSpec()
  init_std: float | None = None  # None: LeCun normal; a float: N(0, init_std^2) ("small Gaussian")
  dropout: float = 0.0  # > 0: dropout of this rate after every hidden layer in training (a standard regularizer, for comparison)

  def __post_init__(self):
    if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
      raise ValueError(f"model dropout={self.dropout!r} must be a number in [0, 1) (--config.model.dropout).")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = True, renorm=None):
    x = x.reshape((x.shape[0], -1))
    init = nn.initializers.lecun_normal() if self.init_std is None else nn.initializers.normal(self.init_std)
    for i, w in enumerate(self.widths):
      x = Block(w, self.norm, self.act, kernel_init=init, dropout=self.dropout, name=f"layer{i}")(x, train, renorm)
    return nn.Dense(self.num_classes, kernel_init=init, name="head")(x)


def max_pool_2x2(x):
  """2x2 max-pooling, stride 2, VALID (an odd last row/column is dropped), NHWC.

  Same values and gradients as ``nn.max_pool(x, (2, 2), (2, 2))`` (the gradient goes to
  the first maximum of each window), written as argmax + gather over the four window
  elements: XLA:CPU runs max-pool's select-and-scatter gradient slowly (about a quarter
  of a small CNN's step; docs/benchmarks.md). Not ``x.max(axis=...)``:
  its gradient compares x with the max and divides by the number of matches, and where
  XLA computes the two copies of x with different rounding (seen at
  ``xla_backend_optimization_level=0`` after BN) nothing matches and the gradient is NaN."""
  n, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  windows = x[:, : h2 * 2, : w2 * 2].reshape(n, h2, 2, w2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h2, w2, c, 4)
  first_max = jnp.argmax(windows, axis=-1)
  return jnp.take_along_axis(windows, first_max[..., None], axis=-1)[..., 0]


class CNN(nn.Module):
  """Small CNN: conv blocks with 2x2 max-pooling after each stage, global average pool, linear head."""

  convolutional: ClassVar[bool] = True
  widths: Sequence[int] = (32, 64, 128)
  num_classes: int = 10
  act: str = "relu"
  norm: NormSpec = NormSpec()

  @nn.compact
  def __call__(self, x, train: bool = True, renorm=None):
    for i, w in enumerate(self.widths):
      x = Block(w, self.norm, self.act, conv=(3, 3), name=f"layer{i}")(x, train, renorm)
      if x.shape[1] > 1:
        x = max_pool_2x2(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


class VGG(nn.Module):
  """VGG-style net for 32x32 inputs: stages of conv blocks, max-pool between stages
  (Santurkar et al. trained a VGG on CIFAR-10). ``stages`` lists widths per stage."""

  convolutional: ClassVar[bool] = True
  stages: Sequence[Sequence[int]] = ((64,), (128,), (256, 256), (512, 512), (512, 512))
  num_classes: int = 10
  act: str = "relu"
  norm: NormSpec = NormSpec()

  @nn.compact
  def __call__(self, x, train: bool = True, renorm=None):
    i = 0
    for stage in self.stages:
      for w in stage:
        x = Block(w, self.norm, self.act, conv=(3, 3), name=f"layer{i}")(x, train, renorm)
        i += 1
      if x.shape[1] > 1:
        x = max_pool_2x2(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


class ResidualBlock(nn.Module):
  """Basic ResNet block (two 3x3 convs) with a 1x1 projection when the shape changes."""

  features: int
  strides: int
  norm: NormSpec

  @nn.compact
  def __call__(self, x, train: bool, renorm=None):
    y = Block(self.features, self.norm, "relu", conv=(3, 3), strides=self.strides, name="conv0")(x, train, renorm)
    bias = self.norm.kind == "none"
    y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=bias, name="conv1")(y)
    y = Norm(self.norm, name="norm1")(y, train, renorm)
    if x.shape != y.shape:
      x = nn.Conv(self.features, (1, 1), strides=self.strides, use_bias=bias, name="proj")(x)
      x = Norm(self.norm, name="proj_norm")(x, train, renorm)
    y = y + x
    self.sow("intermediates", "preact", y)
    return nn.relu(y)


class ResNet20(nn.Module):
  """ResNet-20 for CIFAR (He et al. 2016): 3 stages x 3 blocks, widths 16/32/64."""

  convolutional: ClassVar[bool] = True
  num_classes: int = 10
  widths: Sequence[int] = (16, 32, 64)
  blocks_per_stage: int = 3
  norm: NormSpec = NormSpec(position="pre")

  @nn.compact
  def __call__(self, x, train: bool = True, renorm=None):
    x = Block(self.widths[0], self.norm, "relu", conv=(3, 3), name="layer0")(x, train, renorm)
    i = 1
    for s, w in enumerate(self.widths):
      for b in range(self.blocks_per_stage):
        x = ResidualBlock(w, 2 if (s > 0 and b == 0) else 1, self.norm, name=f"layer{i}")(x, train, renorm)
        i += 1
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


MODELS = {"mlp": MLP, "cnn": CNN, "vgg": VGG, "resnet20": ResNet20}


def create(name: str, *, norm: NormSpec, num_classes: int, **kwargs) -> nn.Module:
  """Model by name (``mlp``, ``cnn``, ``vgg``, ``resnet20``) with keyword options."""
  try:
    cls = MODELS[name]
  except KeyError:
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}.") from None
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  unknown = set(kwargs) - fields
  if unknown:
    raise ValueError(f"model {name!r} has no option(s) {sorted(unknown)}; it takes {sorted(fields - {'norm', 'num_classes'})}.")
  kwargs = {k: tuple(map(tuple, v)) if k == "stages" else (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
  return cls(norm=norm, num_classes=num_classes, **kwargs)


def is_convolutional(model) -> bool:
  """Whether ``model`` runs convolutions (its class says so), e.g. to choose a program layout."""
  return bool(getattr(type(model), "convolutional", False))


def layer_names(params) -> tuple[str, ...]:
  """Top-level layer names in forward order (``layer0``, ``layer1``, ..., ``head``)."""
  names = [k for k in params if k.startswith("layer")]
  names.sort(key=lambda k: int(k[len("layer"):]))
  return tuple(names) + (("head",) if "head" in params else ())


def preacts(intermediates) -> dict[str, jax.Array]:
  """``{layer: input of its nonlinearity}`` from a sown ``intermediates`` collection."""
  out = {}
  for name in layer_names(intermediates):
    out[name] = intermediates[name]["preact"][0]
  return out
