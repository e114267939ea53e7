"""The worked examples in examples/ run as a researcher would run them (subprocesses, small
sizes via their arguments), on synthetic data; and a ``bn train`` workdir's files get the
umask's mode (not mkstemp's private 0600)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

TINY = '''"""A tiny synthetic task for the examples' test."""

from bn.config import base


def get_config():
  c = base()
  c.name = "tiny"
  c.seeds = (0, 1)
  c.data.update(source="synthetic", synthetic_shape=(8, 8, 1), synthetic_sizes=(512, 128), train_eval_size=128)
  c.model.update(name="mlp", widths=(16,), act="relu", init_std=None)
  c.norm.update(kind="batch")
  c.optimizer.update(name="sgd", lr=0.1)
  c.train.update(steps=100, batch_size=32, eval_every=50, checkpoint_every=50)
  c.probes.update(every=50, batch_size=64, landscape_scales=(1.0, 2.0))
  return c
'''


def run(args, cwd, umask=None):
  cmd = [sys.executable, *map(str, args)]
  if umask is not None:  # set by a shell, not preexec_fn (fork after JAX's threads started)
    cmd = ["sh", "-c", f'umask {umask:03o} && exec "$0" "$@"', *cmd]
  return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_own_loop(tmp_path):
  r = run([EXAMPLES / "own_loop.py", "--steps", "150", "--hidden", "32"], tmp_path)
  assert r.returncode == 0, r.stderr
  acc = [float(a) for a in re.findall(r"test accuracy (\d\.\d+)", r.stdout)]
  assert len(acc) == 5 and acc[-1] > 0.4, r.stdout  # 10 classes: chance is 0.1
  assert "BN state of layer 0 after 150 updates" in r.stdout


def test_plot_workdir_of_a_real_run(tmp_path):
  (tmp_path / "tiny.py").write_text(TINY)
  r = run(["-m", "bn", "train", "--config", "tiny.py", "--workdir", "w", "--no-progress"], tmp_path, umask=0o027)
  assert r.returncode == 0, r.stderr
  workdir = tmp_path / "w"
  for name in ("config.json", "metrics.jsonl", "summary.json", "probes.jsonl"):
    assert (workdir / name).stat().st_mode & 0o777 == 0o640, name  # 0o666 & ~0o027
  r = run([EXAMPLES / "plot_workdir.py", workdir, "--probe", "act.layer0.std", "--out", tmp_path / "fig.png"], tmp_path)
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert re.search(r"run 1: step 100, test_accuracy 0\.\d+", r.stdout), r.stdout
  r = run([EXAMPLES / "plot_workdir.py", workdir], tmp_path)  # defaults: test_accuracy and the probe loss
  assert r.returncode == 0 and (workdir / "curves.png").exists(), r.stderr
  r = run([EXAMPLES / "plot_workdir.py", workdir, "--probe", "act.nope"], tmp_path)
  assert r.returncode != 0 and "--probe act.nope: not in probes.jsonl" in r.stderr
