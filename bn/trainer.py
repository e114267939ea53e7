"""The compiled programs and device data of one experiment: :class:`Trainer`, on one device or a mesh.

The training loop (:mod:`bn.loop`) and the probes (:mod:`bn.run_probes`) drive it; the
programs come from :mod:`bn.programs` either way.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from bn import data as bn_data, experiment as bn_experiment, parallel, programs, train


class Trainer:
  """The compiled programs and device data of one experiment, on one device or a mesh."""

  def __init__(self, exp: bn_experiment.Experiment, dataset: bn_data.Dataset, plan: parallel.Plan | None = None):
    self.exp, self.plan = exp, plan
    self.data_files = tuple(getattr(dataset, "files", ()) or ())
    self.task = exp.make_task(dataset.num_classes)  # the one-device task (probes use it)
    self.ptask = self.task if plan is None else parallel.parallel_task(self.task, plan.bn_stats)
    self.mesh = None if plan is None else plan.mesh
    self.runs = exp.run_table
    stats = bn_data.channel_stats(dataset.train.x)
    self.train_x, self.train_y = parallel.place_train(dataset.train, stats, plan)
    chunk = exp.schedule.eval_chunk
    subset = bn_data.fixed_subset(dataset.train, exp.data.train_eval_size, exp.data.split_seed)
    # train subset, test split, and the validation split when the data has one (data.val_size > 0)
    test = bn_data.fixed_subset(dataset.test, exp.data.test_eval_size, exp.data.split_seed + 4)  # all when 0
    splits = (subset, test) + ((dataset.val,) if dataset.val is not None else ())
    self.eval_sets = tuple(parallel.place_eval(s, stats, plan, chunk) for s in splits)
    self._test, self._stats = dataset.test, stats
    self.recal_x = None
    if self.task.precise_bn is not None:  # precise BN: a fixed random sample of the training set, in chunks
      n = exp.schedule.precise_bn
      k = max(1, n // min(chunk, n))
      sample = bn_data.fixed_subset(dataset.train, k * (n // k), exp.data.split_seed + 3)
      x = parallel.place_train(sample, stats, plan).x
      self.recal_x = x.reshape((k, n // k) + x.shape[1:])
    self._eval = programs.evaluate(self.ptask, len(self.eval_sets), self.mesh)
    self._eval_compiled = None
    self._chunks: dict[int, object] = {}
    self.compile_time = 0.0
    self.on_compile: Callable[[str], None] | None = None  # told before each compile (progress output)

  def _compile(self, what: str, lower: Callable[[], Any]):
    """``lower().compile()``, announced, its time (tracing included) kept in ``compile_time``."""
    if self.on_compile is not None:
      self.on_compile(f"compiling the {what} (once; not counted in steps/s)")
    t0 = time.perf_counter()
    out = lower().compile()
    self.compile_time += time.perf_counter() - t0
    return out

  def test_images(self, n: int):
    """The first ``n`` test images, standardized, on the device (the probes' eval-mode batch)."""
    return parallel.place_train(bn_data.Split(self._test.x[:n], self._test.y[:n]), self._stats, self.plan).x

  def init(self) -> train.TrainState:
    r = self.exp.runs
    f = programs.init(self.task, len(self.train_y), self.mesh)
    return f(np.asarray([x.seed for x in r], np.int32), np.asarray([x.lr for x in r], np.float32),
             np.asarray([x.weight_decay for x in r], np.float32), self.train_x[:2])

  def chunk(self, state, num_steps: int):
    """``num_steps`` training steps of every run (compiled on first use; compile time kept apart)."""
    if num_steps not in self._chunks:
      lower = lambda: programs.chunk(self.ptask, num_steps, self.mesh).lower(state, self.train_x, self.train_y)  # noqa: E731
      self._chunks[num_steps] = self._compile(f"{num_steps}-step training program", lower)
    return self._chunks[num_steps](state, self.train_x, self.train_y)

  def evaluate(self, state) -> tuple[train.StepMetrics, ...]:
    """Eval-mode metrics on the train subset, the test split and (if any) the validation split,
    per run (compiled on first use)."""
    args = (state.params, state.batch_stats, self.eval_sets, self.recal_x)
    if self._eval_compiled is None:
      self._eval_compiled = self._compile("evaluation program", lambda: self._eval.lower(*args))
    return self._eval_compiled(*args)

