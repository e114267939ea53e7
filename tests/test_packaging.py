"""Packaging: the core install needs only jax, the extras are what they say, the CLI names the
extra to install, and files that runs write get the umask's mode (not mkstemp's 0600).

The core-only install is real: a fresh venv (no system site-packages), ``pip install`` of the
repository with ``--no-index`` from the core wheels that ``make install`` put in
``.venv/wheelhouse`` -- offline, and a wheelhouse holding flax or matplotlib would show. The same
venv then gets the ``[report]`` extra from ``.venv/wheelhouse-report`` and runs ``bn report`` on a
hand-written ledger: the report needs JSON and matplotlib, not the training engine.
"""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bn import artifacts, cli
from bn.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSTRAINTS = REPO / "requirements" / "constraints.txt"
WHEELS = Path(sys.prefix) / "wheelhouse"  # filled by `make install`
REPORT_WHEELS = Path(sys.prefix) / "wheelhouse-report"  # the [report] extra's wheels, also from `make install`


def canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
  return canonical(re.match(r"[A-Za-z0-9_.-]+", req).group(0))


# ----------------------------------------------------------------------------- metadata


def test_distribution_name_extras_and_bounds():
  project = PYPROJECT["project"]
  assert project["name"] == "bn-lab"  # `bn` on PyPI is another project; the import name stays `bn`
  assert {requirement_name(r) for r in project["dependencies"]} == {"jax", "numpy", "scipy"}  # bn.stats imports scipy
  extras = project["optional-dependencies"]
  assert set(extras) == {"flax", "train", "tfds", "report", "tensorboard", "cuda12", "cuda13", "tpu", "all", "dev"}
  for accel in ("cuda12", "cuda13", "tpu"):
    assert extras[accel] == [f"jax[{accel}]>=0.10.2"]
  assert extras["all"] == ["bn-lab[flax,train,tfds,report,tensorboard]"] and "bn-lab[all]" in extras["dev"]
  # Every lower bound is the version pinned in the constraints file (the tested one).
  pins = dict(line.split("==") for line in CONSTRAINTS.read_text().splitlines() if "==" in line and not line.startswith("#"))
  pins = {canonical(k): v for k, v in pins.items()}
  for req in project["dependencies"] + [r for e in extras.values() for r in e if not r.startswith("bn-lab")]:
    name, bound = requirement_name(req.split("[")[0]), req.split(">=")[1]
    assert pins[name] == bound, (req, pins[name])


def test_installed_versions_are_the_constraints():
  """The venv the tests run in is the one the constraints file describes (`make install`)."""
  pins = [line.split("==") for line in CONSTRAINTS.read_text().splitlines() if "==" in line and not line.startswith("#")]
  wrong = []
  for name, version in pins:
    if canonical(name) in ("pip", "setuptools"):
      continue
    try:
      installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue  # e.g. a platform-specific dependency; constraints only bound what gets installed
    if installed != version:
      wrong.append(f"{name} {installed} != {version}")
  assert not wrong, f"{wrong}: re-run `make install`, or regenerate {CONSTRAINTS.name} after testing the new versions"


def test_cli_modules_map_to_extras_that_install_them():
  extras = PYPROJECT["project"]["optional-dependencies"]
  dist_of_module = {"flax": "flax", "optax": "optax", "ml_collections": "ml-collections", "orbax": "orbax-checkpoint",
                    "tqdm": "tqdm", "matplotlib": "matplotlib", "tensorflow_datasets": "tensorflow-datasets",
                    "importlib_resources": "importlib-resources", "array_record": "tensorflow-datasets",
                    "tensorboardX": "tensorboardx"}
  assert set(cli.EXTRAS) == set(dist_of_module)
  for module, extra in cli.EXTRAS.items():
    dists = {requirement_name(r) for r in extras[extra]}
    if module == "array_record":  # a dependency of tensorflow-datasets
      assert "tensorflow-datasets" in dists
    else:
      assert dist_of_module[module] in dists, (module, extra)


