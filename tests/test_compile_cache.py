"""The persistent compilation cache `bn train` and `bn reproduce` use by default: where it lives, that
JAX's own setting wins, that a run fills it and --no-compile-cache leaves it alone."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from bn import compile_cache

TINY = '''from bn.config import base


def get_config():
  c = base()
  c.data.update(source="synthetic", synthetic_shape=(4, 4, 1), synthetic_sizes=(128, 32), train_eval_size=32)
  c.model.update(widths=(8,))
  c.train.update(steps=4, batch_size=16, eval_every=2, checkpoint_every=2)
  return c
'''


def test_the_cache_directory_follows_the_environment(tmp_path):
  assert compile_cache.default_dir({"BN_COMPILE_CACHE": str(tmp_path / "c")}) == tmp_path / "c"
  assert compile_cache.default_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "bn" / "jax"
  assert compile_cache.default_dir({}) == Path.home() / ".cache" / "bn" / "jax"


@pytest.fixture
def jax_cache_config():
  from jax.experimental.compilation_cache import compilation_cache as cc

  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs", "jax_compilation_cache_max_size")
  old = {k: getattr(jax.config, k) for k in keys}
  jax.config.update("jax_compilation_cache_dir", None)
  yield
  for k, v in old.items():
    jax.config.update(k, v)
  cc.reset_cache()


def test_enable_sets_the_cache_and_keeps_one_jax_was_given(tmp_path, jax_cache_config):
  assert compile_cache.enable(tmp_path / "a") == str(tmp_path / "a") and (tmp_path / "a").is_dir()
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "a")
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0  # every program, however fast it compiled
  assert compile_cache.enable(tmp_path / "b") == str(tmp_path / "a") and not (tmp_path / "b").exists()


def test_an_unmakeable_cache_directory_leaves_the_cache_off(tmp_path, jax_cache_config):
  (tmp_path / "file").write_text("")
  assert compile_cache.enable(tmp_path / "file" / "jax") is None and jax.config.jax_compilation_cache_dir is None


@pytest.mark.slow
def test_bn_train_fills_the_cache_unless_told_not_to(tmp_path):
  (tmp_path / "tiny.py").write_text(TINY)
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE") and k != "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"}

  def train(cache, *extra):
    r = subprocess.run([sys.executable, "-m", "bn", "train", "--config", "tiny.py", "--workdir", f"w{len(extra)}", "--no-progress",
                        *extra], cwd=tmp_path, env={**env, "BN_COMPILE_CACHE": str(tmp_path / cache)}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return sorted(p.name for p in (tmp_path / cache).glob("*")) if (tmp_path / cache).exists() else []

  assert any(name.startswith("jit_evaluate_all-") for name in train("on"))  # the evaluation program, among others
  assert train("off", "--no-compile-cache") == []


def test_the_final_line_counts_the_probe_programs_compile_time():
  from bn import cli

  assert cli.compile_line({"compile_time_s": 4.0, "probe_compile_time_s": 1.5}) == "5.5s compile, 1.5s of it the probe program's"
  assert cli.compile_line({"compile_time_s": 4.0}) == "4.0s compile"  # no probes
