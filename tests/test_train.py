"""The training engine end to end on a tiny synthetic task: learning, vmapped runs, divergence,
determinism, kill -9 and resume, workdir artifacts, the ``bn train`` command, probes wiring.

``train_workdir`` compiles its programs afresh on every call; a persistent compilation cache
(module fixture) lets every run of the same shapes -- in this process and in the ``bn train``
subprocesses -- load them instead. Runs of the tiny config share one set of programs.
"""

import functools
import json
import math
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
import pytest

from bn import cli, config, data, experiment, loop, pipeline, train
from run_helpers import REPO, bn_train_command, config_maker

pytestmark = pytest.mark.usefixtures("compile_cache")

O0 = {"xla_backend_optimization_level": 0}
STEPS, EVERY = 400, 100

TINY = f'''"""Tiny synthetic task for tests: MLP 64-16-10, BN, SGD; two seeds in one program."""

from bn.config import base


def get_config():
  c = base()
  c.name = "tiny"
  c.seeds = (0, 1)
  c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), synthetic_sizes=(1024, 256), train_eval_size=256)
  c.model.update(name="mlp", widths=(16,), act="relu", init_std=None)
  c.norm.update(kind="batch")
  c.optimizer.update(name="sgd", lr=0.1)
  c.train.update(steps={STEPS}, batch_size=32, eval_every={EVERY}, checkpoint_every={EVERY}, target_accuracy=0.9)
  c.probes.update(every={EVERY}, batch_size=64, landscape_scales=(1.0, 2.0))
  return c
'''
METRIC_FIELDS = ("step", "run", "seed", "lr", "weight_decay", "learning_rate", "batch_loss", "batch_accuracy",
                 "train_loss", "train_accuracy", "test_loss", "test_accuracy", "diverged", "wall_time")
RUN_RESULTS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "gap_accuracy", "gap_loss",
               "best_test_accuracy", "steps_to_target", "diverged", "diverged_step")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory):
  p = tmp_path_factory.mktemp("configs") / "tiny.py"
  p.write_text(TINY)
  return p


@pytest.fixture(scope="module")
def tiny(cfg_path):
  return config_maker(cfg_path)


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  return tmp_path_factory.mktemp("runs")


# Resumed runs start from committed (restored) arrays, which lower to programs of their own:
# both resume tests use the one-seed config without probes so they share one extra compile.
ONE = dict(seeds=(0,), probes__every=0)
ONE_ARGS = ("--config.seeds=(0,)", "--config.probes.every=0")
KINDS = ("ghost", "renorm", "noisy", "population", "group", "layer")


def train_kind(tiny, small_data, kind):
  """30 steps of one run with norm ``kind`` through the engine's step, compiled unoptimized (run once)."""
  c = tiny(seeds=(0,), norm__kind=kind, norm__ghost_batch_size=8 if kind == "ghost" else 0, norm__renorm_warmup=10)
  task = experiment.from_config(c).make_task(10)
  x, y = small_data
  init = functools.partial(train.init_state, task, sample_x=x[:2], num_train=len(y))
  state = jax.jit(init, compiler_options=O0)(0, 0.1, 0.0)
  return jax.device_get(jax.jit(functools.partial(train.train_chunk, task, 30), compiler_options=O0)(state, x, y))


def stop_and_resume(c, wd):
  first = loop.train_workdir(experiment.from_config(c), wd, progress=False, stop_after=EVERY)
  seen = dict(first=first, summary=(wd / "summary.json").exists(), rows=rows(wd / "metrics.jsonl"), step=final_state(wd)[0])
  return seen, loop.train_workdir(experiment.from_config(c), wd, progress=False)