def test_shipped_files():
  assert (REPO / "bn" / "py.typed").exists()
  assert PYPROJECT["tool"]["setuptools"]["package-data"]["bn"] == ["py.typed"]
  license_text = (REPO / "LICENSE").read_text()
  assert license_text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in license_text
  assert "END OF TERMS AND CONDITIONS" in license_text and PYPROJECT["project"]["license"] == "Apache-2.0"
  import yaml  # PyYAML comes with the dev install (tensorflow-datasets -> ...); only for this check

  cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
  assert cff["cff-version"] == "1.2.0" and cff["license"] == "Apache-2.0" and cff["version"] == PYPROJECT["project"]["version"]
  assert cff["title"] and cff["authors"] and cff["message"]


# ----------------------------------------------------------------------------- the CLI names the extra


@pytest.mark.parametrize("module,extra", [("matplotlib", "report"), ("flax", "train"), ("orbax.checkpoint", "train"),
                                          ("ml_collections", "train"), ("tensorflow_datasets", "tfds")])
def test_missing_optional_dependency_names_the_extra(monkeypatch, capsys, module, extra):
  def handler(argv):
    raise ModuleNotFoundError(f"No module named '{module}'", name=module)

  monkeypatch.setitem(cli.HANDLERS, "report", handler)
  assert cli.main(["report", "x"]) == 2
  err = capsys.readouterr().err
  assert f"{module.split('.')[0]} is missing: pip install 'bn-lab[{extra}]'" in err and "Traceback" not in err


def test_other_import_errors_are_not_hidden(monkeypatch):
  def handler(argv):
    raise ModuleNotFoundError("No module named 'bn.nope'", name="bn.nope")

  monkeypatch.setitem(cli.HANDLERS, "report", handler)
  with pytest.raises(ModuleNotFoundError):
    cli.main(["report", "x"])
  assert cli.missing_extra(ImportError("cannot import name 'x' from 'flax'", name="flax")) is None


# ----------------------------------------------------------------------------- files keep the umask's mode


@pytest.fixture
def umask():
  def set_(mask):
    old = os.umask(mask)
    restore.append(old)
  restore = []
  yield set_
  if restore:
    os.umask(restore[0])


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_writes_get_the_umask_mode(tmp_path, umask, mask):
  umask(mask)
  assert artifacts.current_umask() == mask
  artifacts.write_json(tmp_path / "summary.json", {"a": 1})
  artifacts.write_jsonl(tmp_path / "metrics.jsonl", [{"a": 1}])
  for name in ("summary.json", "metrics.jsonl"):
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "summary.json"]  # no temp files


def test_remote_workdirs_are_refused():
  for path in ("gs://bucket/runs/a", "s3://b/x", "hdfs://nn/x"):
    with pytest.raises(UsageError, match=r"--workdir .*remote paths are not supported"):
      artifacts.check_local_path(path, "--workdir")
  for path in ("runs/a", "/tmp/x", "C:/x", "./gs:/x"):
    artifacts.check_local_path(path, "--workdir")


# ----------------------------------------------------------------------------- core-only install


CORE_CHECK = """
import importlib.util, jax, jax.numpy as jnp, bn
x = jax.random.normal(jax.random.key(0), (16, 5))
params, state = bn.init(5)
y, state = bn.batch_norm(x, params, state, train=True)
assert y.shape == (16, 5) and abs(float(y.mean())) < 1e-5 and int(state.count) == 1, (y.mean(), state)
y, _ = bn.batch_norm(x, params, state, train=False)
y, _ = bn.group_norm(jnp.ones((2, 4, 4, 8)), bn.init(8)[0], None, num_groups=4)
from bn import data, stats
assert stats.t_ppf(0.975, 4) > 2.77
missing = [m for m in ("flax", "optax", "orbax", "ml_collections", "matplotlib", "tensorflow_datasets", "tensorboardX")
           if importlib.util.find_spec(m) is not None]
assert not missing, missing
try:
  import bn.linen
except ModuleNotFoundError as e:
  assert "pip install 'bn-lab[flax]'" in str(e), e  # the adapters name the extra they need
  print("core ok")
"""


