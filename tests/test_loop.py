"""Tests for bn.loop's own pieces that need no training: the GPU warning (every way a GPU is found or not, and
when it must stay silent), the start-up line (against ``jax.devices()`` and the datasets named) and where status
lines go (the writer's log, stderr with progress, nowhere). The loop itself -- resume, kill -9, refusals, nothing
written before every check -- is tested end to end in test_reliability.py and test_train.py.
"""

import jax
import pytest

from bn import data, loop

NO_GPU = dict(which=lambda name: None, exists=lambda path: False, environ={})


@pytest.mark.parametrize("which,exists,environ,backend,found", [
    (lambda n: "/usr/bin/nvidia-smi", lambda p: False, {}, "cpu", "nvidia-smi"),
    (lambda n: None, lambda p: p == "/dev/nvidia0", {}, "cpu", "/dev/nvidia0"),
    (lambda n: "/usr/bin/nvidia-smi", lambda p: True, {}, "cpu", "nvidia-smi"),  # the command is named first
    (lambda n: None, lambda p: False, {}, "cpu", None),  # no GPU
    (lambda n: "/usr/bin/nvidia-smi", lambda p: True, {"JAX_PLATFORMS": " CPU "}, "cpu", None),  # told to use the CPU
    (lambda n: "/usr/bin/nvidia-smi", lambda p: True, {}, "gpu", None),  # JAX runs on the GPU
])
def test_gpu_warning_only_when_a_gpu_sits_unused(which, exists, environ, backend, found):
  got = loop.gpu_warning(backend, which=which, exists=exists, environ=environ)
  if found is None:
    assert got is None
  else:
    assert got.startswith(f"warning: a GPU is present ({found}) but JAX runs on the CPU") and "JAX_PLATFORMS=cpu" in got


def test_startup_line_names_backend_devices_data_and_work():
  a = data.synthetic((4, 4, 1), 3, num_train=8, num_test=4)
  b = data.Dataset("fashion_mnist", "idx", "/data/fm", 10, a.train, a.test)
  line = loop.startup_line([a, b], "2 runs x 10 steps")
  n = len(jax.devices())
  assert line == (f"{jax.default_backend()} backend, {n} devices ({jax.devices()[0].device_kind}); "
                  f"data {a.name} from synthetic ({a.location}), fashion_mnist from idx (/data/fm); 2 runs x 10 steps")


def test_status_lines_go_to_the_log_to_stderr_or_nowhere(capsys):
  got = []
  loop._sayer(got.append, progress=False, writer=True)("to the log")
  loop._sayer(got.append, progress=True, writer=False)("not the writer: silent")
  loop._sayer(None, progress=True, writer=True)("to stderr")
  loop._sayer(None, progress=False, writer=True)("no progress: silent")
  out = capsys.readouterr()
  assert got == ["to the log"] and out.err == "to stderr\n" and out.out == ""
