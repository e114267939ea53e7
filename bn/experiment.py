"""Config -> a typed, frozen :class:`Experiment`: the one place that reads a ConfigDict.

Below this line (the loop, the programs, the probes) nothing reads config keys or
model names. :func:`from_config` checks every value first (counts, choices,
model options) and raises :class:`~bn.config.ConfigError` naming the key, so a
bad config fails before anything is written, and without touching a device (a
multi-host run must join ``jax.distributed`` first). It makes the run table
(seeds x swept LRs x swept weight decays, all trained together in one program);
:meth:`Experiment.make_task` builds the model and picks the program layout
(:func:`choose_layout`) once the backend is known.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from typing import Any

import jax
import numpy as np

import bn
from bn import config as bn_config, data as bn_data, models, pipeline, run_probes, train
from bn.config import ConfigError

LAUNCH_KEYS = ("coordinator", "num_processes", "process_id", "cluster_detect", "init_timeout")


@dataclasses.dataclass(frozen=True)
class Run:
  """One row of the run table: a seed and its numeric hyper-parameters."""

  run: int
  seed: int
  lr: float
  weight_decay: float


@dataclasses.dataclass(frozen=True)
class DataSpec:
  name: str
  source: str
  data_dir: str | None
  val_size: int
  split_seed: int
  train_size: int  # > 0: train on a fixed random subset of this many examples
  train_eval_size: int  # fixed train subset evaluated in eval mode (the gap's train side)
  synthetic_shape: tuple[int, ...]
  synthetic_classes: int
  synthetic_sizes: tuple[int, int]
  test_eval_size: int = 0  # > 0: a fixed random subset of the test split is evaluated


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When things happen: steps, evaluation, checkpoints."""

  steps: int
  eval_every: int
  checkpoint_every: int
  eval_chunk: int
  target_accuracy: float
  precise_bn: int  # > 0: before every evaluation, re-estimate BN statistics on this many training examples
  tensorboard: bool = False  # also write TensorBoard event files (bn.loop.TensorBoard)


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
  every: int  # 0: no probes
  batch_size: int
  landscape_scales: tuple[float, ...]
  kinds: tuple[str, ...] = ()  # empty: every kind of bn.run_probes.KINDS
  rho: float = 1e-3
  hessian_probes: int = 2
  eval_batch_size: int = 1000
  lrs: tuple[float, ...] = ()  # probe only the runs of these swept LRs; empty: all


