"""bn.linen.BatchNorm against the independent reference flax.linen.BatchNorm,
its extras against the pure core and NumPy, and recalibrate against NumPy.

Everything Flax runs under jax.jit (op-by-op dispatch compiles many small
kernels and is slower on CPU); inputs come from NumPy."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bn
import bn.linen as bl
from adapter_refs import assert_close, assert_trees_close, inputs


def _variables(feature_shape, seed=0, count=None):
  """Random (non-trivial) variables in Flax's layout, made without init (no PRNG compile)."""
  rng = np.random.default_rng(seed)
  f = lambda lo, hi: jnp.asarray(rng.uniform(lo, hi, feature_shape), jnp.float32)  # noqa: E731
  v = {"params": {"scale": f(0.5, 1.5), "bias": f(-1, 1)}, "batch_stats": {"mean": f(-1, 1), "var": f(0.5, 2)}}
  if count is not None:
    v["batch_stats"]["count"] = jnp.asarray(count, jnp.int32)
  return v


@functools.partial(jax.jit, static_argnums=0)
def _init(model, seed, x):
  """Training-mode init (batch statistics in the init forward pass)."""
  return model.init(jax.random.key(seed), x, use_running_average=False)


@functools.partial(jax.jit, static_argnums=0)
def _train(model, v, x):
  """Training-mode apply: (y, updated variables)."""
  y, upd = model.apply(v, x, use_running_average=False, mutable=["batch_stats"])
  return y, {**v, **upd}


@functools.partial(jax.jit, static_argnums=0)
def _eval(model, v, x):
  return model.apply(v, x, use_running_average=True)


_core_jit = jax.jit(bn.batch_norm, static_argnames=("train", "momentum", "variance", "ghost_batch_size"))


def _core(x, v, **kw):
  """The pure core on Flax-layout variables (renorm= may hold arrays: no recompilation)."""
  params = bn.BNParams(v["params"]["scale"], v["params"]["bias"])
  stats = v["batch_stats"]
  state = bn.BNState(stats["mean"], stats["var"], stats.get("count", jnp.zeros((), jnp.int32)))
  return _core_jit(x, params, state, **kw)


# ------------------------------------------------------------------- equivalence with flax

# (N, C); (N, H, W, C); (N, C, H, W) with axis=1; (N, L, C) with axis -1 and 1.
SHAPE_AXES = [((16, 5), -1), ((8, 4, 4, 3), -1), ((8, 3, 4, 4), 1), ((8, 6, 3), -1), ((8, 6, 3), 1)]
MOMENTA = [0.9, 0.99, 0.0]
# The core has four statistics paths (mask or not x fast or two-pass variance). Each
# shape/axis runs one masked and one unmasked path, together covering all four twice;
# the momenta cycle across cases (a covering design instead of 60 slow-to-compile cases).
PATHS = [(False, True), (True, False), (False, False), (True, True)]
CASES = [
    (shape, axis, MOMENTA[i % 3], *PATHS[i % 4])
    for i, (shape, axis) in enumerate(sa for sa in SHAPE_AXES for _ in range(2))
]


def _step_fn(ref, ours):
  """One jitted program: a training step (output, new stats, grads w.r.t. scale/bias/x)
  and an eval call with the new stats, for both modules, each on its own variables."""

  def one(model, variables, x, w, mask):
    def loss(params, x):
      y, upd = model.apply({**variables, "params": params}, x, False, mask=mask, mutable=["batch_stats"])
      return jnp.sum(y * w), (y, upd["batch_stats"])

    (_, (y, stats)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables["params"], x)
    new_vars = {"params": variables["params"], "batch_stats": stats}
    return y, new_vars, grads, model.apply(new_vars, x, use_running_average=True)

  @jax.jit
  def step(v_ref, v_ours, x, w, mask):
    return one(ref, v_ref, x, w, mask), one(ours, v_ours, x, w, mask)

  return step


