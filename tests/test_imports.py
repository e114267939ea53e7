"""The house rules of the import graph of ``bn/``, built from the source (every import statement,
at module level or inside a function): no cycles, and the pure core stays free of Flax."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "bn"


def module_name(path: Path) -> str:
  parts = path.relative_to(PKG.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
  rel = Path(*name.split("."))
  return (PKG.parent / rel).with_suffix(".py").is_file() or (PKG.parent / rel / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
  """The ``bn`` modules ``path`` imports (``from bn import x`` counts x when it is a module)."""
  out = set()
  package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.split(".")[0] == "bn"}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
      if base.split(".")[0] != "bn":
        continue
      out.add(base)
      out |= {f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")}
  return {m for m in out if is_module(m)}


def graph() -> dict[str, set[str]]:
  return {module_name(p): imports(p) - {module_name(p)} for p in PKG.rglob("*.py")}


def find_cycle(g):
  state, stack = {}, []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for m in sorted(g.get(n, ())):
      if state.get(m) == 1:
        return stack[stack.index(m):] + [m]
      if m not in state and (c := visit(m)):
        return c
    state[n] = 2
    stack.pop()
    return None

  for n in sorted(g):
    if n not in state and (c := visit(n)):
      return c
  return None


def test_the_graph_is_read_from_the_source():
  g = graph()
  assert "bn.trainer" in g["bn.loop"] and "bn.programs" in g["bn.trainer"] and "bn.train" in g["bn.programs"]
  assert "bn.bench.core" in g["bn.bench.cases"]


def test_no_import_cycles():
  assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_cycle_finder_finds_a_planted_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


PURE = ["bn.norm", "bn._moments", "bn._noise", "bn.errors", "bn.stats", "bn.probes"]


@pytest.mark.parametrize("module", PURE)
def test_the_pure_modules_import_no_flax_and_nothing_above_them(module):
  path = PKG.parent / (module.replace(".", "/") + ".py")
  text = path.read_text()
  assert "flax" not in {n.split(".")[0] for node in ast.walk(ast.parse(text)) if isinstance(node, (ast.Import, ast.ImportFrom))
                        for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])}
  assert graph()[module] <= {"bn.errors", "bn._moments", "bn._noise"}, graph()[module]
