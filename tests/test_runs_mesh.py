"""Runs spread over devices (bn.parallel's 'runs' mesh axis, parallel.runs_devices): the same numbers.

`bn train` in real processes on 1, 2 and 8 host devices (the CLI's BN_HOST_DEVICES): five runs,
so two devices pad them to six and eight devices take five. The trained states are
bit-identical; the training metrics too; the evaluation metrics agree to 2 ulp (XLA compiles the
evaluation inside shard_map into other fusions of the same sums: measured 1 ulp on this CPU).
A checkpoint of two devices resumes on one and ends where an uninterrupted run does. In this
process (8 devices from conftest.py): the programs on a (runs, data) mesh against one device.
"""
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from bn import cli, data as bn_data, experiment, loop, parallel, programs
from bn import config as bn_config

ROOT = Path(__file__).resolve().parents[1]
TINY = """
from bn.config import base


def get_config():
  c = base()
  c.name = "tiny_runs"
  c.data.update(name="synthetic", source="synthetic", synthetic_shape=(4, 4, 1), synthetic_classes=4,
                synthetic_sizes=(256, 61), train_eval_size=100)
  c.model.update(widths=(16, 16))
  c.seeds = (0, 1, 2, 3, 4)
  c.optimizer.name = "momentum"
  c.train.update(steps=4, batch_size=16, eval_every=2, checkpoint_every=2, eval_chunk=32)
  return c
"""
TRAINING = ("batch_loss", "batch_accuracy")
EVALUATION = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def bn_train(cfg: Path, workdir: Path, devices: int, cache: str, env=None) -> subprocess.CompletedProcess:
  e = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "BN_"))}
  e.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0", BN_HOST_DEVICES=str(devices), JAX_COMPILATION_CACHE_DIR=cache,
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **(env or {}))
  cmd = [sys.executable, "-m", "bn", "train", "--config", str(cfg), "--workdir", str(workdir), "--no-progress"]
  return subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)