@pytest.mark.parametrize("shape,axis,momentum,masked,fast", CASES)
def test_matches_flax_train_eval_grads(shape, axis, momentum, masked, fast):
  kw = dict(axis=axis, momentum=momentum, use_fast_variance=fast)
  ref, ours = nn.BatchNorm(**kw), bl.BatchNorm(**kw)
  v_ref = v_ours = _variables((shape[axis],), seed=1)
  step = _step_fn(ref, ours)
  for t in range(3):  # consecutive steps: each module carries its own running statistics
    x, w, mask = inputs(shape, seed=10 + t)
    (y_r, v_ref, g_r, ye_r), (y_o, v_ours, g_o, ye_o) = step(v_ref, v_ours, x, w, mask if masked else None)
    assert y_o.dtype == y_r.dtype
    assert_close(y_o, y_r)
    assert_trees_close(v_ours, v_ref)
    assert_trees_close(g_o, g_r)  # (d scale, d bias), d x
    assert_close(ye_o, ye_r)
  assert step._cache_size() == 1


def test_use_fast_variance_maps_like_flax():
  """With a large offset (20) against the spread (1.5) the two variance formulas differ
  well beyond 1e-6 in float32, so each flag value must reach the matching core path."""
  x = (1.5 * np.random.default_rng(0).standard_normal((32, 3)) + 20.0).astype(np.float32)
  v = _variables((3,))
  runs = {}
  for fast in (True, False):
    (y_r, v_r), (y_o, v_o) = (_train(m(use_fast_variance=fast, momentum=0.0), v, x) for m in (nn.BatchNorm, bl.BatchNorm))
    assert_close(y_o, y_r)
    assert_trees_close(v_o, v_r)
    runs[fast] = v_o["batch_stats"]["var"]
  assert np.abs(runs[True] / runs[False] - 1).max() > 1e-6


def test_attributes_match_flax():
  def fields(cls):
    return [(f.name, f.default) for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]

  ref = fields(nn.BatchNorm)
  assert fields(bl.BatchNorm)[: len(ref)] == ref
  extras = fields(bl.BatchNorm)[len(ref):]
  # The extras come after Flax's attributes and default to plain BN (Flax's behaviour).
  assert extras == [("ghost_batch_size", None), ("r_max", None), ("d_max", None), ("noise", None), ("population", False),
                    ("unbiased", False), ("population_noise", None), ("stats_gradient", True), ("strict_batch", False),
                    ("variance", None), ("options", None), ("sow_stats", False)]


def test_checkpoint_interop():
  """Variables made by either layer apply unchanged in the other, with equal results (NCHW here)."""
  kw = dict(axis=1, momentum=0.8, scale_init=nn.initializers.normal(1.0), bias_init=nn.initializers.uniform())
  ref, ours = nn.BatchNorm(**kw), bl.BatchNorm(**kw)
  x = inputs((4, 3, 5, 5))[0]
  v_ref, v_ours = _init(ref, 3, x), _init(ours, 3, x)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), v_ours) == jax.tree.map(lambda a: (a.shape, a.dtype), v_ref)
  for v in (v_ref, v_ours):
    y_r, t_r = _train(ref, v, x)
    y_o, t_o = _train(ours, v, x)
    assert_close(y_o, y_r)
    assert_trees_close(t_o, t_r)
    assert_close(_eval(ours, t_r, x), _eval(ref, t_o, x))


def test_init_like_flax():
  """At init: running statistics untouched, an unbound axis_name is fine, same output as Flax."""
  x = inputs((8, 4))[0]
  kw = dict(use_running_average=False, axis_name="batch")
  init = jax.jit(lambda m, x: m.init_with_output(jax.random.key(0), x), static_argnums=0)
  (y_r, v_r), (y_o, v_o) = init(nn.BatchNorm(**kw), x), init(bl.BatchNorm(**kw), x)
  assert_close(y_o, y_r)
  assert_trees_close(v_o, v_r)
  np.testing.assert_array_equal(v_o["batch_stats"]["mean"], 0.0)
  np.testing.assert_array_equal(v_o["batch_stats"]["var"], 1.0)
  assert set(v_o) == {"params", "batch_stats"}  # nothing sown at init
  # A single example, and a ghost size that does not divide the batch, still initialize.
  v = jax.eval_shape(lambda x: bl.BatchNorm(ghost_batch_size=4).init(jax.random.key(0), x, False), x[:1])
  assert v["params"]["scale"].shape == (4,)


