"""Models with a ``norm=`` switch: shapes, where the normalizer sits, state updates, layer naming.

Everything runs eagerly on tiny inputs (batch 4, 8x8x1 images, 4-8 channels) so the
per-op compilations are shared between models and norm kinds. Real initializers are
exercised in test_train.py and by ``test_init_std_sets_the_kernel_scale``.
"""

from concurrent.futures import ThreadPoolExecutor

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bn import models

B, CLASSES = 4, 10
X = jnp.asarray(np.random.default_rng(0).normal(size=(B, 8, 8, 1)), jnp.float32)
KINDS = models.NORM_KINDS
BN_KINDS = ("batch", "ghost", "renorm", "noisy", "population")  # the ones with running statistics
SPECS = {  # small variants of every model
    "mlp": dict(widths=(8, 8)),
    "cnn": dict(widths=(4, 8)),
    "vgg": dict(stages=((4,), (8, 8))),
    "resnet20": dict(widths=(4, 8, 8), blocks_per_stage=1),
}
PREACT_SHAPES = {  # the input of every nonlinearity, per top-level layer
    "mlp": {"layer0": (B, 8), "layer1": (B, 8)},
    "cnn": {"layer0": (B, 8, 8, 4), "layer1": (B, 4, 4, 8)},
    "vgg": {"layer0": (B, 8, 8, 4), "layer1": (B, 4, 4, 8), "layer2": (B, 4, 4, 8)},
    "resnet20": {"layer0": (B, 8, 8, 4), "layer1": (B, 8, 8, 4), "layer2": (B, 4, 4, 8), "layer3": (B, 2, 2, 8)},
}
RNGS = {"noise": jax.random.PRNGKey(7)}
O0 = {"xla_backend_optimization_level": 0}  # init programs: run once, compile fast


def variables(m, seed=0):
  """``m``'s variable tree (shapes from tracing ``m.init``) filled from NumPy: kernels N(0, 1/fan_in),
  BN scale/var 1, bias/mean 0. Tracing checks the init; skipping its compiled random draws keeps
  these tests fast (XLA:CPU spends seconds on each threefry draw of a conv kernel)."""
  shapes = jax.eval_shape(lambda: m.init({"params": jax.random.PRNGKey(0)}, X, train=False))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    k = path[-1].key
    if k in ("scale", "var"):
      return jnp.ones(s.shape, s.dtype)
    if k in ("bias", "mean"):
      return jnp.zeros(s.shape, s.dtype)
    return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1])), s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def spec(kind, **kw):
  return models.norm_spec(kind, ghost_batch_size=2 if kind == "ghost" else None, **kw)


def make(name, kind, **kw):
  return models.create(name, norm=spec(kind, **kw), num_classes=CLASSES, **SPECS[name])


@pytest.fixture(scope="module")
def forward():
  """Per (model, kind): variables, train-mode logits/collections, eval-mode logits/collections.
  Two threads: the per-op compilations run outside the GIL."""
  def one(name):
    out = {}
    for kind in KINDS:
      m = make(name, kind)
      v = variables(m)
      y_tr, mut_tr = m.apply(v, X, train=True, mutable=["batch_stats", "intermediates"], rngs=RNGS)
      y_ev, mut_ev = m.apply(v, X, train=False, mutable=["batch_stats", "intermediates"])
      out[name, kind] = dict(model=m, v=v, y_tr=y_tr, mut_tr=mut_tr, y_ev=y_ev, mut_ev=mut_ev)
    return out

  with ThreadPoolExecutor(2) as pool:
    return {k: v for part in pool.map(one, ["mlp", "cnn", "resnet20", "vgg"]) for k, v in part.items()}


def leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return jax.tree.structure(a) == jax.tree.structure(b) and all(np.array_equal(x, y) for x, y in zip(la, lb))


# ----------------------------------------------------------------------------- every model x every norm kind


