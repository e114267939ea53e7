"""Many processes (hosts): joining JAX's distributed runtime, and who writes.

:func:`initialize` calls ``jax.distributed.initialize`` from the settings or the
environment (``BN_COORDINATOR``, ``BN_NUM_PROCESSES``, ``BN_PROCESS_ID``, or JAX's
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) before
anything touches a device, and checks that every process runs the same
experiment. Every process loads the full dataset and builds the same global
arrays (:mod:`bn.parallel`); only process 0 writes metrics, summary and probes
(:func:`is_writer`); orbax checkpoints are written and restored by all processes
together, so the workdir must be on a filesystem every host sees.
"""

from __future__ import annotations

import os
import sys
import threading

import jax
import numpy as np

ENV = {  # setting -> environment variables read when the setting is unset (first found wins)
    "coordinator": ("BN_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("BN_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("BN_PROCESS_ID", "JAX_PROCESS_ID"),
}


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


def distributed_args(coordinator: str, num_processes: int, process_id: int, environ=os.environ) -> tuple[str, int, int] | None:
  """``(coordinator, num_processes, process_id)`` from the settings, else the environment;
  ``None`` for a single process. Raises ValueError for an incomplete or inconsistent set."""
  n, pid = int(num_processes), int(process_id)
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


def initialize(settings, fingerprint: str, environ=os.environ) -> bool:
  """Joins the JAX distributed runtime when the settings (``coordinator``, ``num_processes``,
  ``process_id``, ``cluster_detect``, ``init_timeout``) or the environment ask for many
  processes (call before any computation). Idempotent; returns True when distributed."""
  if jax.distributed.is_initialized():
    return True
  if settings.cluster_detect:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(initialization_timeout=int(settings.init_timeout))
    _check_agreement(jax.process_count(), fingerprint)
    return True
  args = distributed_args(settings.coordinator, settings.num_processes, settings.process_id, environ)
  if args is None:
    return False
  _connect(*args, int(settings.init_timeout))
  _check_agreement(args[1], fingerprint)
  return True


def is_writer() -> bool:
  """Only process 0 writes run artifacts (metrics, summary, probes)."""
  return jax.process_index() == 0
