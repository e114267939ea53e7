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
import math
from typing import Any

import jax
import numpy as np

import bn
from bn import config as bn_config, data as bn_data, models, parallel, pipeline, programs, run_probes, train
from bn.config import ConfigError

LAUNCH_KEYS = ("coordinator", "num_processes", "process_id", "cluster_detect", "init_timeout", "runs_devices")  # runs_devices: same numbers on any count


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
  runs_devices: str = "auto"  # bn.parallel.runs_device_count


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
  batch_size: int  # examples per training step (all devices together)
  ghost_batch_size: int | None  # the statistics batch of ghost BN; None: the whole batch
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
      plain = model.norm.options._replace(ghost_batch_size=None, population_noise=None, reference=None)
      precise = model.clone(norm=dataclasses.replace(model.norm, kind="batch", options=plain))
    return self._task._replace(model=model, loop=loop, runs=runs, precise_bn=precise)

  @property
  def run_table(self) -> list[dict]:
    return [dataclasses.asdict(r) for r in self.runs]


def recorded_config(cfg_dict: dict) -> dict:
  """The config as recorded in ``config.json`` and compared on resume: without the launch
  details (coordinator address, process id, ...) that differ between processes and restarts."""
  par = {k: v for k, v in cfg_dict.get("parallel", {}).items() if k not in LAUNCH_KEYS}
  return {**cfg_dict, "parallel": par} if "parallel" in cfg_dict else cfg_dict