@pytest.mark.parametrize("name", list(SPECS))
def test_finite_logits_of_the_right_shape(forward, name):
  for kind in KINDS:
    r = forward[name, kind]
    for y in (r["y_tr"], r["y_ev"]):
      assert y.shape == (B, CLASSES) and y.dtype == jnp.float32, (name, kind)
      assert np.all(np.isfinite(y)), (name, kind)


@pytest.mark.parametrize("name", list(SPECS))
def test_batch_stats_move_in_training_only(forward, name):
  for kind in KINDS:
    r = forward[name, kind]
    if kind not in BN_KINDS:  # per-example norms and none keep no state
      assert "batch_stats" not in r["v"] and not r["mut_tr"].get("batch_stats"), (name, kind)
      continue
    before = r["v"]["batch_stats"]
    assert leaves_equal(r["mut_ev"]["batch_stats"], before), f"eval mode changed batch_stats ({name}, {kind})"
    after = r["mut_tr"]["batch_stats"]
    assert jax.tree.structure(after) == jax.tree.structure(before)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))]
    assert all(moved), f"train mode left some running statistics unchanged ({name}, {kind})"


@pytest.mark.parametrize("name", list(SPECS))
def test_kinds_differ_where_they_should(forward, name):
  """Train vs eval mode is the same function exactly when the normalizer does not use the batch."""
  f = {k: forward[name, k] for k in KINDS}
  for kind in ("batch", "ghost", "noisy"):  # batch statistics (or noise) in training
    assert not np.allclose(f[kind]["y_tr"], f[kind]["y_ev"], atol=1e-4), (name, kind)
  for kind in ("population", "group", "layer", "none"):
    np.testing.assert_allclose(f[kind]["y_tr"], f[kind]["y_ev"], rtol=1e-5, atol=1e-5, err_msg=f"{name} {kind}")
  # same variables, different statistics: ghost batches of 2 and noise change the training output
  v = f["batch"]["v"]
  y_batch = f["batch"]["model"].apply(v, X, train=True, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(y_batch, f["batch"]["y_tr"], rtol=1e-6)
  for kind in ("ghost", "noisy"):
    y = f[kind]["model"].apply(v, X, train=True, mutable=["batch_stats"], rngs=RNGS)[0]
    assert not np.allclose(y, y_batch, atol=1e-4), (name, kind)


@pytest.mark.parametrize("name", list(SPECS))
def test_sown_preacts(forward, name):
  for kind in ("batch", "none", "layer"):
    r = forward[name, kind]
    for mut in (r["mut_tr"], r["mut_ev"]):
      acts = models.preacts(mut["intermediates"])
      assert {k: a.shape for k, a in acts.items()} == PREACT_SHAPES[name], (name, kind)
      assert list(acts) == [n for n in models.layer_names(r["v"]["params"]) if n != "head"]


@pytest.mark.parametrize("name", list(SPECS))
def test_layer_names_in_forward_order(forward, name):
  params = forward[name, "batch"]["v"]["params"]
  assert models.layer_names(params) == tuple(PREACT_SHAPES[name]) + ("head",)
  assert set(models.layer_names(params)) == set(params)  # every parameter sits under a layer


def test_layer_names_sort_numerically():
  fake = {f"layer{i}": {} for i in (10, 2, 0, 1, 11, 3, 4, 5, 6, 7, 8, 9)}
  fake["head"] = {}
  assert models.layer_names(fake) == tuple(f"layer{i}" for i in range(12)) + ("head",)
  assert models.layer_names({"layer1": {}, "layer0": {}}) == ("layer0", "layer1")


def test_renorm_schedule_arrays_are_used(forward):
  """The (r_max, d_max) arrays passed at call time override the spec: r_max=1, d_max=0 is plain BN."""
  r = forward["mlp", "renorm"]
  y_plain = forward["mlp", "batch"]["model"].apply(r["v"], X, train=True, mutable=["batch_stats"])[0]
  y_off = r["model"].apply(r["v"], X, train=True, renorm=(jnp.float32(1.0), jnp.float32(0.0)), mutable=["batch_stats"])[0]
  np.testing.assert_allclose(y_off, y_plain, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- where the normalizer sits


def _normalize(h, eps=1e-5):
  h = np.asarray(h, np.float64)
  return (h - h.mean(0)) / np.sqrt(h.var(0) + eps)


@pytest.mark.parametrize("position", ["pre", "post"])
def test_norm_position_in_an_mlp_block(position):
  """pre: linear (no bias) -> BN -> act; post: linear (+bias) -> act -> BN. Checked against NumPy."""
  m = models.MLP(widths=(6,), act="relu", norm=models.NormSpec(kind="batch", position=position), num_classes=3)
  v = variables(m, 1)
  lin = v["params"]["layer0"]["linear"]
  assert ("bias" in lin) == (position == "post"), "a Dense bias is redundant right before BN"
  assert set(v["params"]["layer0"]) == {"linear", "norm"}
  # give BN a non-trivial affine so its place in the block is visible
  v = jax.tree_util.tree_map_with_path(
      lambda p, t: t + (0.3 if "norm" in str(p) else 0.2) if p[-1].key in ("scale", "bias") else t, v)
  _, mut = m.apply(v, X, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True)
  preact = np.asarray(mut["intermediates"]["layer0"]["preact"][0], np.float64)
  out = np.asarray(mut["intermediates"]["layer0"]["__call__"][0], np.float64)
  lin = v["params"]["layer0"]["linear"]
  x = np.asarray(X, np.float64).reshape(B, -1)
  h = x @ np.asarray(lin["kernel"], np.float64) + (np.asarray(lin["bias"], np.float64) if "bias" in lin else 0.0)
  g = 1.3  # BN scale 1 + 0.3, BN bias 0 + 0.3 (and the Dense bias, if any, 0.2)
  if position == "pre":
    np.testing.assert_allclose(preact, g * _normalize(h) + 0.3, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out, np.maximum(preact, 0), rtol=1e-6, atol=1e-6)
  else:
    np.testing.assert_allclose(preact, h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, g * _normalize(np.maximum(h, 0)) + 0.3, rtol=1e-4, atol=1e-4)
  # the running statistics are of the normalizer's input, with Flax's momentum convention
  bn_in = h if position == "pre" else np.maximum(h, 0)
  stats = mut["batch_stats"]["layer0"]["norm"]["bn"]
  np.testing.assert_allclose(stats["mean"], 0.01 * bn_in.mean(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.99 + 0.01 * bn_in.var(0), rtol=1e-5, atol=1e-6)


def test_no_norm_block_is_linear_plus_bias_then_act():
  m = models.MLP(widths=(6,), act="tanh", norm=models.NormSpec(kind="none"), num_classes=3)
  v = variables(m, 1)
  assert set(v) == {"params"} and set(v["params"]["layer0"]) == {"linear"}
  _, mut = m.apply(v, X, train=True, mutable=["intermediates"], capture_intermediates=True)
  lin = v["params"]["layer0"]["linear"]
  h = np.asarray(X, np.float64).reshape(B, -1) @ np.asarray(lin["kernel"], np.float64) + np.asarray(lin["bias"], np.float64)
  np.testing.assert_allclose(mut["intermediates"]["layer0"]["preact"][0], h, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mut["intermediates"]["layer0"]["__call__"][0], np.tanh(h), rtol=1e-5, atol=1e-5)


def test_per_example_norms_ignore_the_rest_of_the_batch(forward):
  for kind in ("layer", "group", "none"):
    r = forward["mlp", kind]
    y2 = r["model"].apply(r["v"], X[:2], train=True, mutable=["batch_stats"])[0]
    np.testing.assert_allclose(y2, r["y_tr"][:2], rtol=1e-5, atol=1e-5, err_msg=kind)
  r = forward["mlp", "batch"]
  y2 = r["model"].apply(r["v"], X[:2], train=True, mutable=["batch_stats"])[0]
  assert not np.allclose(y2, r["y_tr"][:2], atol=1e-4)


def test_resnet_block_projection_and_norms(forward):
  p = forward["resnet20", "batch"]["v"]["params"]
  assert "proj" not in p["layer1"] and "proj" in p["layer2"] and "proj" in p["layer3"]  # shape changes only
  assert {"conv0", "conv1", "norm1", "proj", "proj_norm"} <= set(p["layer2"])
  assert "bias" not in p["layer2"]["conv1"]  # BN follows
  assert "bias" in forward["resnet20", "none"]["v"]["params"]["layer2"]["conv1"]
  assert p["layer3"]["proj"]["kernel"].shape == (1, 1, 8, 8)


# ----------------------------------------------------------------------------- construction


def test_init_std_sets_the_kernel_scale():
  """``init_std``: N(0, init_std^2) kernels (Ioffe's "small Gaussian"); None: LeCun normal."""
  for std in (0.1, None):
    m = models.MLP(widths=(256,), init_std=std, norm=models.NormSpec(kind="none"))
    init = jax.jit(lambda k: m.init({"params": k}, X[:1], train=False)["params"], compiler_options=O0)
    p = jax.tree.map(np.asarray, init(jax.random.PRNGKey(0)))
    k0, head = p["layer0"]["linear"]["kernel"], p["head"]["kernel"]
    want0, want_head = (0.1, 0.1) if std else (1 / 8, 1 / 16)  # LeCun: 1 / sqrt(fan_in) with fan_in 64, 256
    assert abs(k0.std() / want0 - 1) < 0.05 and abs(head.std() / want_head - 1) < 0.1
    assert np.all(p["layer0"]["linear"]["bias"] == 0)


def test_create_and_spec_errors():
  with pytest.raises(ValueError, match="unknown model"):
    models.create("transformer", norm=spec("batch"), num_classes=10)
  with pytest.raises(ValueError, match="no option"):
    models.create("mlp", norm=spec("batch"), num_classes=10, stages=((4,),))
  with pytest.raises(ValueError, match="not one of"):
    models.NormSpec(kind="instance")
  with pytest.raises(ValueError, match="position"):
    models.NormSpec(position="middle")
  with pytest.raises(ValueError, match="ghost_batch_size"):
    models.NormSpec(kind="ghost")
  with pytest.raises(ValueError, match="activation"):
    models.activation("swishy")
  m = models.create("vgg", norm=spec("batch"), num_classes=3, stages=[[4], [8, 8]])  # lists from JSON configs
  assert m.stages == ((4,), (8, 8))
  assert isinstance(m, nn.Module) and m.num_classes == 3


@pytest.mark.parametrize("hw", [(8, 8), (7, 7), (6, 9)])
def test_max_pool_2x2_matches_flax_values_and_gradients(hw):
  x = jax.random.normal(jax.random.key(0), (3, *hw, 5))  # continuous: no ties within a window
  ref = lambda x: nn.max_pool(x, (2, 2), (2, 2))
  np.testing.assert_array_equal(models.max_pool_2x2(x), ref(x))
  w = jax.random.normal(jax.random.key(1), ref(x).shape)
  g = jax.grad(lambda x: jnp.sum(models.max_pool_2x2(x) * w))(x)
  g_ref = jax.grad(lambda x: jnp.sum(ref(x) * w))(x)
  np.testing.assert_allclose(g, g_ref)


def test_max_pool_2x2_gives_ties_to_the_first_element_like_flax():
  x = jnp.asarray(np.random.default_rng(0).integers(0, 2, size=(2, 6, 6, 3)), jnp.float32)  # many ties
  g = jax.grad(lambda x: jnp.sum(models.max_pool_2x2(x)))(x)
  g_ref = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), (2, 2))))(x)
  np.testing.assert_array_equal(g, g_ref)
  assert float(jnp.sum(g)) == 2 * 3 * 3 * 3  # one unit of gradient per window


