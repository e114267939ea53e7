"""bn.nnx.BatchNorm against the independent reference flax.nnx.BatchNorm, and
its extras against the pure core and NumPy. Compiled code runs under nnx.jit;
inputs come from NumPy."""

import inspect
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import bn
import bn.nnx as bx
from adapter_refs import assert_close, assert_trees_close, inputs


def _layer(cls, num_features, seed=0, **kw):
  """A layer with random (non-trivial) parameters and running statistics."""
  m = cls(num_features, rngs=nnx.Rngs(0), **kw)
  rng = np.random.default_rng(seed)
  f = lambda lo, hi: jnp.asarray(rng.uniform(lo, hi, (num_features,)), jnp.float32)  # noqa: E731
  m.scale[...], m.bias[...], m.mean[...], m.var[...] = f(0.5, 1.5), f(-1, 1), f(-1, 1), f(0.5, 2)
  return m


def _pure(module, *filters):
  return nnx.to_pure_dict(nnx.state(module, *filters))


@nnx.jit
def _train(m, x, mask=None):
  return m(x, use_running_average=False, mask=mask)


# ------------------------------------------------------------------- equivalence with flax

# (N, C); (N, H, W, C); (N, C, H, W) with axis=1; (N, L, C) with axis -1 and 1. Each
# shape/axis runs one masked and one unmasked statistics path (of mask x fast/two-pass
# variance), together covering all four twice; the momenta cycle across cases.
SHAPE_AXES = [((16, 5), -1), ((8, 4, 4, 3), -1), ((8, 3, 4, 4), 1), ((8, 6, 3), -1), ((8, 6, 3), 1)]
PATHS = [(False, True), (True, False), (False, False), (True, True)]
CASES = [
    (shape, axis, (0.9, 0.99, 0.0)[i % 3], *PATHS[i % 4])
    for i, (shape, axis) in enumerate(itertools.chain.from_iterable(zip(SHAPE_AXES, SHAPE_AXES)))
]


def _one(model, x, w, mask):
  def loss(model, x):
    y = model(x, use_running_average=False, mask=mask)
    return jnp.sum(y * w), y

  (g_model, g_x), y = nnx.grad(loss, argnums=(0, 1), has_aux=True)(model, x)
  return y, nnx.to_pure_dict(g_model), g_x, model(x, use_running_average=True)


@pytest.mark.parametrize("shape,axis,momentum,masked,fast", CASES)
def test_matches_flax_train_eval_grads(shape, axis, momentum, masked, fast):
  kw = dict(axis=axis, momentum=momentum, use_fast_variance=fast)
  ref, ours = _layer(nnx.BatchNorm, shape[axis], **kw), _layer(bx.BatchNorm, shape[axis], **kw)
  traces = []

  @nnx.jit
  def step(ref, ours, x, w, mask):
    traces.append(1)
    return _one(ref, x, w, mask), _one(ours, x, w, mask)

  for t in range(3):  # consecutive steps: each layer carries its own running statistics
    x, w, mask = inputs(shape, seed=10 + t)
    (y_r, g_r, gx_r, ye_r), (y_o, g_o, gx_o, ye_o) = step(ref, ours, x, w, mask if masked else None)
    assert y_o.dtype == y_r.dtype
    assert_close(y_o, y_r)
    assert_trees_close(_pure(ours), _pure(ref))  # running statistics (and untouched params)
    assert_trees_close(g_o, g_r)  # d scale, d bias
    assert_close(gx_o, gx_r)
    assert_close(ye_o, ye_r)
  assert len(traces) == 1


def test_use_fast_variance_maps_like_flax():
  """With a large offset (20) against the spread (1.5) the two variance formulas differ
  well beyond 1e-6 in float32, so each flag value must reach the matching core path."""
  x = (1.5 * np.random.default_rng(0).standard_normal((32, 3)) + 20.0).astype(np.float32)
  runs = {}
  for fast in (True, False):
    ref, ours = (_layer(c, 3, use_fast_variance=fast, momentum=0.0) for c in (nnx.BatchNorm, bx.BatchNorm))
    assert_close(_train(ours, x), _train(ref, x))
    assert_trees_close(_pure(ours), _pure(ref))
    runs[fast] = ours.var[...]
  assert np.abs(runs[True] / runs[False] - 1).max() > 1e-6


def test_constructor_matches_flax():
  ref = list(inspect.signature(nnx.BatchNorm.__init__).parameters.values())
  ours = list(inspect.signature(bx.BatchNorm.__init__).parameters.values())
  assert [(p.name, p.kind, p.default) for p in ours[: len(ref)]] == [(p.name, p.kind, p.default) for p in ref]
  extras = ours[len(ref):]
  # The extras are keyword-only, after Flax's arguments, and default to plain BN (Flax's behaviour).
  assert [(p.name, p.default) for p in extras] == [
      ("ghost_batch_size", None), ("r_max", None), ("d_max", None), ("noise", None), ("population", False),
      ("unbiased", False), ("population_noise", None), ("stats_gradient", True), ("strict_batch", False), ("variance", None),
      ("options", None)]
  assert all(p.kind is p.KEYWORD_ONLY for p in extras)


