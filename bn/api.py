"""Python entry points over a workdir: :func:`train_and_evaluate` (what ``bn train`` does) and
:func:`restore` (a finished or interrupted workdir back to a model you can call).

    import bn
    summary = bn.train_and_evaluate("ioffe_mlp", "/tmp/run")     # a config name/path, ConfigDict or dict
    r = bn.restore("/tmp/run", run=0)
    r.evaluate(*r.test_split)          # == summary["runs"][0]["test_accuracy"] (the same evaluation)
    logits = r.predict(images)         # uint8 images as the dataset stores them
    r.variables                        # {"params", "batch_stats"}: Flax's layout (flax.linen.BatchNorm loads it)

Both are exported lazily by ``bn`` (they need the ``[train]`` extra; ``import bn`` does not).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bn import config as bn_config, data as bn_data, experiment as bn_experiment, loop, parallel, pipeline, train
from bn.errors import UsageError


def config_from_recorded(recorded: dict):
  """The ConfigDict of a recorded config (``config.json``'s ``"config"``, ``summary``-era
  checkpoints' meta): ``bn.experiment.from_config`` of it gives the experiment that was trained
  (same fingerprint). The launch keys the record leaves out (coordinator, process id, ...) get
  their defaults."""
  import ml_collections

  c = ml_collections.ConfigDict(recorded)
  defaults = bn_config.base().parallel
  with c.unlocked():
    if "parallel" not in c:
      c.parallel = ml_collections.ConfigDict()
    for k in bn_experiment.LAUNCH_KEYS:
      if k not in c.parallel:
        c.parallel[k] = defaults[k]
  return c


def _as_config(config):
  if isinstance(config, (str, Path)):
    return bn_config.load(str(config))
  if isinstance(config, dict):
    return config_from_recorded(config)
  return config


def train_and_evaluate(config, workdir, *, progress: bool = True, extend: bool = False, dataset: bn_data.Dataset | None = None) -> dict:
  """Trains ``config`` into ``workdir`` and returns its summary (``summary.json``'s content), as
  ``bn train --config CONFIG --workdir WORKDIR`` does (the same artifacts, resumes the same way;
  a finished workdir is not trained again). In the spirit of Flax's examples' ``train_and_evaluate``.

  ``config``: an ``ml_collections.ConfigDict`` (e.g. ``bn.config.load("ioffe_mlp")`` with values
  changed), a config name or file path as ``bn train --config`` takes, or a recorded config dict.
  ``progress``: the progress bar and status lines on stderr. ``extend``: as ``--extend``.
  ``dataset``: an already loaded :class:`bn.data.Dataset` to train on instead of loading the
  config's. Raises :class:`bn.errors.UsageError` (a ConfigError naming the key) for a bad config
  or a workdir of another run, :class:`bn.errors.RunError` for a failure while training."""
  exp = bn_experiment.from_config(_as_config(config))
  return loop.train_workdir(exp, workdir, dataset=dataset, progress=progress, extend=extend)


@dataclasses.dataclass(frozen=True, eq=False)
class Restored:
  """One run of a workdir, loaded back (:func:`restore`).

  ``model``: the Flax Linen model (``model.apply(variables, x, train=False)`` on standardized
  images); ``variables``: ``{"params", "batch_stats"}`` (NumPy) in Flax's layout -- the BN layers
  are ``bn.linen.BatchNorm``, whose variables are ``flax.linen.BatchNorm``'s (scale, bias; mean,
  var), so a plain Flax model of the same structure loads them. With ``train.precise_bn`` the
  ``batch_stats`` are the recalibrated ones the evaluation used. ``stats``: the per-channel
  mean and std of the training images the inputs were standardized with (:meth:`transform`).
  ``summary``: this run's entry of ``summary.json`` (None for an unfinished workdir);
  ``metrics``: its ``metrics.jsonl`` rows up to ``step``."""

  workdir: Path
  run: dict  # the run table's row: run, seed, lr, weight_decay
  step: int
  config: Any  # the ml_collections.ConfigDict that was trained
  experiment: bn_experiment.Experiment
  model: Any
  variables: dict
  stats: bn_data.ChannelStats
  dataset: bn_data.Dataset  # as trained on (data.train_size applied)
  summary: dict | None
  metrics: list

  def transform(self, x) -> jax.Array:
    """The training's input transform: uint8 images ``(N, H, W, C)`` -> ``(x / 255 - mean) / std``
    per channel, float32."""
    return pipeline.standardize(jax.numpy.asarray(x), self.stats)

  @functools.cached_property
  def _apply(self):
    return jax.jit(lambda v, x: self.model.apply(v, pipeline.standardize(x, self.stats), train=False))

  def predict(self, x, *, batch_size: int = 1000) -> np.ndarray:
    """Eval-mode logits ``(N, classes)`` of uint8 images ``(N, H, W, C)`` (as the dataset stores
    them; standardized here), in batches of ``batch_size``."""
    x = np.asarray(x)
    out = [np.asarray(self._apply(self.variables, x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, self.dataset.num_classes), np.float32)

  @functools.cached_property
  def _evaluate(self):
    return jax.jit(functools.partial(train.evaluate, self.experiment.make_task(self.dataset.num_classes)))

  def evaluate(self, x, y) -> dict:
    """``{"loss", "accuracy"}`` of uint8 images ``x`` with labels ``y`` in eval mode -- the
    evaluation ``bn train`` records (same chunking), so on :attr:`test_split` the accuracy
    equals the summary's ``test_accuracy``."""
    xs, ys, ws = parallel.place_eval(bn_data.Split(np.asarray(x), np.asarray(y)), self.stats, None, self.experiment.schedule.eval_chunk)
    m = self._evaluate(self.variables["params"], self.variables["batch_stats"], xs, ys, ws)
    return {"loss": float(m.loss), "accuracy": float(m.accuracy)}

  @property
  def test_split(self) -> bn_data.Split:
    """The test examples the run's ``test_*`` metrics were measured on (``data.test_eval_size``)."""
    d = self.experiment.data
    return bn_data.fixed_subset(self.dataset.test, d.test_eval_size, d.split_seed + 4)

  @property
  def train_eval_split(self) -> bn_data.Split:
    """The fixed training subset of the ``train_*`` metrics (``data.train_eval_size``)."""
    d = self.experiment.data
    return bn_data.fixed_subset(self.dataset.train, d.train_eval_size, d.split_seed)


def restore(workdir, run: int = 0, *, dataset: bn_data.Dataset | None = None) -> Restored:
  """Run ``run`` (its index in ``config.json``'s run table) of a ``bn train`` workdir, from its
  newest checkpoint (a finished run: the final state), with the model, its variables, the input
  transform and the data it was trained on (loaded again, or ``dataset`` if given).

  Raises :class:`bn.errors.UsageError` for a directory that is not a workdir or a run it does
  not hold, :class:`bn.errors.RunError` when no checkpoint can be read."""
  r = loop.restore(workdir)
  if r.config is None:
    raise UsageError(f"{workdir}: no recorded config (config.json or a checkpoint's); cannot rebuild its model.")
  n = len(r.runs)
  if isinstance(run, bool) or not isinstance(run, (int, np.integer)) or not 0 <= run < n:
    raise UsageError(f"run={run!r}: {workdir} holds runs 0..{n - 1} (config.json's run table); pass one of them.")
  cfg = config_from_recorded(r.config)
  exp = bn_experiment.from_config(cfg)
  ds = bn_experiment.load_dataset(exp.data, dataset)
  stats = bn_data.channel_stats(ds.train.x)
  task = exp.make_task(ds.num_classes)
  params, batch_stats = r.params[run], r.batch_stats[run]
  if task.precise_bn is not None:  # the evaluation recalibrates first: the same sample as the Trainer's
    k_n = exp.schedule.precise_bn
    k = max(1, k_n // min(exp.schedule.eval_chunk, k_n))
    sample = bn_data.fixed_subset(ds.train, k * (k_n // k), exp.data.split_seed + 3)
    x = parallel.place_train(sample, stats).x
    x = x.reshape((k, k_n // k) + x.shape[1:])
    batch_stats = jax.tree.map(np.asarray, jax.jit(functools.partial(train.recalibrate, task))(params, batch_stats, x))
  summary = None
  if r.summary is not None:
    summary = next((s for s in r.summary.get("runs", []) if s.get("run") == r.runs[run]["run"]), None)
  metrics = [m for m in r.metrics if m.get("run") == r.runs[run]["run"]]
  return Restored(Path(workdir), dict(r.runs[run]), r.step, cfg, exp, task.model, {"params": params, "batch_stats": batch_stats},
                  stats, ds, summary, metrics)