def test_drift_adds_its_closed_form_and_counts_training_calls_only():
  """bn.models.Drift: unit j gets a * sqrt(2) * sin(2 pi t / P_j + phi_j) after the normalizer, t the training calls so far;
  evaluation reads the current t without advancing it; drift=0 builds no Drift at all (the same variables as before)."""
  import dataclasses
  import math

  plain = models.norm_spec("batch")
  drift = dataclasses.replace(plain, drift=0.5, drift_period=100.0)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 5))

  def preact(spec, variables, train):
    m = models.MLP(widths=(4,), norm=spec, num_classes=3, act="linear")
    (_, state) = m.apply(variables, x, train=train, mutable=["batch_stats", "intermediates"])
    return state["intermediates"]["layer0"]["preact"][0], state["batch_stats"]

  m1 = models.MLP(widths=(4,), norm=drift, num_classes=3, act="linear")
  v1 = m1.init(jax.random.PRNGKey(1), x)
  v0 = models.MLP(widths=(4,), norm=plain, num_classes=3, act="linear").init(jax.random.PRNGKey(1), x)
  assert "drift" not in v0["batch_stats"]["layer0"]
  j = np.arange(4)
  periods = 100.0 * (1 + (j * math.sqrt(2) % 1.0))
  phases = 2 * math.pi * (j * 0.6180339887498949 % 1.0)
  stats = v1["batch_stats"]
  for t in range(3):  # training calls: the offset at t, then t + 1
    assert int(stats["layer0"]["drift"]["drift_step"]) == t
    with_drift, new = preact(drift, {**v1, "batch_stats": stats}, True)
    without, _ = preact(plain, {**v0, "batch_stats": {"layer0": {"norm": stats["layer0"]["norm"]}}}, True)
    np.testing.assert_allclose(with_drift - without, np.broadcast_to(0.5 * math.sqrt(2) * np.sin(2 * math.pi * t / periods + phases), (8, 4)),
                               atol=2e-6)
    stats = new
  _, after_eval = preact(drift, {**v1, "batch_stats": stats}, False)
  assert int(after_eval["layer0"]["drift"]["drift_step"]) == 3  # evaluation does not advance it
  with pytest.raises(ValueError, match="drift"):
    dataclasses.replace(plain, drift=-1.0)


