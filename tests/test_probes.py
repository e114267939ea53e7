"""Probes (bn.probes) against closed forms, NumPy and SciPy references (the report's statistics: test_stats.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from bn import probes

RNG = np.random.default_rng(0)


def close(a, b, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


def sgd(lr):
  return lambda g: jax.tree.map(lambda t: -lr * t, g)


# ----------------------------------------------------------------------------- gradient ICS


def linear3_grads(A, B, C, X, Y):
  """Closed-form gradients of L = 1/(2N) ||X A B C - Y||_F^2."""
  n = X.shape[0]
  R = X @ A @ B @ C - Y
  return X.T @ R @ (B @ C).T / n, (X @ A).T @ R @ C.T / n, (X @ A @ B).T @ R / n


def linear3_problem():
  X, Y = RNG.normal(size=(16, 4)), RNG.normal(size=(16, 2))
  A, B, C = RNG.normal(size=(4, 5)) / 2, RNG.normal(size=(5, 3)) / 2, RNG.normal(size=(3, 2)) / 2
  params = {"A": {"kernel": jnp.asarray(A, jnp.float32)}, "B": {"kernel": jnp.asarray(B, jnp.float32)},
            "C": {"kernel": jnp.asarray(C, jnp.float32)}}
  Xj, Yj = jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)

  def loss(p):
    out = Xj @ p["A"]["kernel"] @ p["B"]["kernel"] @ p["C"]["kernel"]
    return 0.5 * jnp.mean(jnp.sum(jnp.square(out - Yj), axis=-1))

  return (A, B, C, X, Y), params, loss


def cos(a, b):
  return np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))


def test_gradient_ics_one_layer_is_exactly_zero():
  w = jnp.asarray(RNG.normal(size=(3, 2)), jnp.float32)
  x = jnp.asarray(RNG.normal(size=(8, 3)), jnp.float32)
  out = probes.gradient_ics(lambda p: jnp.sum(jnp.tanh(x @ p["D"]["kernel"]) ** 2), {"D": {"kernel": w}},
                            sgd(0.5), ("D",))
  assert out.l2.shape == (1,) and float(out.l2[0]) == 0.0 and float(out.rel[0]) == 0.0
  close(out.cos, [1.0])


def test_gradient_ics_matches_closed_form_linear_net():
  (A, B, C, X, Y), params, loss = linear3_problem()
  lr = 0.3
  gA, gB, gC = linear3_grads(A, B, C, X, Y)
  A1, B1 = A - lr * gA, B - lr * gB
  gB_after = linear3_grads(A1, B, C, X, Y)[1]  # layer B after A moved
  gC_after = linear3_grads(A1, B1, C, X, Y)[2]  # layer C after A and B moved
  out = probes.gradient_ics(loss, params, sgd(lr), ("A", "B", "C"))
  expected = [0.0, np.linalg.norm(gB - gB_after), np.linalg.norm(gC - gC_after)]
  assert expected[1] > 1e-2 and expected[2] > 1e-2  # the test has teeth
  close(out.l2, expected, rtol=1e-4)
  close(out.cos, [1.0, cos(gB, gB_after), cos(gC, gC_after)], rtol=1e-5)
  close(out.rel, np.asarray(expected) / [np.linalg.norm(g) for g in (gA, gB, gC)], rtol=1e-4)
  # Two-layer grouping: (A, B) is one layer; C's G' sees both moved.
  grouped = probes.gradient_ics(loss, params, sgd(lr), (("A", "B"), "C"))
  close(grouped.l2, [0.0, expected[2]], rtol=1e-4)
  # Batched evaluation gives the same numbers.
  close(probes.gradient_ics(loss, params, sgd(lr), ("A", "B", "C"), batch_size=2).l2, expected, rtol=1e-4)


def test_gradient_ics_rejects_bad_layers():
  _, params, loss = linear3_problem()
  with pytest.raises(KeyError, match="not keys of params"):
    probes.gradient_ics(loss, params, sgd(0.1), ("A", "Dense_9"))
  with pytest.raises(ValueError, match="tuple of layer names"):
    probes.gradient_ics(loss, params, sgd(0.1), "A")


def test_grad_norms_closed_form():
  (A, B, C, X, Y), params, loss = linear3_problem()
  close(probes.grad_norms(loss, params, ("C", "A", "B")),
        [np.linalg.norm(g) for g in np.array(linear3_grads(A, B, C, X, Y), dtype=object)[[2, 0, 1]]], rtol=1e-5)


# ----------------------------------------------------------------------------- coupling


def scalars(**kw):
  return {k: {"w": jnp.asarray(v, jnp.float32)} for k, v in kw.items()}


def test_coupling_separable_loss_is_zero():
  params = {k: {"w": jnp.asarray(RNG.normal(size=(4,)), jnp.float32)} for k in ("a", "b", "c")}
  coef = {"a": 1.0, "b": 2.0, "c": 0.5}
  loss = lambda p: sum(coef[k] * jnp.sum(jnp.tanh(p[k]["w"]) ** 2) for k in ("a", "b", "c"))
  updates = {k: {"w": jnp.asarray(0.3 * RNG.normal(size=(4,)), jnp.float32)} for k in params}
  out = probes.coupling(loss, params, updates, ("a", "b", "c"))
  off = ~np.eye(3, dtype=bool)
  assert np.max(np.abs(np.asarray(out.raw)[off])) < 2e-6
  assert float(out.summary) < 1e-4 and float(out.cross_fraction) < 1e-4
  assert np.min(np.abs(np.diag(out.raw))) > 1e-3  # within-layer curvature is there


def test_coupling_product_matches_hand_values():
  a, b, c, da, db, dc = 1.5, -2.0, 0.5, 0.25, 0.5, -1.0
  loss = lambda p: p["a"]["w"] * p["b"]["w"] * p["c"]["w"]
  out = probes.coupling(loss, scalars(a=a, b=b, c=c), scalars(a=da, b=db, c=dc), ("a", "b", "c"))
  single = np.abs([da * b * c, a * db * c, a * b * dc])
  raw = np.array([[0, da * db * c, da * b * dc], [da * db * c, 0, a * db * dc], [da * b * dc, a * db * dc, 0]])
  close(out.raw, raw, rtol=1e-5)
  norm = raw / (single[:, None] + single[None, :])
  close(out.normalized, norm, rtol=1e-5)
  close(out.summary, np.mean(np.abs(norm[np.triu_indices(3, 1)])), rtol=1e-5)
  close(out.cross_fraction, 1.0, rtol=1e-6)  # bilinear in each layer: no within-layer curvature


def test_coupling_quadratic_is_hessian_blocks():
  sizes = (2, 3, 2)
  M = RNG.normal(size=(7, 7))
  H = (M + M.T) / 2
  w, d = RNG.normal(size=7), 0.3 * RNG.normal(size=7)
  cuts = np.cumsum((0,) + sizes)
  split = lambda v: {f"l{i}": {"w": jnp.asarray(v[cuts[i]:cuts[i + 1]], jnp.float32)} for i in range(3)}
  Hj = jnp.asarray(H, jnp.float32)

  def loss(p):
    v = jnp.concatenate([p[f"l{i}"]["w"] for i in range(3)])
    return 0.5 * v @ Hj @ v

  out = probes.coupling(loss, split(w), split(d), ("l0", "l1", "l2"))
  blocks = [slice(cuts[i], cuts[i + 1]) for i in range(3)]
  raw = np.array([[d[bj] @ H[bj, bk] @ d[bk] for bk in blocks] for bj in blocks])
  close(out.raw, raw, rtol=1e-3, atol=1e-5)
  cross = np.sum(np.abs(raw[np.triu_indices(3, 1)]))
  close(out.cross_fraction, cross / (cross + 0.5 * np.sum(np.abs(np.diag(raw)))), rtol=1e-3)


def test_hessian_coupling():
  d, names = 3, ("x", "y", "z")
  params = {n: {"w": jnp.asarray(RNG.normal(size=(d,)), jnp.float32)} for n in names}
  # Separable: off-diagonal blocks exactly zero.
  sep = lambda p: jnp.sum(jnp.sin(p["x"]["w"]) ** 2) + jnp.sum(jnp.exp(p["y"]["w"])) + jnp.sum(p["z"]["w"] ** 4)
  out = probes.hessian_coupling(sep, params, jax.random.key(0), names, num_probes=1000, batch_size=1000)
  blocks = np.asarray(out.blocks)
  assert np.all(blocks[~np.eye(3, dtype=bool)] == 0.0) and float(out.summary) == 0.0
  assert np.min(np.diag(blocks)) > 0
  # Quadratic whose blocks are c_jk * orthogonal: ||H_jk v|| = c_jk ||v||, so ratio is exact for any v,
  # and blocks -> Frobenius norms ||H_jk||_F = c_jk sqrt(d) as the number of probes grows.
  c = np.array([[2.0, 0.5, 1.0], [0.5, 1.0, 0.25], [1.0, 0.25, 3.0]])
  Q = [np.linalg.qr(RNG.normal(size=(d, d)))[0] for _ in range(3)]
  H = np.kron(np.diag(np.diag(c)), np.eye(d))
  for j, k in zip(*np.triu_indices(3, 1)):
    H[j * d:(j + 1) * d, k * d:(k + 1) * d] = c[j, k] * Q[j + k - 1]
    H[k * d:(k + 1) * d, j * d:(j + 1) * d] = c[j, k] * Q[j + k - 1].T
  Hj = jnp.asarray(H, jnp.float32)
  loss = lambda p: 0.5 * (v := jnp.concatenate([p[n]["w"] for n in names])) @ Hj @ v
  out = probes.hessian_coupling(loss, params, jax.random.key(1), names, num_probes=1000, batch_size=1000)
  off = c - np.diag(np.diag(c))
  close(out.ratio, np.sqrt(np.sum(off ** 2, axis=0)) / np.diag(c), rtol=1e-5)
  close(out.blocks, c * math.sqrt(d), rtol=0.05)
  close(out.summary, np.sqrt(np.sum(off ** 2) / np.sum(np.diag(c) ** 2)), rtol=0.05)


# ----------------------------------------------------------------------------- landscape


def test_landscape_on_quadratic():
  M = RNG.normal(size=(5, 5))
  A = M @ M.T + np.eye(5)
  w = RNG.normal(size=5)
  Aj = jnp.asarray(A, jnp.float32)
  loss = lambda p: 0.5 * p["w"] @ Aj @ p["w"]
  lr, scales = 0.05, (0.5, 1.0, 2.0, 4.0)
  out = probes.landscape(loss, {"w": jnp.asarray(w, jnp.float32)}, lr, scales)
  g = A @ w
  etas = lr * np.asarray(scales)
  losses = [0.5 * (w - e * g) @ A @ (w - e * g) for e in etas]
  close(out.etas, etas)
  close(out.losses, losses, rtol=1e-4)
  close(out.loss0, 0.5 * w @ A @ w, rtol=1e-5)
  close(out.loss_variation, max(losses) - min(losses), rtol=1e-3)
  close(out.grad_diffs, etas * np.linalg.norm(A @ g), rtol=1e-4)
  close(out.grad_predictiveness, etas.max() * np.linalg.norm(A @ g), rtol=1e-4)
  close(out.beta_smoothness, np.linalg.norm(A @ g) / np.linalg.norm(g), rtol=1e-4)
  # Traced learning rate and batched evaluation.
  jitted = jax.jit(lambda p, lr: probes.landscape(loss, p, lr, scales, batch_size=2))
  close(jitted({"w": jnp.asarray(w, jnp.float32)}, lr).losses, losses, rtol=1e-4)


# ----------------------------------------------------------------------------- layer-input statistics


def test_activation_stats_match_numpy():
  x = RNG.normal(size=(6, 5, 4, 3)) * [1.0, 3.0, 6.0] + [0.0, 2.0, -1.0]
  acts = {"conv": jnp.asarray(x, jnp.float32), "dense": jnp.asarray(x[:, 0, 0, :2], jnp.float32)}
  out = probes.activation_stats(acts, saturation=4.0)
  flat = x.reshape(-1, 3)
  u = out.units["conv"]
  close(u.mean, flat.mean(0), rtol=1e-5, atol=1e-5)
  close(u.std, flat.std(0), rtol=1e-5)
  close(u.percentiles, np.percentile(flat, [15, 50, 85], axis=0), rtol=1e-5, atol=1e-5)
  close(u.saturated, np.mean(np.abs(flat) > 4.0, axis=0))
  assert 0 < float(u.saturated[2]) < 1
  close(out.layers["conv"].percentiles, np.percentile(flat, [15, 50, 85], axis=0).mean(1), rtol=1e-5, atol=1e-5)
  close(out.layers["dense"].std, x[:, 0, 0, :2].std(0).mean(), rtol=1e-5)
  assert out.units["dense"].percentiles.shape == (3, 2)
  custom = probes.unit_stats(acts["dense"], percentiles=(10.0, 90.0))
  close(custom.percentiles, np.percentile(x[:, 0, 0, :2], [10, 90], axis=0), rtol=1e-5, atol=1e-5)


def test_bn_stat_gap_matches_numpy():
  mb, vb, mr, vr = RNG.normal(size=4), RNG.uniform(0.5, 2, 4), RNG.normal(size=4), RNG.uniform(0.5, 2, 4)
  f = lambda a: jnp.asarray(a, jnp.float32)
  out = probes.bn_stat_gap({"bn0": f(mb)}, {"bn0": f(vb)}, {"bn0": f(mr)}, {"bn0": f(vr)}, epsilon=1e-5)
  close(out["bn0"].mean, np.mean(np.abs(mb - mr) / np.sqrt(vr + 1e-5)), rtol=1e-5)
  close(out["bn0"].log_var, np.mean(np.abs(np.log((vb + 1e-5) / (vr + 1e-5)))), rtol=1e-5)


def test_wasserstein_for_known_gaussians():
  mu1, s1, mu2, s2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 0.5, 2.0]), np.array([1.0, 1.0, 0.0]), np.array(
      [1.0, 2.0, 0.5])
  f = lambda a: jnp.asarray(a, jnp.float32)
  mk = lambda m, s: probes.UnitStats(f(m), f(s), jnp.zeros((3, 3)), jnp.zeros(3))
  out = probes.distribution_shift({"h": mk(mu1, s1)}, {"h": mk(mu2, s2)})
  # Independent reference: W2^2 = int_0^1 (F1^-1(u) - F2^-1(u))^2 du by quadrature.
  u = (np.arange(200000) + 0.5) / 200000
  w2 = [np.sqrt(np.mean((sps.norm.ppf(u, m1, a) - sps.norm.ppf(u, m2, b)) ** 2))
        for m1, a, m2, b in zip(mu1, s1, mu2, s2)]
  close(out.units["h"].w2, w2, rtol=2e-3)
  close(out.units["h"].w2, np.sqrt((mu1 - mu2) ** 2 + (s1 - s2) ** 2), rtol=1e-6)
  close(out.units["h"].mean, np.abs(mu2 - mu1) / s1)
  close(out.units["h"].std, np.abs(s2 - s1) / s1)
  close(out.layers["h"].w2, np.mean(np.sqrt((mu1 - mu2) ** 2 + (s1 - s2) ** 2)), rtol=1e-6)
  # End to end from samples.
  z = RNG.normal(size=(200000, 3))
  prev = probes.activation_stats({"h": jnp.asarray(mu1 + s1 * z, jnp.float32)})
  cur = probes.activation_stats({"h": jnp.asarray(mu2 + s2 * z, jnp.float32)})
  close(probes.distribution_shift(prev, cur).units["h"].w2, np.sqrt((mu1 - mu2) ** 2 + (s1 - s2) ** 2), rtol=1e-2)


# ----------------------------------------------------------------------------- vmap and jit


def mlp_init(seed, sizes=(5, 8, 8, 3)):
  r = np.random.default_rng(seed)
  return {f"Dense_{i}": {"kernel": jnp.asarray(r.normal(size=(a, b)) / np.sqrt(a), jnp.float32),
                         "bias": jnp.asarray(0.1 * r.normal(size=b), jnp.float32)}
          for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}


X = jnp.asarray(np.random.default_rng(1).normal(size=(12, 5)), jnp.float32)
Y = jnp.asarray(np.random.default_rng(2).normal(size=(12, 3)), jnp.float32)
LAYERS = ("Dense_0", "Dense_1", "Dense_2")


def mlp_acts(p):
  h, acts = X, {}
  for name in LAYERS:
    acts[name] = h @ p[name]["kernel"] + p[name]["bias"][None]
    h = jnp.tanh(acts[name])
  return acts


def mlp_loss(p):
  return 0.5 * jnp.mean(jnp.sum(jnp.square(mlp_acts(p)["Dense_2"] - Y), axis=-1))


def all_probes(p):
  acts = mlp_acts(p)
  a = probes.activation_stats(acts, saturation=2.0)
  b = probes.activation_stats(jax.tree.map(lambda t: 1.1 * t + 0.1, acts), saturation=2.0)
  m = {k: jnp.mean(v, 0) for k, v in acts.items()}
  v = {k: jnp.var(v, 0) for k, v in acts.items()}
  return {
      "act": a, "shift": probes.distribution_shift(a, b),
      "gap": probes.bn_stat_gap(m, v, jax.tree.map(jnp.zeros_like, m), jax.tree.map(jnp.ones_like, v)),
      "ics": probes.gradient_ics(mlp_loss, p, sgd(0.2), LAYERS),
      "land": probes.landscape(mlp_loss, p, 0.2),
      "coup": probes.coupling(mlp_loss, p, sgd(0.2)(jax.grad(mlp_loss)(p)), LAYERS),
      "hess": probes.hessian_coupling(mlp_loss, p, jax.random.key(3), LAYERS, num_probes=2),
      "gn": probes.grad_norms(mlp_loss, p, LAYERS),
  }


def assert_trees_close(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and len(la) > 40
  for x, y in zip(la, lb):
    close(x, y, rtol=2e-4, atol=2e-5)


def test_probes_vmap_and_jit_agree_with_single_runs():
  seeds = [mlp_init(s) for s in range(3)]
  eager = all_probes(seeds[1])
  assert float(eager["ics"].l2[2]) > 1e-3 and float(eager["coup"].summary) > 1e-3
  single = jax.jit(all_probes)
  assert_trees_close(single(seeds[1]), eager)  # jit == no jit
  batched = jax.jit(jax.vmap(all_probes))(jax.tree.map(lambda *t: jnp.stack(t), *seeds))
  batched = jax.tree.map(np.asarray, batched)
  for i, p in enumerate(seeds):  # vmap over seeds == one seed at a time
    assert_trees_close(jax.tree.map(lambda t: t[i], batched), single(p))
