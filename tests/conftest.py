"""Test set-up: 8 virtual CPU devices (for cross-device tests) and strict rank promotion.

XLA_FLAGS must be set before JAX initialises its backend, hence at import time here.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