def test_core_install_needs_only_jax_and_report_needs_only_matplotlib(tmp_path):
  if not (WHEELS.is_dir() and any(WHEELS.glob("jaxlib-*.whl"))):
    if os.environ.get("CI"):
      pytest.fail(f"{WHEELS} has no core wheels: `make install` builds it")
    pytest.skip(f"{WHEELS} missing: run `make install` (it keeps the core wheels there)")
  src = tmp_path / "src"  # a copy of what the sdist holds; pip builds in it, not in the repo
  shutil.copytree(REPO / "bn", src / "bn", ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    shutil.copy(REPO / name, src / name)
  venv = tmp_path / "venv"  # --no-compile: byte-compiling jax and scipy would take 2/3 of the time
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  py = venv / "bin" / "python"
  env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
  subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index", "--find-links",
                  str(WHEELS), "--no-cache-dir", "--no-compile", "--disable-pip-version-check", str(src)],
                 check=True, env=env, cwd=tmp_path)
  run = lambda *args: subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)  # noqa: E731
  r = run(str(py), "-c", CORE_CHECK)
  assert r.returncode == 0 and "core ok" in r.stdout, r.stderr
  site = next((venv / "lib").glob("python3*/site-packages"))
  assert (site / "bn" / "py.typed").exists()
  assert not any(site.glob("flax*")) and not any(site.glob("matplotlib*"))
  dist = next(site.glob("bn_lab-0.1.0.dist-info"))
  assert "Apache License" in next(dist.rglob("LICENSE")).read_text()
  # The command line is there, and says which extra a sub-command needs.
  r = run(str(venv / "bin" / "bn"), "train", "--config", "ioffe_mlp", "--workdir", str(tmp_path / "w"))
  assert r.returncode == 2 and "pip install 'bn-lab[train]'" in r.stderr and "Traceback" not in r.stderr, r.stderr
  r = run(str(venv / "bin" / "bn"), "train", "--help")  # the help needs no extra
  assert r.returncode == 0 and "--workdir" in r.stdout and "--no-compile-cache" in r.stdout, r.stderr
  r = run(str(py), "-c", "import bn\ntry:\n  bn.restore\nexcept ModuleNotFoundError as e:\n  print(e.name)")
  assert r.returncode == 0 and r.stdout.split() == ["ml_collections"], r.stderr  # bn.restore needs [train]; the CLI names it
  r = run(str(venv / "bin" / "bn"), "data", "list")
  assert r.returncode == 0 and "fashion_mnist" in r.stdout, r.stderr
  # Then the [report] extra alone (matplotlib's wheels, kept apart by `make install`): `bn report` turns a ledger's JSON into
  # the report and its figures with no flax, optax, orbax or ml_collections installed.
  if not (REPORT_WHEELS.is_dir() and any(REPORT_WHEELS.glob("matplotlib-*.whl"))):
    if os.environ.get("CI"):
      pytest.fail(f"{REPORT_WHEELS} has no matplotlib wheel: `make install` builds it")
    return
  subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index", "--find-links", str(WHEELS),
                  "--find-links", str(REPORT_WHEELS), "--no-cache-dir", "--no-compile", "--disable-pip-version-check", f"{src}[report]"],
                 check=True, env=env, cwd=tmp_path)
  assert not any(site.glob("flax*")) and not any(site.glob("optax*")) and not any(site.glob("ml_collections*"))
  import test_claims  # the hand-written ledger of test_report_build_on_a_hand_written_ledger (C2', C6), written here

  out = tmp_path / "ledger"
  test_claims._ledger(out)
  r = run(str(venv / "bin" / "bn"), "report", str(out))
  assert r.returncode == 0, r.stderr
  text = (out / "report.md").read_text()
  assert "## C6 —" in text and "## C2' —" in text, text[:2000]
  assert (out / "c6_depth.png").stat().st_size > 1000