@pytest.mark.parametrize("kw", [{}, {"use_scale": False}, {"use_bias": False}, {"param_dtype": jnp.bfloat16}])
def test_state_layout_matches_flax(kw):
  """Same variables: names, Variable types, shapes and dtypes."""
  ref, ours = nnx.BatchNorm(3, rngs=nnx.Rngs(0), **kw), bx.BatchNorm(3, rngs=nnx.Rngs(0), **kw)
  layout = lambda m: jax.tree.map(lambda v: (type(v), v.shape, v.dtype), nnx.state(m), is_leaf=lambda v: isinstance(v, nnx.Variable))  # noqa: E731
  assert layout(ours) == layout(ref)
  assert (ours.scale is None, ours.bias is None) == (ref.scale is None, ref.bias is None)
  assert_trees_close(_pure(ours), _pure(ref))


def test_state_interop():
  """Flax's trained state continues training in ours, and ours' state evaluates in Flax."""
  x1, x2 = inputs((6, 3), seed=1)[0], inputs((6, 3), seed=2)[0]
  ref, ours = _layer(nnx.BatchNorm, 3, seed=1), bx.BatchNorm(3, rngs=nnx.Rngs(0))
  _train(ref, x1)
  nnx.update(ours, nnx.state(ref))
  assert_close(_train(ours, x2), _train(ref, x2))
  assert_trees_close(_pure(ours), _pure(ref))
  _train(ours, x1)
  fresh = nnx.BatchNorm(3, rngs=nnx.Rngs(1))
  nnx.update(fresh, nnx.state(ours))
  assert_close(fresh(x2, use_running_average=True), ours(x2, use_running_average=True))


def test_train_eval_view_like_flax():
  class Net(nnx.Module):
    def __init__(self, cls):
      self.bn = cls(3, use_running_average=None, rngs=nnx.Rngs(0))

    def __call__(self, x):
      return self.bn(x)

  x = inputs((6, 3))[0]
  for cls in (nnx.BatchNorm, bx.BatchNorm):
    net = Net(cls)
    with pytest.raises(ValueError, match="use_running_average"):
      net(x)
    net.eval()
    before = _pure(net, nnx.BatchStat)
    net(x)
    assert_trees_close(_pure(net, nnx.BatchStat), before)  # eval: statistics unchanged
    nnx.view(net, use_running_average=False)(x)  # a training view shares the variables
    assert not np.allclose(net.bn.mean[...], before["bn"]["mean"])
    assert net.bn.use_running_average is True
    net.train()
    assert net.bn.use_running_average is False
    net(x)
    assert net.bn(x, use_running_average=True).shape == x.shape  # call-time flag wins


@pytest.mark.parametrize("x_dtype,dtype", [(jnp.bfloat16, None), (jnp.float32, jnp.bfloat16)])
def test_dtypes_like_flax(x_dtype, dtype):
  x = jnp.asarray(inputs((8, 3))[0], x_dtype)
  ref, ours = _layer(nnx.BatchNorm, 3, dtype=dtype), _layer(bx.BatchNorm, 3, dtype=dtype)
  y_r, y_o = _train(ref, x), _train(ours, x)
  assert y_o.dtype == y_r.dtype
  assert_close(y_o, y_r, rtol=1e-2)
  assert ours.mean.dtype == ref.mean.dtype == jnp.float32
  assert_close(ours.var[...], ref.var[...], rtol=1e-2)


def test_bfloat16_layer_normalizes_at_eval_with_float32_running_statistics():
  # dtype=bfloat16: the running statistics stay float32 and eval normalizes with them in float32; only the output is
  # cast to bfloat16 (NumPy reference in float64, compared at bfloat16's resolution)
  m = _layer(bx.BatchNorm, 3, dtype=jnp.bfloat16)
  x = jnp.asarray(inputs((16, 3))[0], jnp.float32)
  y = m(x, use_running_average=True)
  assert y.dtype == jnp.bfloat16 and m.mean.dtype == m.var.dtype == jnp.float32
  mean, var = np.asarray(m.mean[...], np.float64), np.asarray(m.var[...], np.float64)
  want = (np.asarray(x, np.float64) - mean) / np.sqrt(var + m.epsilon) * np.asarray(m.scale[...], np.float64) + np.asarray(m.bias[...], np.float64)
  np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-2, atol=1e-2)


def test_axis_name_matches_flax():
  x = inputs((4, 6, 3))[0]  # 4 "devices" x 6 examples x 3 features
  ref, ours = (_layer(c, 3, axis_name="dev", momentum=0.5) for c in (nnx.BatchNorm, bx.BatchNorm))

  @nnx.jit
  @nnx.vmap(in_axes=(None, 0), out_axes=0, axis_name="dev")
  def run(m, x):
    return m(x, use_running_average=False)

  assert_close(run(ours, x), run(ref, x))
  assert_trees_close(_pure(ours), _pure(ref))


