"""Helpers of the tests that train through `bn train` and its workdirs (test_train, test_reliability)."""

import os
import sys
from pathlib import Path

from bn import config

REPO = Path(__file__).resolve().parent.parent


def config_maker(cfg_path):
  """``make(**updates)``: the config file at ``cfg_path`` with dotted keys spelled ``a__b=value``."""
  def make(**updates):
    c = config.load(str(cfg_path))
    for k, v in updates.items():
      config.assign(c, k.replace("__", "."), v)
    return c
  return make


def bn_train_command(cfg_path, wd, cache, *extra, drop_env=(), env=None):
  """``(argv, environment)`` of `bn train` as a real process, sharing the compilation cache ``cache``
  with this one (``drop_env``: variables of this process not to pass on)."""
  e = {k: v for k, v in os.environ.items() if k not in drop_env}
  e.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **(env or {}))
  return [sys.executable, "-m", "bn", "train", "--config", str(cfg_path), "--workdir", str(wd), "--no-progress", *extra], e
