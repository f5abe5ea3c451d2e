"""Other MLflow versions for the tests, each in its own venv, built once and cached outside the repository.

`~/.cache/neptune-migration/mlflow-servers/<version>/` holds a venv with `mlflow==<version>` (the path the server
version fixtures use too). A venv is built under a file lock, so parallel test processes wait for one build, and
marked complete only when pip succeeded. MLflow 2.x and 3.0-3.10 need `sqlalchemy<2.1` beside them: with 2.1
`mlflow server` dies at start-up (docs/mlflow.md, "Server versions").
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("NEPTUNE_MIGRATION_TEST_CACHE", Path.home() / ".cache" / "neptune-migration"))
COMPLETE = ".complete"


def _needs_old_sqlalchemy(version: str) -> bool:
    major, minor = (int(x) for x in version.split(".")[:2])
    return (major, minor) < (3, 11)


def mlflow_venv(version: str) -> Path:
    """The venv's folder (its `bin/mlflow`, `bin/python`), building it if absent."""
    venv = CACHE / "mlflow-servers" / version
    if (venv / COMPLETE).exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / COMPLETE).exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)  # a build that died half-way
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        wants = [f"mlflow=={version}"] + (["sqlalchemy<2.1"] if _needs_old_sqlalchemy(version) else [])
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *wants],
                       check=True, env=env, timeout=1200)
        (venv / COMPLETE).write_text(" ".join(wants) + "\n")
    return venv


def run_in(venv: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A command of the venv (`mlflow`, `python`) with none of this process's Python settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], env=env, capture_output=True, text=True,
                          timeout=timeout)


if __name__ == "__main__":  # build ahead of a test run: python tests/mlflow_venvs.py 2.16.2 3.10.1
    for wanted in sys.argv[1:]:
        print(mlflow_venv(wanted))
