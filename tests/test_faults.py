"""Tests for bn.faults, the fault injection of the reliability tests: an armed full disk cuts an append in the
middle of its last row and fails with ENOSPC (the rows before it intact), an armed kill SIGKILLs the process at
exactly its event and step (in a subprocess here), and nothing happens when the variables name another point.
"""

import errno
import os
import subprocess
import sys

import pytest

from bn import artifacts, faults

ROWS = [{"step": 5, "run": 0, "loss": 0.25}, {"step": 5, "run": 1, "loss": 0.5}]


def test_a_full_disk_cuts_the_last_row_in_the_middle(tmp_path, monkeypatch):
  path = tmp_path / "metrics.jsonl"
  monkeypatch.setenv(faults.ENOSPC_ENV, "metrics:5")
  faults.append(path, ROWS[:1], "metrics", 4)  # another step: a plain append
  faults.append(path, ROWS[:1], "probes", 5)  # another event: a plain append
  with pytest.raises(OSError) as e:
    faults.append(path, ROWS, "metrics", 5)
  assert e.value.errno == errno.ENOSPC
  text = path.read_text()
  whole = artifacts.jsonl_text(ROWS[:1]) * 3
  assert text.startswith(whole) and 0 < len(text) - len(whole) < len(artifacts.jsonl_text(ROWS[1:])) and not text.endswith("\n")
  assert artifacts.read_jsonl(path, partial_ok=True) == ROWS[:1] * 3  # what a resume keeps


KILL = "from bn import faults; faults.fault('checkpointed', 7); faults.fault('checkpointed', 8); print('alive')"


@pytest.mark.parametrize("armed,alive", [("checkpointed:8", False), ("metrics:8", True)])  # another event (or step: above) is no fault
def test_a_kill_happens_at_its_event_and_step_only(armed, alive):
  env = {**os.environ, faults.KILL_ENV: armed, "PYTHONPATH": os.pathsep.join([str(os.path.dirname(os.path.dirname(faults.__file__))),
                                                                              os.environ.get("PYTHONPATH", "")])}
  r = subprocess.run([sys.executable, "-c", KILL], env=env, capture_output=True, text=True, timeout=60)
  if alive:
    assert r.returncode == 0 and r.stdout.strip() == "alive", r.stderr
  else:
    assert r.returncode == -9 and r.stdout == ""  # SIGKILL: nothing after the armed point ran
