"""Helpers shared by the Flax adapter tests (test_linen.py, test_nnx.py)."""

import jax
import numpy as np


def assert_close(actual, desired, rtol=1e-6):
  """Relative agreement: elementwise rtol, plus rtol times the array's scale for entries near 0."""
  actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
  np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * max(np.abs(desired).max(), 1e-30))


def assert_trees_close(actual, desired, rtol=1e-6):
  assert jax.tree.structure(actual) == jax.tree.structure(desired)
  jax.tree.map(lambda a, d: assert_close(a, d, rtol), actual, desired)


def inputs(shape, seed=0):
  """x (offset, not unit scale), a random cotangent w, and a boolean mask of x's shape."""
  rng = np.random.default_rng(seed)
  x = (2.0 * rng.standard_normal(shape) + 0.5).astype(np.float32)
  w = rng.standard_normal(shape).astype(np.float32)
  return x, w, rng.random(shape) < 0.7
