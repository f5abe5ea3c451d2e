"""The "open the MLflow UI" hint is a command that works for every kind of store, and a migrated experiment is
marked as a model-training experiment so MLflow 3's UI opens it on its runs.

The SQLite case runs the printed `mlflow ui` command for real (on another port than the hint's 5000, which a test
cannot own) and reads the migrated experiment back through the UI's own API.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import requests
from mlflow.tracking import MlflowClient

import neptune_migration as nm
from neptune_migration.targets.mlflow.loader import EXPERIMENT_KIND, TRAINING_KIND, ui_command

from .conftest import free_port
from .test_browser import write_ui_archive


def _serve(command: str, port: int) -> subprocess.Popen[bytes]:
    argv = shlex.split(command)
    argv[argv.index("--port") + 1] = str(port)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_the_hint_for_a_sqlite_store_serves_the_migrated_experiment(tmp_path: Path) -> None:
    archive = write_ui_archive(tmp_path / "archive")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    loaded = nm.load(archive=archive, to="mlflow", mlflow_tracking_uri=uri, state=tmp_path / "state.db",
                     progress=False)
    assert loaded.ok, loaded.to_dict()
    assert loaded.hint and loaded.hint.startswith("Open the MLflow UI: ")
    command, _, pages = loaded.hint.removeprefix("Open the MLflow UI: ").partition("\nthen open ")
    experiment = MlflowClient(uri).get_experiment_by_name("acme/vision")
    assert experiment.tags[EXPERIMENT_KIND] == TRAINING_KIND
    assert pages == f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    port = free_port()
    server = _serve(command, port)
    try:
        deadline = time.monotonic() + 90
        found = None
        while time.monotonic() < deadline and found is None:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name",
                                      params={"experiment_name": "acme/vision"}, timeout=2)
                found = answer.json()["experiment"] if answer.ok else None
            except requests.RequestException:
                time.sleep(0.5)
        assert found is not None, f"`{command}` never served the store"
        assert found["experiment_id"] == experiment.experiment_id
    finally:
        server.terminate()
        server.wait(20)


def test_the_hint_for_a_database_store_is_a_command_without_the_password() -> None:
    hint = ui_command("postgresql://alice:s3cret@db.internal:5432/mlflow", ["7"])
    command, _, pages = hint.partition("\nthen open ")
    assert "s3cret" not in hint
    assert " ui --backend-store-uri postgresql://alice@db.internal:5432/mlflow --port 5000" in command
    assert "PGPASSWORD" in command
    assert pages == "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    # No password: nothing to say about one; the URI is pasted as it is.
    assert "PGPASSWORD" not in ui_command("mysql+pymysql://bob@127.0.0.1/mlflow")


def test_the_hint_for_a_server_opens_its_experiment_pages() -> None:
    hint = ui_command("https://user:pw@mlflow.example.org/", ["3", "12"])
    assert hint == ("open https://mlflow.example.org/#/experiments/3?workflowType=machine_learning "
                    "https://mlflow.example.org/#/experiments/12?workflowType=machine_learning in a browser")
