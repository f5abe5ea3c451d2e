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