@dataclasses.dataclass(frozen=True)
class ParallelSpec:
  devices: str
  bn_stats: str
  coordinator: str
  num_processes: int
  process_id: int
  cluster_detect: bool
  init_timeout: int


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a training run needs, typed. ``config`` is the recorded config (a plain dict,
  without per-process launch settings) and ``fingerprint`` its hash."""

  name: str
  runs: tuple[Run, ...]
  data: DataSpec
  schedule: Schedule
  probes: ProbeSpec
  parallel: ParallelSpec
  config: dict
  fingerprint: str
  _model: Any  # (num_classes) -> model; see make_task
  _task: Any  # train.Task without the model, with the layout as requested ("auto" or explicit)

  def make_task(self, num_classes: int, backend: str | None = None) -> train.Task:
    """The training task for a dataset with ``num_classes`` classes, its layout resolved for
    ``backend`` (default: JAX's; so call it after any ``jax.distributed`` set-up)."""
    model = self._model(num_classes)
    loop, runs = choose_layout(self._task.loop, self._task.runs, model, backend)
    precise = None
    # precise BN for the kinds that normalize with batch statistics in training; population BN is evaluated
    # with its running statistics, which are what its forward pass used in training
    if self.schedule.precise_bn > 0 and getattr(getattr(model, "norm", None), "kind", "none") in ("batch", "ghost", "renorm", "noisy"):
      plain = model.norm.options._replace(ghost_batch_size=None, population_noise=None)
      precise = model.clone(norm=dataclasses.replace(model.norm, kind="batch", options=plain))
    return self._task._replace(model=model, loop=loop, runs=runs, precise_bn=precise)

  @property
  def run_table(self) -> list[dict]:
    return [dataclasses.asdict(r) for r in self.runs]

  @property
  def ghost_batch_size(self) -> int | None:
    return self.config["norm"]["ghost_batch_size"] or None


def recorded_config(cfg_dict: dict) -> dict:
  """The config as recorded in ``config.json`` and compared on resume: without the launch
  details (coordinator address, process id, ...) that differ between processes and restarts."""
  par = {k: v for k, v in cfg_dict.get("parallel", {}).items() if k not in LAUNCH_KEYS}
  return {**cfg_dict, "parallel": par} if "parallel" in cfg_dict else cfg_dict


def fingerprint(cfg_dict: dict) -> str:
  return hashlib.sha256(json.dumps(recorded_config(cfg_dict), sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- checks


def _positive(key: str, value, *, allow_zero: bool = False):
  ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
  if not ok:
    raise ConfigError(f"--config.{key}={value!r} must be {'a non-negative' if allow_zero else 'a positive'} integer.")


def _choice(key: str, value, choices):
  if value not in choices:
    raise ConfigError(f"--config.{key}={value!r}: expected one of {', '.join(map(str, choices))}.")


def _check(c) -> None:
  t = c.train
  for key in ("steps", "batch_size", "eval_every", "eval_chunk", "checkpoint_every"):
    _positive(f"train.{key}", t[key])
  _positive("probes.every", c.probes.every, allow_zero=True)
  _positive("train.precise_bn", t.precise_bn, allow_zero=True)
  if t.tensorboard:
    import importlib.util

    if importlib.util.find_spec("tensorboardX") is None:
      raise ConfigError("--config.train.tensorboard=true needs tensorboardX: pip install 'bn-lab[tensorboard]' "
                        "(in a clone: pip install -e '.[tensorboard]'), or leave it false.")
  _positive("data.train_size", c.data.train_size, allow_zero=True)
  _positive("data.train_eval_size", c.data.train_eval_size, allow_zero=True)
  _positive("data.test_eval_size", c.data.test_eval_size, allow_zero=True)
  if c.probes.every:
    _positive("probes.batch_size", c.probes.batch_size)
    _positive("probes.hessian_probes", c.probes.hessian_probes)
    _positive("probes.eval_batch_size", c.probes.eval_batch_size)
    unknown = set(c.probes.kinds) - set(run_probes.KINDS)
    if unknown:
      raise ConfigError(f"--config.probes.kinds has unknown probes {sorted(unknown)}; choose from {', '.join(run_probes.KINDS)} (empty: all).")
    if not c.probes.rho > 0:
      raise ConfigError(f"--config.probes.rho={c.probes.rho} must be > 0.")
    swept = tuple(c.sweep.lr) or (c.optimizer.lr,)
    missing = [lr for lr in c.probes.lrs if not any(abs(lr - s) <= 1e-9 * max(abs(s), 1) for s in swept)]
    if missing:
      raise ConfigError(f"--config.probes.lrs={tuple(c.probes.lrs)}: {missing} not among the trained learning rates {swept}.")
    if c.probes.every % t.eval_every:
      raise ConfigError(f"--config.probes.every={c.probes.every} must be a multiple of --config.train.eval_every={t.eval_every} "
                        "(probes run at evaluation points).")
  if not len(c.seeds):
    raise ConfigError("--config.seeds=() is empty; give at least one seed, e.g. --config.seeds=(0,).")
  _choice("train.sampling", t.sampling, pipeline.MODES)
  _choice("train.loop", t.loop, ("auto", "scan", "host"))
  _choice("train.runs", t.runs, ("auto", "vmap", "unroll"))
  _choice("optimizer.name", c.optimizer.name, train.OPTIMIZERS)
  _choice("optimizer.schedule", c.optimizer.schedule, train.SCHEDULES)
  _choice("norm.kind", c.norm.kind, models.NORM_KINDS)
  _choice("norm.position", c.norm.position, ("pre", "post"))
  _choice("norm.variance", c.norm.variance, bn.norm.VARIANCES)
  for f in bn.BNOptions._fields:  # every option the config sets, checked by the core's own rules, the key named
    if f in c.norm:
      try:
        one = models.MODEL_OPTIONS._replace(**{f: _OPTION_VALUES.get(f, lambda v: v)(c.norm[f]), "population": f == "population_noise"})
        bn.norm.check_options(one)
      except (TypeError, ValueError) as e:
        raise ConfigError(f"--config.norm.{f}={c.norm[f]!r}: {e}") from None
  _choice("data.source", c.data.source, bn_data.SOURCES)
  _choice("parallel.bn_stats", c.parallel.bn_stats, ("sync", "local"))
  m = c.norm.momentum
  if m is not None and not (isinstance(m, (int, float)) and not isinstance(m, bool) and 0.0 <= m < 1.0):
    raise ConfigError(f"--config.norm.momentum={m!r} must be in [0, 1) (Flax convention: running = momentum * running + "
                      "(1 - momentum) * batch; PyTorch's momentum=0.1 is 0.9 here), or None for a cumulative average.")
  if not c.norm.epsilon > 0:
    raise ConfigError(f"--config.norm.epsilon={c.norm.epsilon!r} must be > 0.")
  g = c.norm.ghost_batch_size
  _positive("norm.ghost_batch_size", g, allow_zero=True)
  _positive("norm.population_noise", c.norm.population_noise, allow_zero=True)
  if c.norm.population_noise and t.batch_size % c.norm.population_noise:
    raise ConfigError(f"--config.norm.population_noise={c.norm.population_noise} does not divide --config.train.batch_size={t.batch_size}.")
  if c.norm.noise.dose < 0:
    raise ConfigError(f"--config.norm.noise.dose={c.norm.noise.dose} must be >= 0 (0 is no noise, 1 Santurkar et al.'s).")
  if g and t.batch_size % g:
    raise ConfigError(f"--config.norm.ghost_batch_size={g} does not divide --config.train.batch_size={t.batch_size}.")
  if c.norm.kind == "ghost" and not g:
    raise ConfigError("--config.norm.kind=ghost needs --config.norm.ghost_batch_size (e.g. 16).")
  for key in ("lr", "weight_decay"):
    values = tuple(c.sweep[key]) or (c.optimizer[key],)
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for v in values):
      raise ConfigError(f"--config.{'sweep.' + key if c.sweep[key] else 'optimizer.' + key}={values!r}: expected non-negative numbers.")


# ----------------------------------------------------------------------------- layout


def choose_layout(loop: str, runs: str, model, backend: str | None = None) -> tuple[str, str]:
  """Resolve ``train.loop`` / ``train.runs`` = "auto" for a model on a backend.

  "auto" is ``("scan", "vmap")`` except for convolutional models on XLA:CPU, which get
  ``("host", "unroll")``: inside ``lax.scan`` XLA:CPU runs the weight- and input-gradient
  convolutions with a generic loop instead of its Eigen kernel (their dimension labels
  stay transposed inside a while body), and under ``vmap`` per-run kernels become one
  grouped convolution, also slow there. A host loop dispatches one jitted step at a time,
  which costs little next to a conv step. GPU and TPU keep scan + vmap.
  (Measurements: docs/benchmarks.md.)"""
  for key, value, ok in (("loop", loop, ("auto", "scan", "host")), ("runs", runs, ("auto", "vmap", "unroll"))):
    if value not in ok:
      raise ValueError(f"train.{key}={value!r}: expected one of {', '.join(ok)}.")
  slow_convs = (backend or jax.default_backend()) == "cpu" and models.is_convolutional(model)
  if loop == "auto":
    loop = "host" if slow_convs else "scan"
  if runs == "auto":
    runs = "unroll" if slow_convs else "vmap"
  return loop, runs


# ----------------------------------------------------------------------------- translation


# Config values of a BN option that need converting into the option's value (every other option field
# with a key in the config's ``norm`` section is taken as it is: a new bn.BNOptions field needs only its key).
_OPTION_VALUES = {
    "ghost_batch_size": lambda g: g or None,
    "population_noise": lambda g: g or None,
    "noise": lambda z: bn.Noise(tuple(z.mean_range), tuple(z.scale_range), z.mean_halfwidth, z.scale_std, bool(z.per_sample),
                                float(z.dose)),
}


def bn_options(n) -> bn.BNOptions:
  """The :class:`bn.BNOptions` of a config's ``norm`` section: every option field that has a key there."""
  given = {f: _OPTION_VALUES.get(f, lambda v: v)(n[f]) for f in bn.BNOptions._fields if f in n}
  return models.MODEL_OPTIONS._replace(**given)


def norm_spec(n) -> models.NormSpec:
  return models.NormSpec(kind=n.kind, position=n.position, options=bn_options(n), num_groups=n.num_groups, affine=bool(n.affine))


def from_config(c) -> Experiment:
  """The typed experiment of config ``c``; raises ConfigError naming the first bad key."""
  _check(c)
  spec = norm_spec(c.norm)
  model_kwargs = {k: v for k, v in c.model.items() if k != "name"}
  model_name = c.model.name

  def model(num_classes: int):
    return models.create(model_name, norm=spec, num_classes=num_classes, **model_kwargs)

  try:
    model(bn_data.num_classes(c.data.name, c.data.source, c.data.synthetic_classes))  # checks the model name and its options now (no device needed)
  except ValueError as e:
    raise ConfigError(f"--config.model / --config.norm: {e}") from None
  o, t = c.optimizer, c.train
  task = train.Task(
      model=None,
      direction=train.make_direction(o.name, momentum=o.momentum),
      schedule=train.make_schedule(o.schedule, t.steps, warmup=o.warmup, decay_steps=tuple(o.decay_steps)),
      decoupled_wd=o.name == "adamw",
      batch_size=t.batch_size,
      sampling=t.sampling,
      augment=t.augment,
      renorm=train.RenormSchedule(c.norm.r_max, c.norm.d_max, c.norm.renorm_warmup) if c.norm.kind == "renorm" else None,
      loop=t.loop,
      runs=t.runs,
      shared_order=bool(t.shared_order),
  )
  d, p, pr = c.data, c.parallel, c.probes
  cfg = recorded_config(bn_config.to_dict(c))
  return Experiment(
      name=c.name,
      runs=tuple(Run(i, int(s), float(lr), float(wd)) for i, (s, lr, wd) in
                 enumerate(itertools.product(c.seeds, tuple(c.sweep.lr) or (o.lr,), tuple(c.sweep.weight_decay) or (o.weight_decay,)))),
      data=DataSpec(d.name, d.source, d.data_dir or None, d.val_size, d.split_seed, d.train_size, d.train_eval_size,
                    tuple(d.synthetic_shape), d.synthetic_classes, tuple(d.synthetic_sizes), d.test_eval_size),
      schedule=Schedule(t.steps, t.eval_every, t.checkpoint_every, t.eval_chunk, t.target_accuracy, t.precise_bn, bool(t.tensorboard)),
      probes=ProbeSpec(pr.every, pr.batch_size, tuple(float(s) for s in pr.landscape_scales), tuple(pr.kinds), float(pr.rho),
                       int(pr.hessian_probes), int(pr.eval_batch_size), tuple(float(v) for v in pr.lrs)),
      parallel=ParallelSpec(str(p.devices), p.bn_stats, p.get("coordinator", ""), int(p.get("num_processes", 0)),  # a recorded
                            int(p.get("process_id", -1)), bool(p.get("cluster_detect", False)), int(p.get("init_timeout", 300))),  # config has none
      config=cfg,
      fingerprint=fingerprint(cfg),
      _model=model,
      _task=task,
  )


# ----------------------------------------------------------------------------- data


def load_dataset(spec: DataSpec, dataset: bn_data.Dataset | None = None) -> bn_data.Dataset:
  """The spec's dataset (or ``dataset`` if given, e.g. shared by a ledger), cut to
  ``train_size`` examples when > 0 (a fixed random subset chosen by ``split_seed``)."""
  if dataset is None:
    dataset = bn_data.load(
        spec.name, source=spec.source, data_dir=spec.data_dir, val_size=spec.val_size, seed=spec.split_seed,
        synthetic_shape=spec.synthetic_shape, synthetic_classes=spec.synthetic_classes, synthetic_sizes=spec.synthetic_sizes,
        flag="--config.data.data_dir",
    )
  return dataclasses.replace(dataset, train=train_eval_subset(dataset.train, spec.train_size, spec.split_seed + 2))


def dataset_key(spec: DataSpec) -> tuple:
  """What identifies the *full* dataset a spec loads (before ``train_size``): specs with equal
  keys can share one loaded dataset."""
  return (spec.name, spec.source, spec.data_dir, spec.val_size, spec.split_seed, spec.synthetic_shape,
          spec.synthetic_classes, spec.synthetic_sizes)


def train_eval_subset(split: bn_data.Split, size: int, seed: int) -> bn_data.Split:
  """A fixed random subset of ``size`` examples of ``split`` (in their original order), the same for a
  seed; all of it when ``size`` is 0 or at least its length. Used for the eval-mode training
  metrics, the evaluated test subset, ``data.train_size`` and the precise-BN sample."""
  n = len(split.y)
  if size <= 0 or size >= n:
    return split
  idx = np.sort(np.random.default_rng(seed).permutation(n)[:size])
  return bn_data.Split(split.x[idx], split.y[idx])