def test_mlp_dropout_in_training_only_and_checked():
  """``dropout=p`` zeroes a fraction ~p of each hidden layer's outputs (scaled by 1/(1-p)) in training calls given
  a "noise" RNG; evaluation and training calls without one (precise-BN recalibration) are deterministic."""
  m = models.MLP(widths=(256,), act="relu", norm=models.norm_spec("none"), dropout=0.5)
  x = jax.random.normal(jax.random.key(0), (64, 20))
  v = m.init(jax.random.key(1), x, train=False)
  h = lambda train, **kw: m.apply(v, x, train=train, capture_intermediates=True, **kw)[1]["intermediates"]["layer0"]["__call__"][0]  # noqa: E731
  dropped = h(True, rngs={"noise": jax.random.key(2)})
  full = h(False)
  zero = np.asarray(dropped == 0) & np.asarray(full != 0)
  assert 0.4 < zero.sum() / np.sum(np.asarray(full != 0)) < 0.6
  kept = np.asarray(dropped != 0)
  np.testing.assert_allclose(np.asarray(dropped)[kept], 2 * np.asarray(full)[kept], rtol=1e-5)
  np.testing.assert_array_equal(h(True), full)  # no RNG: no dropout
  with pytest.raises(ValueError, match="dropout=1.0 must be a number in"):
    models.MLP(dropout=1.0)
