"""The adapters as drop-ins in every case Flax supports, against flax.linen.BatchNorm
and flax.nnx.BatchNorm: a batch of one (per-example vmap, scan, bind, tabulate),
non-finite values under a mask, integer and complex inputs, nnx.view/view_info;
the documented differences; and the research attributes against the pure core."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import bn
import bn.linen as bl
import bn.nnx as bx
from adapter_refs import assert_close, assert_trees_close, inputs


def _variables(c, seed=0):
  rng = np.random.default_rng(seed)
  f = lambda lo, hi: jnp.asarray(rng.uniform(lo, hi, (c,)), jnp.float32)  # noqa: E731
  return {"params": {"scale": f(0.5, 1.5), "bias": f(-1, 1)}, "batch_stats": {"mean": f(-1, 1), "var": f(0.5, 2)}}


def _nnx_layer(cls, c, seed=0, **kw):
  m = cls(c, rngs=nnx.Rngs(0), **kw)
  v = _variables(c, seed)
  m.scale[...], m.bias[...] = v["params"]["scale"], v["params"]["bias"]
  m.mean[...], m.var[...] = v["batch_stats"]["mean"], v["batch_stats"]["var"]
  return m


@functools.partial(jax.jit, static_argnums=0)
def _linen_train(model, v, x, mask=None):
  y, upd = model.apply(v, x, use_running_average=False, mask=mask, mutable=["batch_stats"])
  return y, upd["batch_stats"]


# ------------------------------------------------------------------- a batch of one


@pytest.mark.parametrize("fast", [True, False])
def test_batch_of_one_like_flax(fast):
  x = inputs((1, 3))[0]
  v = _variables(3)
  (y_r, s_r), (y_o, s_o) = (_linen_train(m(use_fast_variance=fast, momentum=0.9), v, x) for m in (nn.BatchNorm, bl.BatchNorm))
  assert_close(y_o, y_r)
  assert_close(y_o, v["params"]["bias"][None])  # variance 0: the output is the bias
  assert_trees_close(s_o, s_r)
  ref, ours = (_nnx_layer(c, 3, use_fast_variance=fast, momentum=0.9) for c in (nnx.BatchNorm, bx.BatchNorm))
  f = nnx.jit(lambda m, x: m(x, use_running_average=False))
  assert_close(f(ours, x), f(ref, x))
  assert_trees_close(nnx.to_pure_dict(nnx.state(ours)), nnx.to_pure_dict(nnx.state(ref)))
  # The core's error stays available.
  with pytest.raises(ValueError, match="a training batch of one example"):
    _linen_train(bl.BatchNorm(strict_batch=True), v, x)
  with pytest.raises(ValueError, match="a training batch of one example"):
    _nnx_layer(bx.BatchNorm, 3, strict_batch=True)(x)
  # ... and a strict layer still initializes on a single example (as Flax would).
  init = jax.jit(lambda x: bl.BatchNorm(strict_batch=True, use_running_average=False).init_with_output(jax.random.key(0), x))
  y_init, v_init = init(x)
  assert_close(y_init, np.zeros((1, 3)))
  np.testing.assert_array_equal(v_init["batch_stats"]["var"], 1.0)


class _LinenNet(nn.Module):
  norm: type

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Dense(4)(x)
    x = nn.relu(self.norm(use_running_average=not train, momentum=0.9)(x))
    return nn.Dense(2)(x)


def test_per_example_vmap_over_a_linen_model():
  xs = inputs((5, 3))[0]
  v = _LinenNet(nn.BatchNorm).init(jax.random.key(0), xs)
  outs = {}
  for norm in (nn.BatchNorm, bl.BatchNorm):
    model = _LinenNet(norm)
    per_example = jax.jit(jax.vmap(lambda x: model.apply(v, x, mutable=["batch_stats"])))  # each call: x of shape (3,)
    outs[norm] = per_example(xs)
  (y_r, s_r), (y_o, s_o) = outs[nn.BatchNorm], outs[bl.BatchNorm]
  assert y_o.shape == (5, 2)
  assert_close(y_o, y_r)
  assert_trees_close(s_o, s_r)
  # Per-example gradients (the common reason for such a vmap).
  def grads(norm):
    loss = lambda p, x: jnp.sum(_LinenNet(norm).apply({**v, "params": p}, x, mutable=["batch_stats"])[0] ** 2)  # noqa: E731
    return jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(v["params"], xs)
  assert_trees_close(grads(bl.BatchNorm), grads(nn.BatchNorm))


def test_linen_bind_on_an_unbatched_input():
  x = inputs((4,))[0]
  v = _variables(4)
  outs = []
  for cls in (nn.BatchNorm, bl.BatchNorm):
    bound = cls(use_running_average=False, momentum=0.8).bind(v, mutable=["batch_stats"])
    y = bound(x)
    outs.append((y, bound.variables["batch_stats"]))
  assert_close(outs[1][0], outs[0][0])
  assert_trees_close(outs[1][1], outs[0][1])


class _NnxNet(nnx.Module):
  def __init__(self, norm, rngs):
    self.lin = nnx.Linear(3, 4, rngs=rngs)
    self.bn = norm(4, momentum=0.9, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.bn(self.lin(x)))


def test_nnx_scan_over_unbatched_steps():
  xs = inputs((6, 3))[0]  # six steps of one unbatched example

  @nnx.jit
  def run(model, xs):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def step(model, x):
      return model, model(x)
    return step(model, xs)[1]

  nets = [_NnxNet(c, nnx.Rngs(0)) for c in (nnx.BatchNorm, bx.BatchNorm)]
  ys = [run(net, xs) for net in nets]
  assert_close(ys[1], ys[0])
  assert_trees_close(nnx.to_pure_dict(nnx.state(nets[1])), nnx.to_pure_dict(nnx.state(nets[0])))
  assert not np.allclose(nets[1].bn.mean[...], 0.0)  # the running statistics moved


def test_nnx_vmap_per_example():
  """Per-example nnx.vmap: parameters shared, one set of running statistics per example."""
  xs = inputs((5, 3))[0]

  def run(norm):
    net = _NnxNet(norm, nnx.Rngs(0))
    for name in ("mean", "var"):  # per-example statistics: a leading axis of 5
      var = getattr(net.bn, name)
      var.set_value(jnp.broadcast_to(var[...], (5,) + var.shape))
    state_axes = nnx.StateAxes({nnx.BatchStat: 0, ...: None})
    f = nnx.jit(nnx.vmap(lambda m, x: m(x), in_axes=(state_axes, 0)))
    return f(net, xs), nnx.to_pure_dict(nnx.state(net, nnx.BatchStat))

  (y_r, s_r), (y_o, s_o) = run(nnx.BatchNorm), run(bx.BatchNorm)
  assert_close(y_o, y_r)
  assert_trees_close(s_o, s_r)


def test_nnx_tabulate():
  x = inputs((1, 3))[0]
  tables = [nnx.tabulate(_NnxNet(c, nnx.Rngs(0)), x) for c in (nnx.BatchNorm, bx.BatchNorm)]
  assert "BatchNorm" in tables[1]
  assert tables[1] == tables[0]


# ------------------------------------------------------------------- masks with non-finite values


def test_masked_nan_like_flax():
  """Flax's forward pass ignores masked values too (jnp.mean(where=)), but its gradients
  turn NaN; ours stay those of a finite input."""
  shape = (8, 2, 3)
  x, w, mask = inputs(shape, seed=3)
  mask[0] = True  # at least 2 valid values per feature
  mask[1] = True
  nan_x = np.where(mask, x, np.float32(np.nan))
  v = _variables(3)

  def linen_step(model, x):
    def loss(p, x):
      y, upd = model.apply({**v, "params": p}, x, False, mask=mask, mutable=["batch_stats"])
      return jnp.sum(jnp.where(mask, y, 0.0) * w), (y, upd["batch_stats"])
    return jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(v["params"], x)

  (_, (y_r, s_r)), _ = linen_step(nn.BatchNorm(), nan_x)
  (_, (y_o, s_o)), (g_o, gx_o) = linen_step(bl.BatchNorm(), nan_x)
  assert_close(y_o[mask], y_r[mask])
  assert_trees_close(s_o, s_r)
  (_, _), (g_r_finite, gx_r_finite) = linen_step(nn.BatchNorm(), np.where(mask, x, 0.0))
  assert_trees_close(g_o, g_r_finite)
  assert_close(np.where(mask, gx_o, 0.0), np.where(mask, gx_r_finite, 0.0))
  (_, _), (g_r_nan, _) = linen_step(nn.BatchNorm(), nan_x)
  assert np.isnan(np.asarray(g_r_nan["scale"])).any()  # Flax's gradient (the documented difference)
  # NNX
  ref, ours = (_nnx_layer(c, 3) for c in (nnx.BatchNorm, bx.BatchNorm))
  f = nnx.jit(lambda m, x: m(x, use_running_average=False, mask=mask))
  assert_close(f(ours, nan_x)[mask], f(ref, nan_x)[mask])
  assert_trees_close(nnx.to_pure_dict(nnx.state(ours)), nnx.to_pure_dict(nnx.state(ref)))


def test_feature_without_valid_values_differs_from_flax_as_documented():
  x = inputs((6, 3))[0]
  mask = np.ones((6, 3), bool)
  mask[:, 1] = False
  v = _variables(3)
  y_r, s_r = _linen_train(nn.BatchNorm(), v, x, mask)
  y_o, s_o = _linen_train(bl.BatchNorm(), v, x, mask)
  assert np.isnan(np.asarray(y_r)[:, 1]).all() and np.isnan(np.asarray(s_r["mean"])[1])  # Flax: NaN
  assert np.isfinite(np.asarray(y_o)).all()
  assert_close(s_o["mean"][1], v["batch_stats"]["mean"][1])  # ours: untouched, normalized with them
  assert_close(s_o["var"][1], v["batch_stats"]["var"][1])
  eval_y = nn.BatchNorm(use_running_average=True).apply(v, x)
  assert_close(y_o[:, 1], eval_y[:, 1])
  keep = np.array([0, 2])
  assert_close(y_o[:, keep], y_r[:, keep])
  assert_close(s_o["mean"][keep], s_r["mean"][keep])


# ------------------------------------------------------------------- integer and complex inputs


def test_integer_inputs_like_flax():
  x = np.random.default_rng(4).integers(0, 255, (6, 3)).astype(np.uint8)
  v = _variables(3)
  (y_r, s_r), (y_o, s_o) = _linen_train(nn.BatchNorm(), v, x), _linen_train(bl.BatchNorm(), v, x)
  assert y_o.dtype == y_r.dtype == jnp.float32
  assert_close(y_o, y_r, rtol=1e-5)
  assert_trees_close(s_o, s_r, rtol=1e-5)
  ref, ours = (_nnx_layer(c, 3) for c in (nnx.BatchNorm, bx.BatchNorm))
  f = nnx.jit(lambda m, x: m(x, use_running_average=False))
  y_r, y_o = f(ref, x), f(ours, x)
  assert y_o.dtype == y_r.dtype == jnp.float32
  assert_close(y_o, y_r, rtol=1e-5)
  assert_trees_close(nnx.to_pure_dict(nnx.state(ours)), nnx.to_pure_dict(nnx.state(ref)), rtol=1e-5)


def test_statistics_in_float32_also_without_force_float32_reductions():
  # Flax with force_float32_reductions=False reduces bfloat16 inputs in bfloat16; the adapter always reduces in at least
  # float32 (only the stored statistics take param_dtype): the running mean and variance against NumPy in float64
  x = jnp.asarray(np.random.default_rng(6).normal(3.0, 2.0, size=(256, 4)), jnp.bfloat16)
  v = _variables(4)
  _, s = _linen_train(bl.BatchNorm(force_float32_reductions=False, momentum=0.0), v, x)
  xf = np.asarray(x, np.float64)
  np.testing.assert_allclose(np.asarray(s["mean"], np.float64), xf.mean(0), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(s["var"], np.float64), xf.var(0), rtol=1e-5)


@pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")  # Flax NNX's own update, not ours
def test_complex_inputs_like_flax():
  rng = np.random.default_rng(5)
  x = (rng.normal(size=(8, 3)) + 1j * rng.normal(size=(8, 3)) + 1j).astype(np.complex64)
  v = _variables(3)
  (y_r, s_r), (y_o, s_o) = _linen_train(nn.BatchNorm(), v, x), _linen_train(bl.BatchNorm(), v, x)
  assert y_o.dtype == y_r.dtype == jnp.complex64 and s_o["mean"].dtype == s_r["mean"].dtype == jnp.complex64
  for a, b in ((y_o, y_r), (s_o["mean"], s_r["mean"]), (s_o["var"], s_r["var"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  # NNX: the same output; the running mean stays complex (Flax NNX drops the imaginary part: documented).
  ref, ours = (_nnx_layer(c, 3) for c in (nnx.BatchNorm, bx.BatchNorm))
  f = nnx.jit(lambda m, x: m(x, use_running_average=False))
  with pytest.warns(np.exceptions.ComplexWarning):
    y_ref = f(ref, x)
  np.testing.assert_allclose(np.asarray(f(ours, x)), np.asarray(y_ref), rtol=1e-6, atol=1e-6)
  assert ours.mean.dtype == jnp.complex64 and ref.mean.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ours.mean[...]), np.asarray(s_o["mean"]), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ours.mean[...]).real, np.asarray(ref.mean[...]), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ours.var[...]), np.asarray(ref.var[...]), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------- nnx.view / view_info


def test_nnx_view_info_and_view():
  nets = [_NnxNet(c, nnx.Rngs(0)) for c in (nnx.BatchNorm, bx.BatchNorm)]
  info = [nnx.view_info(n) for n in nets]
  assert "use_running_average: bool | None = None" in info[1]
  assert info[1] == info[0]
  view = nnx.view(nets[1], use_running_average=True)
  assert view.bn.use_running_average is True and nets[1].bn.use_running_average is False
  x = inputs((4, 3))[0]
  before = nets[1].bn.mean[...]
  view(x)
  np.testing.assert_array_equal(nets[1].bn.mean[...], before)  # eval view: statistics untouched


# ------------------------------------------------------------------- research attributes


_core = jax.jit(bn.batch_norm, static_argnames=("train", "variance", "population", "population_noise", "stats_gradient",
                                                "momentum"))


def test_stats_gradient_attribute_equals_core():
  x, w, _ = inputs((8, 3), seed=6)
  v = _variables(3)
  params = bn.BNParams(v["params"]["scale"], v["params"]["bias"])
  state = bn.BNState(v["batch_stats"]["mean"], v["batch_stats"]["var"], jnp.zeros((), jnp.int32))
  g_core = jax.grad(lambda x: jnp.sum(_core(x, params, state, train=True, variance="fast", stats_gradient=False)[0] * w))(x)
  layer = bl.BatchNorm(stats_gradient=False)
  g_linen = jax.jit(jax.grad(lambda x: jnp.sum(layer.apply(v, x, False, mutable=["batch_stats"])[0] * w)))(x)
  assert_close(g_linen, g_core)
  m = _nnx_layer(bx.BatchNorm, 3, stats_gradient=False)
  g_nnx = nnx.jit(nnx.grad(lambda x, m: jnp.sum(m(x, use_running_average=False) * w)))(jnp.asarray(x), m)
  assert_close(g_nnx, g_core)
  assert not np.allclose(g_core, jax.grad(lambda x: jnp.sum(_train_default(v, x) * w))(x), atol=1e-3)


def _train_default(v, x):
  return bl.BatchNorm().apply(v, x, False, mutable=["batch_stats"])[0]


def test_population_noise_attribute_uses_the_noise_stream():
  x = inputs((8, 3), seed=7)[0]
  v = _variables(3)
  params = bn.BNParams(v["params"]["scale"], v["params"]["bias"])
  state = bn.BNState(v["batch_stats"]["mean"], v["batch_stats"]["var"], jnp.zeros((), jnp.int32))
  layer = bl.BatchNorm(population=True, population_noise=4)
  with pytest.raises(ValueError, match=r"BatchNorm\(population_noise=...\) draws random noise.*'noise'"):
    _linen_train(layer, v, x)
  key = jax.random.key(3)
  apply = jax.jit(lambda v, x, key: layer.apply(v, x, False, rngs={"noise": key}, mutable=["batch_stats"]))
  y, upd = apply(v, x, key)
  y_pop, s_pop = _core(x, params, state, train=True, variance="fast", population=True)
  assert_trees_close(upd["batch_stats"], {"mean": s_pop.mean, "var": s_pop.var})
  assert not np.allclose(y, y_pop, atol=1e-3)
  y2, _ = apply(v, x, jax.random.key(4))
  assert not np.allclose(y, y2, atol=1e-3)
  # The core's law (tests/test_population_noise.py): each normalized value as a member of a ghost batch of 4,
  # so |y - bias| / scale <= sqrt(3) (the law of a value outside its batch had no bound).
  yn = (np.asarray(y, np.float64) - np.asarray(params.bias)) / np.asarray(params.scale)
  assert np.all(np.abs(yn) <= np.sqrt(3) + 1e-4)
  # NNX: keys from the forked stream; eval adds nothing.
  m = _nnx_layer(bx.BatchNorm, 3, population=True, population_noise=4)
  assert "rngs" in nnx.to_pure_dict(nnx.state(m))
  f = nnx.jit(lambda m, x: m(x, use_running_average=False))
  a, b = f(m, x), f(m, x)
  assert not np.allclose(a, b, atol=1e-3)
  stats = {"mean": m.mean[...], "var": m.var[...]}
  assert_close(m(x, use_running_average=True), nn.BatchNorm(use_running_average=True).apply({**v, "batch_stats": stats}, x))
  no_stream = bx.BatchNorm(3, population=True, population_noise=4, rngs=nnx.Rngs(params=0))
  with pytest.raises(ValueError, match="has no rng stream"):
    no_stream(x)
