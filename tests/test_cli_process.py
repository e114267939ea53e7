"""``python -m bn`` as a real process: every failure is an exit code and one line on stderr
(``bn COMMAND: error: ...`` naming the problem and the fix), never a traceback; 2 for a usage,
config or data problem, 1 for a runtime failure. Nothing here trains (the runtime failures
of training, e.g. a disk that fills, run as real processes in tests/test_reliability.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CFG = '''from bn.config import base


def get_config():
  c = base()
  c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), synthetic_sizes=(64, 32), train_eval_size=32)
  c.model.update(name="mlp", widths=(8,), act="relu", init_std=None)
  c.train.update(steps=10, batch_size=8, eval_every=5, checkpoint_every=5)
  return c
'''


def bn(*args, cwd):
  env = {k: v for k, v in os.environ.items() if not k.startswith("BN_TEST_")}
  return subprocess.run([sys.executable, "-m", "bn", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def one_error_line(r, prefix):
  assert "Traceback" not in r.stderr, r.stderr
  lines = [line for line in r.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, r.stderr
  assert lines[0].startswith(prefix), lines[0]
  return lines[0]


@pytest.fixture
def cfg(tmp_path):
  (tmp_path / "c.py").write_text(CFG)
  return tmp_path / "c.py"


def test_unknown_command(tmp_path):
  r = bn("trian", cwd=tmp_path)
  assert r.returncode == 2
  line = one_error_line(r, "bn: error: unknown command 'trian'")
  assert "train" in line and "bn --help" in line


def test_report_on_a_file(tmp_path):
  (tmp_path / "f.txt").write_text("x")
  r = bn("report", tmp_path / "f.txt", cwd=tmp_path)
  assert r.returncode == 2
  assert "is not a directory; give the --out directory of `bn reproduce`" in one_error_line(r, "bn report: error:")


def test_config_error(cfg, tmp_path):
  r = bn("train", "--config", cfg, "--workdir", tmp_path / "w", "--config.train.steps=-5", cwd=tmp_path)
  assert r.returncode == 2
  assert "--config.train.steps=-5 must be a positive integer" in one_error_line(r, "bn train: error:")
  assert not (tmp_path / "w").exists()


def test_data_error(cfg, tmp_path):
  missing = tmp_path / "no_such_dir"
  r = bn("train", "--config", cfg, "--workdir", tmp_path / "w", "--config.data.source=idx", f"--config.data.data_dir={missing}",
         "--config.data.name=fashion_mnist", cwd=tmp_path)
  assert r.returncode == 2, r.stderr
  assert str(missing) in one_error_line(r, "bn train: error:")
  assert not (tmp_path / "w").exists()  # nothing written before the data checked out


def test_runtime_failure(cfg, tmp_path):
  wd = tmp_path / "w"
  wd.mkdir()
  (wd / "config.json").write_text('{"config": {"name": ')  # a damaged workdir file
  r = bn("train", "--config", cfg, "--workdir", wd, cwd=tmp_path)
  assert r.returncode == 1
  line = one_error_line(r, "bn train: error:")
  assert f"{wd / 'config.json'}: not valid JSON" in line and "Delete it" in line
