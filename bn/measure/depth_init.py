"""The ``depth_init`` experiment (C6): gradient norms of every layer at initialization, per depth
and seed (no training)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bn import data as bn_data, experiment, models, parallel, train


def grad_norms_at_init(c, depth: int, x, y):
  """Per-seed gradient norms of every layer at init, shape (seeds, depth + 1)."""
  model = models.create("mlp", widths=(c.model.widths[0],) * depth, num_classes=int(y.max()) + 1, act=c.model.act,
                        norm=experiment.norm_spec(c.norm), init_std=c.model.init_std)

  def one(seed):
    variables = model.init(jax.random.PRNGKey(seed), x[:2], train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})

    def loss_fn(p):
      logits, _ = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
      return train.cross_entropy(logits, y)

    g = jax.grad(loss_fn)(params)  # the weight matrices' gradients (not BN's scale and bias)
    return jnp.stack([jnp.sqrt(jnp.sum(jnp.square(g[n]["linear"]["kernel"] if n != "head" else g[n]["kernel"])))
                      for n in models.layer_names(params)])

  return jax.jit(jax.vmap(one))(jnp.asarray(c.seeds, jnp.int32))


def measure_depth_init(c, dataset: bn_data.Dataset) -> dict:
  """Runner of the ``depth_init`` experiment: per-depth, per-seed layer gradient norms at initialization."""
  exp = experiment.from_config(c)
  ds = experiment.load_dataset(exp.data, dataset)
  stats = bn_data.channel_stats(ds.train.x)
  n = min(c.probes.batch_size, len(ds.train.y))
  x, y = parallel.place_train(bn_data.Split(ds.train.x[:n], ds.train.y[:n]), stats)
  rows = []
  for depth in c.depths:
    norms = np.asarray(grad_norms_at_init(c, depth, x, y))
    rows.append({"depth": depth, "grad_norms": norms.tolist()})
  return {"name": c.name, "seeds": list(c.seeds), "norm": c.norm.kind, "act": c.model.act, "width": c.model.widths[0],
          "batch": n, "depths": rows}
