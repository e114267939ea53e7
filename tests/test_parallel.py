"""Data-parallel training (bn.parallel) against one-device training on the same global batch.

On the 8 virtual CPU devices of conftest.py: synchronized BN statistics give the
parameters and running statistics of one-device training; per-device statistics
give one-device Ghost BN with ghost size = global batch / 8. Two processes on
127.0.0.1 (gloo, one CPU device each) give the one-process metrics, and their
checkpoint restores in one process. Bad set-ups fail fast with clear messages.
"""
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from bn import config as bn_config, data as bn_data, distributed, experiment, loop, parallel, programs

D = 8
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(jax.device_count() < D, reason="needs 8 (virtual) devices, see conftest.py")

TINY = """
from bn.config import base


def get_config():
  c = base()
  c.name = "tiny_parallel"
  c.data.update(name="synthetic", source="synthetic", synthetic_shape=(4, 4, 1), synthetic_classes=4,
                synthetic_sizes=(256, 61), train_eval_size=100)
  c.model.update(widths=(16, 16))
  c.train.update(steps=4, batch_size=16, eval_every=2, checkpoint_every=2, eval_chunk=32)
  return c
"""


def close(a, b, rtol=2e-5, atol=2e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def tiny_config(tmp_path, **overrides):
  path = tmp_path / "tiny.py"
  path.write_text(TINY)
  c = bn_config.load(str(path))
  for k, v in overrides.items():
    bn_config.assign(c, k, v)
  return c, path


SEEDS, LRS, WDS = [0, 1], [0.5, 0.2], [0.0, 1e-3]  # two runs in the vmap, different hyper-parameters
UNOPTIMIZED = {"xla_backend_optimization_level": 0}


def mesh_plan(bn_stats="sync"):
  return parallel.Plan(Mesh(np.asarray(jax.devices()[:D]), (parallel.AXIS,)), bn_stats)


def stacked_init(task, n):
  return programs.init(task, n)(np.asarray(SEEDS, np.int32), np.asarray(LRS, np.float32), np.asarray(WDS, np.float32),
                                np.zeros((2, 4, 4, 1), np.float32))


LAYOUTS = (("host", "unroll"), ("scan", "unroll"))  # the mesh path takes every layout the one-device path has


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Three steps of two vmapped runs (global batch 32, momentum SGD) from the same initial
  state: on one device (plain BN and Ghost BN with ghost 32 / 8 = 4) and on 8 devices (sync, local).
  The four programs compile concurrently (XLA compiles outside the GIL) and unoptimized (XLA:CPU's
  optimization passes take most of the compile time here and change results only in the last ulp)."""
  tmp = tmp_path_factory.mktemp("cfg")
  c, _ = tiny_config(tmp, **{"train.batch_size": 32, "optimizer.name": "momentum"})
  ghost, _ = tiny_config(tmp, **{"train.batch_size": 32, "optimizer.name": "momentum", "norm.kind": "ghost", "norm.ghost_batch_size": 32 // D})
  ds = bn_data.synthetic((4, 4, 1), 4, num_train=256, num_test=61, seed=0)
  stats = bn_data.channel_stats(ds.train.x)
  task, ghost_task = experiment.from_config(c).make_task(ds.num_classes), experiment.from_config(ghost).make_task(ds.num_classes)
  assert (task.loop, task.runs) == ("scan", "vmap")
  x, y = parallel.place_train(ds.train, stats)
  init = jax.device_get(stacked_init(task, len(y)))  # a host copy: the chunks donate their input
  progs = {"plain": (programs.chunk(task, 3), None, x, y), "ghost": (programs.chunk(ghost_task, 3), None, x, y)}
  for mode in parallel.BN_STATS:
    plan = mesh_plan(mode)
    gx, gy = parallel.place_train(ds.train, stats, plan)
    progs[mode] = (programs.chunk(parallel.parallel_task(task, mode), 3, plan.mesh), plan.replicated, gx, gy)
  for layout in LAYOUTS:
    plan = mesh_plan("sync")
    ptask = parallel.parallel_task(task._replace(loop=layout[0], runs=layout[1]), "sync")
    progs[layout] = (programs.chunk(ptask, 3, plan.mesh), plan.replicated, *parallel.place_train(ds.train, stats, plan))
  with ThreadPoolExecutor(len(progs)) as pool:
    compile_ = lambda f, where, *data: f.lower(jax.device_put(init, where), *data).compile(UNOPTIMIZED)  # noqa: E731
    compiled = {k: pool.submit(compile_, *v) for k, v in progs.items()}
    out = {k: f.result()(jax.device_put(init, progs[k][1]), *progs[k][2:]) for k, f in compiled.items()}
  out.update(task=task, dataset=ds, stats=stats, host_loop=isinstance(progs[LAYOUTS[0]][0], programs.HostLoop))
  return out


def test_synchronized_statistics_equal_one_device(trained):
  (state, metrics), (ref, ref_metrics) = trained["sync"], trained["plain"]
  assert state.params["layer0"]["linear"]["kernel"].sharding.is_fully_replicated
  close(state.params, ref.params)
  close(state.batch_stats, ref.batch_stats)
  close(state.opt_state, ref.opt_state)
  close(metrics, ref_metrics)
  np.testing.assert_array_equal(state.sampler.pos, ref.sampler.pos)


def test_per_device_statistics_equal_ghost_bn(trained):
  (state, metrics), (ref, ref_metrics) = trained["local"], trained["ghost"]
  close(state.params, ref.params)
  close(state.batch_stats, ref.batch_stats)
  close(metrics, ref_metrics)
  var = lambda s: s.batch_stats["layer0"]["norm"]["bn"]["var"]  # noqa: E731
  assert not np.allclose(var(state), var(trained["plain"][0]), rtol=1e-3)  # and they differ from global statistics


def test_mesh_path_honours_loop_and_runs(trained, tmp_path):
  """A host loop and unrolled runs on the mesh train the same numbers as scan + vmap there."""
  assert trained["host_loop"]
  ref_state, ref_metrics = trained["sync"]
  for layout in LAYOUTS:
    state, metrics = trained[layout]
    close(state.params, ref_state.params)
    close(state.batch_stats, ref_state.batch_stats)
    close(metrics, ref_metrics)
  # and the trainer gives the mesh the layout the experiment chose (a conv model on CPU: host loop, unrolled runs)
  c, _ = tiny_config(tmp_path, **{"parallel.devices": "all", "train.batch_size": 32})
  c.model = c.model.__class__(dict(name="cnn", widths=(4,), act="relu"))
  exp = experiment.from_config(c)
  plan = parallel.make_plan(exp.parallel.devices, exp.parallel.bn_stats, 32)
  trainer = loop.Trainer(exp, trained["dataset"], plan)
  assert (trainer.ptask.loop, trainer.ptask.runs, trainer.ptask.axis_name) == ("host", "unroll", parallel.AXIS)


def test_sharded_evaluation_equals_one_device(trained):
  task, ds, stats = trained["task"], trained["dataset"], trained["stats"]
  (state, _), (ref, _) = trained["sync"], trained["plain"]
  args = (ref.params, ref.batch_stats, (parallel.place_eval(ds.test, stats, None, 16),), None)
  expected = programs.evaluate(task, 1).lower(*args).compile(UNOPTIMIZED)(*args)
  plan = mesh_plan()
  gx, gy, gw = parallel.place_eval(ds.test, stats, plan, 16)
  assert gx.shape[:2] == (1, 64) and float(np.sum(gw)) == 61  # 61 examples: 8 rows per device, 3 of them padding
  args = (state.params, state.batch_stats, ((gx, gy, gw),), None)
  close(programs.evaluate(parallel.parallel_task(task), 1, plan.mesh).lower(*args).compile(UNOPTIMIZED)(*args), expected)
  assert parallel.eval_layout(1000, 8, 100) == (2, 63)  # 125 rows per device in 2 chunks of 63 (1 padding row)


# ----------------------------------------------------------------------------- set-up errors


def test_indivisible_batch_and_bad_settings_raise_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="global batch of 60 examples does not split over 8 devices.*batch_size=64"):
    parallel.check_batch(60, 8)
  with pytest.raises(ValueError, match="ghost_batch_size=3 does not divide the per-device batch of 8"):
    parallel.check_batch(64, 8, 3)
  c, _ = tiny_config(tmp_path, **{"parallel.devices": "all", "train.batch_size": 20})
  with pytest.raises(ValueError, match="does not split over 8 devices"):
    loop.train_workdir(experiment.from_config(c), tmp_path / "w", progress=False)
  assert not (tmp_path / "w" / "config.json").exists()  # nothing written: a fixed command can reuse the workdir
  with pytest.raises(ValueError, match="16 but 8 device"):
    parallel.make_plan("16", "sync", 16)
  with pytest.raises(ValueError, match="'all' or a device count"):
    parallel.make_plan("many", "sync", 16)
  with pytest.raises(ValueError, match="bn_stats='global' is not one of"):
    parallel.make_plan("all", "global", 16)
  assert parallel.make_plan("1", "sync", 16) is None  # the default keeps the one-device engine


def test_distributed_settings_from_config_and_environment():
  args = distributed.distributed_args
  assert args("", 0, -1, {}) is None
  env = {"BN_COORDINATOR": "10.0.0.1:1234", "BN_NUM_PROCESSES": "4", "BN_PROCESS_ID": "3"}
  assert args("", 0, -1, env) == ("10.0.0.1:1234", 4, 3)
  jax_env = {"JAX_COORDINATOR_ADDRESS": "h:9", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
  assert args("", 0, -1, jax_env) == ("h:9", 2, 0)
  assert args("", 0, 1, env) == ("10.0.0.1:1234", 4, 1)  # config wins
  with pytest.raises(ValueError, match="missing process_id"):
    args("h:1", 2, -1, {})
  with pytest.raises(ValueError, match="process_id=2 is outside"):
    args("h:1", 2, 2, {})
  with pytest.raises(ValueError, match="HOST:PORT"):
    args("h", 2, 0, {})
  p = dict(bn_config.base().parallel)
  recorded = experiment.recorded_config({"parallel": {**p, "process_id": 1, "coordinator": "h:1"}})
  assert set(recorded["parallel"]) == {"devices", "bn_stats"}


# ----------------------------------------------------------------------------- two processes


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env() -> dict:
  """A plain one-CPU-device environment: the 8-device XLA_FLAGS of conftest.py must not leak in.
  The children compile unoptimized (a third less CPU; results change in the last ulp at most)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "BN_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))}
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", XLA_FLAGS="--xla_backend_optimization_level=0")
  return env


def launch(cfg: Path, workdir: Path, port: int, num_processes: int, process_ids, *extra) -> list[tuple[subprocess.Popen, Path]]:
  """``bn train`` in one process per id; output goes to ``workdir.log.<id>`` (a pipe could fill up and block)."""
  procs = []
  for i in process_ids:
    cmd = [sys.executable, "-m", "bn", "train", "--config", str(cfg), "--workdir", str(workdir), "--no-progress",
           "--config.parallel.devices=all", f"--config.parallel.coordinator=127.0.0.1:{port}",
           f"--config.parallel.num_processes={num_processes}", f"--config.parallel.process_id={i}", *extra]
    log = workdir.with_name(f"{workdir.name}.log.{i}")
    with open(log, "w") as f:
      procs.append((subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=f, stderr=subprocess.STDOUT), log))
  return procs


