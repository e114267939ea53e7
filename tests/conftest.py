"""Test set-up: 8 virtual CPU devices (for cross-device tests) and strict rank promotion.

XLA_FLAGS must be set before JAX initialises its backend, hence at import time here.
The tests *need* 8 CPU devices: whatever XLA_FLAGS / JAX_PLATFORMS the environment
has, the device count is forced (other flags are kept), and the session fails
loudly if JAX still does not give 8 devices -- a multi-device test must never be
skipped silently.
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

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

DEVICES = 8


def pytest_configure(config):
  if jax.device_count() < DEVICES:  # e.g. a backend initialized before this file could set the flags
    raise RuntimeError(f"the tests need {DEVICES} CPU devices but JAX has {jax.device_count()} ({jax.devices()}); "
                       "run them with `make test` or plain `pytest` in a fresh process.")