# ------------------------------------------------------------------- extras


_core = jax.jit(bn.batch_norm, static_argnames=("train", "momentum", "variance", "ghost_batch_size", "population", "unbiased"))


def _core_of(m, x, **kw):
  """The pure core on the layer's current variables (renorm= may hold arrays)."""
  params = bn.BNParams(m.scale[...], m.bias[...])
  return _core(x, params, bn.BNState(m.mean[...], m.var[...], jnp.zeros((), jnp.int32)), **kw)


def test_ghost_population_unbiased_equal_core():
  x = inputs((12, 3, 4))[0]
  for kw in (dict(ghost_batch_size=4, momentum=0.7), dict(population=True, unbiased=True, momentum=0.5)):
    layer = _layer(bx.BatchNorm, 4, use_fast_variance=False, **kw)
    y_c, s_c = _core_of(layer, x, train=True, **kw)
    assert_close(_train(layer, x), y_c)
    assert_close(layer.mean[...], s_c.mean)
    assert_close(layer.var[...], s_c.var)


def test_renorm_call_time_override_without_recompiling():
  x = inputs((8, 3))[0]
  layer = _layer(bx.BatchNorm, 3, r_max=1.5, d_max=0.2)
  renorm = lambda r, d: bn.Renorm(jnp.float32(r), jnp.float32(d))  # noqa: E731
  y_c, _ = _core_of(layer, x, train=True, renorm=renorm(1.5, 0.2), variance="fast")
  assert_close(_train(nnx.clone(layer), x), y_c)
  traces = []

  @nnx.jit
  def apply(m, x, renorm):
    traces.append(1)
    return m(x, use_running_average=False, renorm=renorm)

  outs = []
  for r_max, d_max in [(1.0, 0.0), (2.0, 0.5), (3.0, 1.0)]:
    m = nnx.clone(layer)
    y_c, s_c = _core_of(m, x, train=True, renorm=renorm(r_max, d_max), variance="fast")
    outs.append(apply(m, x, (jnp.float32(r_max), jnp.float32(d_max))))
    assert_close(outs[-1], y_c)
    assert_close(m.var[...], s_c.var)
  assert len(traces) == 1
  assert not np.allclose(outs[0], outs[1])


def test_noise_needs_rng():
  x = inputs((8, 3))[0]
  no_stream = bx.BatchNorm(3, noise=bn.Noise(), rngs=nnx.Rngs(params=0))
  assert no_stream.rngs is None
  with pytest.raises(ValueError, match="rng"):
    no_stream(x)
  no_stream(x, use_running_average=True)  # eval needs no rng
  apply = nnx.jit(lambda m, x, key: m(x, rngs=key))
  y1, y1b, y2 = (apply(no_stream, x, jax.random.key(s)) for s in (1, 1, 2))
  np.testing.assert_array_equal(y1, y1b)
  assert not np.allclose(y1, y2)
  stream = bx.BatchNorm(3, noise=bn.Noise(), rngs=nnx.Rngs(0))  # forks a 'noise' stream (default fallback)
  assert "rngs" in _pure(stream) and "rngs" not in _pure(bx.BatchNorm(3, rngs=nnx.Rngs(0)))
  a, b = _train(stream, x), _train(stream, x)
  assert not np.allclose(a, b)  # the stream advances each call


def test_momentum_none_creates_count_and_averages():
  layer = bx.BatchNorm(3, momentum=None, rngs=nnx.Rngs(0))
  assert isinstance(layer.count, nnx.BatchStat) and int(layer.count[...]) == 0
  assert "count" not in _pure(bx.BatchNorm(3, rngs=nnx.Rngs(0)))  # Flax's variables otherwise
  xs = [inputs((10, 3), seed=s)[0] for s in range(3)]
  for x in xs:
    _train(layer, x)
  assert int(layer.count[...]) == 3
  xs64 = [x.astype(np.float64) for x in xs]
  assert_close(layer.mean[...], np.mean([x.mean(0) for x in xs64], 0), rtol=1e-5)
  assert_close(layer.var[...], np.mean([x.var(0) for x in xs64], 0), rtol=1e-5)


def test_sow_under_capture_only():
  x = inputs((8, 4, 3))[0]
  layer = bx.BatchNorm(3, rngs=nnx.Rngs(0))
  keys = set(_pure(layer))
  _train(layer, x)
  assert set(_pure(layer)) == keys  # outside a capture nothing is stored
  _, sown = nnx.capture(lambda m, x: m(x), bx.BNStats)(layer, x)
  assert_close(sown["mean"].get_value()[0], x.astype(np.float64).mean((0, 1)), rtol=1e-5)
  assert_close(sown["var"].get_value()[0], x.astype(np.float64).var((0, 1)), rtol=1e-5)
  _train(layer, x)
  assert set(_pure(layer)) == keys  # and nothing lingers after the capture
  layer.eval()
  _, sown = nnx.capture(lambda m, x: m(x), bx.BNStats)(layer, x)
  assert "mean" not in sown  # nothing sown in eval
