"""Every ```python block of README.md runs as written: the blocks of one section (## heading) run in
order in one namespace, as a reader pasting them one after another would (shell blocks are not run)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def sections(text: str) -> dict[str, list[str]]:
  """``{section heading: [python block, ...]}`` for the sections that have python blocks (### subsections
  belong to their ## section)."""
  out, name = {}, "(top)"
  for m in re.finditer(r"^## ([^\n]+)$|^```python\n(.*?)^```$", text, re.M | re.S):
    if m.group(1) is not None:
      name = m.group(1).strip()
    else:
      out.setdefault(name, []).append(m.group(2))
  return out


SECTIONS = sections(README.read_text())


def test_the_readme_has_python_blocks_to_run():
  assert sum(map(len, SECTIONS.values())) >= 4 and "API tour" in SECTIONS
  assert sections("## A\n```python\nx = 1\n```\n```sh\nls\n```\n## B\n```python\ny = 2\n```\n") == {"A": ["x = 1\n"], "B": ["y = 2\n"]}


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_readme_section_runs_as_written(name, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # blocks that write files (a workdir) write them here
  ns = {"__name__": "__readme__"}
  for i, block in enumerate(SECTIONS[name]):
    try:
      exec(compile(block, f"README.md [{name}] block {i + 1}", "exec"), ns)
    except Exception as e:
      raise AssertionError(f"README.md section {name!r}, python block {i + 1} fails as written: {type(e).__name__}: {e}") from e


def test_the_module_map_names_every_module():
  """"How the code is laid out" names every module of ``bn/`` (``bn/x.py``; a sub-package as ``bn/x/``), the package's
  ``__init__`` and ``__main__`` aside: a new module is added to the map with the job it owns."""
  text = README.read_text()
  section = text[text.index("## How the code is laid out"):text.index("**The path of a config value.**")]
  named = set(re.findall(r"`(bn/[\w/]+(?:\.py)?)`", section))
  pkg = README.parent / "bn"
  modules = {f"bn/{p.name}" for p in pkg.glob("*.py") if p.stem not in ("__init__", "__main__")}
  modules |= {f"bn/{p.name}/" for p in pkg.iterdir() if (p / "__init__.py").is_file()}
  assert len(modules) > 30 and "bn/norm.py" in modules and "bn/claims/" in modules
  assert not modules - named, f"README.md's module map does not name {sorted(modules - named)}"


# Modules tested only by topic so far (through the commands and files that use them); a new module comes with its own file.
TESTED_BY_TOPIC_ONLY = {"cli", "distributed", "errors", "plotting", "run_probes",
                        "trainer", "workdir", "measure"}


def test_every_module_has_its_test_file():
  """``bn/<module>.py`` (or the package ``bn/<module>/``) has ``tests/test_<module>.py``, except private modules (tested
  through their public one) and the modules listed above; a listed module that gets its file leaves the list."""
  pkg, tests = README.parent / "bn", README.parent / "tests"
  modules = {p.stem for p in pkg.glob("*.py") if not p.stem.startswith("_")} | {p.name for p in pkg.iterdir() if (p / "__init__.py").is_file()}
  have = {p.stem.removeprefix("test_") for p in tests.glob("test_*.py")}
  assert TESTED_BY_TOPIC_ONLY <= modules, sorted(TESTED_BY_TOPIC_ONLY - modules)
  assert not modules - have - TESTED_BY_TOPIC_ONLY, f"modules without tests/test_<module>.py: {sorted(modules - have - TESTED_BY_TOPIC_ONLY)}"
  assert not TESTED_BY_TOPIC_ONLY & have, f"now with a test file of their own, take them off the list: {sorted(TESTED_BY_TOPIC_ONLY & have)}"
