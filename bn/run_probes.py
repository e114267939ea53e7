"""Probes wired into training: one compiled, vmapped probe program at the probe cadence.

At every probe point (``probes.every`` steps, a multiple of the eval cadence) the
loop calls one jitted ``vmap`` program over all runs on a fixed probe batch
(``probes.batch_size`` training examples, the same for every run and step) and a
fixed test batch (``probes.eval_batch_size`` examples, eval mode). It never adds a
host round-trip between training steps. ``probes.kinds`` chooses what is measured
(empty: everything); per run and probe step ``probes.jsonl`` records:

* always: ``loss`` on the probe batch; ``bn_gap`` (batch vs running statistics of every BN layer);
* ``act``: per layer, unit-averaged mean/std/percentiles/saturation of the input of the
  nonlinearity (train mode); ``units`` -- every unit's mean and std (so the analysis can
  measure the shift of each unit's distribution against a fixed reference scale); ``unit0``
  -- the 15/50/85th percentiles of unit 0 of every layer (Ioffe & Szegedy Fig. 1b/c);
* ``eval_act``: the same percentiles (and unit statistics) in eval mode on the test batch;
* ``norms``: per layer, the weight matrix norm ``||W_k||``, the effective learning rate
  ``lr_t / ||W_k||^2``, the gradient norm, and the relative size of the update the
  optimizer takes ``||dW_k|| / ||W_k||``;
* ``grad_ics``: Santurkar et al.'s gradient ICS per layer (l2, cos, rel) of the layers' weight
  gradients, under the run's actual update (``raw``, the paper's) and ``matched``: in the
  column-normalized parametrization of the weight matrices (:func:`bn.probes.normalized_parametrization`),
  every earlier layer's weight columns move by ``probes.rho`` of their norm along their actual
  update direction (the same relative step in every net; other parameters fixed);
* ``landscape``: Santurkar et al.'s loss variation, gradient predictiveness and effective
  beta-smoothness along ``-grad`` at ``landscape_scales x lr`` (``raw``) and in relative units
  (``landscape_rel``: every weight column moves by ``s x rho`` of its norm along its own gradient);
* ``coupling``: the interaction of two layers' updates in the loss along the actual update (summary,
  cross fraction, matrix, each layer's own-update loss change), and ``relative_cross_fraction``:
  the cross-layer share of the second-order loss change for equal relative steps of every weight
  column along its own gradient;
* ``hessian``: the normalized Hessian blocks ``||H_jk|| / sqrt(||H_jj|| ||H_kk||)`` of the weight
  matrices in the column-normalized parametrization, and their mean over layer pairs.

The ``matched``, ``landscape_rel``, ``relative_cross_fraction`` and ``hessian`` measures are
invariant to BN's weight-scale symmetry, which acts per unit (each column of a weight matrix
followed by BN can be rescaled without changing the function).
Noisy layers draw fresh noise at every probe point (the key folds in the step). Probes
are pure functions of the state: nothing is carried from one probe point to the next.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from bn import models, probes, programs, train
from bn._adapter import sowing_stats

KINDS = ("act", "eval_act", "norms", "grad_ics", "landscape", "coupling", "hessian")


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


# ----------------------------------------------------------------------------- weight matrices


def kernel_paths(params) -> dict[str, tuple]:
  """``{name: path}`` of every weight matrix (leaf named ``kernel``) in forward layer order;
  ``name`` is the layer (``layer0``, ..., ``head``), or ``layer/sub/path`` when a layer has several."""
  out = {}
  for layer in models.layer_names(params):
    paths = [p for p in flatten_dict(dict(params[layer])) if p[-1] == "kernel"]
    for p in paths:
      out[layer if len(paths) == 1 else "/".join((layer,) + p)] = (layer,) + p
  return out


def kernels(params, paths) -> dict:
  return {n: _tree_get(params, p) for n, p in paths.items()}


def with_kernels(params, paths, kv) -> dict:
  flat = flatten_dict(params)
  for n, p in paths.items():
    flat[p] = kv[n]
  return unflatten_dict(flat)


def layer_kernels(subtree):
  """The kernels (weight matrices) of one layer's parameter subtree."""
  return [v for p, v in flatten_dict(dict(subtree)).items() if p[-1] == "kernel"]


