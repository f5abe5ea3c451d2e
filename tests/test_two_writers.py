"""Two writers, two ledgers, one MLflow: never two MLflow runs for one Neptune run, and exit codes that tell the
truth (a process that refused says so and exits non-zero)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from neptune_migration.archive import Archive
from neptune_migration.samples import write_nasty_archive

from .conftest import VENV_BIN, run_cli


def test_two_loads_with_different_ledgers_make_one_run_per_key(tmp_path: Path, mlflow_server: Any,
                                                               prefix: str) -> None:
    from mlflow.tracking import MlflowClient

    archive = write_nasty_archive(tmp_path / "archive")
    keys = {r.ref.key for r in Archive(archive).scan().runs}

    def start(i: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(VENV_BIN / "neptune-migrate"), "load", "--archive", str(archive), "--state",
             str(tmp_path / f"state-{i}.db"), "--mlflow-tracking-uri", mlflow_server.uri, "--experiment-prefix",
             prefix, "--no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, NEPTUNE_MIGRATION_RETRIES="2"))

    procs = [start(1), start(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert "Traceback" not in out + err
        # Either it loaded everything, or it failed and says that another writer holds the experiment.
        assert code == 0 or ((code == 1 and "another neptune-migrate" in out + err)
                             or "another writer created" in out + err), (code, out[-2000:], err[-2000:])
    assert any(code == 0 for code, _, _ in results) or all(code == 1 for code, _, _ in results)

    client = MlflowClient(mlflow_server.uri)
    experiments = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    runs = client.search_runs(experiments, max_results=1000)
    held = [r.data.tags.get("neptune.run_key") for r in runs]
    assert len(held) == len(set(held)), f"duplicate MLflow runs for one Neptune run: {sorted(held)}"

    # Whatever happened, a rerun with either ledger completes the target, and validation finds it exact.
    done = run_cli("load", "--archive", str(archive), "--state", str(tmp_path / "state-2.db"),
                   "--mlflow-tracking-uri", mlflow_server.uri, "--experiment-prefix", prefix, "--no-progress")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    checked = run_cli("validate", "--archive", str(archive), "--state", str(tmp_path / "state-2.db"),
                      "--mlflow-tracking-uri", mlflow_server.uri, "--experiment-prefix", prefix,
                      "--report-dir", str(tmp_path / "report"), "--no-progress")
    assert checked.returncode == 0, checked.stdout[-3000:]
    runs = client.search_runs(experiments, max_results=1000)
    assert sorted(r.data.tags.get("neptune.run_key") for r in runs) == sorted(keys)
