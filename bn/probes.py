"""Measurement probes for the explanations of Batch Normalization, as pure functions.

Every function here is jit-able and vmap-able (e.g. over seeds) and knows
nothing of models, optimizers or training loops. Conventions:

* ``params`` is a dict ``{layer_name: subtree}`` (for Linen pass
  ``variables['params']``). ``layers`` is the explicit order of the layers, a
  tuple of names; an entry may itself be a tuple of names that together form one
  layer, e.g. ``(('Dense_0', 'BatchNorm_0'), ('Dense_1', 'BatchNorm_1'))``.
  Parameters under names not listed are never moved and never measured.
* ``loss_fn(params) -> scalar`` is a closure over the batch, the model state and
  the BN mode; ``update_fn(grads) -> updates`` is one optimizer step's additive
  update (``lambda g: jax.tree.map(lambda t: -lr * t, g)`` for SGD, or a closure
  over an optax state).
* Activations arrive as ``{layer_name: array (N, ..., C)}``: the last axis is
  the unit (feature) axis, every other axis is flattened into samples.
* Per-layer results are arrays of shape ``(K,)`` in the order of ``layers``.
  Norms are Euclidean (Frobenius) norms over all leaves of a layer's subtree.
  Reductions run in float32 (float64 stays float64).
* Functions that evaluate the loss at many points use ``lax.map`` with
  ``batch_size``: ``None`` evaluates the points one after another (least memory);
  an integer evaluates that many at once with ``vmap``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Layers = Sequence["str | Sequence[str]"]

PERCENTILES = (15.0, 50.0, 85.0)
SATURATION = 4.0
SCALES = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)


# ----------------------------------------------------------------------------- pytree helpers


def _f(x):
  """Upcast to at least float32."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _sq_norm(tree) -> Array:
  return sum(jnp.sum(jnp.square(_f(x))) for x in jax.tree.leaves(tree))