def rows(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def final_state(workdir: Path):
  return loop.restore(workdir).state


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("runs_mesh")
  cfg = tmp / "tiny.py"
  cfg.write_text(TINY)
  cache = str(tmp / "cache")
  with ThreadPoolExecutor(3) as pool:
    done = {d: pool.submit(bn_train, cfg, tmp / f"d{d}", d, cache) for d in (1, 2, 8)}
    done = {d: f.result() for d, f in done.items()}
  for d, p in done.items():
    assert p.returncode == 0, f"{d} devices:\n{p.stderr[-3000:]}"
  return tmp, cfg, cache, done


def test_runs_on_1_2_8_devices_train_the_same_numbers(trained):
  tmp, _, _, done = trained
  for d in (1, 2, 8):
    assert f"{d} device{'s' if d > 1 else ''} (cpu)" in done[d].stderr  # BN_HOST_DEVICES reached XLA
  summaries = {d: json.loads((tmp / f"d{d}" / "summary.json").read_text()) for d in (1, 2, 8)}
  assert [summaries[d]["device_count"] for d in (1, 2, 8)] == [1, 2, 8]
  ref, ref_state = rows(tmp / "d1"), final_state(tmp / "d1")
  assert len(ref) == 10 and {r["run"] for r in ref} == set(range(5))  # five runs, no padding in any output
  for d in (2, 8):
    got = rows(tmp / f"d{d}")
    assert [(r["step"], r["run"]) for r in got] == [(r["step"], r["run"]) for r in ref]
    for a, b in zip(ref, got):
      assert [a[k] for k in TRAINING] == [b[k] for k in TRAINING], (d, a["step"], a["run"])
      for k in EVALUATION:
        assert b[k] == pytest.approx(a[k], rel=2.5e-7, abs=0), (d, k, a["step"], a["run"])
    state = final_state(tmp / f"d{d}")
    for x, y in zip(jax.tree.leaves(ref_state), jax.tree.leaves(state), strict=True):
      np.testing.assert_array_equal(x, y)  # bit-identical parameters, BN and optimizer state, sampler


def test_checkpoint_of_two_devices_resumes_on_one(trained):
  tmp, cfg, cache, _ = trained
  wd = tmp / "resumed"
  killed = bn_train(cfg, wd, 2, cache, env={"BN_TEST_KILL_AT": "checkpointed:2"})
  assert killed.returncode == -9 and not (wd / "summary.json").exists(), killed.stderr[-2000:]
  resumed = bn_train(cfg, wd, 1, cache)
  assert resumed.returncode == 0 and "resuming from the checkpoint of step 2" in resumed.stderr, resumed.stderr[-2000:]
  ref = rows(tmp / "d1")
  for a, b in zip(ref, rows(wd), strict=True):
    assert [a[k] for k in TRAINING] == [b[k] for k in TRAINING]
    for k in EVALUATION:
      assert b[k] == pytest.approx(a[k], rel=2.5e-7, abs=0)
  for x, y in zip(jax.tree.leaves(final_state(tmp / "d1")), jax.tree.leaves(final_state(wd)), strict=True):
    np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------- in this process (8 devices)


def test_programs_on_a_runs_and_data_mesh_equal_one_device(tmp_path):
  """3 runs on (runs, data) meshes, with and without data parallelism (synchronized BN), against one device."""
  path = tmp_path / "tiny.py"
  path.write_text(TINY)
  c = bn_config.load(str(path))
  bn_config.assign(c, "train.batch_size", 32)
  ds = bn_data.synthetic((4, 4, 1), 4, num_train=256, num_test=61, seed=0)
  stats = bn_data.channel_stats(ds.train.x)
  task = experiment.from_config(c).make_task(ds.num_classes)
  x, y = parallel.place_train(ds.train, stats)
  init = jax.device_get(programs.init(task, len(y))(np.arange(3, dtype=np.int32), np.asarray([0.5, 0.2, 0.1], np.float32),
                                                    np.zeros(3, np.float32), x[:2]))
  ev = (parallel.place_eval(ds.test, stats, None, 16),)
  devs = np.asarray(jax.devices())
  refs = {}
  # (runs, data) meshes: two runs per device (one of them padding), alone or on each of 4 data-parallel pairs; each
  # layout (host loop and unrolled runs: a conv net's on CPU) against the same layout on one device (one run per
  # device: the 8-device bn train above)
  for shape, bn_stats, layout in (((2, 1), None, ("host", "unroll")), ((2, 4), "sync", ("scan", "vmap")), ((2, 4), "sync", ("host", "unroll"))):
    task = task._replace(loop=layout[0], runs=layout[1])
    if layout not in refs:
      ref, ref_m = programs.chunk(task, 3)(init, x, y)
      refs[layout] = ref, ref_m, programs.evaluate(task, 1)(ref.params, ref.batch_stats, ev, None)
    ref, ref_m, ref_eval = refs[layout]
    plan = parallel.Plan(Mesh(devs[: shape[0] * shape[1]].reshape(shape), (parallel.RUNS_AXIS, parallel.AXIS)), bn_stats)
    ptask = parallel.parallel_task(task, plan.bn_stats)
    gx, gy = parallel.place_train(ds.train, stats, plan)
    state, metrics = programs.chunk(ptask, 3, plan.mesh)(jax.device_put(init, plan.replicated), gx, gy)
    assert state.params["head"]["kernel"].shape[0] == 3 and metrics.loss.shape == (3, 3)  # the padding is gone
    assert state.params["head"]["kernel"].sharding.is_fully_replicated  # and the state whole between programs
    evs = (parallel.place_eval(ds.test, stats, plan, 16),)
    got_eval = programs.evaluate(ptask, 1, plan.mesh)(state.params, state.batch_stats, evs, None)
    if bn_stats is None:  # runs only: training bit-identical, evaluation to 2 ulp
      for a, b in zip(jax.tree.leaves((ref, ref_m)), jax.tree.leaves((state, metrics)), strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
      np.testing.assert_allclose(np.asarray(got_eval), np.asarray(ref_eval), rtol=2.5e-7, atol=0)
    else:  # and data: the global batch's sums in another order, as tests/test_parallel.py
      for a, b in zip(jax.tree.leaves((ref, ref_m, ref_eval)), jax.tree.leaves((state, metrics, got_eval)), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=2e-6)


def test_runs_devices_setting():
  count = parallel.runs_device_count
  assert count("auto", 8, 5, platform="cpu", processes=1) == 5  # capped at the runs: more devices would train padding
  assert count("auto", 8, 20, platform="cpu", processes=1) == 8
  assert count("auto", 8, 20, platform="gpu", processes=1) == 1  # accelerators: opt in
  assert count("all", 8, 20, platform="gpu", processes=1) == 8
  assert count("auto", 8, 20, data_devices=2, platform="cpu", processes=1) == 1  # data parallel asked for: runs stay whole
  assert count("2", 8, 20, data_devices=4, platform="gpu", processes=1) == 2
  assert count("auto", 4, 1, platform="cpu", processes=2) == 4  # many processes: every device, padded
  with pytest.raises(ValueError, match=r"runs_devices=4 x parallel.devices=4 needs 16 devices but 8"):
    count("4", 8, 20, data_devices=4)
  with pytest.raises(ValueError, match="'auto', 'all' or a device count"):
    count("many", 8, 20)
  plan = parallel.make_plan("1", "sync", 16, runs=3, runs_devices="all")
  assert (plan.runs_devices, plan.devices, plan.bn_stats) == (3, 1, None)
  plan = parallel.make_plan("2", "local", 16, runs=6, runs_devices="3")
  assert dict(plan.mesh.shape) == {"runs": 3, "data": 2} and plan.bn_stats == "local"
  assert parallel.make_plan("1", "sync", 16, runs=1, runs_devices="auto") is None  # one run: the one-device engine


def test_cli_host_device_flags():
  flags = cli.host_device_flags
  assert flags({}, ()).endswith(f"--xla_force_host_platform_device_count={len(os.sched_getaffinity(0))}")
  assert flags({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}) is None  # the user's choice stays
  assert flags({"BN_HOST_DEVICES": "1", "XLA_FLAGS": "--a=1"}) == "--a=1 --xla_force_host_platform_device_count=1"
  assert flags({"BN_NUM_PROCESSES": "2"}) is None and flags({}, ["--config.parallel.coordinator=h:1"]) is None
  with pytest.raises(SystemExit, match="BN_HOST_DEVICES='x' must be a device count"):
    flags({"BN_HOST_DEVICES": "x"})


# ----------------------------------------------------------------------------- bn reproduce on two processes


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def reproduce(out: Path, env: dict) -> subprocess.Popen:
  e = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "BN_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))}
  e.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0", PYTHONUNBUFFERED="1", **env)
  cmd = [sys.executable, "-m", "bn", "reproduce", "--tiny", "--only", LEDGER_ONLY, "--out", str(out), "--no-progress"]
  log = open(out.with_name(out.name + f".log{env.get('BN_PROCESS_ID', '')}"), "w")
  return subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=log, stderr=subprocess.STDOUT)


LEDGER_ONLY = "wd_sweep"  # three runs per condition: one process pads them to four over the two processes' devices


@pytest.mark.slow  # ~40 s: three ledgers (two processes and the one-process reference) on two cores
def test_two_process_ledger_writes_one_report_equal_to_one_process(tmp_path):
  port = free_port()
  dist = {"BN_COORDINATOR": f"127.0.0.1:{port}", "BN_NUM_PROCESSES": "2"}
  procs = [reproduce(tmp_path / "two", {**dist, "BN_PROCESS_ID": str(i)}) for i in (0, 1)]
  one = reproduce(tmp_path / "one", {"BN_HOST_DEVICES": "1"})
  try:
    codes = [p.wait(timeout=240) for p in (*procs, one)]
  finally:
    for p in (*procs, one):
      if p.poll() is None:
        p.kill()
  logs = [(tmp_path / f"two.log{i}").read_text() for i in (0, 1)] + [(tmp_path / "one.log").read_text()]
  assert codes == [0, 0, 0], "\n\n".join(t[-2000:] for t in logs)
  assert "report: " in logs[0] and "report: " not in logs[1]  # process 0 writes the one report
  summaries = sorted((tmp_path / "one").glob("*/*/summary.json"))
  assert summaries
  for f in summaries:
    a = json.loads(f.read_text())
    b = json.loads((tmp_path / "two" / f.relative_to(tmp_path / "one")).read_text())
    assert b["device_count"] == 2 and a["device_count"] == 1
    for x, y in zip(a["runs"], b["runs"], strict=True):
      for k in ("test_accuracy", "train_accuracy", "test_loss", "train_loss", "best_test_accuracy"):
        if x.get(k) is not None:
          assert y[k] == pytest.approx(x[k], rel=2.5e-7, abs=0), (f, k)
  ca, cb = (json.loads((tmp_path / d / "claims.json").read_text()) for d in ("one", "two"))
  strip = lambda c: [{k: v for k, v in x.items() if k not in ("provenance",)} for x in c["claims"]]  # noqa: E731
  assert [x.get("status") for x in strip(ca)] == [x.get("status") for x in strip(cb)]