@pytest.mark.parametrize(
    "x_dtype,param_dtype,dtype",
    [(jnp.bfloat16, jnp.float32, None), (jnp.bfloat16, jnp.bfloat16, None), (jnp.float32, jnp.float32, jnp.bfloat16)],
)
def test_dtypes_like_flax(x_dtype, param_dtype, dtype):
  x = jnp.asarray(inputs((8, 3))[0], x_dtype)
  ref, ours = (m(param_dtype=param_dtype, dtype=dtype) for m in (nn.BatchNorm, bl.BatchNorm))
  v = _variables((3,))
  v["params"] = jax.tree.map(lambda a: a.astype(param_dtype), v["params"])
  (y_r, s_r), (y_o, s_o) = _train(ref, v, x), _train(ours, v, x)
  assert y_o.dtype == y_r.dtype
  assert jax.tree.map(lambda a: a.dtype, s_o) == jax.tree.map(lambda a: a.dtype, s_r)
  assert_close(y_o, y_r, rtol=1e-2)


@pytest.mark.parametrize("fast", [True, False])
def test_axis_name_matches_flax(fast):
  """Statistics synchronized over a vmapped device axis (equal shards: Flax's mean of means is exact)."""
  x = inputs((4, 6, 3))[0]  # 4 "devices" x 6 examples x 3 features
  kw = dict(axis_name="dev", use_fast_variance=fast, momentum=0.5)
  ref, ours = nn.BatchNorm(**kw), bl.BatchNorm(**kw)
  v = _variables((3,))
  run = jax.jit(lambda m, v, x: jax.vmap(lambda xs: _train(m, v, xs), axis_name="dev")(x), static_argnums=0)
  (y_r, s_r), (y_o, s_o) = run(ref, v, x), run(ours, v, x)
  assert_close(y_o, y_r)
  assert_trees_close(s_o, s_r)
  # ... and they are the global batch's statistics: same as one call on all 24 examples.
  y_all, s_all = _train(bl.BatchNorm(**{**kw, "axis_name": None}), v, x.reshape(24, 3))
  assert_close(y_o.reshape(24, 3), y_all, rtol=1e-5)
  assert_trees_close(jax.tree.map(lambda a: a[0], s_o), s_all, rtol=1e-5)


# ------------------------------------------------------------------- extras


def test_ghost_equals_core():
  x = inputs((12, 3, 4))[0]
  layer = bl.BatchNorm(ghost_batch_size=4, momentum=0.7, use_fast_variance=False)
  v = _variables((4,))
  y, upd = _train(layer, v, x)
  y_c, s_c = _core(x, v, train=True, ghost_batch_size=4, momentum=0.7)
  assert_close(y, y_c)
  assert_close(upd["batch_stats"]["mean"], s_c.mean)
  assert_close(upd["batch_stats"]["var"], s_c.var)
  assert not np.allclose(y, _train(bl.BatchNorm(), v, x)[0])


def test_renorm_attributes_and_call_time_override_without_recompiling():
  x = inputs((8, 3))[0]
  layer = bl.BatchNorm(r_max=1.5, d_max=0.2)
  v = _variables((3,))
  renorm = lambda r, d: bn.Renorm(jnp.float32(r), jnp.float32(d))  # noqa: E731
  assert_close(_train(layer, v, x)[0], _core(x, v, train=True, renorm=renorm(1.5, 0.2), variance="fast")[0])

  traces = []

  @jax.jit
  def apply(v, x, r_max, d_max):
    traces.append(1)
    return layer.apply(v, x, False, renorm=(r_max, d_max), mutable=["batch_stats"])

  outs = []
  for r_max, d_max in [(1.0, 0.0), (2.0, 0.5), (3.0, 1.0)]:
    y, upd = apply(v, x, jnp.float32(r_max), jnp.float32(d_max))
    y_c, s_c = _core(x, v, train=True, renorm=renorm(r_max, d_max), variance="fast")
    assert_close(y, y_c)
    assert_close(upd["batch_stats"]["var"], s_c.var)
    outs.append(y)
  assert len(traces) == 1
  assert not np.allclose(outs[0], outs[1])
  assert_close(outs[0], _train(nn.BatchNorm(), v, x)[0], rtol=1e-5)  # r_max=1, d_max=0 is plain BN