def _dot(a, b) -> Array:
  return sum(jnp.sum(_f(x) * _f(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _sub(a, b):
  return jax.tree.map(lambda x, y: _f(x) - _f(y), a, b)


def _groups(layers: Layers) -> tuple[tuple[str, ...], ...]:
  if isinstance(layers, str):
    raise ValueError(f"layers={layers!r} must be a tuple of layer names, e.g. ('Dense_0', 'Dense_1'), not a string.")
  groups = tuple((g,) if isinstance(g, str) else tuple(g) for g in layers)
  names = [n for g in groups for n in g]
  if not groups or len(set(names)) != len(names):
    raise ValueError(f"layers={layers!r} must be a non-empty tuple of distinct parameter names.")
  return groups


def _check(params, groups):
  missing = [n for g in groups for n in g if n not in params]
  if missing:
    raise KeyError(f"layers {missing} are not keys of params (keys: {sorted(params)}); "
                   "pass the inner dict, e.g. variables['params'].")


def _pick(tree, group):
  return {n: tree[n] for n in group}


def _moved(params, delta, weights, groups):
  """``params + sum_k weights[k] * delta|_k``: layer k moved by its share of ``delta``, scaled."""
  out = dict(params)
  for k, group in enumerate(groups):
    for n in group:
      out[n] = jax.tree.map(lambda p, d, w=weights[k]: (p + w * d).astype(p.dtype), params[n], delta[n])
  return out


def layer_norms(tree, layers: Layers) -> Array:
  """``(K,)``: the Euclidean norm of each layer's subtree of ``tree`` (params, grads, updates)."""
  groups = _groups(layers)
  _check(tree, groups)
  return jnp.stack([jnp.sqrt(_sq_norm(_pick(tree, g))) for g in groups])


# ----------------------------------------------------------------------------- 1. layer-input statistics


class UnitStats(NamedTuple):
  """Statistics of one layer's inputs to its nonlinearity.

  Per unit (``units``): ``mean``, ``std`` of shape ``(C,)``; ``percentiles`` of
  shape ``(P, C)``; ``saturated`` ``(C,)``. Per layer (``layers``): the same
  fields averaged over units, shapes ``()`` and ``(P,)``."""

  mean: Array
  std: Array
  percentiles: Array
  saturated: Array


class ActStats(NamedTuple):
  """``units``: ``{layer: UnitStats per unit}``; ``layers``: ``{layer: UnitStats averaged over units}``."""

  units: dict
  layers: dict


def unit_stats(x: Array, *, percentiles: Sequence[float] = PERCENTILES, saturation: float = SATURATION) -> UnitStats:
  """Per-unit statistics of ``x`` of shape ``(N, ..., C)``, all leading axes flattened into samples.

  * ``mean``, ``std``: sample mean and *biased* (ddof=0) standard deviation.
  * ``percentiles``: ``np.percentile``'s default (linear interpolation between
    order statistics), at ``percentiles`` (Ioffe & Szegedy 2015, Fig. 1b/c plot
    the 15th/50th/85th percentiles of a sigmoid input).
  * ``saturated``: fraction of samples with ``|x| > saturation``. The default 4
    suits sigmoid inputs: sigmoid(4) = 0.982 and sigmoid'(4) = 0.018, 7% of its
    maximum sigmoid'(0) = 1/4. For tanh inputs pass 2 (tanh(x) = 2 sigmoid(2x) - 1,
    so tanh'(2)/tanh'(0) = 7% as well). The threshold is this project's choice.
  """
  x = _f(x)
  if x.ndim < 2:
    raise ValueError(f"activations of shape {x.shape} need a sample axis and a unit axis: (N, ..., C).")
  x = x.reshape(-1, x.shape[-1])
  return UnitStats(
      mean=jnp.mean(x, axis=0),
      std=jnp.std(x, axis=0),
      percentiles=jnp.percentile(x, jnp.asarray(percentiles, x.dtype), axis=0),
      saturated=jnp.mean((jnp.abs(x) > saturation).astype(x.dtype), axis=0),
  )


def _unit_mean(stats):
  return type(stats)(*(jnp.mean(a, axis=-1) for a in stats))


def activation_stats(acts: dict, *, percentiles: Sequence[float] = PERCENTILES,
                     saturation: float = SATURATION) -> ActStats:
  """:func:`unit_stats` for every layer of ``acts = {layer: (N, ..., C)}``, plus means over units."""
  units = {name: unit_stats(x, percentiles=percentiles, saturation=saturation) for name, x in acts.items()}
  return ActStats(units=units, layers={name: _unit_mean(s) for name, s in units.items()})


class StatGap(NamedTuple):
  """``mean = mean_c |mu_B - mu| / sqrt(var + eps)``; ``log_var = mean_c |log((var_B + eps) / (var + eps))|``."""

  mean: Array
  log_var: Array


def bn_stat_gap(batch_mean, batch_var, run_mean, run_var, *, epsilon: float = 1e-5):
  """Gap between a BN layer's batch statistics (mu_B, var_B) and its running ones (mu, var).

  Arguments are arrays ``(C,)`` or matching pytrees of them (``{layer: (C,)}``);
  returns a :class:`StatGap` of scalars per leaf (means over units). This is how
  far training-mode and inference-mode normalization differ on this batch: the
  mean gap is in units of the running standard deviation, the variance gap a
  log-ratio (0 when equal, log 2 when one is twice the other). Running variances
  stored unbiased (``unbiased=True`` in :mod:`bn.norm`) carry a factor n/(n-1).
  """
  def gap(mb, vb, mr, vr):
    mb, vb, mr, vr = map(_f, (mb, vb, mr, vr))
    return StatGap(mean=jnp.mean(jnp.abs(mb - mr) * lax.rsqrt(vr + epsilon)),
                   log_var=jnp.mean(jnp.abs(jnp.log((vb + epsilon) / (vr + epsilon)))))

  return jax.tree.map(gap, batch_mean, batch_var, run_mean, run_var)


# ----------------------------------------------------------------------------- 2. distributional ICS


class Shift(NamedTuple):
  """Per unit ``(C,)`` or averaged over units ``()``: ``mean = |mu' - mu| / sigma``,
  ``std = |sigma' - sigma| / sigma``, ``w2 = sqrt((mu' - mu)^2 + (sigma' - sigma)^2)``."""

  mean: Array
  std: Array
  w2: Array


class ShiftStats(NamedTuple):
  """``units``: ``{layer: Shift per unit}``; ``layers``: ``{layer: Shift averaged over units}``."""

  units: dict
  layers: dict


def _unit_shift(p: UnitStats, c: UnitStats, eps) -> Shift:
  dm, ds = c.mean - p.mean, c.std - p.std
  scale = jnp.maximum(p.std, eps)
  return Shift(mean=jnp.abs(dm) / scale, std=jnp.abs(ds) / scale, w2=jnp.sqrt(jnp.square(dm) + jnp.square(ds)))


def distribution_shift(prev, cur, *, eps: float = 1e-6) -> ShiftStats:
  """Change of the layer-input distributions between two :func:`activation_stats` results.

  Internal covariate shift in the sense of Ioffe & Szegedy (2015, arXiv
  1502.03167, §1-2): "the change in the distribution of network activations due
  to the change in network parameters during training".
  Per unit, with (mu, sigma) from ``prev`` and (mu', sigma') from ``cur``:
  ``|mu' - mu| / sigma``, ``|sigma' - sigma| / sigma`` (sigma floored at ``eps``),
  and the 2-Wasserstein distance between the Gaussian fits N(mu, sigma^2),
  N(mu', sigma'^2), which in one dimension is exactly
  ``W2^2 = (mu - mu')^2 + (sigma - sigma')^2`` (the L2 distance of the quantile
  functions). ``w2`` is in activation units; ``w2 / sigma = sqrt(mean^2 + std^2)``
  is its scale-free form. ``prev``/``cur`` may be :class:`ActStats` or their ``units``.
  """
  pu = prev.units if isinstance(prev, ActStats) else prev
  cu = cur.units if isinstance(cur, ActStats) else cur
  units = {name: _unit_shift(pu[name], cu[name], eps) for name in cu}
  return ShiftStats(units=units, layers={name: _unit_mean(s) for name, s in units.items()})


# ----------------------------------------------------------------------------- 3. gradient ICS


class GradICS(NamedTuple):
  """Per layer ``(K,)``: ``l2 = ||G - G'||``, ``cos = <G, G'> / (||G|| ||G'||)``, ``rel = l2 / ||G||``."""

  l2: Array
  cos: Array
  rel: Array


def _compare(g, g2, tiny):
  n, n2, d = _sq_norm(g), _sq_norm(g2), _sq_norm(_sub(g, g2))
  cos = _dot(g, g2) / jnp.maximum(jnp.sqrt(n) * jnp.sqrt(n2), tiny)
  return jnp.sqrt(d), cos, jnp.sqrt(d) / jnp.maximum(jnp.sqrt(n), tiny)


def gradient_ics(loss_fn: Callable, params: dict, update_fn: Callable, layers: Layers, *,
                 batch_size: int | None = None, select: Callable | None = None) -> GradICS:
  """Gradient internal covariate shift (Santurkar et al. 2018, arXiv 1805.11604, Def. 2.1).

  With all layers at step t and ``U = update_fn(grad L(params))``, for layer k
  (0-based in ``layers``)::

      G_k  = grad_{W_k} L(W_0, ..., W_{K-1})
      G'_k = grad_{W_k} L(W_0 + U_0, ..., W_{k-1} + U_{k-1}, W_k, ..., W_{K-1})

  on the same batch (``loss_fn``): the change of layer k's gradient caused only
  by the update of the layers before it. ``G'_0 = G_0``, so ``l2[0] = 0`` and
  ``cos[0] = 1``. Costs K gradient evaluations (``lax.map`` over k = 1..K-1).
  ``select(layer_subtree) -> subtree`` restricts the *compared* gradients (e.g. to a
  layer's weight matrix); the earlier layers still move by their whole update.
  """
  groups = _groups(layers)
  _check(params, groups)
  K = len(groups)
  g = jax.grad(loss_fn)(params)
  updates = update_fn(g)
  tiny = jnp.finfo(jnp.float32).tiny
  pick = (lambda t, gr: _pick(t, gr)) if select is None else (lambda t, gr: {n: select(t[n]) for n in gr})
  first = jnp.stack(_compare(pick(g, groups[0]), pick(g, groups[0]), tiny))

  def row(k):
    g2 = jax.grad(loss_fn)(_moved(params, updates, (jnp.arange(K) < k).astype(jnp.float32), groups))
    per_layer = jnp.stack([jnp.stack(_compare(pick(g, gr), pick(g2, gr), tiny)) for gr in groups])
    return per_layer[k]

  rows = [first[None]]
  if K > 1:
    rows.append(lax.map(row, jnp.arange(1, K), batch_size=batch_size))
  out = jnp.concatenate(rows, axis=0)
  return GradICS(l2=out[:, 0], cos=out[:, 1], rel=out[:, 2])


# ----------------------------------------------------------------------------- 4. landscape


class Landscape(NamedTuple):
  """Loss and gradient along ``-g`` at ``etas (S,)``; see :func:`landscape`."""

  etas: Array
  losses: Array
  grad_diffs: Array
  loss0: Array
  grad_norm: Array
  loss_variation: Array
  grad_predictiveness: Array
  beta_smoothness: Array


def landscape(loss_fn: Callable, params, lr, scales: Sequence[float] = SCALES, *,
              batch_size: int | None = None) -> Landscape:
  """Loss-landscape smoothness along the gradient (Santurkar et al. 2018, §3.1, Fig. 4).

  With ``g = grad L(w)`` and step sizes ``eta_s = scales[s] * lr`` (``lr`` may be
  traced)::

      losses[s]           = L(w - eta_s g)
      grad_diffs[s]       = ||grad L(w - eta_s g) - g||
      loss_variation      = max_s losses[s] - min_s losses[s]
      grad_predictiveness = max_s grad_diffs[s]
      beta_smoothness     = max_s grad_diffs[s] / (eta_s ||g||)

  (Santurkar et al. plot the range of the loss, the l2 change of the gradient,
  and the "effective beta-smoothness": the largest gradient change over the
  distance moved. The default grid spans [0.5, 4] x lr; L(w) itself is
  not in the range.) For a quadratic ``1/2 w^T A w`` the gradient change is
  ``eta A g`` exactly, so ``beta_smoothness = ||A g|| / ||g||`` for every grid.
  """
  loss0, g = jax.value_and_grad(loss_fn)(params)
  dtype = jnp.promote_types(jnp.result_type(loss0), jnp.float32)
  etas = jnp.asarray(scales, dtype) * jnp.asarray(lr, dtype)
  moved = lambda eta: jax.tree.map(lambda w, gi: (w - eta * gi).astype(w.dtype), params, g)

  def probe(eta):
    loss, g2 = jax.value_and_grad(loss_fn)(moved(eta))
    return _f(loss), jnp.sqrt(_sq_norm(_sub(g2, g)))

  losses, diffs = lax.map(probe, etas, batch_size=batch_size)
  gnorm = jnp.sqrt(_sq_norm(g))
  return Landscape(
      etas=etas, losses=losses, grad_diffs=diffs, loss0=_f(loss0), grad_norm=gnorm,
      loss_variation=jnp.max(losses) - jnp.min(losses),
      grad_predictiveness=jnp.max(diffs),
      beta_smoothness=jnp.max(diffs / jnp.maximum(etas * gnorm, jnp.finfo(dtype).tiny)),
  )


class RelativeLandscape(NamedTuple):
  """Loss and gradient along each layer's own gradient direction, in relative units; see :func:`landscape_relative`."""

  steps: Array
  losses: Array
  grad_changes: Array
  loss_variation: Array
  grad_predictiveness: Array
  beta_smoothness: Array


def column_norms(w, keepdims: bool = False) -> Array:
  """Norms of the columns of a weight array (every axis but the last, the units), shape (units,)
  (``keepdims``: ``(1, ..., 1, units)``, to broadcast against ``w``).

  A layer followed by BN is invariant to scaling each *unit's* incoming weights (a column)
  separately, not only to scaling the whole matrix."""
  w = _f(w)
  if w.ndim <= 1:
    return jnp.abs(w)
  return jnp.sqrt(jnp.sum(jnp.square(w), axis=tuple(range(w.ndim - 1)), keepdims=keepdims))


def unit_directions(tree, tiny=None) -> dict:
  """Each column of each array divided by its norm (a zero column stays zero)."""
  tiny = jnp.finfo(jnp.float32).tiny if tiny is None else tiny
  return jax.tree.map(lambda g: g / jnp.maximum(column_norms(g, keepdims=True), tiny), tree)


def normalized_parametrization(loss_fn: Callable, weights: dict):
  """``(loss_v, V0, D)``: the loss as a function of column-normalized weights ``V = W / D`` (each
  column of unit norm, ``D`` the column norms at the current point, held fixed), so ``L~(V) = L(V D)``.

  If ``L`` is invariant to scaling each column of ``W_k`` (a layer followed by BN, up to epsilon),
  then rescaling any columns of any layer changes ``D`` but neither ``V0`` nor the function ``L~``:
  every quantity computed from ``(loss_v, V0)`` -- gradients, Hessian blocks, losses along steps of
  ``V`` -- is invariant to BN's per-unit weight-scale symmetry. ``grad_V L~ = D grad_W L`` and
  ``Hess_V L~ = D Hess_W L D``; a step ``dV`` is the step ``D dV`` of ``W``: a move of each column
  relative to its own norm. For layers without the symmetry this is just a reparametrization."""
  D = {n: column_norms(w, keepdims=True) for n, w in weights.items()}
  V0 = {n: (w / jnp.maximum(D[n], jnp.finfo(jnp.float32).tiny)).astype(w.dtype) for n, w in weights.items()}
  return (lambda V: loss_fn({n: (V[n] * D[n]).astype(weights[n].dtype) for n in V})), V0, D


def landscape_relative(loss_fn: Callable, weights: dict, layers: Layers, rho, scales: Sequence[float] = SCALES, *,
                       batch_size: int | None = None) -> RelativeLandscape:
  """The landscape probe of :func:`landscape` in units that BN's weight-scale symmetry cannot change.

  ``weights = {layer: W_k}`` (one array per layer, its last axis the units) and ``loss_fn(weights)``.
  In the column-normalized parametrization (:func:`normalized_parametrization`: ``V = W / D``),
  with ``g = grad_V L~`` and step ``s = scales[i] * rho``, every column of every layer moves by the
  same relative distance ``s`` along its own gradient direction::

      V(s)                = V - s g_col / ||g_col||       (each column moves by s of its norm)
      grad_changes[i]     = ||grad_V L~(V(s)) - g||       (= ||D (grad_W L(W(s)) - grad_W L(W))||)
      loss_variation      = max_i L(V(s_i)) - min_i L(V(s_i))
      grad_predictiveness = max_i grad_changes[i]
      beta_smoothness     = max_i grad_changes[i] / (s_i sqrt(C))   (C columns: distance moved s sqrt(C))

  If ``L`` is invariant to scaling any column of any ``W_k`` (layers followed by BN), all three are
  unchanged by such scaling (``tests/test_probes_invariant.py`` checks per-unit random scales).
  Raw step sizes (:func:`landscape`) instead compare BN and no-BN nets at effective step sizes
  that differ by ``||W||^2`` (van Laarhoven 2017; Hoffer et al. 2018)."""
  groups = _groups(layers)
  _check(weights, groups)
  names = [g[0] for g in groups]
  if any(len(g) != 1 for g in groups):
    raise ValueError("landscape_relative takes one array per layer: layers=('W0', 'W1', ...), not groups.")
  loss_v, V0, _ = normalized_parametrization(loss_fn, {n: weights[n] for n in names})
  g = jax.grad(loss_v)(V0)
  d = unit_directions(g)
  columns = sum(int(np.prod(V0[n].shape[-1:])) if V0[n].ndim > 1 else int(V0[n].size) for n in names)
  dtype = jnp.promote_types(jnp.result_type(*jax.tree.leaves(V0)), jnp.float32)
  steps = jnp.asarray(scales, dtype) * jnp.asarray(rho, dtype)

  def probe(step):
    moved = {n: (V0[n] - step * d[n]).astype(V0[n].dtype) for n in names}
    loss, g2 = jax.value_and_grad(loss_v)(moved)
    return _f(loss), jnp.sqrt(_sq_norm(_sub(g2, g)))

  losses, changes = lax.map(probe, steps, batch_size=batch_size)
  return RelativeLandscape(
      steps=steps, losses=losses, grad_changes=changes,
      loss_variation=jnp.max(losses) - jnp.min(losses), grad_predictiveness=jnp.max(changes),
      beta_smoothness=jnp.max(changes / (steps * np.sqrt(columns))),
  )


# ----------------------------------------------------------------------------- 5. coupling


class Coupling(NamedTuple):
  """``raw``, ``normalized`` ``(K, K)``, summaries ``()`` and ``single (K,)``; see :func:`coupling`."""

  raw: Array
  normalized: Array
  summary: Array
  cross_fraction: Array
  single: Array


def _coupling_points(K: int) -> np.ndarray:
  """Rows of layer weights: 0; e_j; 2 e_j; e_j + e_k for j < k (np.triu_indices order)."""
  eye = np.eye(K, dtype=np.float32)
  j, k = np.triu_indices(K, 1)
  return np.concatenate([np.zeros((1, K), np.float32), eye, 2 * eye, eye[j] + eye[k]])


def coupling(loss_fn: Callable, params: dict, updates: dict, layers: Layers, *, eps: float = 1e-12,
             batch_size: int | None = None) -> Coupling:
  """Interaction of two layers' updates in the loss (this project's definition for claim C2).

  With the update ``Delta`` split by layer (``Delta_j`` = ``updates`` on layer j
  only) and ``L_j = L(w + Delta_j)``, ``L_0 = L(w)``::

      raw[j, k]        = L(w + Delta_j + Delta_k) - L_j - L_k + L_0          (j != k)
      raw[j, j]        = L(w + 2 Delta_j) - 2 L_j + L_0
      normalized[j, k] = raw[j, k] / (|L_j - L_0| + |L_k - L_0| + eps)
      summary          = mean_{j<k} |normalized[j, k]|           (NaN if K = 1)
      cross_fraction   = sum_{j<k} |raw[j,k]| / (sum_{j<k} |raw[j,k]| + 1/2 sum_j |raw[j,j]| + eps)
      single[k]        = L_k - L_0       (the loss change of layer k's own update alone)

  ``raw[j, k]`` is a mixed second difference: ``Delta_j^T H_jk Delta_k`` up to
  third order (exact for a quadratic), zero when L separates into per-layer
  terms. The diagonal is the same second difference within one layer, so
  ``cross_fraction`` is the share of the second-order change of
  ``L(w + Delta) = ... + 1/2 sum_jk Delta_j^T H_jk Delta_k`` that comes from
  cross-layer terms (in [0, 1]; unlike ``summary`` it does not scale with the
  step size). "BN decouples layers" predicts both are smaller with BN.
  Costs 1 + 2K + K(K-1)/2 loss evaluations; second differences of float32
  losses lose precision when the updates are tiny.
  """
  groups = _groups(layers)
  _check(params, groups)
  K = len(groups)
  pts = _coupling_points(K)
  losses = lax.map(lambda w: _f(loss_fn(_moved(params, updates, w, groups))), jnp.asarray(pts),
                   batch_size=batch_size)
  l0, lj, l2j, ljk = losses[0], losses[1:K + 1], losses[K + 1:2 * K + 1], losses[2 * K + 1:]
  j, k = np.triu_indices(K, 1)
  upper = jnp.zeros((K, K), losses.dtype).at[j, k].set(ljk - lj[j] - lj[k] + l0)
  raw = upper + upper.T + jnp.diag(l2j - 2 * lj + l0)
  single = jnp.abs(lj - l0)
  normalized = raw / (single[:, None] + single[None, :] + eps)
  cross = jnp.sum(jnp.abs(raw[j, k]))
  return Coupling(
      raw=raw, normalized=normalized,
      summary=jnp.mean(jnp.abs(normalized[j, k])) if K > 1 else jnp.full((), jnp.nan, losses.dtype),
      cross_fraction=cross / (cross + 0.5 * jnp.sum(jnp.abs(jnp.diag(raw))) + eps),
      single=lj - l0,
  )


class HessianCoupling(NamedTuple):
  """``blocks (K, K)``, per-layer ``ratio (K,)``, ``summary ()``, ``normalized (K, K)`` and
  ``normalized_summary ()``; see :func:`hessian_coupling`."""

  blocks: Array
  ratio: Array
  summary: Array
  normalized: Array
  normalized_summary: Array


def hessian_coupling(loss_fn: Callable, params: dict, key: Array, layers: Layers, *, num_probes: int = 1,
                     batch_size: int | None = None) -> HessianCoupling:
  """Off-diagonal vs diagonal Hessian blocks, by Hessian-vector products (project's second view of C2).

  Draw ``v ~ N(0, I)`` on the layers' parameters (``num_probes`` independent
  draws), restrict it to layer k (``v_k``), and take ``H v_k`` by forward-over-
  reverse differentiation (``jax.jvp`` of ``jax.grad``)::

      blocks[j, k] = sqrt(mean_probes ||H_jk v_k||^2)    (-> ||H_jk||_F as probes grow,
                                                          since E||M v||^2 = ||M||_F^2)
      ratio[k]     = sqrt(sum_{j != k} blocks[j, k]^2) / blocks[k, k]
      summary      = sqrt(sum_{j != k} blocks[j, k]^2 / sum_k blocks[k, k]^2)
      normalized[j, k]   = blocks[j, k] / sqrt(blocks[j, j] blocks[k, k])   (1 on the diagonal)
      normalized_summary = mean_{j < k} normalized[j, k]

  ``normalized`` is the scale-free coupling of two layers: when each layer is one weight
  array and ``L(c W_j) = L(W_j)`` (a layer followed by BN), ``H_jk`` scales by ``1/c``
  and ``H_jj`` by ``1/c^2`` under ``W_j -> c W_j``, so the ratio is unchanged (and, since
  the same probe vectors are used, so is its estimate), whatever the layers' norms.

  Zero off-diagonal blocks mean the gradient of each layer does not depend on
  the other layers' weights (to first order). Costs K * num_probes HVPs
  (``lax.map`` over (layer, probe) pairs).
  """
  groups = _groups(layers)
  _check(params, groups)
  K = len(groups)
  names = [n for g in groups for n in g]
  leaves, treedef = jax.tree.flatten(_pick(params, names))
  cuts = np.cumsum([0] + [x.size for x in leaves])
  z = jax.random.normal(key, (num_probes, int(cuts[-1])), jnp.float32)  # one draw: fast to compile
  probes = jax.tree.unflatten(treedef, [z[:, a:b].reshape((num_probes,) + x.shape).astype(x.dtype)
                                        for a, b, x in zip(cuts[:-1], cuts[1:], leaves)])
  grad_fn = jax.grad(loss_fn)
  tiny = jnp.finfo(jnp.float32).tiny
  zeros = jax.tree.map(jnp.zeros_like, params)

  def hvp_norms(kp):  # ||(H v_k)_j||^2 for all j, with v = probe p restricted to layer k
    k, p = kp // num_probes, kp % num_probes
    v = jax.tree.map(lambda t: t[p], probes)
    tangent = _moved(zeros, v, (jnp.arange(K) == k).astype(jnp.float32), groups)
    hv = jax.jvp(grad_fn, (params,), (tangent,))[1]
    return jnp.stack([_sq_norm(_pick(hv, g)) for g in groups])

  sq = lax.map(hvp_norms, jnp.arange(K * num_probes), batch_size=batch_size)
  blocks = jnp.sqrt(jnp.mean(sq.reshape(K, num_probes, K), axis=1)).T
  diag = jnp.diag(blocks)
  off2 = jnp.sum(jnp.where(jnp.eye(K, dtype=bool), 0.0, jnp.square(blocks)), axis=0)
  norm = blocks / jnp.maximum(jnp.sqrt(diag[:, None] * diag[None, :]), tiny)
  j, k = np.triu_indices(K, 1)
  return HessianCoupling(
      blocks=blocks,
      ratio=jnp.sqrt(off2) / jnp.maximum(diag, tiny),
      summary=jnp.sqrt(jnp.sum(off2) / jnp.maximum(jnp.sum(jnp.square(diag)), tiny)),
      normalized=norm,
      normalized_summary=jnp.mean(norm[j, k]) if K > 1 else jnp.full((), jnp.nan, blocks.dtype),
  )


# ----------------------------------------------------------------------------- 6. gradient norms


def grad_norms(loss_fn: Callable, params: dict, layers: Layers) -> Array:
  """``(K,)``: ``||grad_{W_k} L||`` per layer, e.g. at initialization for depth sweeps
  (Yang et al. 2019, arXiv 1902.08129: gradients of deep BN MLPs without skips
  explode with depth at initialization)."""
  return layer_norms(jax.grad(loss_fn)(params), layers)