def finish(procs, timeout: float, *, fail_fast: bool = True) -> list[tuple[int | None, str]]:
  """Waits for the processes until ``timeout`` s, or (``fail_fast``) until one fails -- the
  others would wait in a collective for it -- and kills whatever is left: (status, output) each."""
  deadline = time.monotonic() + timeout
  try:
    while time.monotonic() < deadline:
      codes = [p.poll() for p, _ in procs]
      if all(c is not None for c in codes) or (fail_fast and any(c not in (None, 0) for c in codes)):
        break
      time.sleep(0.2)
  finally:
    for p, _ in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  return [(p.returncode, log.read_text()) for p, log in procs]


def restore(workdir, like):
  """The latest checkpoint of ``workdir`` restored onto this process's first device."""
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), like)
  ckpt = loop.Checkpoints(Path(workdir), read_only=True)
  try:
    r = ckpt.restore(abstract)
    return r.step, r.state
  finally:
    ckpt.close()


def test_two_processes_match_one_process_and_checkpoint_restores_in_one(tmp_path):
  c, cfg = tiny_config(tmp_path)
  procs = launch(cfg, tmp_path / "two", free_port(), 2, (0, 1))
  try:  # the reference, while they run: the unchanged one-device engine in this process
    one_dir = tmp_path / "one"
    ref = loop.train_workdir(experiment.from_config(c), one_dir, progress=False)
  finally:
    results = finish(procs, timeout=120)
  for i, (status, text) in enumerate(results):
    assert status == 0, f"process {i} failed:\n{text[-3000:]}"
  two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
  one = [json.loads(line) for line in (one_dir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in two] == [r["step"] for r in one] == [2, 4]
  for a, b in zip(one, two, strict=True):
    for k in ("batch_loss", "batch_accuracy", "train_loss", "train_accuracy", "test_loss", "test_accuracy"):
      assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), (k, a["step"])
  summary = json.loads((tmp_path / "two" / "summary.json").read_text())
  assert summary["device_count"] == 2 and summary["runs"][0]["test_accuracy"] == pytest.approx(ref["runs"][0]["test_accuracy"])

  # The two-process checkpoint (replicated arrays written by orbax from both processes) restores here.
  task = experiment.from_config(c).make_task(c.data.synthetic_classes)
  like = programs.init(task, 256)(np.zeros(1, np.int32), np.full(1, 0.5, np.float32), np.zeros(1, np.float32),
                                  np.zeros((2, 4, 4, 1), np.float32))  # the tree to restore into
  step, restored = restore(tmp_path / "two", like)
  _, expected = restore(one_dir, like)
  assert step == 4 and int(restored.step[0]) == 4  # the final state is checkpointed too
  close(restored.params, expected.params)
  close(restored.batch_stats, expected.batch_stats)
  close(restored.opt_state, expected.opt_state)


def test_process_count_mismatch_fails_fast_with_a_clear_message(tmp_path):
  _, cfg = tiny_config(tmp_path)
  fast = ("--config.parallel.init_timeout=2",)
  alone = launch(cfg, tmp_path / "alone", free_port(), 2, (0,), *fast)  # the second process never comes
  port = free_port()
  disagree = launch(cfg, tmp_path / "disagree", port, 2, (0,), *fast) + launch(cfg, tmp_path / "disagree", port, 3, (1,), *fast)
  (status, text), *pair = finish(alone + disagree, timeout=60, fail_fast=False)  # a hang would end killed (status -9)
  assert status == 3 and "not all 2 processes arrived" in text, text[-2000:]
  for status, text in pair:
    assert status == 2 and "disagree on the number of processes" in text, text[-2000:]