def test_noise_needs_rng():
  x = inputs((8, 3))[0]
  layer = bl.BatchNorm(noise=bn.Noise())
  jax.eval_shape(lambda x: layer.init(jax.random.key(0), x, False), x)  # init needs no 'noise' stream
  v = _variables((3,))
  with pytest.raises(ValueError, match="'noise'"):
    _train(layer, v, x)
  apply = jax.jit(lambda v, x, key: layer.apply(v, x, False, rngs={"noise": key}, mutable=["batch_stats"])[0])
  y1, y1b, y2 = (apply(v, x, jax.random.key(s)) for s in (1, 1, 2))
  np.testing.assert_array_equal(y1, y1b)
  assert not np.allclose(y1, y2) and not np.allclose(y1, _train(bl.BatchNorm(), v, x)[0])
  assert_close(_eval(layer, v, x), _eval(bl.BatchNorm(), v, x))  # eval needs no rng and adds no noise


def test_momentum_none_creates_count_and_averages():
  layer = bl.BatchNorm(momentum=None)
  xs = [inputs((10, 3), seed=s)[0] for s in range(3)]
  shapes = lambda m: jax.tree.map(jnp.shape, jax.eval_shape(lambda x: m.init(jax.random.key(0), x, False), xs[0]))  # noqa: E731
  assert shapes(layer)["batch_stats"] == {"mean": (3,), "var": (3,), "count": ()}
  assert shapes(bl.BatchNorm())["batch_stats"] == {"mean": (3,), "var": (3,)}  # Flax's set otherwise
  v = _variables((3,), count=0)
  for x in xs:
    v = _train(layer, v, x)[1]
  assert int(v["batch_stats"]["count"]) == 3
  xs64 = [x.astype(np.float64) for x in xs]
  assert_close(v["batch_stats"]["mean"], np.mean([x.mean(0) for x in xs64], 0), rtol=1e-5)
  assert_close(v["batch_stats"]["var"], np.mean([x.var(0) for x in xs64], 0), rtol=1e-5)


def test_population_and_unbiased():
  x = inputs((6, 3))[0]
  layer = bl.BatchNorm(population=True, unbiased=True, momentum=0.0)
  v = _variables((3,))
  y, upd = _train(layer, v, x)
  assert_close(y, _eval(nn.BatchNorm(), v, x))  # normalized with the running statistics
  assert_close(upd["batch_stats"]["mean"], x.astype(np.float64).mean(0), rtol=1e-5)
  assert_close(upd["batch_stats"]["var"], x.astype(np.float64).var(0, ddof=1), rtol=1e-5)  # stored unbiased


def test_sow_batch_stats():
  x = inputs((8, 4, 3))[0]
  layer = bl.BatchNorm(momentum=0.9, sow_stats=True)
  v = _variables((3,))
  apply = jax.jit(lambda v, x, train, mutable: layer.apply(v, x, not train, mutable=mutable)[1], static_argnums=(2, 3))
  assert set(apply(v, x, True, ("batch_stats",))) == {"batch_stats"}  # a no-op unless 'bn_stats' is mutable
  upd = apply(v, x, True, ("batch_stats", "bn_stats"))
  assert_close(upd["bn_stats"]["mean"][0], x.astype(np.float64).mean((0, 1)), rtol=1e-5)
  assert_close(upd["bn_stats"]["var"][0], x.astype(np.float64).var((0, 1)), rtol=1e-5)
  assert "bn_stats" not in apply(v, x, False, ("batch_stats", "bn_stats"))  # nothing sown in eval
  # Off by default (as Flax's layer, which writes only batch_stats), also with every collection mutable.
  assert set(jax.jit(lambda v, x: bl.BatchNorm(momentum=0.9).apply(v, x, False, mutable=True)[1])(v, x)) == {"params", "batch_stats"}