@pytest.fixture(scope="module")
def trained(tiny, workdirs, small_data):
  """Every run the tests read, in three threads: XLA compiles outside the GIL, so both cores work.
  Runs that share programs follow each other in one thread and load them from the cache."""
  train_ = lambda name, c: (workdirs / name, loop.train_workdir(experiment.from_config(c), workdirs / name, progress=False))  # noqa: E731
  chains = [
      [("main", lambda: train_("main", tiny())), ("again", lambda: train_("again", tiny())),
       ("diverge", lambda: train_("diverge", tiny(seeds=(0,), sweep__lr=(0.1, 1e6), probes__every=0)))],
      [("lrgrid", lambda: train_("lrgrid", tiny(sweep__lr=(0.05, 0.1), probes__lrs=(0.1,), probes__kinds=("act", "norms", "grad_ics")))),
       ("single0", lambda: train_("single0", tiny(**ONE))), ("single1", lambda: train_("single1", tiny(seeds=(1,), probes__every=0))),
       ("stopped", lambda: stop_and_resume(tiny(**ONE), workdirs / "stopped"))],
      [("nobn", lambda: train_("nobn", tiny(seeds=(0,), norm__kind="none")))]
      + [(kind, functools.partial(train_kind, tiny, small_data, kind)) for kind in KINDS],
  ]

  def work(chain):
    out = {}
    for name, job in chain:
      try:
        out[name] = job()
      except Exception as e:  # noqa: BLE001 -- re-raised by the test that reads it
        out[name] = e
    return out

  results = {}
  with ThreadPoolExecutor(len(chains)) as pool:
    for r in pool.map(work, chains):
      results.update(r)
  return results


@pytest.fixture(scope="module")
def get(trained):
  def get_(name):
    r = trained[name]
    if isinstance(r, Exception):
      raise r
    return r
  return get_


@pytest.fixture(scope="module")
def main_run(get):
  return get("main")


@pytest.fixture(scope="module")
def single_runs(get):
  """Seeds 0 and 1 each alone (no probes): the reference for the vmapped pair."""
  return [get("single0"), get("single1")]


@pytest.fixture(scope="module")
def nobn_run(get):
  return get("nobn")


@pytest.fixture(scope="module")
def small_data():
  ds = data.synthetic((8, 8, 1), 10, num_train=256, num_test=64)
  return pipeline.to_device(ds.train, data.channel_stats(ds.train.x))


def rows(path, drop=("wall_time",)):
  return [{k: v for k, v in r.items() if k not in drop} for r in map(json.loads, Path(path).read_text().splitlines())]


def final_state(wd):
  """The last checkpoint of a workdir as a plain tree of NumPy arrays (through the public loader)."""
  r = loop.restore(wd)
  return r.step, r.state


def run_results(summary):
  return [{k: r[k] for k in RUN_RESULTS} for r in summary["runs"]]


def assert_all_json_parses(wd):
  files = [p for p in Path(wd).rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl")]
  assert any(p.name == "metrics.jsonl" for p in files)
  for p in files:
    text = p.read_text()
    if p.suffix == ".jsonl":
      [json.loads(line) for line in text.splitlines()]
    else:
      json.loads(text)


def close_rows(a, b, rtol=1e-5, atol=1e-6):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      if isinstance(x[k], float) and isinstance(y[k], float):
        assert math.isclose(x[k], y[k], rel_tol=rtol, abs_tol=atol), (k, x, y)
      else:
        assert x[k] == y[k], (k, x, y)


# ----------------------------------------------------------------------------- learning


def test_bn_mlp_learns(main_run):
  wd, s = main_run
  for r in s["runs"]:
    assert not r["diverged"] and r["test_accuracy"] > 0.9 and r["train_accuracy"] > 0.9, r
    assert r["steps_to_target"] is not None and 0 < r["steps_to_target"] <= STEPS
  m = rows(wd / "metrics.jsonl")
  start = {r["run"]: r["loss"] for r in rows(wd / "probes.jsonl") if r["step"] == 0}  # the loss at step 0
  for run_id in (0, 1):
    mine = [r for r in m if r["run"] == run_id]
    assert start[run_id] > 2.0  # about log(10): chance
    assert mine[-1]["train_loss"] < 0.1 * start[run_id] and mine[-1]["train_loss"] < mine[0]["train_loss"]
    assert mine[-1]["batch_loss"] < mine[0]["batch_loss"]


def test_no_bn_mlp_learns(nobn_run):
  wd, s = nobn_run
  (r,) = s["runs"]
  assert not r["diverged"] and r["test_accuracy"] > 0.9 and r["train_loss"] < 0.3, r


@pytest.mark.parametrize("kind", KINDS)
def test_every_norm_kind_trains(get, kind):
  """Each normalizer builds into the engine's step and trains a few steps with finite, falling losses
  (eval mode of every kind: test_models.py)."""
  state, m = get(kind)
  loss = np.asarray(m.loss)
  assert loss.shape == (30,) and np.all(np.isfinite(loss)), loss
  assert loss[-5:].mean() < loss[:5].mean(), loss
  assert int(state.step) == 30 and int(state.diverged_step) == -1
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(state.params))
  assert bool(jax.tree.leaves(state.batch_stats)) == (kind not in ("group", "layer"))


