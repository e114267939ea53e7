"""Probes wired into training: one compiled, vmapped probe program at the probe cadence.

At every probe point (``config.probes.every`` steps, a multiple of the eval
cadence) the engine calls one jitted ``vmap`` program over all runs on a fixed
probe batch (``config.probes.batch_size`` training examples, the same for every
run and every step). It never adds a host round-trip between training steps.
Per run and probe step it records, in ``probes.jsonl``:

* ``act``: per layer, unit-averaged mean/std/percentiles/saturation of the
  inputs of the nonlinearity (train mode), and ``unit0`` -- the 15/50/85th
  percentiles of unit 0 of every layer (Ioffe & Szegedy Fig. 1b/c);
* ``shift``: distributional ICS against the previous probe point, per layer;
* ``bn_gap``: batch vs running statistics of every BN layer;
* ``grad_ics``: Santurkar et al.'s gradient ICS per layer (l2, cos, rel) under
  the run's actual optimizer update (LR schedule, momentum state, weight decay);
* ``landscape``: loss variation, gradient predictiveness, effective beta-smoothness;
* ``coupling``: the layer-interaction summary, its cross fraction, the matrix;
* ``grad_norm``: per-layer gradient norms.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from bn import artifacts, models, probes, programs, train


def _tree_get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _bn_leaves(tree, prefix=()):
  """Paths of every BN layer (a dict holding 'mean' and 'var') in a batch_stats tree."""
  if isinstance(tree, dict):
    if "mean" in tree and "var" in tree and not isinstance(tree["mean"], dict):
      return [prefix]
    return [p for k in sorted(tree) for p in _bn_leaves(tree[k], prefix + (k,))]
  return []


def probe_one(task: train.Task, scales, state: train.TrainState, x, y, prev_units):
  """All probes for one run on the probe batch ``(x, y)``; pure, vmap over runs."""
  params, batch_stats = state.params, state.batch_stats
  key = jax.random.fold_in(state.key, 2**31 - 1)  # a fixed noise key for every probe evaluation
  renorm = train.renorm_clips(task, state.step)
  variables = {"params": params, "batch_stats": batch_stats}
  logits, mut = task.model.apply(variables, x, train=True, renorm=renorm, mutable=["batch_stats", "intermediates", "bn_stats"], rngs={"noise": key})
  acts = models.preacts(mut["intermediates"])
  stats = probes.activation_stats(acts)

  out = {"act": stats.layers, "unit0": {k: u.percentiles[:, 0] for k, u in stats.units.items()},
         "shift": probes.distribution_shift(prev_units, stats.units).layers}
  gaps = {}
  for path in _bn_leaves(batch_stats):
    used = _tree_get(mut["bn_stats"], path)
    run = _tree_get(batch_stats, path)
    gaps["/".join(path)] = probes.bn_stat_gap(used["mean"][0], used["var"][0], run["mean"], run["var"])
  out["bn_gap"] = gaps

  def loss_fn(p):
    return train.loss_and_updates(task, p, batch_stats, x, y, key, state.step)[0]

  lr = state.hparams.lr * task.schedule(state.step)
  rule = train.update_rule(task, state.hparams)

  def update_fn(g):  # the update the optimizer would take from this state: the same chain that trains
    return rule.update(g, state.opt_state, params)[0]

  layers = models.layer_names(params)
  grads = jax.grad(loss_fn)(params)
  out["loss"] = loss_fn(params)
  out["grad_norm"] = probes.layer_norms(grads, layers)
  out["grad_ics"] = probes.gradient_ics(loss_fn, params, update_fn, layers)
  out["landscape"] = probes.landscape(loss_fn, params, lr, scales)
  c = probes.coupling(loss_fn, params, update_fn(grads), layers)
  out["coupling"] = {"summary": c.summary, "cross_fraction": c.cross_fraction, "normalized": c.normalized}
  return out, stats.units


class Prober:
  """Owns the compiled probe program, the probe batch and ``probes.jsonl``."""

  def __init__(self, spec, trainer, workdir, steps_done: int, seed: int):
    """``spec``: a :class:`bn.experiment.ProbeSpec`; the probe batch is drawn with ``seed + 1``."""
    self.path = workdir / "probes.jsonl"
    self.rows = [r for r in artifacts.read_jsonl(self.path) if r["step"] <= steps_done]
    rng = np.random.default_rng(seed + 1)
    n = len(trainer.train_y)
    idx = np.sort(rng.choice(n, size=min(spec.batch_size, n), replace=False))
    self.x = trainer.train_x[idx]
    self.y = trainer.train_y[idx]
    self.runs = trainer.runs
    self.task = trainer.task
    self.layers = None
    scales = spec.landscape_scales
    # One compiled program; at the first point the shift is computed against placeholder
    # statistics and dropped.
    self.fn = jax.jit(jax.vmap(functools.partial(probe_one, trainer.task, scales), in_axes=(programs.STATE_AXES, None, None, 0)))
    self.prev = None  # per-run unit stats of the previous probe point (recomputed after a resume)
    self.compiled = None
    self.time = 0.0  # seconds spent probing (running the program, writing probes.jsonl), compile excluded
    self.compile_time = 0.0
    self.points = 0

  def _program(self, state, prev):
    """The compiled probe program (compiled on first use, its time kept apart)."""
    if self.compiled is None:
      t0 = time.perf_counter()
      self.compiled = self.fn.lower(state, self.x, self.y, prev).compile()
      self.compile_time += time.perf_counter() - t0
    return self.compiled

  def _placeholder(self, state):
    return _ones_like_units(self, state)

  def measure(self, state, step: int) -> None:
    has_prev = self.prev is not None
    prev = self.prev if has_prev else self._placeholder(state)
    program = self._program(state, prev)
    t0 = time.perf_counter()
    out, units = program(state, self.x, self.y, prev)
    if not has_prev:
      out.pop("shift")
    self.prev = units
    out = jax.device_get(out)
    layers = models.layer_names(jax.tree.map(lambda t: t[0], state.params))
    for i, r in enumerate(self.runs):
      pick = jax.tree.map(lambda t: np.asarray(t)[i], out)
      row = {"step": step, "run": r["run"], "seed": r["seed"], "lr": r["lr"], "layers": list(layers)}
      row.update(_to_json(pick, layers))
      self.rows.append(row)
    if jax.process_index() == 0:  # many hosts: process 0 writes
      artifacts.write_jsonl(self.path, self.rows)
    self.time += time.perf_counter() - t0
    self.points += 1

  def prime(self, state) -> None:
    """After a resume: recompute the previous point's statistics so the next shift matches an uninterrupted run."""
    prev = self._placeholder(state)
    _, self.prev = self._program(state, prev)(state, self.x, self.y, prev)


