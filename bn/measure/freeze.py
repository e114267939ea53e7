"""The ``freeze`` experiment (C2's freezing ablation): its own two-phase loop, no workdir training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bn import data as bn_data, experiment, models, parallel, programs, train


def measure_freeze(c, dataset: bn_data.Dataset) -> dict:
  """Runner of the ``freeze`` experiment: train ``c.freeze.before`` steps, then from that state
  ``c.freeze.budget`` steps of every variant -- all layers, or one layer alone (the others at
  a per-layer LR multiplier of 0) -- for every seed in one program; record the training-mode
  loss on a fixed batch of ``c.freeze.batch`` training examples before and after."""
  exp = experiment.from_config(c)
  ds = experiment.load_dataset(exp.data, dataset)
  stats = bn_data.channel_stats(ds.train.x)
  x, y = parallel.place_train(ds.train, stats)
  task = exp.make_task(ds.num_classes)
  seeds = np.asarray([r.seed for r in exp.runs], np.int32)
  n = len(seeds)
  state = programs.init(task, len(y))(seeds, np.full(n, c.optimizer.lr, np.float32), np.zeros(n, np.float32), x[:2])
  state, _ = programs.chunk(task, c.freeze.before).lower(state, x, y).compile()(state, x, y)
  idx = np.random.default_rng(c.data.split_seed + 5).permutation(len(y))[: c.freeze.batch]
  xb, yb = x[np.sort(idx)], y[np.sort(idx)]
  names = ["all", *models.layer_names(state.params)]  # the order of hparams.layer_lr
  k = len(names) - 1
  masks = np.concatenate([np.ones((1, k)), np.eye(k)]).astype(np.float32)  # (variants, layers)
  v = len(masks)
  # every (variant, seed) pair as one run: the phase-1 state repeated, the mask per run
  rep = programs.take_runs(state, np.tile(np.arange(n), v))
  rep = rep._replace(hparams=rep.hparams._replace(layer_lr=jnp.asarray(np.repeat(masks, n, axis=0))))
  loss_fn = jax.jit(programs.map_runs(lambda s: train.loss_and_updates(task, s.params, s.batch_stats, xb, yb, jax.random.PRNGKey(0), s.step)[0],
                                      task.runs, (programs.STATE_AXES,), 0))
  before = np.asarray(loss_fn(rep)).reshape(v, n)
  rep, _ = programs.chunk(task, c.freeze.budget).lower(rep, x, y).compile()(rep, x, y)
  after = np.asarray(loss_fn(rep)).reshape(v, n)
  return {"name": c.name, "seeds": seeds.tolist(), "norm": c.norm.kind, "variants": names, "before_steps": c.freeze.before,
          "budget": c.freeze.budget, "loss_before": before.tolist(), "loss_after": after.tolist(), "reduction": (before - after).tolist()}