# ----------------------------------------------------------------------------- many runs in one program


def test_vmapped_seeds_equal_runs_one_by_one(main_run, single_runs):
  wd, _ = main_run
  together = rows(wd / "metrics.jsonl")
  step, both = final_state(wd)
  for seed, (wd1, _) in enumerate(single_runs):
    alone = rows(wd1 / "metrics.jsonl")
    mine = [{**r, "run": 0} for r in together if r["seed"] == seed]
    close_rows(mine, alone)
    step1, one = final_state(wd1)
    assert step1 == step == STEPS  # the final state is checkpointed
    for a, b in zip(jax.tree.leaves(both["params"]), jax.tree.leaves(one["params"])):
      np.testing.assert_allclose(a[seed], b[0], rtol=1e-4, atol=1e-5)


def test_a_diverging_run_does_not_disturb_the_others(get, single_runs):
  wd, s = get("diverge")
  ok, bad = s["runs"]
  assert (ok["lr"], bad["lr"]) == (0.1, 1e6)
  assert bad["diverged"] and isinstance(bad["diverged_step"], int) and 0 <= bad["diverged_step"] < STEPS
  assert not ok["diverged"] and ok["diverged_step"] is None
  m = rows(wd / "metrics.jsonl")
  for r in m:
    if r["run"] == 1:
      assert r["diverged"] == (r["step"] > bad["diverged_step"]), r
      if r["step"] - EVERY > bad["diverged_step"]:  # the whole chunk after divergence: no batch metrics
        assert r["batch_loss"] is None and r["batch_accuracy"] is None
  assert any(r["diverged"] for r in m if r["run"] == 1)
  # the healthy run: finite, and the same numbers as without the diverging member
  good = [r for r in m if r["run"] == 0]
  assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["test_loss"]) and not r["diverged"] for r in good)
  close_rows(good, rows(single_runs[0][0] / "metrics.jsonl"))
  # the diverged run is frozen at its last finite weights
  _, state = final_state(wd)
  assert all(np.all(np.isfinite(p[1])) for p in jax.tree.leaves(state["params"]))
  assert np.asarray(state["diverged_step"]).tolist() == [-1, bad["diverged_step"]]


# ----------------------------------------------------------------------------- determinism, resume


def test_same_config_and_seed_give_identical_metrics(get, main_run):
  wd, s = main_run
  wd2, s2 = get("again")
  assert rows(wd2 / "metrics.jsonl") == rows(wd / "metrics.jsonl")
  assert rows(wd2 / "probes.jsonl") == rows(wd / "probes.jsonl")
  assert run_results(s2) == run_results(s)


def test_stop_after_then_resume_matches_an_uninterrupted_run(get, workdirs, single_runs):
  wd_ref, s_ref = single_runs[0]
  wd = workdirs / "stopped"
  seen, s = get("stopped")
  assert seen["first"] == {"stopped_at": EVERY} and not seen["summary"] and seen["step"] == EVERY
  assert [r["step"] for r in seen["rows"]] == [EVERY]
  assert run_results(s) == run_results(s_ref)
  assert rows(wd / "metrics.jsonl") == rows(wd_ref / "metrics.jsonl")
  assert s["steps"] == STEPS


def _bn_train(cfg_path, wd, cache, *extra):
  cmd, env = bn_train_command(cfg_path, wd, cache, *extra, env={"JAX_NUMPY_RANK_PROMOTION": "raise"})
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished_steps(wd):
  ckpt = Path(wd) / "checkpoints"
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