def _ones_like_units(prober, state):
  """Unit statistics of the right structure, found by tracing the model once (no compile)."""
  def units(st, x, y):
    acts = models.preacts(prober_model_apply(prober.task, st, x))
    return probes.activation_stats(acts).units

  return jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), jax.eval_shape(jax.vmap(units, in_axes=(programs.STATE_AXES, None, None)), state, prober.x, prober.y))


def prober_model_apply(task, state, x):
  _, mut = task.model.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=True,
                            renorm=train.renorm_clips(task, state.step), mutable=["batch_stats", "intermediates"],
                            rngs={"noise": jax.random.fold_in(state.key, 2**31 - 1)})
  return mut["intermediates"]


def _to_json(o, layers):
  """Probe outputs as plain JSON: NamedTuples become dicts, per-layer arrays stay lists in ``layers`` order."""
  act = {k: {"mean": float(np.mean(u.mean)), "std": float(np.mean(u.std)),
             "p15": float(u.percentiles[0]), "p50": float(u.percentiles[1]), "p85": float(u.percentiles[2]),
             "saturated": float(u.saturated)} for k, u in o["act"].items()}
  row = {
      "loss": float(o["loss"]),
      "act": act,
      "unit0": {k: [float(v) for v in p] for k, p in o["unit0"].items()},
      "bn_gap": {k: {"mean": float(g.mean), "log_var": float(g.log_var)} for k, g in o["bn_gap"].items()},
      "grad_norm": [float(v) for v in o["grad_norm"]],
      "grad_ics": {k: [float(v) for v in getattr(o["grad_ics"], k)] for k in ("l2", "cos", "rel")},
      "landscape": {k: float(getattr(o["landscape"], k)) for k in ("loss_variation", "grad_predictiveness", "beta_smoothness", "loss0", "grad_norm")},
      "coupling": {"summary": float(o["coupling"]["summary"]), "cross_fraction": float(o["coupling"]["cross_fraction"]),
                   "normalized": np.asarray(o["coupling"]["normalized"]).tolist()},
  }
  if "shift" in o:
    row["shift"] = {k: {"mean": float(s.mean), "std": float(s.std), "w2": float(s.w2)} for k, s in o["shift"].items()}
  return row
