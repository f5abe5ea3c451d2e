"""The wheel: its files and entry points, a core-only install in a fresh venv, and what each extra pulls in.

Needs the package index (pip fetches setuptools for the build, the core dependencies, and the extras' metadata).
The project is copied into a temporary folder before building, so nothing is written into src/.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest

from .conftest import FIXTURES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CLIENTS = {"mlflow", "wandb", "neptune", "neptune-query", "neptune-scale"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def run(cmd: list[str], cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    # Without PYTHONPATH: what runs must be the installed wheel, not this checkout's src/.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def check(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("packaging")


@pytest.fixture(scope="module")
def wheel(workdir: Path) -> Path:
    project = workdir / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = workdir / "dist"
    check(run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(project)], workdir))
    (built,) = dist.glob("neptune_migration-*.whl")
    return built


def test_wheel_has_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "neptune_migration/py.typed" in names
    package = ROOT / "src" / "neptune_migration"
    for pattern in PYPROJECT["tool"]["setuptools"]["package-data"]["neptune_migration"]:
        # Everything the pattern matches in the source tree is in the wheel.
        in_tree = {f"neptune_migration/{p.relative_to(package).as_posix()}" for p in package.glob(pattern)}
        in_wheel = {n for n in names if fnmatch(n, f"neptune_migration/{pattern}")}
        assert in_tree <= in_wheel, f"{pattern}: missing from the wheel: {sorted(in_tree - in_wheel)}"


def test_wheel_declares_entry_points(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        (path,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = zf.read(path).decode()
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    declared = PYPROJECT["project"]["entry-points"]
    for group in ("neptune_migration.targets", "neptune_migration.sources"):
        assert parser.has_section(group), f"{group} missing from entry_points.txt:\n{text}"
        assert dict(parser[group]) == declared[group]
    assert parser["console_scripts"]["neptune-migrate"] == PYPROJECT["project"]["scripts"]["neptune-migrate"]


def test_core_install_in_a_fresh_venv(wheel: Path, workdir: Path) -> None:
    venv = workdir / "venv"
    check(run([sys.executable, "-m", "venv", str(venv)], workdir))
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    check(run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], workdir, timeout=240))

    installed = check(run([str(python), "-m", "pip", "list", "--format", "json"], workdir)).stdout
    names = {canonical(p["name"]) for p in json.loads(installed)}
    assert "neptune-migration" in names
    assert not names & CLIENTS, f"the core install pulled in {sorted(names & CLIENTS)}"

    check(run([str(python), "-c", "import neptune_migration"], workdir))

    check(run([str(bin_dir / "neptune-migrate"), "--help"], workdir))
    listed = check(run([str(bin_dir / "neptune-migrate"), "load", "--help"], workdir)).stdout
    assert "--mlflow-tracking-uri" in listed and "--wandb-dir" in listed  # plug-ins are listed without their clients
    version = check(run([str(python), "-m", "neptune_migration", "--version"], workdir)).stdout
    assert "neptune-migrate 0.1.0" in version and "mlflow not installed" in version, version

    # A target whose client is missing: one line naming the extra to install, usage exit code, no traceback.
    # The archive is a real one (an empty folder is refused first, by the preflight's archive check).
    exported = FIXTURES / "neptune3"
    refused = run([str(bin_dir / "neptune-migrate"), "load", "--archive", str(exported / "data"), "--files",
                   str(exported / "files"), "--to", "mlflow", "--state", str(workdir / "s.db")], workdir)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "pip install 'neptune-migration[mlflow]'" in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    ("extra", "wanted", "unwanted"),
    [
        ("mlflow", {"mlflow"}, CLIENTS - {"mlflow"}),
        ("wandb", {"wandb"}, CLIENTS - {"wandb"}),
        ("all", CLIENTS, {"typer"}),
    ],
)
def test_extra_resolves_only_its_client(
    wheel: Path, workdir: Path, extra: str, wanted: set[str], unwanted: set[str]
) -> None:
    report = workdir / f"report-{extra}.json"
    requirement = f"neptune-migration[{extra}] @ {wheel.as_uri()}"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    check(run([*cmd, "--report", str(report), requirement], workdir, timeout=240))
    resolved = {canonical(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    assert wanted <= resolved
    assert not resolved & unwanted, f"[{extra}] pulls in {sorted(resolved & unwanted)}"


def _versions(python: Path, workdir: Path) -> dict[str, str]:
    listed = check(run([str(python), "-m", "pip", "list", "--format", "json"], workdir)).stdout
    return {canonical(p["name"]): p["version"] for p in json.loads(listed)}


def test_mlflow_extra_keeps_the_mlflow_a_venv_holds(wheel: Path, workdir: Path) -> None:
    """A team's venv with the newest MLflow the extra's range allows: installing us adds packages and changes none
    (no pin pulls mlflow, or anything beside it, down). Real pip resolution against the package index; pip's own
    cache keeps the second run quick."""
    newest = "3.18.0"
    venv = workdir / "team-venv"
    check(run([sys.executable, "-m", "venv", str(venv)], workdir))
    python = venv / "bin" / "python"
    check(run([str(python), "-m", "pip", "install", "--quiet", f"mlflow=={newest}"], workdir, timeout=900))
    before = _versions(python, workdir)
    assert before["mlflow"] == newest

    check(run([str(python), "-m", "pip", "install", "--quiet", f"neptune-migration[mlflow] @ {wheel.as_uri()}"],
              workdir, timeout=600))
    after = _versions(python, workdir)
    changed = {name: (v, after.get(name)) for name, v in before.items() if after.get(name) != v}
    assert not changed, f"installing neptune-migration[mlflow] changed the team's packages: {changed}"
    assert after["mlflow"] == newest and "neptune-migration" in after
    version = check(run([str(venv / "bin" / "neptune-migrate"), "--version"], workdir)).stdout
    assert f"mlflow {newest}" in version, version