def test_kill_9_then_rerun_matches_an_uninterrupted_run(cfg_path, workdirs, single_runs, compile_cache):
  """A real SIGKILL of `bn train` once a checkpoint exists, then the same command again."""
  wd_ref, s_ref = single_runs[0]
  for attempt in range(3):  # a loaded machine may let the run finish before the kill lands
    wd = workdirs / f"killed{attempt}"
    p = _bn_train(cfg_path, wd, compile_cache, *ONE_ARGS)
    deadline = time.monotonic() + 300
    while not _finished_steps(wd) and p.poll() is None and time.monotonic() < deadline:
      time.sleep(0.002)
    if p.poll() is None:
      p.send_signal(signal.SIGKILL)
    out, err = p.communicate()
    assert p.returncode in (0, -signal.SIGKILL), err[-3000:]
    if p.returncode == -signal.SIGKILL and not (wd / "summary.json").exists():
      break
  else:
    pytest.fail("bn train finished before it could be killed, three times")
  done = _finished_steps(wd)
  assert done and done[-1] < STEPS, done
  assert_all_json_parses(wd)
  assert {r["step"] for r in rows(wd / "metrics.jsonl")} <= set(range(EVERY, STEPS, EVERY))

  p = _bn_train(cfg_path, wd, compile_cache, *ONE_ARGS)
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0, err[-3000:]
  assert "run 0 seed 0 lr 0.1: test acc" in out
  s = json.loads((wd / "summary.json").read_text())
  assert run_results(s) == run_results(s_ref)
  assert rows(wd / "metrics.jsonl") == rows(wd_ref / "metrics.jsonl")
  assert_all_json_parses(wd)


# ----------------------------------------------------------------------------- artifacts


def test_workdir_artifacts(tiny, main_run):
  wd, s = main_run
  c = tiny()
  cfg = json.loads((wd / "config.json").read_text())
  assert cfg["config"]["optimizer"]["lr"] == 0.1 and cfg["config"]["model"]["widths"] == [16]
  assert cfg["runs"] == experiment.from_config(c).run_table == [
      {"run": 0, "seed": 0, "lr": 0.1, "weight_decay": 0.0}, {"run": 1, "seed": 1, "lr": 0.1, "weight_decay": 0.0}]

  m = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["run"]) for r in m] == [(t, i) for t in range(EVERY, STEPS + 1, EVERY) for i in (0, 1)]
  for r in m:
    assert set(METRIC_FIELDS) <= set(r), set(METRIC_FIELDS) - set(r)
    assert r["seed"] == r["run"] and r["learning_rate"] == r["lr"] == 0.1 and r["diverged"] is False
    for k in ("batch_loss", "batch_accuracy", "train_loss", "train_accuracy", "test_loss", "test_accuracy"):
      assert isinstance(r[k], float) and math.isfinite(r[k]), (k, r)
    assert 0 <= r["test_accuracy"] <= 1 and r["train_loss"] > 0
    # accuracies are counts over the evaluated sets: 256 train-subset and 256 test examples
    assert (r["train_accuracy"] * 256).is_integer() and (r["test_accuracy"] * 256).is_integer()
  walls = [r["wall_time"] for r in m]
  assert walls == sorted(walls) and walls[0] > 0

  assert s == json.loads((wd / "summary.json").read_text())
  assert s["name"] == "tiny" and s["steps"] == STEPS and s["target_accuracy"] == 0.9
  last = {r["run"]: r for r in m if r["step"] == STEPS}
  for r in s["runs"]:
    lr = last[r["run"]]
    assert (r["train_accuracy"], r["test_accuracy"], r["train_loss"], r["test_loss"]) == (
        lr["train_accuracy"], lr["test_accuracy"], lr["train_loss"], lr["test_loss"])
    assert r["gap_accuracy"] == pytest.approx(lr["train_accuracy"] - lr["test_accuracy"])
    assert r["gap_loss"] == pytest.approx(lr["test_loss"] - lr["train_loss"])
    assert r["best_test_accuracy"] == max(x["test_accuracy"] for x in m if x["run"] == r["run"])
    # linear interpolation of the first crossing of the target, between eval points
    accs = [(x["step"], x["test_accuracy"]) for x in m if x["run"] == r["run"]]
    i = next(i for i, (_, a) in enumerate(accs) if a >= 0.9)
    lo = accs[i - 1] if i else (0, 0.0)
    assert lo[0] <= r["steps_to_target"] <= accs[i][0]
    assert r["diverged"] is False and r["diverged_step"] is None
  assert s["wall_time_s"] >= walls[-1] - 1e-6 and s["wall_time_s"] > 0 and s["compile_time_s"] >= 0
  assert s["steps_per_s"] > 0 and s["run_steps_per_s"] == pytest.approx(2 * s["steps_per_s"])
  assert s["jax"] == jax.__version__ and s["flax"] and s["python"] and s["backend"] == "cpu"
  if subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode == 0:
    assert re.fullmatch(r"[0-9a-f]{40}", s["git_commit"] or ""), s["git_commit"]