def sum_sq(tree):
  """Sum of squares of every leaf (in float32)."""
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- the probe program


def _statistics(task: train.Task, kinds: set, state: train.TrainState, x, xt, key) -> dict:
  """The probes that need no gradient: activation statistics in train mode (``act``) on ``x`` and in eval mode
  (``eval_act``) on ``xt``, and every BN layer's gap between its batch and running statistics (``bn_gap``)."""
  batch_stats = state.batch_stats
  variables = {"params": state.params, "batch_stats": batch_stats}
  with sowing_stats():  # the BN layers sow the batch statistics they use (bn_gap)
    _, mut = task.model.apply(variables, x, train=True, renorm=train.renorm_clips(task, state.step),
                              mutable=["batch_stats", "intermediates", "bn_stats"], rngs={"noise": key})
  out = {}
  if "act" in kinds:
    stats = probes.activation_stats(models.preacts(mut["intermediates"]))
    out["act"] = stats.layers
    out["units"] = {k: (u.mean, u.std) for k, u in stats.units.items()}
    out["unit0"] = {k: u.percentiles[:, 0] for k, u in stats.units.items()}
  if "eval_act" in kinds:
    _, mut_e = task.model.apply(variables, xt, train=False, mutable=["intermediates"])
    stats = probes.activation_stats(models.preacts(mut_e["intermediates"]))
    out["eval_units"] = {k: (u.mean, u.std) for k, u in stats.units.items()}
    out["eval_unit0"] = {k: u.percentiles[:, 0] for k, u in stats.units.items()}
  out["bn_gap"] = {"/".join(p): probes.bn_stat_gap(_tree_get(mut["bn_stats"], p)["mean"][0], _tree_get(mut["bn_stats"], p)["var"][0],
                                                   _tree_get(batch_stats, p)["mean"], _tree_get(batch_stats, p)["var"])
                   for p in _bn_leaves(batch_stats)}
  return out


