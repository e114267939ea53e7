"""The ledger's probes that must survive BN's weight-scale symmetry, against independent references:
gradient ICS on selected leaves (a hand-worked two-layer net), normalized Hessian blocks
(jax.hessian), and invariance of the relative-units landscape, the normalized Hessian blocks and
the matched gradient ICS when a BN layer's incoming weights are multiplied by 10."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bn import config as bn_config, experiment, probes, run_probes, train

RNG = np.random.default_rng(3)


def test_gradient_ics_compares_selected_leaves_after_the_whole_update():
  """f = w2 . (W1 x + b1), L = 1/2 (f - y)^2 on one example; layer 1 = (W1, b1), layer 2 = w2.
  G_2 = (f - y) h, h = W1 x + b1; after layer 1 moves by (U, u): G'_2 = (f' - y) h', h' = (W1 + U) x + b1 + u.
  Compared on layer 2's kernel w2 (``select``), with layer 1 moved by its whole update (kernel and bias)."""
  x, y = RNG.normal(size=3), 0.7
  W1, b1, w2 = RNG.normal(size=(2, 3)), RNG.normal(size=2), RNG.normal(size=2)
  U, u = 0.1 * RNG.normal(size=(2, 3)), 0.1 * RNG.normal(size=2)
  h, h2 = W1 @ x + b1, (W1 + U) @ x + b1 + u
  G, G2 = (w2 @ h - y) * h, (w2 @ h2 - y) * h2
  params = {"l1": {"kernel": jnp.asarray(W1, jnp.float32), "bias": jnp.asarray(b1, jnp.float32)},
            "l2": {"kernel": jnp.asarray(w2, jnp.float32), "bias": jnp.zeros((), jnp.float32)}}

  def loss(p):
    return 0.5 * (p["l2"]["kernel"] @ (p["l1"]["kernel"] @ x + p["l1"]["bias"]) + p["l2"]["bias"] - y) ** 2

  update = {"l1": {"kernel": jnp.asarray(U, jnp.float32), "bias": jnp.asarray(u, jnp.float32)},
            "l2": {"kernel": jnp.zeros(2), "bias": jnp.zeros(())}}
  out = probes.gradient_ics(loss, params, lambda g: update, ("l1", "l2"), select=lambda t: t["kernel"])
  np.testing.assert_allclose(out.l2[1], np.linalg.norm(G - G2), rtol=1e-5)
  np.testing.assert_allclose(out.cos[1], G @ G2 / np.linalg.norm(G) / np.linalg.norm(G2), rtol=1e-5)
  np.testing.assert_allclose(out.rel[1], np.linalg.norm(G - G2) / np.linalg.norm(G), rtol=1e-5)
  assert out.l2[0] == 0 and out.cos[0] == pytest.approx(1.0)