def test_finished_workdir_is_not_run_again(tiny, main_run):
  wd, s = main_run
  files = {p: p.stat().st_mtime_ns for p in wd.rglob("*")}
  assert loop.train_workdir(experiment.from_config(tiny()), wd, progress=False) == s
  assert {p: p.stat().st_mtime_ns for p in wd.rglob("*")} == files  # nothing written, nothing added


def test_workdir_of_another_config_is_refused(tiny, main_run):
  wd, _ = main_run
  before = (wd / "config.json").read_text()
  with pytest.raises(config.ConfigError, match="different config") as e:
    loop.train_workdir(experiment.from_config(tiny(optimizer__lr=0.2)), wd, progress=False)
  assert str(wd) in str(e.value) and "--workdir" in str(e.value)
  assert (wd / "config.json").read_text() == before


# ----------------------------------------------------------------------------- the command line


def test_cli_train_with_overrides(cfg_path, workdirs, capsys):
  wd = workdirs / "cli"
  argv = ["train", "--config", str(cfg_path), "--workdir", str(wd), "--no-progress",
          "--config.optimizer.lr=0.05", "--config.seeds=(3, 4)", "--config.train.steps", "200", "--config.norm.kind=batch"]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "run 0 seed 3 lr 0.05" in out and "run 1 seed 4 lr 0.05" in out and str(wd) in out
  cfg = json.loads((wd / "config.json").read_text())["config"]
  assert (cfg["optimizer"]["lr"], cfg["seeds"], cfg["train"]["steps"], cfg["norm"]["kind"]) == (0.05, [3, 4], 200, "batch")
  s = json.loads((wd / "summary.json").read_text())
  assert s["steps"] == 200 and [r["seed"] for r in s["runs"]] == [3, 4]
  assert [r["step"] for r in rows(wd / "metrics.jsonl")] == [100, 100, 200, 200]


@pytest.mark.parametrize("override, message", [
    ("--config.optimizer.lrr=0.1", r"unknown config key --config\.optimizer\.lrr\. Did you mean --config\.optimizer\.lr"),
    ("--config.train.steps=ten", r"--config\.train\.steps='ten': expected a value of type int"),
    ("--config.train.augment=2", r"--config\.train\.augment=2: expected a value of type bool"),
])
def test_cli_bad_override_exits_2_with_a_message(cfg_path, tmp_path, capsys, override, message):
  wd = tmp_path / "w"
  assert cli.main(["train", "--config", str(cfg_path), "--workdir", str(wd), override]) == 2
  err = capsys.readouterr().err
  assert re.search(message, err), err
  assert "Traceback" not in err and not wd.exists()


def test_cli_missing_config_file(tmp_path, capsys):
  assert cli.main(["train", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "w")]) == 2
  assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------- probes wiring


def test_probes_rows(main_run):
  wd, _ = main_run
  p = [json.loads(line) for line in (wd / "probes.jsonl").read_text().splitlines()]
  assert [(r["step"], r["run"]) for r in p] == [(t, i) for t in range(0, STEPS + 1, EVERY) for i in (0, 1)]
  s = json.loads((wd / "summary.json").read_text())  # the probing cost, kept apart from training time
  assert s["probe_points"] == len(range(0, STEPS + 1, EVERY)) and s["probe_time_s"] > 0 and s["probe_compile_time_s"] > 0
  layers = ["layer0", "head"]
  for r in p:
    assert r["layers"] == layers == r["kernels"] and r["seed"] == r["run"] and r["lr"] == 0.1
    assert set(r["act"]) == set(r["unit0"]) == set(r["units"]) == set(r["eval_unit0"]) == {"layer0"}
    assert all(len(v) == 3 for v in r["unit0"].values())  # 15/50/85th percentiles
    assert len(r["units"]["layer0"]["mean"]) == len(r["units"]["layer0"]["std"]) == 16  # every unit
    assert set(r["bn_gap"]) == {"layer0/norm/bn"}
    for mode in ("raw", "matched"):
      for k in ("l2", "cos", "rel"):
        assert len(r["grad_ics"][mode][k]) == 2
    assert set(r["landscape"]) >= {"loss_variation", "grad_predictiveness", "beta_smoothness", "loss0", "grad_norm"}
    assert set(r["landscape_rel"]) == {"loss_variation", "grad_predictiveness", "beta_smoothness"}
    assert set(r["coupling"]) == {"summary", "cross_fraction", "normalized", "own", "relative_cross_fraction", "relative_own"} and np.shape(r["coupling"]["normalized"]) == (2, 2)
    assert np.shape(r["hessian"]["normalized"]) == (2, 2) and 0 <= r["hessian"]["summary"]
    n = r["norms"]
    assert len(n["grad"]) == 2 and all(g > 0 for g in n["grad"]) and all(w > 0 for w in n["weight"])
    assert n["effective_lr"][0] == pytest.approx(0.1 / n["weight"][0] ** 2, rel=1e-4)
    # consistency between probes: per-layer gradient norms make up the total; loss0 is the probe loss
    assert math.hypot(*n["grad"]) == pytest.approx(r["landscape"]["grad_norm"], rel=1e-4)
    assert r["landscape"]["loss0"] == pytest.approx(r["loss"], rel=1e-5)
  # BN before the nonlinearity: in training its input is standardized per unit (scale 1, bias 0 at init)
  for r in p[:2]:
    assert abs(r["act"]["layer0"]["mean"]) < 1e-3 and r["act"]["layer0"]["std"] == pytest.approx(1.0, abs=1e-3)
    assert all(g["mean"] > 0 for g in r["bn_gap"].values())  # running stats start at (0, 1), far from the batch's