def probe_one(task: train.Task, spec, state: train.TrainState, x, y, xt):
  """All probes of ``spec.kinds`` for one run: probe batch ``(x, y)`` (train mode), test batch
  ``xt`` (eval mode). Pure; vmap it over runs."""
  kinds = set(spec.kinds or KINDS)
  params, batch_stats = state.params, state.batch_stats
  key = jax.random.fold_in(jax.random.fold_in(state.key, 2**31 - 1), state.step)  # fresh noise at every probe point
  out = _statistics(task, kinds, state, x, xt, key)

  def loss_fn(p):
    return train.loss_and_updates(task, p, batch_stats, x, y, key, state.step)[0]

  lr = state.hparams.lr * task.schedule(state.step)
  rule = train.update_rule(task, state.hparams)
  layers = models.layer_names(params)
  paths = kernel_paths(params)
  names = tuple(paths)
  if not kinds & {"norms", "grad_ics", "landscape", "coupling", "hessian"}:  # statistics only: no gradient needed
    out["loss"] = loss_fn(params)
    return out
  loss, grads = jax.value_and_grad(loss_fn)(params)
  out["loss"] = loss
  updates = rule.update(grads, state.opt_state, params)[0]  # the update the optimizer would take: the chain that trains
  w_norm = jnp.stack([jnp.sqrt(sum_sq(layer_kernels(params[n]))) for n in layers])
  u_norm = jnp.stack([jnp.sqrt(sum_sq(layer_kernels(updates[n]))) for n in layers])
  if "norms" in kinds:
    out["norms"] = {"weight": w_norm, "effective_lr": lr / jnp.maximum(jnp.square(w_norm), 1e-30),
                    "grad": probes.layer_norms(grads, layers), "relative_update": u_norm / jnp.maximum(w_norm, 1e-30)}
  # The invariant probes work in the column-normalized parametrization of the weight matrices
  # (bn.probes.normalized_parametrization: V = W / column norms; other parameters fixed), where BN's
  # per-unit weight-scale symmetry cannot change anything; steps move each column by a fraction of its norm.
  kv = kernels(params, paths)
  loss_v, V0, _ = probes.normalized_parametrization(lambda w: loss_fn(with_kernels(params, paths, w)), kv)
  if "grad_ics" in kinds:
    select = layer_kernels  # compare the weight-matrix gradients
    raw = probes.gradient_ics(loss_fn, params, lambda g: updates, layers, select=select)  # the paper's: the actual update
    # matched: every earlier layer's weight columns move by rho of their norm along their actual update
    # direction (other parameters fixed); gradients compared in the normalized parametrization
    u_dir = probes.unit_directions({n: _tree_get(updates, paths[n]) for n in names})
    matched = probes.gradient_ics(loss_v, V0, lambda g: {n: spec.rho * u_dir[n] for n in names}, names)
    out["grad_ics"] = {"raw": raw, "matched": matched}
  if "landscape" in kinds:
    out["landscape"] = probes.landscape(loss_fn, params, lr, spec.landscape_scales)
    out["landscape_rel"] = probes.landscape_relative(lambda w: loss_fn(with_kernels(params, paths, w)), kv, names, spec.rho,
                                                     spec.landscape_scales)
  if "coupling" in kinds:
    c = probes.coupling(loss_fn, params, updates, layers)  # along the actual update (not invariant)
    # along equal relative steps of every weight column down its own gradient, in the normalized parametrization
    g_v = jax.grad(loss_v)(V0)
    cr = probes.coupling(loss_v, V0, jax.tree.map(lambda d: -spec.rho * d, probes.unit_directions(g_v)), names)
    out["coupling"] = {"summary": c.summary, "cross_fraction": c.cross_fraction, "normalized": c.normalized, "own": c.single,
                       "relative_cross_fraction": cr.cross_fraction, "relative_own": cr.single}
  if "hessian" in kinds:
    h = probes.hessian_coupling(loss_v, V0, jax.random.fold_in(key, 7), names, num_probes=spec.hessian_probes)
    out["hessian"] = {"normalized": h.normalized, "summary": h.normalized_summary}
  return out


class Prober:
  """Owns the compiled probe program and the probe batches; :meth:`measure` returns a probe
  point's rows, which the loop (:mod:`bn.loop`) appends to ``probes.jsonl`` and truncates on resume."""

  def __init__(self, spec, trainer, seed: int, test_x=None):
    """``spec``: a :class:`bn.experiment.ProbeSpec`; the probe batch is drawn with ``seed + 1``,
    the eval-mode test batch (the first ``spec.eval_batch_size`` of ``test_x``) is fixed."""
    rng = np.random.default_rng(seed + 1)
    n = len(trainer.train_y)
    idx = np.sort(rng.choice(n, size=min(spec.batch_size, n), replace=False))
    self.x = trainer.train_x[idx]
    self.y = trainer.train_y[idx]
    self.xt = self.x[:2] if test_x is None else test_x[: spec.eval_batch_size]
    # the probed runs: all, or those whose swept learning rate is in spec.lrs
    self.index = [i for i, r in enumerate(trainer.runs) if not spec.lrs or any(np.isclose(r["lr"], lr) for lr in spec.lrs)]
    self.runs = [trainer.runs[i] for i in self.index]
    self.task = trainer.task
    self.spec = spec
    # the probed runs laid out as the training program lays them out (vmap, or unrolled for conv nets on CPU)
    self.fn = jax.jit(programs.map_runs(functools.partial(probe_one, trainer.task, spec), trainer.task.runs,
                                        (programs.STATE_AXES, None, None, None), 0))
    self.compiled = None
    self.names = None  # (layer names, kernel paths) of the model, read once from the parameter tree
    self.time = 0.0  # seconds spent probing (running the program; the loop adds writing probes.jsonl), compile excluded
    self.compile_time = 0.0
    self.points = 0

  def _subset(self, state):
    if len(self.index) == len(state.step):
      return state
    idx = np.asarray(self.index)
    return programs.take_runs(state, idx)

  def _program(self, state):
    """The compiled probe program (compiled on first use, its time kept apart)."""
    if self.compiled is None:
      t0 = time.perf_counter()
      self.compiled = self.fn.lower(state, self.x, self.y, self.xt).compile()
      self.compile_time += time.perf_counter() - t0
    return self.compiled

  def measure(self, state, step: int) -> list[dict]:
    """The rows (one per probed run) of the probe point ``step``."""
    state = self._subset(state)  # only the runs at spec.lrs: row i is self.runs[i]
    program = self._program(state)
    t0 = time.perf_counter()
    out = jax.device_get(program(state, self.x, self.y, self.xt))
    if self.names is None:
      one = jax.tree.map(lambda t: t[0], state.params)
      self.names = (list(models.layer_names(one)), list(kernel_paths(one)))
    layers, kernel_names = self.names
    rows = []
    for i, r in enumerate(self.runs):
      pick = jax.tree.map(lambda t: np.asarray(t)[i], out)
      row = {"step": step, "run": r["run"], "seed": r["seed"], "lr": r["lr"], "layers": list(layers), "kernels": kernel_names}
      row.update(to_json(pick))
      rows.append(row)
    self.time += time.perf_counter() - t0
    self.points += 1
    return rows

