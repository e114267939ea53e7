"""Tests for bn.records on hand-made numbers: a metrics row per run with what its evaluation measured (a batch with
no finite loss recorded as null, validation keys only with a validation split), the summary's per-run numbers
(last row, gaps, best test accuracy and steps to the target over the rows before divergence, worked by hand) and
the progress bar's numbers (finite losses only, diverged runs left out, NaN when nothing is left).
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from bn import config, experiment, records, train

RUNS = [{"run": 0, "seed": 7, "lr": 0.1, "weight_decay": 0.0}, {"run": 1, "seed": 8, "lr": 0.2, "weight_decay": 0.0}]


def metrics(loss, acc):
  return SimpleNamespace(loss=np.asarray(loss, np.float32), accuracy=np.asarray(acc, np.float32))


def test_metric_rows_record_each_runs_evaluation():
  batch = train.StepMetrics(np.array([[1.0, np.nan, 3.0], [np.nan] * 3]), np.array([[0.5, 0.5, 0.25], [np.nan] * 3]))
  rows = records.metric_rows(RUNS, 40, 12.5, 0.5, batch, metrics([0.3, 0.4], [0.9, 0.8]), metrics([0.5, 0.6], [0.7, 0.6]),
                             np.array([-1, 30]))
  a, b = rows
  assert a == {"step": 40, "run": 0, "seed": 7, "lr": 0.1, "weight_decay": 0.0, "learning_rate": 0.05,
               "batch_loss": 2.0, "batch_accuracy": pytest.approx(5 / 12), "train_loss": pytest.approx(0.3),
               "train_accuracy": pytest.approx(0.9), "test_loss": 0.5, "test_accuracy": pytest.approx(0.7), "diverged": False,
               "wall_time": 12.5}
  assert b["batch_loss"] is None and b["batch_accuracy"] is None and b["diverged"] is True and b["learning_rate"] == 0.1
  assert "val_loss" not in a
  with_val = records.metric_rows(RUNS, 40, 1.0, 1.0, batch, metrics([0, 0], [0, 0]), metrics([0, 0], [0, 0]), np.array([-1, -1]),
                                 va=metrics([0.25, 0.5], [0.75, 0.5]))
  assert [(r["val_loss"], r["val_accuracy"]) for r in with_val] == [(0.25, 0.75), (0.5, 0.5)]


def _row(run, step, test_acc, train_acc, diverged=False, test_loss=1.0, train_loss=0.5):
  return {"run": run, "step": step, "test_accuracy": test_acc, "train_accuracy": train_acc, "test_loss": test_loss,
          "train_loss": train_loss, "diverged": diverged}


def test_summary_per_run_numbers_by_hand():
  c = config.base()
  c.seeds = (7, 8)
  c.train.target_accuracy = 0.6
  exp = experiment.from_config(c)
  rows = [_row(0, 100, 0.4, 0.5), _row(0, 200, 0.8, 0.9, test_loss=0.7, train_loss=0.2),  # reaches 0.6 at step 150
          _row(1, 100, 0.5, 0.5), _row(1, 200, 0.95, 0.95, diverged=True), _row(1, 300, float("nan"), float("nan"), diverged=True)]
  s = records.summarize(exp, rows, np.array([-1, 150]), wall=10.0, compile_time=2.0, steps_done=300)
  r0, r1 = s["runs"]
  assert (r0["seed"], r0["steps_to_target"], r0["best_test_accuracy"], r0["diverged"], r0["diverged_step"]) == (7, 150.0, 0.8, False, None)
  assert r0["gap_accuracy"] == pytest.approx(0.1) and r0["gap_loss"] == pytest.approx(0.5) and r0["test_accuracy"] == 0.8
  # run 1 diverged: its best and its steps to the target come from the rows before (0.5 at step 100: never reached)
  assert r1["best_test_accuracy"] == 0.5 and r1["steps_to_target"] == math.inf and r1["diverged_step"] == 150
  assert math.isnan(r1["test_accuracy"])  # the last row, as recorded
  assert s["steps_per_s"] == 30.0 and s["run_steps_per_s"] == 60.0 and s["compile_time_s"] == 2.0 and s["target_accuracy"] == 0.6


def test_progress_numbers_skip_what_has_no_value():
  rows = [{"batch_loss": 1.0, "test_accuracy": 0.5, "diverged": False}, {"batch_loss": None, "test_accuracy": 0.9, "diverged": True},
          {"batch_loss": float("inf"), "test_accuracy": 0.7, "diverged": False}, {"batch_loss": 3.0, "test_accuracy": 0.1, "diverged": False}]
  assert records.progress_numbers(rows) == {"loss": 2.0, "test_acc": pytest.approx((0.5 + 0.7 + 0.1) / 3)}
  none = records.progress_numbers([{"batch_loss": None, "test_accuracy": 0.9, "diverged": True}])
  assert math.isnan(none["loss"]) and math.isnan(none["test_acc"])
