"""Device-side input pipeline: standardization, a ``lax.scan``-friendly sampler, augmentation.

The datasets here fit in device memory, so they are put there once and batches
are drawn inside the compiled program -- no host round-trips::

    stats = data.channel_stats(ds.train.x)                # host, once
    train = pipeline.to_device(ds.train, stats)           # x float32 standardized, y int32
    state = pipeline.sampler_init(key, len(ds.train.y))   # shuffled epochs
    def step(carry, _):
      idx, sampler = pipeline.sampler_next(carry.sampler, 128)
      x, y = train.x[idx], train.y[idx]
      ...

Keeping ``x`` as uint8 on device (``to_device(split)``, 4x less memory) and
calling :func:`standardize` per batch, after :func:`augment`, works the same way.

Every function but :func:`eval_batches` (host NumPy) is pure and works under
``jit``, ``vmap`` and ``scan``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bn.data import ChannelStats, Split

Array = jax.Array
MODES = ("epoch", "replacement")


# ----------------------------------------------------------------------------- standardization


def standardize(x: Array, stats: ChannelStats) -> Array:
  """``(x / 255 - mean) / std`` in float32 for uint8 images (..., C) (channel axis last)."""
  shape = (1,) * (x.ndim - 1) + (-1,)
  mean = jnp.asarray(stats.mean, jnp.float32).reshape(shape)
  std = jnp.asarray(stats.std, jnp.float32).reshape(shape)
  return (x.astype(jnp.float32) / 255.0 - mean) / std


def to_device(split: Split, stats: ChannelStats | None = None, *, device=None) -> Split:
  """``split`` as device arrays (``device`` may be a Device or Sharding): with ``stats``,
  ``x`` is standardized float32 (computed on device); without, it stays uint8."""
  split = jax.device_put(Split(np.asarray(split.x), np.asarray(split.y, np.int32)), device)
  if stats is None:
    return split
  return Split(jax.jit(standardize)(split.x, stats), split.y)


def eval_batches(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices int32 (K, batch_size) covering ``range(n)`` in order, and a bool mask (K, batch_size)
  that is False on the padding (index 0) of the last batch -- for a fixed-shape scan over a split."""
  k = -(-n // batch_size)
  flat = np.arange(k * batch_size, dtype=np.int32)
  mask = flat < n
  return np.where(mask, flat, 0).reshape(k, batch_size), mask.reshape(k, batch_size)


# ----------------------------------------------------------------------------- sampler


class SamplerState(NamedTuple):
  """State of :func:`sampler_next`. A pytree; carry it through ``lax.scan``.

  ``key``: the base key (epoch ``e`` is shuffled with ``fold_in(key, e)``; step
  ``t`` of replacement sampling draws with ``fold_in(key, t)``); ``perm``: int32
  (n,) order of the current epoch, or (0,) in replacement mode (the mode is
  read from this static shape); ``pos``: int32 position in ``perm`` (steps taken,
  in replacement mode); ``epoch``: int32 index of the current epoch; ``n``:
  int32 number of examples."""

  key: Array
  perm: Array
  pos: Array
  epoch: Array
  n: Array


def _permutation(key: Array, epoch: Array, n: int) -> Array:
  """A random permutation of ``range(n)``: indices sorted by i.i.d. uint32 keys, in one sort.

  ``jax.random.permutation`` sorts twice for n > ~2^11 to break key ties; ties
  here (about n^2 / 2^33 pairs, 0.4 for n = 60000) keep index order, and one sort
  costs half as much (measurements: docs/benchmarks.md)."""
  bits = jax.random.bits(jax.random.fold_in(key, epoch), (n,), jnp.uint32)
  return lax.sort_key_val(bits, jnp.arange(n, dtype=jnp.int32))[1]


def sampler_init(key: Array, n: int, mode: str = "epoch") -> SamplerState:
  """A sampler over ``range(n)``: ``"epoch"`` (shuffled epochs without replacement) or ``"replacement"``.

  ``n`` must be a Python int (it fixes the permutation's shape)."""
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is not one of {MODES}.")
  if n < 1:
    raise ValueError(f"n={n}: a sampler needs at least one example.")
  zero = jnp.zeros((), jnp.int32)
  perm = _permutation(key, zero, n) if mode == "epoch" else jnp.zeros((0,), jnp.int32)
  return SamplerState(key, perm, zero, zero, jnp.asarray(n, jnp.int32))


def _epoch_next(state: SamplerState, batch_size: int) -> tuple[Array, SamplerState]:
  n = state.perm.shape[0]
  if batch_size > n:
    raise ValueError(f"batch_size={batch_size} is larger than the {n} examples of an epoch.")

  def same_epoch(s):
    return lax.dynamic_slice(s.perm, (s.pos,), (batch_size,)), s._replace(pos=s.pos + batch_size)

  def next_epoch(s):  # the batch is the tail of this epoch followed by the head of the next
    epoch = s.epoch + 1
    perm = _permutation(s.key, epoch, n)
    j = s.pos + jnp.arange(batch_size, dtype=jnp.int32)  # position in [old perm, new perm]
    idx = jnp.where(j < n, s.perm[jnp.minimum(j, n - 1)], perm[jnp.maximum(j - n, 0)])
    return idx, s._replace(perm=perm, pos=s.pos + batch_size - n, epoch=epoch)

  return lax.cond(state.pos + batch_size > n, next_epoch, same_epoch, state)


def sampler_next(state: SamplerState, batch_size: int) -> tuple[Array, SamplerState]:
  """The next ``batch_size`` indices (int32) and the new state.

  Epoch mode: the concatenated index stream is a sequence of permutations of
  ``range(n)`` (a batch may straddle two epochs); a new permutation is drawn
  only when the current one runs out, inside ``lax.cond``.

  Under ``vmap`` (many seeds), ``lax.cond`` stays a branch only while ``pos``
  is unbatched: call :func:`sampler_init` *inside* the vmapped function (``pos``
  then depends on no key and stays unbatched through ``scan``), or vmap with
  ``in_axes=SamplerState(0, 0, None, None, None)``. A batched ``pos`` (e.g. a
  state built by ``vmap(sampler_init)`` and passed in with ``in_axes=0``) turns
  the cond into a select that re-sorts all n indices on every step, three orders
  of magnitude slower for n = 60000 on CPU.

  Cost: the cond passes the n-element permutation through every step, plus one
  sort of n keys per epoch (measured in docs/benchmarks.md).

  Replacement mode: i.i.d. uniform draws from ``range(n)``; any batching is fine.

  A chunk of steps that knows its length draws its batches at once with
  :func:`sampler_take` (same indices, no per-step cond)."""
  if state.perm.shape[0]:
    return _epoch_next(state, batch_size)
  return _replacement_draw(state, state.pos, batch_size), state._replace(pos=state.pos + 1)


def _replacement_draw(state: SamplerState, t: Array, batch_size: int) -> Array:
  return jax.random.randint(jax.random.fold_in(state.key, t), (batch_size,), 0, state.n, jnp.int32)


def sampler_take(state: SamplerState, batch_size: int, num_steps: int) -> tuple[Array, SamplerState]:
  """The indices of the next ``num_steps`` batches, int32 ``(num_steps, batch_size)``, and the
  state after them: exactly what ``num_steps`` calls of :func:`sampler_next` return, row by row.

  Epoch mode: the permutations the chunk enters (at most ``ceil(num_steps * batch_size / n)``,
  known only on device) are drawn by a ``fori_loop`` into one buffer that starts with the
  current one; the chunk's indices are one slice of it. A ``lax.scan`` over the rows then
  needs no per-step ``lax.cond`` and carries no permutation (the per-step sampler passes the
  n-element permutation through its cond on every step; measured in docs/benchmarks.md).
  Memory: ``(ceil(num_steps * batch_size / n) + 1) * n`` int32 for the buffer, plus the rows.
  Under ``vmap`` keep ``pos`` unbatched (as for :func:`sampler_next`): the loop's trip count
  comes from it."""
  if num_steps < 0:
    raise ValueError(f"num_steps={num_steps} must be >= 0.")
  if not state.perm.shape[0]:
    t = state.pos + jnp.arange(num_steps, dtype=jnp.int32)
    idx = jax.vmap(lambda t: _replacement_draw(state, t, batch_size))(t)
    return idx.reshape(num_steps, batch_size), state._replace(pos=state.pos + num_steps)
  n = state.perm.shape[0]
  if batch_size > n:
    raise ValueError(f"batch_size={batch_size} is larger than the {n} examples of an epoch.")
  total = num_steps * batch_size
  if total == 0:
    return jnp.zeros((num_steps, batch_size), jnp.int32), state
  # Stream position p (from the start of the current permutation) holds buffer[p]; the last
  # index taken, pos + total - 1, lies in the permutation m positions on. pos <= n bounds m.
  bound = (n + total - 1) // n
  m = (state.pos + total - 1) // n
  buf = lax.dynamic_update_slice(jnp.zeros(((bound + 1) * n,), jnp.int32), state.perm, (0,))
  draw = lambda i, b: lax.dynamic_update_slice(b, _permutation(state.key, state.epoch + i, n), (i * n,))  # noqa: E731
  buf = lax.fori_loop(1, m + 1, draw, buf)
  idx = lax.dynamic_slice(buf, (state.pos,), (total,)).reshape(num_steps, batch_size)
  perm = lax.dynamic_slice(buf, (m * n,), (n,))
  return idx, state._replace(perm=perm, pos=state.pos + total - m * n, epoch=state.epoch + m)


# ----------------------------------------------------------------------------- augmentation


def random_flip(key: Array, x: Array) -> Array:
  """Mirrors each image of ``x`` (B, H, W, C) left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (x.shape[0],)).reshape(-1, 1, 1, 1)
  return jnp.where(flip, x[:, :, ::-1, :], x)


def random_crop(key: Array, x: Array, padding: int = 4) -> Array:
  """Pads each image of ``x`` (B, H, W, C) by ``padding`` zeros per side and crops an
  (H, W) window at a uniform offset in [0, 2 * padding]^2, independently per image."""
  if padding == 0:
    return x
  b, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1, jnp.int32)
  crop = lambda img, o: lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))  # noqa: E731
  return jax.vmap(crop)(padded, offsets)


def augment(key: Array, x: Array, *, flip: bool = True, padding: int = 4) -> Array:
  """CIFAR-style augmentation of a batch (B, H, W, C), any dtype: random crop with
  ``padding`` (zeros), then a random horizontal flip. Apply before :func:`standardize`
  to pad with black, as torchvision does; after it, the padding is the mean colour."""
  crop_key, flip_key = jax.random.split(key)
  x = random_crop(crop_key, x, padding)
  return random_flip(flip_key, x) if flip else x