def test_probes_at_chosen_lrs_are_the_runs_at_those_lrs(main_run, get):
  """An LR grid probed at one LR (probes.lrs): each row measures the run it is labelled with --
  the same numbers as the runs of that seed and LR trained alone (the main run: LR 0.1)."""
  wd, _ = get("lrgrid")
  p = [json.loads(line) for line in (wd / "probes.jsonl").read_text().splitlines()]
  ref = {(r["step"], r["seed"]): r for r in rows(main_run[0] / "probes.jsonl")}
  assert sorted((r["step"], r["seed"]) for r in p) == sorted(ref) and {r["lr"] for r in p} == {0.1}
  for r in p:
    want = ref[(r["step"], r["seed"])]
    assert r["loss"] == pytest.approx(want["loss"], rel=1e-4)
    np.testing.assert_allclose(r["units"]["layer0"]["mean"], want["units"]["layer0"]["mean"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(r["norms"]["weight"], want["norms"]["weight"], rtol=1e-4)


def test_probes_of_a_model_without_bn(nobn_run):
  wd, _ = nobn_run
  p = [json.loads(line) for line in (wd / "probes.jsonl").read_text().splitlines()]
  assert [r["step"] for r in p] == list(range(0, STEPS + 1, EVERY))
  for r in p:
    assert r["bn_gap"] == {}
    assert set(r["act"]) == {"layer0"} and r["layers"] == ["layer0", "head"] and len(r["norms"]["grad"]) == 2


def test_evaluate_calibration_error_matches_numpy():
  """``train.evaluate``'s ECE: the top-class probability in 15 equal-width bins, sum_b |correct_b - confidence_b| / n over
  the real (weight > 0) examples of every chunk; the padding does not count."""
  from bn import models

  m = models.MLP(widths=(8,), act="relu", norm=models.norm_spec("none"))
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(3, 20, 4)).astype(np.float32), rng.integers(0, 10, (3, 20))
  w = np.ones((3, 20), np.float32)
  w[2, 15:] = 0  # padding
  v = jax.tree.map(lambda a: a * 5, m.init(jax.random.key(0), x[0], train=False))  # confident: spread over the bins
  task = train.Task(model=m, direction=None, schedule=None, decoupled_wd=False, batch_size=20, sampling="epoch", augment=False)
  r = train.evaluate(task, v["params"], {}, x, y, w)
  logits = np.concatenate([np.asarray(m.apply(v, x[i], train=False), np.float64) for i in range(3)])
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  real = w.reshape(-1) > 0
  conf, right = p.max(1)[real], (p.argmax(1) == y.reshape(-1))[real]
  bins = np.minimum((conf * 15).astype(int), 14)
  assert len(set(bins)) > 3
  ece = sum(abs(right[bins == b].sum() - conf[bins == b].sum()) for b in range(15)) / real.sum()
  np.testing.assert_allclose(float(r.calibration), ece, rtol=1e-5)
  np.testing.assert_allclose(float(r.accuracy), right.mean(), rtol=1e-6)
