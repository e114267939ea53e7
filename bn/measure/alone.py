"""The ``alone`` experiment (C2's "each layer learns faster on its own"): branch at matched training loss, then
full-batch gradient descent on one layer alone or on all layers, each variant at its own tuned LR."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bn import analysis, data as bn_data, experiment, models, parallel, programs, train


def _fixed_batch(c, x, y):
  """The fixed training batch the branch points are matched on and phase 2 descends on (the same examples for every seed)."""
  idx = np.sort(np.random.default_rng(c.data.split_seed + 7).permutation(len(y))[: c.alone.batch])
  return x[idx], y[idx]


def _loss_fn(task, xb, yb):
  """Per run: the training-mode loss on the fixed batch (BN: the batch's own statistics), stacked runs in, (runs,) out."""
  one = lambda s: train.loss_and_updates(task, s.params, s.batch_stats, xb, yb, jax.random.PRNGKey(0), s.step)[0]  # noqa: E731
  return jax.jit(programs.map_runs(one, task.runs, (programs.STATE_AXES,), 0))


def branch_points(task, state, x, y, loss_fn, levels, every: int, max_steps: int):
  """Phase 1: train (SGD, the config's batches) in chunks of ``every`` steps; per level and run, the state at the end of the
  first chunk whose fixed-batch loss is at or below the level. Returns ``({level: state}, {level: steps (runs,)})``;
  a run that never gets there by ``max_steps`` keeps step -1 (and its last state)."""
  step = programs.chunk(task, every)
  n = int(np.asarray(state.step).shape[0])
  caught = {lv: jax.tree.map(jnp.copy, state) for lv in levels}  # copies: the chunk program donates its input state
  at = {lv: np.full(n, -1) for lv in levels}
  where = jax.jit(lambda m, a, b: jax.tree.map(lambda u, v: jnp.where(m.reshape((-1,) + (1,) * (u.ndim - 1)), u, v), a, b))
  done = 0
  while done < max_steps and any(np.any(a < 0) for a in at.values()):
    state, _ = step(state, x, y)
    done += every
    loss = np.asarray(loss_fn(state))
    for lv in levels:
      new = (loss <= lv) & (at[lv] < 0)
      if new.any():
        caught[lv] = where(jnp.asarray(new), state, caught[lv])
        at[lv][new] = done
  return caught, at


def descend(task, state, xb, yb, masks, lrs, loss_fn, gd):
  """Phase 2 from ``state`` (runs = seeds): for every (variant, LR, seed), full-batch gradient descent on ``(xb, yb)`` by
  ``gd`` (:func:`_descent`) with the layers outside the variant's mask frozen (per-layer LR multiplier 0). Returns the loss
  drop ``(variants, lrs, seeds)`` (a run that diverged gets NaN) and the loss at the branch point."""
  n, v, k = int(np.asarray(state.step).shape[0]), len(masks), len(lrs)
  rep = programs.take_runs(state, np.tile(np.arange(n), v * k))
  hp = rep.hparams._replace(lr=jnp.asarray(np.tile(np.repeat(np.asarray(lrs, np.float32), n), v)),
                            layer_lr=jnp.asarray(np.repeat(np.asarray(masks, np.float32), k * n, axis=0)))
  rep = rep._replace(hparams=hp, opt_state=jax.vmap(lambda p, h: train.update_rule(task, h).init(p))(rep.params, hp))
  before = np.asarray(loss_fn(rep))
  rep = gd(rep)
  drop = np.where(np.asarray(rep.diverged_step) >= 0, np.nan, before - np.asarray(loss_fn(rep)))
  return drop.reshape(v, k, n), before.reshape(v, k, n)[0, 0]


def _descent(task, xb, yb, budget: int):
  """``budget`` full-batch gradient-descent steps on ``(xb, yb)`` of every stacked run: one jitted program for the whole
  experiment (compiled once per number of runs, not once per branch level)."""
  idx = jnp.tile(jnp.arange(xb.shape[0])[None], (budget, 1))
  return jax.jit(programs.map_runs(lambda s: train.steps_on(task, s, idx, xb, yb)[0], task.runs, (programs.STATE_AXES,),
                                   programs.STATE_AXES))


def measure_alone(c, dataset: bn_data.Dataset) -> dict:
  """Runner of the ``alone`` experiment: per seed, branch at each loss level of ``c.alone.levels`` (training-mode loss on a
  fixed batch of ``c.alone.batch`` training examples, checked every ``c.alone.every`` SGD steps), then ``c.alone.budget``
  steps of full-batch gradient descent on that batch for every variant -- all layers at one LR, or one layer alone -- at
  every LR of ``c.alone.lrs``; then all layers together, each at the LR it did best with alone ("together"). Records the
  loss drops ``drop (levels, variants, lrs, seeds)``, ``together (levels, seeds)``, the LRs chosen, the branch steps and
  losses."""
  exp = experiment.from_config(c)
  ds = experiment.load_dataset(exp.data, dataset)
  x, y = parallel.place_train(ds.train, bn_data.channel_stats(ds.train.x))
  task = exp.make_task(ds.num_classes)
  seeds = np.asarray([r.seed for r in exp.runs], np.int32)
  n = len(seeds)
  state = programs.init(task, len(y))(seeds, np.full(n, c.optimizer.lr, np.float32), np.zeros(n, np.float32), x[:2])
  xb, yb = _fixed_batch(c, x, y)
  loss_fn = _loss_fn(task, xb, yb)
  levels = tuple(float(v) for v in c.alone.levels)
  caught, at = branch_points(task, state, x, y, loss_fn, levels, int(c.alone.every), int(c.alone.max_steps))
  names = ["all", *models.layer_names(state.params)]  # the order of hparams.layer_lr
  k = len(names) - 1
  masks = np.concatenate([np.ones((1, k)), np.eye(k)])
  lrs = np.asarray([float(v) for v in c.alone.lrs])
  gd = _descent(task, xb, yb, int(c.alone.budget))
  drops, together, chosen, losses = [], [], [], []
  for lv in levels:
    d, before = descend(task, caught[lv], xb, yb, masks, lrs, loss_fn, gd)
    d[:, :, at[lv] < 0] = np.nan  # never reached the level: no branch point
    best = lrs[analysis.tuned(d)[1:]]  # each layer's own tuned LR
    j, _ = descend(task, caught[lv], xb, yb, best[None] / best.max(), [best.max()], loss_fn, gd)
    j[:, :, at[lv] < 0] = np.nan
    drops.append(d)
    together.append(j[0, 0])
    chosen.append(best)
    losses.append(np.where(at[lv] < 0, np.nan, before))
  return {"name": c.name, "seeds": seeds.tolist(), "norm": c.norm.kind, "variants": names, "levels": list(levels), "lrs": lrs.tolist(),
          "budget": int(c.alone.budget), "batch": int(c.alone.batch), "branch_step": [at[lv].tolist() for lv in levels],
          "branch_loss": np.asarray(losses).tolist(), "drop": np.asarray(drops).tolist(), "together": np.asarray(together).tolist(),
          "together_lrs": np.asarray(chosen).tolist()}
