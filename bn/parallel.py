"""Data-parallel training on many devices and many hosts, with JAX's own runtime only.

The devices form a 1-D :class:`~jax.sharding.Mesh` with one axis, ``'data'``
(:data:`AXIS`). A chunk of training steps runs as::

    jit(shard_map(vmap(train_chunk), mesh, in_specs=P(), out_specs=P()))

* **shard_map outside, vmap inside.** Every device runs the whole stacked
  program (all runs of the vmap) on its slice of each batch; the run axis is
  an ordinary vmap axis inside the per-device body, and the BN collectives
  (``psum`` over ``'data'``) are batched over it. Parameters, optimizer and BN
  state are replicated (``P()``), so a checkpoint is the same tree as on one device.
* **Batches.** Every device holds the whole (standardized) training set and the
  same sampler state; the shared sampler draws the *global* batch of
  ``train.batch_size`` indices and device ``i`` takes rows ``[i*b, (i+1)*b)``
  with ``b = batch_size / devices`` (``lax.axis_index``). The global batch is
  therefore exactly the one-device batch, whatever the device count.
  Augmentation keys are folded with the device index (the same distribution
  as on one device, other draws).
* **Gradients.** The loss is ``pmean``'ed over ``'data'`` before ``grad`` (all
  shards have the same size), so ``grad`` is the gradient of the global-batch
  loss. For the replicated parameters shard_map (``check_vma=True``) transposes
  their implicit broadcast into a ``psum``: the result is exactly the pmean of
  the per-device gradients, with no all-reduce written by hand. Logged batch
  loss and accuracy are global too.
* **BN statistics** (``parallel.bn_stats``): ``"sync"`` -- every BN layer gets
  ``axis_name='data'`` and uses the statistics of the global batch, merged by
  count (:func:`bn.batch_norm`), the same numbers as one device on the global
  batch. ``"local"`` -- each device normalizes with its own shard's statistics
  (ghost BN with ghost size = per-device batch, Hoffer et al. 2017); the
  running statistics are the count-weighted average over devices, so the
  replicated state stays identical everywhere. ``norm.kind="ghost"`` (or any
  ``ghost_batch_size``) normalizes each ghost batch locally in both modes.
* **Evaluation** shards the eval sets over ``'data'`` (padded with zero-weight
  rows) and ``psum``'s the sums; probes run replicated with the one-device model.

Many hosts: :func:`initialize` calls ``jax.distributed.initialize`` from
``config.parallel`` or the environment (``BN_COORDINATOR``, ``BN_NUM_PROCESSES``,
``BN_PROCESS_ID``, or JAX's ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``) before anything touches a device. Every process loads the
full dataset and builds the same global arrays with
``jax.make_array_from_callback`` (each supplies its own devices' copies); only
process 0 writes metrics, summary and probes (:func:`is_writer`); orbax
checkpoints are written and restored by all processes together, so the workdir
must be on a filesystem every host sees.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bn import pipeline, run, train

AXIS = "data"
BN_STATS = ("sync", "local")
DEFAULTS = dict(devices="1", bn_stats="sync", coordinator="", num_processes=0, process_id=-1, cluster_detect=False, init_timeout=300)
ENV = {  # config key -> environment variables read when the key is unset (first found wins)
    "coordinator": ("BN_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("BN_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("BN_PROCESS_ID", "JAX_PROCESS_ID"),
}
LAUNCH_KEYS = ("coordinator", "num_processes", "process_id", "cluster_detect", "init_timeout")


# ----------------------------------------------------------------------------- settings


def settings(c) -> dict:
  """``config.parallel`` as a plain dict, defaults filled in (configs made without ``base()`` work too)."""
  p = c.get("parallel") if hasattr(c, "get") else None
  return {**DEFAULTS, **(dict(p) if p is not None else {})}


def recorded_config(cfg_dict: dict) -> dict:
  """The config as recorded in ``config.json`` and compared on resume: without the launch
  details (coordinator address, process id, ...) that differ between processes and restarts."""
  par = {k: v for k, v in cfg_dict.get("parallel", {}).items() if k not in LAUNCH_KEYS}
  return {**cfg_dict, "parallel": par} if "parallel" in cfg_dict else cfg_dict


def _env(keys, environ) -> str | None:
  for k in keys:
    if environ.get(k, "") != "":
      return environ[k]
  return None


def _as_int(name: str, value, source: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{source} = {value!r} is not an integer ({name}).") from None


def distributed_args(p: dict, environ=os.environ) -> tuple[str, int, int] | None:
  """``(coordinator, num_processes, process_id)`` from the settings, else the environment;
  ``None`` for a single process. Raises ValueError for an incomplete or inconsistent set."""
  coordinator, n, pid = p["coordinator"], int(p["num_processes"]), int(p["process_id"])
  coordinator = coordinator or _env(ENV["coordinator"], environ) or ""
  if n <= 0 and (v := _env(ENV["num_processes"], environ)) is not None:
    n = _as_int("num_processes", v, "/".join(ENV["num_processes"]))
  if pid < 0 and (v := _env(ENV["process_id"], environ)) is not None:
    pid = _as_int("process_id", v, "/".join(ENV["process_id"]))
  if not coordinator and n <= 1:
    return None
  missing = [k for k, bad in (("coordinator", not coordinator), ("num_processes", n <= 0), ("process_id", pid < 0)) if bad]
  if missing:
    raise ValueError(
        f"multi-host training needs coordinator, num_processes and process_id; missing {', '.join(missing)}. "
        "Set --config.parallel.coordinator=HOST:PORT --config.parallel.num_processes=N --config.parallel.process_id=I "
        "(or the environment variables BN_COORDINATOR, BN_NUM_PROCESSES, BN_PROCESS_ID)."
    )
  host, _, port = coordinator.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"coordinator {coordinator!r} must be HOST:PORT (process 0's address and a free port), e.g. 10.0.0.1:1234.")
  if not 0 <= pid < n:
    raise ValueError(f"process_id={pid} is outside [0, num_processes={n}); number the processes 0 .. {n - 1}.")
  return coordinator, n, pid


# ----------------------------------------------------------------------------- many hosts


def _connect(coordinator: str, n: int, pid: int, timeout: int) -> None:
  """``jax.distributed.initialize`` with a readable failure: JAX aborts the process
  (SIGABRT, a C++ stack trace) when not every process registers in time, so a
  watchdog reports the likely cause and exits with status 3 just before that."""
  done = threading.Event()

  def watchdog():
    if not done.wait(timeout):
      sys.stderr.write(
          f"bn: error: process {pid} of {n} waited {timeout} s at coordinator {coordinator} and not all {n} processes "
          "arrived. Start every process with the same coordinator (process 0's HOST:PORT) and the same "
          f"num_processes={n}, process ids 0..{n - 1} each used once; check that the port is reachable "
          "(raise --config.parallel.init_timeout if the processes start slowly).\n")
      sys.stderr.flush()
      os._exit(3)

  threading.Thread(target=watchdog, daemon=True).start()
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes; no effect on GPU/TPU
    jax.distributed.initialize(coordinator, n, pid, initialization_timeout=timeout + 30)
  finally:
    done.set()


def _check_agreement(n: int, fingerprint: str) -> None:
  """All processes must agree on the process count and the experiment (else they would hang in a collective)."""
  from jax.experimental import multihost_utils

  mine = np.asarray([n, int(fingerprint[:7], 16)], np.int64)
  every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 2)
  if jax.process_count() != n or len(set(every[:, 0])) > 1:
    raise ValueError(
        f"the processes disagree on the number of processes: the coordinator counts {jax.process_count()}, "
        f"the processes were started with num_processes={every[:, 0].tolist()}; start all with the same num_processes."
    )
  if len(set(every[:, 1])) > 1:
    raise ValueError("the processes were started with different configs; give every process the same config and overrides.")


def fingerprint(c) -> str:
  """A hash of the experiment config without the per-process launch keys."""
  from bn import config as bn_config

  return hashlib.sha256(json.dumps(recorded_config(bn_config.to_dict(c)), sort_keys=True).encode()).hexdigest()


def initialize(c, environ=os.environ) -> bool:
  """Joins the JAX distributed runtime when the config or environment asks for many
  processes (call before any computation). Idempotent; returns True when distributed."""
  p = settings(c)
  if jax.distributed.is_initialized():
    return True
  if p["cluster_detect"]:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(initialization_timeout=int(p["init_timeout"]))
    _check_agreement(jax.process_count(), fingerprint(c))
    return True
  args = distributed_args(p, environ)
  if args is None:
    return False
  _connect(*args, int(p["init_timeout"]))
  _check_agreement(args[1], fingerprint(c))
  return True


def is_writer() -> bool:
  """Only process 0 writes run artifacts (metrics, summary, probes)."""
  return jax.process_index() == 0


# ----------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Plan:
  """The resolved data-parallel set-up: the mesh and the BN statistics mode."""

  mesh: Mesh
  bn_stats: str = "sync"

  @property
  def devices(self) -> int:
    return self.mesh.devices.size

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def sharded(self) -> NamedSharding:
    return NamedSharding(self.mesh, P(AXIS))


def device_count(spec, available: int) -> int:
  """``"all"`` -> every device; ``"N"`` (or N) -> N, checked against the devices there are."""
  s = str(spec).strip().lower()
  if s == "all":
    return available
  try:
    n = int(s)
  except ValueError:
    raise ValueError(f"parallel.devices={spec!r} must be 'all' or a device count such as '8'.") from None
  if not 1 <= n <= available:
    raise ValueError(
        f"parallel.devices={n} but {available} device(s) are available; use --config.parallel.devices=all "
        "(on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N gives N virtual devices)."
    )
  return n


def plan(c) -> Plan | None:
  """The data-parallel plan of config ``c``; ``None`` for the one-device, one-process
  engine (``parallel.devices="1"``, the default), which then runs exactly as without this module."""
  p = settings(c)
  if p["bn_stats"] not in BN_STATS:
    raise ValueError(f"parallel.bn_stats={p['bn_stats']!r} is not one of {BN_STATS}.")
  n = device_count(p["devices"], jax.device_count())
  if jax.process_count() > 1 and n != jax.device_count():
    raise ValueError(
        f"{jax.process_count()} processes hold {jax.device_count()} devices, but parallel.devices={p['devices']!r} "
        "uses fewer; many-host training uses every device: --config.parallel.devices=all."
    )
  if n == 1 and jax.process_count() == 1:
    return None
  check_batch(c.train.batch_size, n, c.norm.ghost_batch_size or None)
  return Plan(Mesh(np.asarray(jax.devices()[:n]), (AXIS,)), p["bn_stats"])


def check_batch(batch_size: int, devices: int, ghost_batch_size: int | None = None) -> int:
  """The per-device batch; raises ValueError when the global batch does not split evenly."""
  if batch_size % devices:
    lo, hi = batch_size // devices * devices, -(-batch_size // devices) * devices
    raise ValueError(
        f"the global batch of {batch_size} examples does not split over {devices} devices; "
        f"use a multiple of {devices} (e.g. --config.train.batch_size={hi or devices}{f' or {lo}' if lo else ''}) "
        "or another --config.parallel.devices."
    )
  b = batch_size // devices
  if ghost_batch_size and b % ghost_batch_size:
    raise ValueError(
        f"ghost_batch_size={ghost_batch_size} does not divide the per-device batch of {b} "
        f"({batch_size} / {devices} devices); ghost batches may not straddle devices."
    )
  return b


def parallel_task(task: train.Task, bn_stats: str = "sync") -> train.Task:
  """``task`` for the body of the shard_map: BN layers reduce over :data:`AXIS`
  (``"sync"``) or normalize per device (``"local"``); batch and loss are per device."""
  model = task.model
  if hasattr(model, "norm"):
    model = model.clone(norm=dataclasses.replace(model.norm, axis_name=AXIS, per_device=bn_stats == "local"))
  return task._replace(model=model, axis_name=AXIS)


# ----------------------------------------------------------------------------- global arrays


def global_array(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host array every process holds in full (each process
  supplies the pieces of its own devices)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def place_split(x, y, stats, sharding: NamedSharding):
  """Standardized float32 images and int32 labels as global arrays (as ``pipeline.to_device``)."""
  gx = global_array(x, sharding)
  gy = global_array(np.asarray(y, np.int32), sharding)
  return jax.jit(pipeline.standardize, out_shardings=sharding)(gx, stats), gy


def eval_layout(n: int, devices: int, chunk: int) -> tuple[int, int]:
  """``(chunks, rows per chunk)`` per device so that ``devices * chunks * rows >= n`` with little padding."""
  per_device = -(-n // devices)
  k = -(-per_device // max(min(chunk, per_device), 1))
  return k, -(-per_device // k)


def place_eval(x, y, stats, plan: Plan, chunk: int):
  """An eval split padded to ``devices * chunks * rows`` and sharded over :data:`AXIS`,
  with a weight 1 on real rows and 0 on padding. Returns ``(x, y, w, chunks)``."""
  n = len(y)
  k, rows = eval_layout(n, plan.devices, chunk)
  total = plan.devices * k * rows
  pad = ((0, total - n),) + ((0, 0),) * (np.ndim(x) - 1)
  xp, yp = np.pad(np.asarray(x), pad), np.pad(np.asarray(y, np.int32), (0, total - n))
  w = (np.arange(total) < n).astype(np.float32)
  gx, gy = place_split(xp, yp, stats, plan.sharded)
  return gx, gy, global_array(w, plan.sharded), k


# ----------------------------------------------------------------------------- programs


def vmapped_init(task: train.Task, plan: Plan, seeds, lrs, wds, sample_x, num_train: int):
  """``train.vmapped_init`` with the stacked state created replicated over the mesh
  (compiled unoptimized like it: it runs once, and XLA:CPU optimizes vmapped threefry slowly)."""
  f = lambda s, lr, wd, x: train.init_state(task, s, lr, wd, x, num_train)  # noqa: E731
  g = jax.jit(jax.vmap(f, in_axes=(0, 0, 0, None), out_axes=train.STATE_AXES), out_shardings=plan.replicated,
              compiler_options={"xla_backend_optimization_level": 0})
  return g(np.asarray(seeds, np.int32), np.asarray(lrs, np.float32), np.asarray(wds, np.float32), sample_x)


def vmapped_chunk(task: train.Task, num_steps: int, plan: Plan):
  """``jit(shard_map(vmap(train_chunk)))``: ``task`` must come from :func:`parallel_task`."""
  body = jax.vmap(functools.partial(train.train_chunk, task, num_steps), in_axes=(train.STATE_AXES, None, None), out_axes=(train.STATE_AXES, 0))
  f = jax.shard_map(body, mesh=plan.mesh, in_specs=(P(), P(), P()), out_specs=(P(), P()))
  return jax.jit(f, donate_argnums=0)


def evaluate_shard(task: train.Task, params, batch_stats, x, y, w, chunks: int) -> train.StepMetrics:
  """Eval-mode mean loss and accuracy of a split from this device's rows ``(x, y)``
  with weights ``w`` (1 on examples, 0 on padding), in ``chunks`` chunks, summed over :data:`AXIS`."""
  variables = {"params": params, "batch_stats": batch_stats}

  def one(xyw):
    xc, yc, wc = xyw
    logits = task.model.apply(variables, xc, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, yc)
    return jnp.sum(losses * wc), jnp.sum((jnp.argmax(logits, -1) == yc).astype(wc.dtype) * wc)

  split = lambda t: t.reshape((chunks, t.shape[0] // chunks) + t.shape[1:])  # noqa: E731
  loss, correct = lax.map(one, (split(x), split(y), split(w)))
  loss, correct, n = lax.psum((jnp.sum(loss), jnp.sum(correct), jnp.sum(w)), AXIS)
  return train.StepMetrics(loss / n, correct / n)


def vmapped_eval(task: train.Task, plan: Plan, chunks: int):
  """All runs' eval metrics on an eval split placed by :func:`place_eval` (replicated result)."""
  body = jax.vmap(functools.partial(evaluate_shard, task, chunks=chunks), in_axes=(0, 0, None, None, None))
  f = jax.shard_map(body, mesh=plan.mesh, in_specs=(P(), P(), P(AXIS), P(AXIS), P(AXIS)), out_specs=P())
  return jax.jit(f)