def test_mutable_true_state_does_not_grow():
  """User code that applies with ``mutable=True`` and feeds the variables back: the tree keeps its structure
  (before, a sown ``bn_stats`` collection came back and grew by 2 leaves per step: recompiles, growing memory)."""
  x = inputs((8, 3))[0]
  model = bl.BatchNorm(momentum=0.9)
  v = model.init(jax.random.key(0), x, use_running_average=False)
  step = jax.jit(lambda v, x: model.apply(v, x, use_running_average=False, mutable=True)[1])
  shapes = jax.tree.map(np.shape, v)
  for _ in range(3):
    v = {**v, **step(v, x)}
    assert jax.tree.map(np.shape, v) == shapes and set(v) == {"params", "batch_stats"}
  assert step._cache_size() == 1  # one compilation for every step


# ------------------------------------------------------------------- recalibrate


class _TwoLayer(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(5)(x)
    x = bl.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    x = nn.Dense(4)(x)
    return bl.BatchNorm(use_running_average=not train, momentum=None)(x)


def _numpy_stats(v, xb, eps=1e-5):
  """Per-batch (mean, var) of both BN layers' inputs, in float64."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), v["params"])
  h1 = xb @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  m1, v1 = h1.mean(0), h1.var(0)
  a1 = np.maximum((h1 - m1) / np.sqrt(v1 + eps) * p["BatchNorm_0"]["scale"] + p["BatchNorm_0"]["bias"], 0.0)
  h2 = a1 @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
  return (m1, v1), (h2.mean(0), h2.var(0))


def _two_layer_variables(x, seed=0):
  """Random variables for _TwoLayer from NumPy (shapes from eval_shape: no PRNG compile)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda x: _TwoLayer().init(jax.random.key(0), x, train=False), x)
  v = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype), shapes)
  v["batch_stats"]["BatchNorm_1"]["count"] = jnp.zeros((), jnp.int32)
  return v


def test_recalibrate_equals_numpy_average():
  model = _TwoLayer()
  k = 4
  batches = (1.5 * np.random.default_rng(5).standard_normal((k, 16, 6)) + 0.3).astype(np.float32)
  v = _two_layer_variables(batches[0])  # stale running statistics
  apply_train = lambda v, x, mutable: model.apply(v, x, train=True, mutable=mutable)  # noqa: E731
  new = jax.jit(lambda v, b: bl.recalibrate(apply_train, v, b))(v, batches)
  per_batch = [_numpy_stats(v, b.astype(np.float64)) for b in batches]
  for i, name in enumerate(("BatchNorm_0", "BatchNorm_1")):
    assert_close(new["batch_stats"][name]["mean"], np.mean([s[i][0] for s in per_batch], 0), rtol=1e-5)
    assert_close(new["batch_stats"][name]["var"], np.mean([s[i][1] for s in per_batch], 0), rtol=1e-5)
  assert int(new["batch_stats"]["BatchNorm_1"]["count"]) == k  # the momentum=None layer continues the average
  assert set(new["batch_stats"]["BatchNorm_0"]) == {"mean", "var"}
  jax.tree.map(np.testing.assert_array_equal, new["params"], v["params"])


def test_recalibrate_needs_training_mode():
  model = _TwoLayer()
  batches = jnp.ones((2, 4, 6))
  v = _two_layer_variables(batches[0])
  with pytest.raises(ValueError, match="training mode"):
    bl.recalibrate(lambda v, x, mutable: model.apply(v, x, train=False, mutable=mutable), v, batches)