def test_normalized_hessian_blocks_match_jax_hessian():
  """A tiny 3-layer tanh net: Frobenius norms of the Hessian blocks from jax.hessian vs the
  Hessian-vector-product estimate with many random probes."""
  x = jnp.asarray(RNG.normal(size=(8, 3)), jnp.float32)
  y = jnp.asarray(RNG.normal(size=(8, 2)), jnp.float32)
  w = {"a": jnp.asarray(RNG.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(RNG.normal(size=(4, 4)) / 2, jnp.float32),
       "c": jnp.asarray(RNG.normal(size=(4, 2)) / 2, jnp.float32)}

  def loss(p):
    return jnp.mean((jnp.tanh(jnp.tanh(x @ p["a"]) @ p["b"]) @ p["c"] - y) ** 2)

  H = jax.hessian(loss)(w)
  names = ("a", "b", "c")
  fro = np.array([[np.linalg.norm(np.asarray(H[j][k]).reshape(w[j].size, w[k].size)) for k in names] for j in names])
  want = fro / np.sqrt(np.outer(np.diag(fro), np.diag(fro)))
  got = probes.hessian_coupling(loss, w, jax.random.PRNGKey(0), names, num_probes=4000, batch_size=500)
  np.testing.assert_allclose(got.normalized, want, rtol=0.08)
  np.testing.assert_allclose(got.normalized_summary, want[np.triu_indices(3, 1)].mean(), rtol=0.08)


# ----------------------------------------------------------------------------- invariance under BN's weight-scale symmetry


@pytest.fixture(scope="module")
def bn_mlp():
  c = bn_config.base()
  c.data.update(source="synthetic", synthetic_shape=(3, 3, 1), synthetic_classes=4)
  c.model.update(widths=(6, 5), act="tanh", init_std=0.5)
  c.norm.update(kind="batch", epsilon=1e-8)
  c.optimizer.update(name="momentum", lr=0.3)
  c.train.update(batch_size=16)
  c.probes.update(every=100, batch_size=32, landscape_scales=(1.0, 2.0), kinds=("norms", "grad_ics", "landscape", "coupling", "hessian"),
                  rho=1e-2)
  exp = experiment.from_config(c)
  task = exp.make_task(4)
  x = jnp.asarray(RNG.normal(size=(32, 3, 3, 1)), jnp.float32)
  y = jnp.asarray(RNG.integers(0, 4, 32), jnp.int32)
  state = train.init_state(task, 0, 0.3, 0.0, x[:2], 32)
  # a few SGD steps so the momentum buffer and BN statistics are not at their initial values
  step = jax.jit(functools.partial(train.train_step, task))
  for _ in range(3):
    state, _ = step(state, x, y)
  probe = jax.jit(functools.partial(run_probes.probe_one, task, exp.probes))
  return task, exp, state, x, y, probe


def scaled(state, layer, factor):
  """The same network with a BN layer's incoming weight matrix times ``factor`` (a number, or one
  per unit: column-wise) and its momentum buffer divided by it: the state the same trajectory
  reaches in the rescaled parametrization."""
  def scale(tree, f):
    tree = jax.tree.map(lambda t: t, tree)  # a copy
    tree[layer] = dict(tree[layer])
    tree[layer]["linear"] = {"kernel": tree[layer]["linear"]["kernel"] * f}
    return tree
  parts = list(state.opt_state)  # the chain's states: (weight decay, momentum trace, schedule, layer multipliers)
  parts[1] = parts[1]._replace(trace=scale(parts[1].trace, 1 / factor))
  return state._replace(params=scale(state.params, factor), opt_state=tuple(parts))


@pytest.mark.parametrize("per_unit", [False, True], ids=["layer-wide x10", "per-unit random scales"])
def test_scale_invariant_probes_do_not_change_when_a_bn_layer_is_scaled(bn_mlp, per_unit):
  task, exp, state, x, y, probe = bn_mlp
  a = jax.device_get(probe(state, x, y, x))
  if per_unit:  # BN's symmetry acts per unit: every column its own factor in [0.2, 5]
    f0 = jnp.asarray(np.exp(RNG.uniform(np.log(0.2), np.log(5.0), (1, 6))), jnp.float32)
    f1 = jnp.asarray(np.exp(RNG.uniform(np.log(0.2), np.log(5.0), (1, 5))), jnp.float32)
  else:
    f0 = f1 = 10.0
  b = jax.device_get(probe(scaled(scaled(state, "layer1", f1), "layer0", f0), x, y, x))
  assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)  # the function itself is unchanged
  for k in ("loss_variation", "grad_predictiveness", "beta_smoothness"):
    np.testing.assert_allclose(getattr(a["landscape_rel"], k), getattr(b["landscape_rel"], k), rtol=2e-3, err_msg=k)
  np.testing.assert_allclose(a["hessian"]["normalized"], b["hessian"]["normalized"], rtol=2e-3)
  np.testing.assert_allclose(a["grad_ics"]["matched"].cos, b["grad_ics"]["matched"].cos, rtol=1e-3, atol=1e-5)
  # second differences of float32 losses: rounding of W / D shows at the 1e-3 level
  np.testing.assert_allclose(a["coupling"]["relative_cross_fraction"], b["coupling"]["relative_cross_fraction"], rtol=1e-2)
  # the raw (paper's) measures are not invariant: that is why the relative ones exist
  assert not np.isclose(a["landscape"].grad_predictiveness, b["landscape"].grad_predictiveness, rtol=0.1)
  assert not np.isclose(a["landscape"].loss_variation, b["landscape"].loss_variation, rtol=0.1)
  if not per_unit:
    assert a["norms"]["weight"][1] * 10 == pytest.approx(b["norms"]["weight"][1], rel=1e-5)
    assert a["norms"]["effective_lr"][1] / 100 == pytest.approx(b["norms"]["effective_lr"][1], rel=1e-4)


def test_probe_noise_is_fresh_at_every_probe_point():
  c = bn_config.base()
  c.model.update(widths=(6,), act="sigmoid")
  c.norm.update(kind="noisy")
  c.probes.update(every=100, batch_size=16, kinds=("act",))
  exp = experiment.from_config(c)
  task = exp.make_task(3)
  x = jnp.asarray(RNG.normal(size=(16, 2, 2, 1)), jnp.float32)
  y = jnp.zeros(16, jnp.int32)
  state = train.init_state(task, 0, 0.1, 0.0, x[:2], 16)
  probe = jax.jit(functools.partial(run_probes.probe_one, task, exp.probes))
  a = probe(state, x, y, x)["units"]["layer0"][0]
  b = probe(state._replace(step=state.step + 1), x, y, x)["units"]["layer0"][0]
  again = probe(state, x, y, x)["units"]["layer0"][0]
  assert not np.allclose(a, b)  # another probe point: other noise
  np.testing.assert_array_equal(a, again)  # the same point: the same noise (reproducible)
