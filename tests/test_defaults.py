"""What users run, tested as they run it: the suite compiles at XLA optimization level 0 (see
conftest.py), so this one end-to-end run uses a fresh process with JAX's defaults -- default
optimization level, one CPU device -- and checks that a small BN net learns and resumes to the
same numbers there too."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = '''
from bn.config import base

def get_config():
  c = base()
  c.name = "defaults"
  c.seeds = (0, 1)
  c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), synthetic_sizes=(1024, 256), train_eval_size=256)
  c.model.update(name="mlp", widths=(32,), act="relu", init_std=None)
  c.optimizer.update(name="momentum", lr=0.05)
  c.train.update(steps=200, batch_size=32, eval_every=100, checkpoint_every=100, target_accuracy=0.9)
  return c
'''


def _env():
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS") and not k.startswith("JAX_COMPILATION")}
  env["JAX_PLATFORMS"] = "cpu"
  return env


def test_bn_train_at_jax_defaults(tmp_path):
  cfg = tmp_path / "defaults.py"
  cfg.write_text(CONFIG)
  run = lambda wd, *extra: subprocess.run([sys.executable, "-m", "bn", "train", "--config", str(cfg), "--workdir", str(wd),  # noqa: E731
                                           "--no-progress", *extra], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  r = run(tmp_path / "w")
  assert r.returncode == 0, r.stderr[-3000:]
  s = json.loads((tmp_path / "w" / "summary.json").read_text())
  assert s["device_count"] == len(os.sched_getaffinity(0))  # the bn command's one CPU device per core, not conftest's 8
  for run_ in s["runs"]:
    assert not run_["diverged"] and run_["test_accuracy"] > 0.9, run_
  # the same run in two invocations (stopped by a smaller step count, then extended) gives the same numbers
  r = run(tmp_path / "w2", "--config.train.steps=100")
  assert r.returncode == 0, r.stderr[-3000:]
  r = run(tmp_path / "w2", "--extend")
  assert r.returncode == 0, r.stderr[-3000:]
  rows = lambda wd: [{k: v for k, v in json.loads(line).items() if k != "wall_time"}  # noqa: E731
                     for line in (wd / "metrics.jsonl").read_text().splitlines()]
  assert rows(tmp_path / "w2") == rows(tmp_path / "w")
