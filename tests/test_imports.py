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


PURE = ["bn.norm", "bn._options", "bn._moments", "bn._noise", "bn.errors", "bn.stats", "bn.probes"]


@pytest.mark.parametrize("module", PURE)
def test_the_pure_modules_import_no_flax_and_nothing_above_them(module):
  path = PKG.parent / (module.replace(".", "/") + ".py")
  text = path.read_text()
  assert "flax" not in {n.split(".")[0] for node in ast.walk(ast.parse(text)) if isinstance(node, (ast.Import, ast.ImportFrom))
                        for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])}
  assert graph()[module] <= {"bn.errors", "bn._moments", "bn._noise", "bn._options"}, graph()[module]


# ----------------------------------------------------------------------------- the report side reads JSON only

TRAINING_LIBS = {"jax", "flax", "optax", "ml_collections"}
ENGINE = {"bn.models", "bn.train", "bn.programs", "bn.loop", "bn.experiment", "bn.data", "bn.parallel", "bn.probes",
          "bn.run_probes", "bn.norm", "bn.trainer", "bn.measure", "bn.ledger"}
REPORT_SIDE = ["bn.analysis", "bn.stats", "bn.report", "bn.plotting", "bn.prereg", "bn.artifacts", "bn.provenance"]


def third_party_imports(path: Path) -> set[str]:
  """The top-level names of every non-``bn`` import in ``path``, at module level or inside a function."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and not node.level:
      out.add((node.module or "").split(".")[0])
  return out - {"bn"}


def claim_modules() -> list[str]:
  return sorted(module_name(p) for p in (PKG / "claims").glob("*.py"))


@pytest.mark.parametrize("module", claim_modules() + REPORT_SIDE)
def test_claims_and_the_report_import_no_training_library(module):
  path = PKG.parent / (module.replace(".", "/") + ".py")
  path = path if path.is_file() else path.with_suffix("") / "__init__.py"
  assert not third_party_imports(path) & TRAINING_LIBS, third_party_imports(path)


@pytest.mark.parametrize("module", claim_modules())
def test_claims_import_no_engine_module(module):
  """A claim reads JSON: its experiments' runners live in bn.measure, the training in bn.loop."""
  assert not graph()[module] & ENGINE, graph()[module] & ENGINE


BLOCKED_RUN = """
import sys
import bn  # the core: bn.norm needs jax, which every install has
loaded = set(sys.modules)


class Blocker:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {"jax", "jaxlib", "flax", "optax", "ml_collections", "orbax"}:
      raise ImportError(f"blocked: {name}")
    return None


sys.meta_path.insert(0, Blocker())
from bn import claims, cli, report
assert len(claims.all_claims()) > 5
assert cli.main(["report", sys.argv[1]]) == 0
engine = %r
new = sorted(m for m in set(sys.modules) - loaded if m in engine or m.split(".")[0] in ("jax", "jaxlib"))
assert not new, new
print("report ok")
"""


def test_claims_and_report_run_without_the_training_libraries(tmp_path):
  """Every claim module and ``bn.report`` import, and the report builds from a hand-written ledger, in a
  process where jax (beyond what ``import bn`` loaded), flax, optax and ml_collections cannot be imported."""
  import os
  import subprocess
  import sys

  import claim_fixtures as fx
  from bn import artifacts

  depths, seeds = (2, 4, 8), range(len(fx.SEEDS))
  for cond, kind, slope in (("bn", "batch", 0.2), ("none", "none", 0.01)):
    result = fx.depth_result(depths, [[slope * d for _ in seeds] for d in depths])
    fx.write_condition(tmp_path / "depth_init" / cond, fx.measured(fx.config("depth_init", {"norm.kind": kind}), result))
  artifacts.write_json(tmp_path / "ledger.json", {"mode": "quick", "dataset": None, "experiments": {"depth_init": ["bn", "none"]}})
  engine = sorted(ENGINE - {"bn.norm", "bn.data"})  # bn.norm: `import bn`; bn.data: numpy-only host data, read by bn.analysis
  r = subprocess.run([sys.executable, "-c", BLOCKED_RUN % (engine,), str(tmp_path)], capture_output=True, text=True,
                     cwd=PKG.parent, env={**os.environ, "MPLBACKEND": "Agg"})
  assert r.returncode == 0 and "report ok" in r.stdout, r.stderr[-3000:]
  claims = {c["id"]: c for c in artifacts.read_json(tmp_path / "claims.json")["claims"]}
  assert claims["C6"]["verdict"] == "supported", claims["C6"]
