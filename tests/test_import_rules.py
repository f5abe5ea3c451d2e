"""The import rules in pyproject.toml ([tool.importlinter]) hold for the package, and each one really bites.

The second part never touches src/: it copies the package into a temporary folder, adds a module that breaks one
rule, and runs the same configuration against the copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
CONFIG = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason=f"import-linter is not installed beside {sys.executable} (the test extra has it)"
)


def contract_names() -> dict[str, str]:
    config = tomllib.loads(CONFIG.read_text())
    return {c["id"]: c["name"] for c in config["tool"]["importlinter"]["contracts"]}


def lint_imports(src: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on the package under `src` with the project's configuration; no cache, no wrapping."""
    env = dict(os.environ, PYTHONPATH=str(src), COLUMNS="1000", NO_COLOR="1")
    return subprocess.run(
        [str(LINT_IMPORTS), str(CONFIG), "--no-cache", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_package_keeps_every_contract(tmp_path: Path) -> None:
    result = lint_imports(SRC, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# Each case: the contract it breaks, and the modules to add to a copy of the package.
BREAKS = {
    "sandbox-protected": {"targets/mlflow/_bad.py": "import neptune_migration.sandbox\n"},
    "sources-targets-independent": {"targets/mlflow/_bad.py": "import neptune_migration.sources.base\n"},
    "layers": {"archive/_bad.py": "import neptune_migration.stages.load\n"},
    "acyclic": {
        "targets/mlflow/_bad_a.py": "import neptune_migration.targets.mlflow._bad_b\n",
        "targets/mlflow/_bad_b.py": "import neptune_migration.targets.mlflow._bad_a\n",
    },
}


@pytest.fixture(scope="module")
def pristine_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("pristine") / "src"
    shutil.copytree(SRC / "neptune_migration", copy / "neptune_migration", ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.mark.parametrize("contract", sorted(BREAKS))
def test_breaking_a_rule_fails(contract: str, pristine_copy: Path, tmp_path: Path) -> None:
    name = contract_names()[contract]
    copy = tmp_path / "src"
    shutil.copytree(pristine_copy, copy)

    # On the untouched copy nothing names the added modules (the contract may be broken already for other
    # reasons, see test_package_keeps_every_contract), so what the run below reports is their doing.
    before = lint_imports(copy, tmp_path, "--contract", contract)
    assert "_bad" not in before.stdout

    for relative, text in BREAKS[contract].items():
        (copy / "neptune_migration" / relative).write_text(text)
    after = lint_imports(copy, tmp_path, "--contract", contract)
    assert after.returncode != 0, after.stdout + after.stderr
    assert f"{name} BROKEN" in after.stdout
    assert "_bad" in after.stdout
    assert not list(SRC.rglob("_bad*.py")), "the test wrote into src/"


# import-linter's acyclic_siblings rule compares siblings only: a package's face (__init__) that imports a child
# inside a function while the child imports a constant from the face is a cycle it never sees. This check counts
# every import grimp finds, function-level ones included, between any two modules.
_CYCLES = """
import sys
import grimp

graph = grimp.build_graph("neptune_migration", cache_dir=None)
edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
index, low, stack, on, found = {}, {}, [], set(), []
sys.setrecursionlimit(10_000)

def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        part = []
        while not part or part[-1] != v:
            part.append(stack.pop())
            on.discard(part[-1])
        if len(part) > 1:
            found.append(" ".join(sorted(part)))

for module in sorted(edges):
    if module not in index:
        visit(module)
print("\\n".join(found))
"""


def module_cycles(src: Path, cwd: Path) -> list[str]:
    """Each cycle in the package's import graph (function-level imports counted), as its modules."""
    env = dict(os.environ, PYTHONPATH=str(src))
    result = subprocess.run([sys.executable, "-c", _CYCLES], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=120, check=True)
    return [line for line in result.stdout.splitlines() if line]


def test_no_import_cycle_counting_imports_inside_functions(tmp_path: Path) -> None:
    assert module_cycles(SRC, tmp_path) == []


def test_a_cycle_through_a_function_level_import_is_found(pristine_copy: Path, tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(pristine_copy, copy)
    face = copy / "neptune_migration" / "targets" / "mlflow" / "__init__.py"
    face.write_text(face.read_text() + "\n\ndef _lazy():\n    from neptune_migration.targets.mlflow import _bad\n")
    (face.parent / "_bad.py").write_text("from neptune_migration.targets.mlflow import MAPPING_VERSION\n")
    cycles = module_cycles(copy, tmp_path)
    assert cycles == ["neptune_migration.targets.mlflow neptune_migration.targets.mlflow._bad"]
