"""Test set-up: 8 virtual CPU devices (for cross-device tests) and strict rank promotion.

XLA_FLAGS must be set before JAX initialises its backend, hence at import time here.
The tests *need* 8 CPU devices: whatever XLA_FLAGS / JAX_PLATFORMS the environment
has, the device count is forced (other flags are kept), and the session fails
loudly if JAX still does not give 8 devices -- a multi-device test must never be
skipped silently.

Naming: ``tests/test_<module>.py`` tests ``bn/<module>.py`` alone; tests across modules are named by their topic
(README, "How the code is laid out"; ``test_readme.py`` checks that every module has its file or is listed as not yet).
"""
import os
import re

# Tests are dominated by XLA compile time, not run time: an unoptimized CPU backend
# compiles several times faster (results may differ from optimized builds in the last bit).
# tests/test_defaults.py checks the default optimization level end to end.
_flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
if "--xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ["JAX_PLATFORMS"] = "cpu"
# `bn train` / `bn reproduce` keep compiled programs on disk by default (bn.compile_cache): in tests, in a
# directory of this session (subprocesses and xdist workers inherit it), never the user's ~/.cache.
if "BN_COMPILE_CACHE" not in os.environ:
  import atexit
  import shutil
  import tempfile

  os.environ["BN_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="bn-test-jax-cache-")
  atexit.register(shutil.rmtree, os.environ["BN_COMPILE_CACHE"], True)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

DEVICES = 8


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  """A persistent compilation cache for one test module (its path): subprocesses of `bn train` and
  resumed runs load the programs the module compiled instead of compiling them again."""
  from jax.experimental.compilation_cache import compilation_cache as cc

  path = str(tmp_path_factory.mktemp("jax_cache"))
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  old = {k: getattr(jax.config, k) for k in keys}
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  cc.reset_cache()
  yield path
  for k, v in old.items():
    jax.config.update(k, v)
  cc.reset_cache()


def pytest_configure(config):
  if jax.device_count() < DEVICES:  # e.g. a backend initialized before this file could set the flags
    raise RuntimeError(f"the tests need {DEVICES} CPU devices but JAX has {jax.device_count()} ({jax.devices()}); "
                       "run them with `make test` or plain `pytest` in a fresh process.")
