"""Test set-up: 8 virtual CPU devices (for cross-device tests) and strict rank promotion.

XLA_FLAGS must be set before JAX initialises its backend, hence at import time here.
"""
import os

# Tests are dominated by XLA compile time, not run time: an unoptimized CPU backend
# compiles several times faster (results may differ from optimized builds in the last bit).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
