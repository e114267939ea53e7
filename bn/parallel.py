"""Runs and data over devices: the device mesh, the per-device task, and where arrays live.

**Data parallelism** (``parallel.devices``): the mesh axis ``'data'`` (:data:`AXIS`). :mod:`bn.programs` wraps the stacked-runs programs in
``shard_map`` over it:

* **shard_map outside, runs inside.** Every device runs the whole stacked
  program (all runs) on its slice of each batch; the run axis is an ordinary
  vmap (or unrolled) axis inside the per-device body, and the BN collectives
  (``psum`` over ``'data'``) are batched over it. Parameters, optimizer and BN
  state are replicated (``P()``), so a checkpoint is the same tree as on one device.
* **Batches.** Every device holds the whole (standardized) training set and the
  same sampler state; the shared sampler draws the *global* batch of
  ``batch_size`` indices and device ``i`` takes rows ``[i*b, (i+1)*b)`` with
  ``b = batch_size / devices`` (``lax.axis_index``). The global batch is
  therefore exactly the one-device batch, whatever the device count.
  Augmentation keys are folded with the device index (the same distribution
  as on one device, other draws).
* **Gradients.** The loss is ``pmean``'ed over ``'data'`` before ``grad`` (all
  shards have the same size), so ``grad`` is the gradient of the global-batch
  loss. For the replicated parameters shard_map (``check_vma=True``) transposes
  their implicit broadcast into a ``psum``: the result is exactly the pmean of
  the per-device gradients, with no all-reduce written by hand.
* **BN statistics** (``bn_stats``): ``"sync"`` -- every BN layer gets
  ``axis_name='data'`` and uses the statistics of the global batch, merged by
  count (:func:`bn.batch_norm`), the same numbers as one device on the global
  batch. ``"local"`` -- each device normalizes with its own shard's statistics
  (ghost BN with ghost size = per-device batch, Hoffer et al. 2017); the
  running statistics are the count-weighted average over devices, so the
  replicated state stays identical everywhere. Any ``ghost_batch_size``
  normalizes each ghost batch locally in both modes.
* **Evaluation** lays each eval split out in chunks whose rows are spread over
  the devices (padded with zero-weight rows) and ``psum``'s the sums.

**Runs over devices** (``parallel.runs_devices``). The mesh has a second axis,
``'runs'`` (:data:`RUNS_AXIS`), first: the stacked runs of a program are split over it
(``P('runs')`` on the leading axis of parameters, optimizer and BN state, sampler keys
and metrics), the data are replicated along it, and each device trains its share of the
runs with the same one-device (or data-parallel) body -- runs are independent, so
nothing crosses the ``'runs'`` axis but the final gather. A mesh ``(runs=R, data=D)``
uses ``R * D`` devices. Between programs the state is kept whole (replicated, unpadded):
each program pads the runs to a multiple of ``R`` (copies of run 0), shards them, and
drops the padding from every output (:func:`bn.programs.over_runs`), so checkpoints,
metrics and probes see exactly the runs of the experiment, whatever the device count.

With no plan (one device, one process) the same placement functions put the
arrays on the default device and the programs run without ``shard_map``.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bn import data as bn_data, pipeline, train

AXIS = "data"
RUNS_AXIS = "runs"
BN_STATS = ("sync", "local")


@dataclasses.dataclass(frozen=True)
class Plan:
  """The resolved set-up: the mesh (axes ``'runs'`` and ``'data'``, or ``'data'`` alone) and the
  BN statistics mode of the data axis (None when the data axis has one device: runs only)."""

  mesh: Mesh
  bn_stats: str | None = "sync"

  @property
  def devices(self) -> int:
    """Devices on the data axis (each takes its slice of every batch)."""
    return self.mesh.shape.get(AXIS, 1)

  @property
  def runs_devices(self) -> int:
    """Devices on the runs axis (each trains its share of the runs)."""
    return self.mesh.shape.get(RUNS_AXIS, 1)

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())


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


def runs_device_count(spec, available: int, runs: int, *, data_devices: int = 1, platform: str | None = None,
                      processes: int | None = None) -> int:
  """Devices of the runs axis for ``parallel.runs_devices`` = ``spec``: ``"auto"`` -> every device
  the data axis leaves (``available // data_devices``) when the platform is CPU or there are
  several processes, and the data axis has one device; else 1. ``"all"`` -> ``available //
  data_devices``; ``"N"`` -> N. In one process the count is capped at ``runs`` (more devices
  would train padding only); several processes use every device (each process must own a
  part of the mesh)."""
  s = str(spec).strip().lower()
  processes = jax.process_count() if processes is None else processes
  free = max(available // data_devices, 1)
  if s == "auto":
    cpu = (platform or jax.default_backend()) == "cpu"
    n = free if data_devices == 1 and (cpu or processes > 1) else 1
  elif s == "all":
    n = free
  else:
    try:
      n = int(s)
    except ValueError:
      raise ValueError(f"parallel.runs_devices={spec!r} must be 'auto', 'all' or a device count such as '2'.") from None
    if not 1 <= n * data_devices <= available:
      raise ValueError(
          f"parallel.runs_devices={n} x parallel.devices={data_devices} needs {n * data_devices} devices but {available} "
          f"are available; use --config.parallel.runs_devices={free} (or 'all'), or fewer data devices "
          "(on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N gives N virtual devices).")
  return n if processes > 1 else max(1, min(n, runs))


def make_plan(devices, bn_stats: str, batch_size: int, ghost_batch_size: int | None = None, *, runs: int = 1,
              runs_devices="1") -> Plan | None:
  """The plan of ``runs`` runs; ``None`` for one device in one process (the programs then run
  without a mesh). ``devices``: the data axis (``parallel.devices``); ``runs_devices``: the
  runs axis (``parallel.runs_devices``, see :func:`runs_device_count`). Raises ValueError for
  settings that cannot work."""
  if bn_stats not in BN_STATS:
    raise ValueError(f"parallel.bn_stats={bn_stats!r} is not one of {BN_STATS}.")
  total = jax.device_count()
  n = device_count(devices, total)
  r = runs_device_count(runs_devices, total, runs, data_devices=n)
  if jax.process_count() > 1 and n * r != total:
    raise ValueError(
        f"{jax.process_count()} processes hold {total} devices, but parallel.devices={devices!r} x "
        f"parallel.runs_devices={runs_devices!r} use {n * r}; many-host training uses every device: "
        "--config.parallel.devices=all (data parallel) or --config.parallel.runs_devices=all (runs spread).")
  if n * r == 1 and jax.process_count() == 1:
    return None
  if n > 1:
    check_batch(batch_size, n, ghost_batch_size)
  grid = np.asarray(jax.devices()[: r * n]).reshape(r, n)
  return Plan(Mesh(grid, (RUNS_AXIS, AXIS)), bn_stats if n > 1 else None)


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


def parallel_task(task: train.Task, bn_stats: str | None = "sync") -> train.Task:
  """``task`` for the body of the shard_map: BN layers reduce over :data:`AXIS`
  (``"sync"``) or normalize per device (``"local"``); batch and loss are per device.
  ``None`` (a plan without data parallelism): ``task`` as it is."""
  if bn_stats is None:
    return task
  model = task.model
  if hasattr(model, "norm"):
    model = model.clone(norm=dataclasses.replace(model.norm, axis_name=AXIS, per_device=bn_stats == "local"))
  return task._replace(model=model, axis_name=AXIS)


# ----------------------------------------------------------------------------- where arrays live


def global_array(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a host array every process holds in full (each process
  supplies the pieces of its own devices)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _put(x, plan: Plan | None, spec=P()):
  return jax.device_put(np.asarray(x)) if plan is None else global_array(x, NamedSharding(plan.mesh, spec))


def place_train(split: bn_data.Split, stats: bn_data.ChannelStats, plan: Plan | None = None) -> bn_data.Split:
  """Standardized float32 images and int32 labels on the device (replicated over a mesh)."""
  x, y = _put(split.x, plan), _put(np.asarray(split.y, np.int32), plan)
  standardize = jax.jit(pipeline.standardize) if plan is None else jax.jit(pipeline.standardize, out_shardings=plan.replicated)
  return bn_data.Split(standardize(x, stats), y)


def eval_layout(n: int, devices: int, chunk: int) -> tuple[int, int]:
  """``(chunks, rows per chunk and device)`` so that ``devices * chunks * rows >= n`` with little padding."""
  per_device = -(-n // devices)
  k = -(-per_device // max(min(chunk, per_device), 1))
  return k, -(-per_device // k)


def place_eval(split: bn_data.Split, stats: bn_data.ChannelStats, plan: Plan | None, chunk: int):
  """An eval split as ``(x, y, w)`` of shapes ``(chunks, devices * rows, ...)`` for
  :func:`bn.train.evaluate`: device ``i`` holds rows ``[i*rows, (i+1)*rows)`` of every chunk
  (its contiguous share of the split), padded with rows of weight 0."""
  n, d = len(split.y), 1 if plan is None else plan.devices
  k, rows = eval_layout(n, d, chunk)
  total = d * k * rows
  pad = ((0, total - n),) + ((0, 0),) * (np.ndim(split.x) - 1)
  w = (np.arange(total) < n).astype(np.float32)

  def lay(a):  # flat (device, chunk, row) order -> (chunk, device * rows)
    a = np.asarray(a)
    return a.reshape((d, k, rows) + a.shape[1:]).swapaxes(0, 1).reshape((k, d * rows) + a.shape[1:])

  spec = P(None, AXIS)
  x = _put(lay(np.pad(np.asarray(split.x), pad)), plan, spec)
  y = _put(lay(np.pad(np.asarray(split.y, np.int32), (0, total - n))), plan, spec)
  standardize = jax.jit(pipeline.standardize) if plan is None else jax.jit(pipeline.standardize, out_shardings=NamedSharding(plan.mesh, spec))
  return standardize(x, stats), y, _put(lay(w), plan, spec)