# ----------------------------------------------------------------------------- the host loop's trainer


class Trainer(run.Trainer):
  """:class:`bn.run.Trainer` on a mesh: the same interface (``task``, ``runs``,
  ``train_x``/``train_y``, ``init``, ``chunk``, ``evaluate``), global arrays.

  ``task`` is the one-device task (probes use it, replicated); training runs
  ``parallel_task(task)`` inside a shard_map."""

  def __init__(self, c, dataset, plan: Plan):
    self.c, self.plan = c, plan
    self.task = run.make_task(c, dataset.num_classes)
    self.ptask = parallel_task(self.task, plan.bn_stats)
    self.runs = run.run_table(c)
    stats = pipeline.channel_stats(dataset.train.x)
    self.train_x, self.train_y = place_split(dataset.train.x, dataset.train.y, stats, plan.replicated)
    chunk = c.train.eval_chunk
    sub = run._eval_subset(dataset.train, c.data.train_eval_size, c.data.split_seed)
    self._evals, fns = [], {}
    for x, y in (sub, (dataset.test.x, dataset.test.y)):
      gx, gy, gw, k = place_eval(x, y, stats, plan, chunk)
      fn = fns.setdefault(k, vmapped_eval(self.task, plan, k))  # same-shaped splits share one program
      self._evals.append((fn, gx, gy, gw))
    self._chunks: dict[int, Any] = {}
    self.compile_time = 0.0

  def init(self):
    r = self.runs
    return vmapped_init(self.task, self.plan, [x["seed"] for x in r], [x["lr"] for x in r], [x["weight_decay"] for x in r],
                        self.train_x[:2], len(self.train_y))

  def chunk(self, state, num_steps: int):
    if num_steps not in self._chunks:
      t0 = time.perf_counter()
      self._chunks[num_steps] = vmapped_chunk(self.ptask, num_steps, self.plan).lower(state, self.train_x, self.train_y).compile()
      self.compile_time += time.perf_counter() - t0
    return self._chunks[num_steps](state, self.train_x, self.train_y)

  def evaluate(self, state):
    return tuple(f(state.params, state.batch_stats, x, y, w) for f, x, y, w in self._evals)