def fingerprint(cfg_dict: dict) -> str:
  return hashlib.sha256(json.dumps(recorded_config(cfg_dict), sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- checks

INT32_MAX = 2**31 - 1  # seeds and counts live in int32 arrays


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# A rule takes a value and returns None when it is fine, else what was expected (for the message).
def integer(lo: int, hi: int = INT32_MAX):
  kind = {0: "a non-negative integer", 1: "a positive integer"}.get(lo, f"an integer >= {lo}")
  return lambda v: None if _is_int(v) and lo <= v <= hi else f"{kind} (at most {hi})"


def number(lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False):
  def rule(v):
    ok = _is_num(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return None if ok else want
  if hi == math.inf:
    want = "a finite number" if lo == -math.inf else f"a number {'>' if lo_open else '>='} {lo:g}"
  else:
    want = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
  return rule


def flag(v):
  return None if isinstance(v, bool) else "true or false"


def text(v):
  return None if isinstance(v, str) else "a string"


def device_spec(v):
  """``"auto"``, ``"all"`` or a positive device count, as a string (``"2"``)."""
  s = v.strip().lower() if isinstance(v, str) else None
  return None if s in ("auto", "all") or (s is not None and s.isdigit() and int(s) >= 1) else "'auto', 'all' or a device count such as '2'"


def choice(options):
  return lambda v: None if isinstance(v, str) and v in options else f"one of {', '.join(map(str, options))}"


def optional(rule):
  return lambda v: None if v is None else (None if rule(v) is None else f"None or {rule(v)}")


def seq(rule, *, length: int | None = None, nonempty: bool = False, unique: bool = False):
  """A tuple of values that each pass ``rule``."""
  def check(v):
    size = f"{length} " if length is not None else "a non-empty tuple of " if nonempty else "a tuple of "
    want = f"{size}{'distinct ' if unique else ''}values, each {rule(object()) or 'valid'}"
    if not isinstance(v, (tuple, list)) or any(rule(x) is not None for x in v):
      return want
    if (length is not None and len(v) != length) or (nonempty and not v) or (unique and len(set(v)) != len(v)):
      return want
    return None
  return check


def schema() -> dict:
  """Every key of :func:`bn.config.base` with its rule: type and range (cross-key rules: :func:`_check`)."""
  count, size = integer(0), integer(1)
  return {
      "name": text, "seeds": seq(integer(0), nonempty=True, unique=True),
      "data.name": text, "data.source": choice(bn_data.SOURCES), "data.data_dir": text, "data.val_size": count,
      "data.split_seed": integer(0, 2**30), "data.train_size": count, "data.train_eval_size": count,
      "data.test_eval_size": count, "data.synthetic_shape": seq(size, nonempty=True), "data.synthetic_classes": integer(2),
      "data.synthetic_sizes": seq(size, length=2),
      "model.name": choice(tuple(models.MODELS)), "model.widths": seq(size, nonempty=True),
      "model.act": choice(tuple(sorted(models.ACTIVATIONS))), "model.init_std": optional(number(0, lo_open=True)),
      "norm.kind": choice(models.NORM_KINDS), "norm.position": choice(models.POSITIONS),
      "norm.momentum": optional(number(0, 1, hi_open=True)), "norm.epsilon": number(0, lo_open=True),
      "norm.variance": choice(bn.norm.VARIANCES), "norm.ghost_batch_size": count, "norm.num_groups": size,
      "norm.r_max": number(1), "norm.d_max": number(0), "norm.renorm_warmup": count, "norm.stats_gradient": flag,
      "norm.population_noise": count, "norm.reference": count, "norm.affine": flag, "norm.skip_nonfinite": flag,
      "norm.drift": number(0), "norm.drift_period": number(0, lo_open=True),
      "norm.noise.mean_range": seq(number(), length=2), "norm.noise.scale_range": seq(number(), length=2),
      "norm.noise.mean_halfwidth": number(0), "norm.noise.scale_std": number(0), "norm.noise.per_sample": flag,
      "norm.noise.dose": number(0),
      "optimizer.name": choice(train.OPTIMIZERS), "optimizer.lr": number(0), "optimizer.momentum": number(0, 1, hi_open=True),
      "optimizer.weight_decay": number(0), "optimizer.schedule": choice(train.SCHEDULES), "optimizer.warmup": count,
      "optimizer.decay_steps": seq(size, unique=True),
      "sweep.lr": seq(number(0), unique=True), "sweep.weight_decay": seq(number(0), unique=True),
      "train.steps": size, "train.batch_size": size, "train.eval_every": size, "train.checkpoint_every": size,
      "train.sampling": choice(pipeline.MODES), "train.augment": flag, "train.target_accuracy": number(0, 1),
      "train.eval_chunk": size, "train.precise_bn": count, "train.tensorboard": flag,
      "train.loop": choice(("auto", *programs.LOOPS)), "train.runs": choice(("auto", *programs.RUNS)), "train.shared_order": flag,
      "probes.every": count, "probes.batch_size": size, "probes.landscape_scales": seq(number(0, lo_open=True)),
      "probes.kinds": seq(choice(run_probes.KINDS), unique=True), "probes.rho": number(0, lo_open=True),
      "probes.hessian_probes": size, "probes.eval_batch_size": size, "probes.lrs": seq(number(0)),
      "parallel.devices": text, "parallel.bn_stats": choice(parallel.BN_STATS), "parallel.coordinator": text,
      "parallel.num_processes": count, "parallel.process_id": integer(-1), "parallel.cluster_detect": flag,
      "parallel.init_timeout": size, "parallel.runs_devices": device_spec,
  }


_MISSING = object()


# What a bare range does not say.
HINTS = {
    "norm.momentum": " (None: a cumulative average; Flax convention: running = momentum * running + (1 - momentum) * batch, "
                     "so PyTorch's momentum=0.1 is 0.9 here)",
    "seeds": ", e.g. --config.seeds=(0,1,2) (a repeated seed would train the same run twice)",
    "norm.r_max": " (Batch Renorm clips r to [1/r_max, r_max]; 1 turns the scale correction off)",
    "norm.d_max": " (Batch Renorm clips d to [-d_max, d_max]; 0 turns the shift correction off)",
}


def _lookup(c, key: str):
  node = c
  for part in key.split("."):
    if not hasattr(node, "keys") or part not in node:
      if key.startswith("parallel.") and key.split(".", 1)[1] in LAUNCH_KEYS:
        return _MISSING  # a recorded config (config.json) has no launch keys: from_config uses their defaults
      if key.startswith("model.") and key != "model.name":
        return _MISSING  # a model's own options: a model without widths (e.g. vgg's stages) drops them
      raise ConfigError(f"--config.{key} is missing from the config; build configs on bn.config.base() "
                        "(`c = base()`, then change its values).")
    node = node[part]
  return node


def check_values(c) -> None:
  """One pass over every key of the schema: its type and range, the key named in the error."""
  for key, rule in schema().items():
    value = _lookup(c, key)
    if value is not _MISSING and (want := rule(value)) is not None:
      raise ConfigError(f"--config.{key}={value!r}{': expected' if want.startswith('one of') else ' must be'} {want}"
                        f"{HINTS.get(key, '')}.")


def _check(c) -> None:
  """Every value (:func:`check_values`), then the rules between keys."""
  check_values(c)
  t = c.train
  if t.tensorboard:
    import importlib.util

    if importlib.util.find_spec("tensorboardX") is None:
      raise ConfigError("--config.train.tensorboard=true needs tensorboardX: pip install 'bn-lab[tensorboard]' "
                        "(in a clone: pip install -e '.[tensorboard]'), or leave it false.")
  if c.probes.every:
    swept = tuple(c.sweep.lr) or (c.optimizer.lr,)
    missing = [lr for lr in c.probes.lrs if not any(abs(lr - s) <= 1e-9 * max(abs(s), 1) for s in swept)]
    if missing:
      raise ConfigError(f"--config.probes.lrs={tuple(c.probes.lrs)}: {missing} not among the trained learning rates {swept}.")
    if c.probes.every % t.eval_every:
      raise ConfigError(f"--config.probes.every={c.probes.every} must be a multiple of --config.train.eval_every={t.eval_every} "
                        "(probes run at evaluation points).")
  for f in bn.BNOptions._fields:  # every option the config sets, checked by the core's own rules, the key named
    if f in c.norm:
      try:
        one = models.MODEL_OPTIONS._replace(**{f: _OPTION_VALUES.get(f, lambda v: v)(c.norm[f]), "population": f == "population_noise"})
        bn.norm.check_options(one)
      except (TypeError, ValueError) as e:
        raise ConfigError(f"--config.norm.{f}={c.norm[f]!r}: {e}") from None
  g, pn, ref = c.norm.ghost_batch_size, c.norm.population_noise, c.norm.get("reference", 0)
  _check_reference(c, ref)
  if pn and t.batch_size % pn:
    raise ConfigError(f"--config.norm.population_noise={pn} does not divide --config.train.batch_size={t.batch_size}.")
  if g and t.batch_size % g:
    raise ConfigError(f"--config.norm.ghost_batch_size={g} does not divide --config.train.batch_size={t.batch_size}.")
  if c.norm.kind == "ghost" and not g:
    raise ConfigError("--config.norm.kind=ghost needs --config.norm.ghost_batch_size (e.g. 16).")


def _check_reference(c, ref: int) -> None:
  """The rules of ``norm.reference`` (full-batch BN over a fixed reference set appended to every batch)."""
  if not ref:
    return
  if c.norm.kind != "batch":
    raise ConfigError(f"--config.norm.reference={ref} needs --config.norm.kind=batch (got {c.norm.kind!r}): it replaces the batch's "
                      "own statistics by the reference set's.")
  if str(c.parallel.devices) != "1":
    raise ConfigError(f"--config.norm.reference={ref} needs --config.parallel.devices=1 (each device would take its own reference "
                      "rows); spread runs with --config.parallel.runs_devices instead.")
  if c.data.train_size and ref > c.data.train_size:
    raise ConfigError(f"--config.norm.reference={ref} exceeds --config.data.train_size={c.data.train_size}: the reference set is the "
                      "first examples of the training set.")
  if c.probes.every:
    raise ConfigError(f"--config.norm.reference={ref} does not run with probes (--config.probes.every=0).")


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
  for key, value, ok in (("loop", loop, ("auto", *programs.LOOPS)), ("runs", runs, ("auto", *programs.RUNS))):
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
    "reference": lambda r: r or None,
    "noise": lambda z: bn.Noise(tuple(z.mean_range), tuple(z.scale_range), z.mean_halfwidth, z.scale_std, bool(z.per_sample),
                                float(z.dose)),
}


def bn_options(n) -> bn.BNOptions:
  """The :class:`bn.BNOptions` of a config's ``norm`` section: every option field that has a key there."""
  given = {f: _OPTION_VALUES.get(f, lambda v: v)(n[f]) for f in bn.BNOptions._fields if f in n}
  return models.MODEL_OPTIONS._replace(**given)


def norm_spec(n) -> models.NormSpec:
  return models.NormSpec(kind=n.kind, position=n.position, options=bn_options(n), num_groups=n.num_groups, affine=bool(n.affine),
                         drift=float(n.drift), drift_period=float(n.drift_period))


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
      reference=int(c.norm.get("reference", 0)),
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
                            int(p.get("process_id", -1)), bool(p.get("cluster_detect", False)), int(p.get("init_timeout", 300)),  # config
                            str(p.get("runs_devices", "auto"))),  # has no launch keys
      batch_size=int(t.batch_size), ghost_batch_size=int(c.norm.ghost_batch_size) or None,
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
  return dataclasses.replace(dataset, train=bn_data.fixed_subset(dataset.train, spec.train_size, spec.split_seed + 2))


def dataset_key(spec: DataSpec) -> tuple:
  """What identifies the *full* dataset a spec loads (before ``train_size``): specs with equal
  keys can share one loaded dataset."""
  return (spec.name, spec.source, spec.data_dir, spec.val_size, spec.split_seed, spec.synthetic_shape,
          spec.synthetic_classes, spec.synthetic_sizes)


train_eval_subset = bn_data.fixed_subset  # the old name (a data operation: it lives in bn.data)