def _floats(a, digits: int = 7):
  return [float(f"{v:.{digits}g}") for v in np.ravel(a)]


def to_json(o) -> dict:
  """Probe outputs as plain JSON: per-layer arrays become lists in layer order."""
  row = {"loss": float(o["loss"]),
         "bn_gap": {k: {"mean": float(g.mean), "log_var": float(g.log_var)} for k, g in o["bn_gap"].items()}}
  if "act" in o:
    row["act"] = {k: {"mean": float(np.mean(u.mean)), "std": float(np.mean(u.std)), "p15": float(u.percentiles[0]),
                      "p50": float(u.percentiles[1]), "p85": float(u.percentiles[2]), "saturated": float(u.saturated)}
                  for k, u in o["act"].items()}
    row["units"] = {k: {"mean": _floats(m, 5), "std": _floats(s, 5)} for k, (m, s) in o["units"].items()}
    row["unit0"] = {k: _floats(p) for k, p in o["unit0"].items()}
  if "eval_units" in o:
    row["eval_units"] = {k: {"mean": _floats(m, 5), "std": _floats(s, 5)} for k, (m, s) in o["eval_units"].items()}
    row["eval_unit0"] = {k: _floats(p) for k, p in o["eval_unit0"].items()}
  if "norms" in o:
    row["norms"] = {k: _floats(v) for k, v in o["norms"].items()}
  if "grad_ics" in o:
    row["grad_ics"] = {m: {k: _floats(getattr(g, k)) for k in ("l2", "cos", "rel")} for m, g in o["grad_ics"].items()}
  if "landscape" in o:
    row["landscape"] = {k: float(getattr(o["landscape"], k)) for k in ("loss_variation", "grad_predictiveness", "beta_smoothness", "loss0", "grad_norm")}
    row["landscape_rel"] = {k: float(getattr(o["landscape_rel"], k)) for k in ("loss_variation", "grad_predictiveness", "beta_smoothness")}
  if "coupling" in o:
    c = o["coupling"]
    row["coupling"] = {"summary": float(c["summary"]), "cross_fraction": float(c["cross_fraction"]),
                       "normalized": np.asarray(c["normalized"]).tolist(), "own": _floats(c["own"]),
                       "relative_cross_fraction": float(c["relative_cross_fraction"]), "relative_own": _floats(c["relative_own"])}
  if "hessian" in o:
    row["hessian"] = {"summary": float(o["hessian"]["summary"]), "normalized": np.asarray(o["hessian"]["normalized"]).tolist()}
  return row
