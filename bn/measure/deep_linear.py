"""The ``deep_linear`` experiment (C1'): Santurkar et al.'s 25-layer deep linear network, trained
by full-batch gradient descent in its own loop, with the gradient ICS of every layer over training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bn import config, models, probes, run_probes
from bn.programs import ONCE


def _deep_model(c, kind: str):
  return models.create("mlp", widths=(c.deep.width,) * (c.deep.depth - 1), num_classes=c.deep.width, act="linear",
                       norm=models.norm_spec(kind, momentum=0.9), init_std=None)


def _setup(c, model, seed):
  """One seed's data ``(x, A x)`` and the model's initial ``(params, batch_stats)``."""
  d = c.deep
  k_x, k_a, k_init = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(k_x, (d.examples, d.width))
  A = jax.random.normal(k_a, (d.width, d.width)) / np.sqrt(d.width)
  variables = model.init(k_init, x[:2], train=False)
  return (variables["params"], variables.get("batch_stats", {})), (x, x @ A.T)


def _loss(model):
  def loss_fn(p, s, xy):
    x, y = xy
    out, mut = model.apply({"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"])
    return jnp.mean(jnp.sum(jnp.square(out - y), -1)), mut.get("batch_stats", s)
  return loss_fn


def stability_edge(c, seeds, iterations: int = 100) -> np.ndarray:
  """Per seed: ``2 / lambda_max`` of the no-BN net's loss Hessian at initialization (power iteration on
  Hessian-vector products) -- the largest learning rate at which full-batch gradient descent is stable
  on the local quadratic model."""
  model = _deep_model(c, "none")
  loss_fn = _loss(model)

  def edge(seed):
    (p, s), xy = _setup(c, model, seed)
    f = lambda q: loss_fn(q, s, xy)[0]  # noqa: E731
    hvp = lambda v: jax.jvp(jax.grad(f), (p,), (v,))[1]  # noqa: E731
    norm = lambda v: jnp.sqrt(sum(jnp.sum(jnp.square(t)) for t in jax.tree.leaves(v)))  # noqa: E731
    v0 = jax.tree.map(lambda t: jax.random.normal(jax.random.PRNGKey(seed + 1), t.shape), p)

    def body(_, v):
      w = hvp(v)
      return jax.tree.map(lambda t: t / norm(w), w)

    v = jax.lax.fori_loop(0, iterations, body, jax.tree.map(lambda t: t / norm(v0), v0))
    lam = sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(hvp(v))))
    return 2.0 / lam

  return np.asarray(jax.jit(jax.vmap(edge), compiler_options=ONCE)(jnp.asarray(list(seeds))))


def deep_linear(c, seeds, kind: str, lrs) -> list[dict]:
  """Full-batch gradient descent on ``L = mean_i ||f(x_i) - A x_i||^2`` for a deep linear net
  ``f`` (``c.deep.depth`` layers of width ``c.deep.width``; BN after every hidden layer or none),
  each seed at its learning rate ``lrs[i]``, with Santurkar et al.'s gradient ICS of every layer
  every ``c.deep.every`` steps. All seeds train at once (``vmap`` over the seed axis: one
  compilation per condition); one dict per seed."""
  d = c.deep
  model = _deep_model(c, kind)
  carry, data = jax.vmap(lambda seed: _setup(c, model, seed))(jnp.asarray(list(seeds)))
  data = (*data, jnp.asarray(lrs, jnp.float32))
  layers = models.layer_names(carry[0])
  loss_fn = _loss(model)

  def run_chunk(carry, xyl):
    *xy, lr = xyl
    def step(carry, _):
      p, s = carry
      (loss, s), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, xy)
      return (jax.tree.map(lambda w, gw: w - lr * gw, p, g), s), loss
    return jax.lax.scan(step, carry, None, length=d.every)[0]

  def measure(carry, xyl):
    *xy, lr = xyl
    p, s = carry
    f = lambda q: loss_fn(q, s, xy)[0]  # noqa: E731
    g = jax.grad(f)(p)
    upd = jax.tree.map(lambda t: -lr * t, g)
    kern = run_probes.layer_kernels
    raw = probes.gradient_ics(f, p, lambda _: upd, layers, select=kern)
    w = jnp.stack([jnp.sqrt(run_probes.sum_sq(kern(p[n]))) for n in layers])
    u = jnp.stack([jnp.sqrt(run_probes.sum_sq(kern(upd[n]))) for n in layers])
    scale = d.rho * w / jnp.maximum(u, 1e-30)
    matched_upd = {n: jax.tree_util.tree_map_with_path(lambda path, t, i=i: t * scale[i] if "kernel" in jax.tree_util.keystr(path) else t, upd[n])
                   for i, n in enumerate(layers)}
    matched = probes.gradient_ics(f, p, lambda _: matched_upd, layers, select=kern)
    return raw.cos, matched.cos, f(p)

  # Tiny 10x10 matrices: the programs are compile-bound, so compile them unoptimized. (With all three
  # fractions in one batch, XLA's optimizations cut the wall time only when both cores are free and cost
  # more CPU time; they also change float32 roundings that 1 - cos is sensitive to, so the run at 0.25
  # stays bit-identical to the one-fraction runner's.)
  chunk = jax.jit(jax.vmap(run_chunk), compiler_options=ONCE)
  measure = jax.jit(jax.vmap(measure), compiler_options=ONCE)
  cos_raw, cos_matched, losses, steps = [], [], [], []
  for t in range(0, d.steps + 1, d.every):
    if t:
      carry = chunk(carry, data)
    cr, cm, loss = measure(carry, data)
    cos_raw.append(np.asarray(cr))
    cos_matched.append(np.asarray(cm))
    losses.append(np.asarray(loss))
    steps.append(t)
  return [{"steps": steps, "cos_raw": [r[i].tolist() for r in cos_raw], "cos_matched": [r[i].tolist() for r in cos_matched],
           "loss": [float(l[i]) for l in losses]} for i in range(len(seeds))]


def measure_deep_linear(c, dataset=None) -> dict:
  """Runner of the ``deep_linear`` experiment: per-seed gradient ICS over training (the data is its own),
  each seed at every fraction in ``c.deep.lr_fractions`` of the no-BN net's stability edge at
  initialization (both conditions use the no-BN net's edge). All (fraction, seed) runs train at once
  (one ``vmap`` over fractions x seeds: the same programs, a wider batch). ``by_fraction`` holds every
  fraction's run (keyed ``f"{fraction:g}"``); the top level repeats the run at ``c.deep.lr_fraction``
  (the one the claim's original secondary test reads)."""
  d = c.deep
  fractions = [float(f) for f in d.lr_fractions]
  if float(d.lr_fraction) not in fractions:
    raise config.ConfigError(f"deep.lr_fraction={d.lr_fraction} must be one of deep.lr_fractions={tuple(fractions)}.")
  seeds = list(c.seeds)
  edge = stability_edge(c, seeds)
  lrs = np.concatenate([f * edge for f in fractions])
  runs = deep_linear(c, seeds * len(fractions), c.norm.kind, lrs)
  n = len(seeds)
  by_fraction = {}
  for i, f in enumerate(fractions):
    per_seed = runs[i * n:(i + 1) * n]
    by_fraction[f"{f:g}"] = {"lr_fraction": f, "lr": lrs[i * n:(i + 1) * n].tolist(), "steps": per_seed[0]["steps"],
                             "cos_raw": [r["cos_raw"] for r in per_seed], "cos_matched": [r["cos_matched"] for r in per_seed],
                             "loss": [r["loss"] for r in per_seed]}
  return {"name": c.name, "seeds": seeds, "norm": c.norm.kind, "depth": d.depth, "width": d.width, "edge": edge.tolist(),
          **by_fraction[f"{float(d.lr_fraction):g}"], "lr_fractions": fractions, "by_fraction": by_fraction}
