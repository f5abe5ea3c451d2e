"""Tokens never appear in stdout, stderr, logs, reports, the ledger or the archive."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from neptune_migration.sandbox import Sandbox, demo_project
from neptune_migration.secrets import redact

from .conftest import run_cli

MLFLOW_TOKEN = "mlflow-secret-token-0123456789"
WANDB_KEY = "wandbsecretkey" + "0" * 26
API_KEY = "neptune-secret-api-key-ABCDEFGH"
URI_PASSWORD = "uri-password-QWERTY-987"


def _everything_written(root: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def sandbox() -> Any:
    with Sandbox([demo_project()], api_key=API_KEY) as sb:
        yield sb


def test_no_command_leaks_a_token(sandbox: Any, tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    env = dict(sandbox.env(), MLFLOW_TRACKING_TOKEN=MLFLOW_TOKEN, WANDB_API_KEY=WANDB_KEY)
    token = env["NEPTUNE_API_TOKEN"]
    assert API_KEY in base64.b64decode(token).decode()
    secrets = [token, API_KEY, MLFLOW_TOKEN, WANDB_KEY, URI_PASSWORD]
    work = tmp_path / "work"
    work.mkdir()
    common = ["--state", str(work / "state.db"), "--log-file", str(work / "log.txt"), "-v", "--no-progress"]
    results = [
        run_cli("discover", "--from", "neptune3", "-p", "sandbox/demo", "--json", env=env, cwd=work),
        run_cli("export", "--from", "neptune3", "-p", "sandbox/demo", "--archive", str(work / "archive"), *common,
                env=env, cwd=work),
        run_cli("migrate", "--from", "neptune3", "-p", "sandbox/demo", "--to", "mlflow", "--mlflow-tracking-uri",
                mlflow_server.uri, "--experiment-prefix", prefix, "--archive", str(work / "archive2"),
                "--report-dir", str(work / "report"), *common, env=env, cwd=work),
        run_cli("status", "--state", str(work / "state.db"), "--json", env=env, cwd=work),
        # failures print errors: a wrong project, an unreachable tracking server, a refused token
        run_cli("export", "--from", "neptune3", "-p", "sandbox/nope", "--archive", str(work / "a3"), *common,
                env=env, cwd=work),
        run_cli("load", "--archive", str(work / "archive"), "--mlflow-tracking-uri",
                f"http://user:{URI_PASSWORD}@127.0.0.1:9", *common, env=env, cwd=work),
        run_cli("export", "--from", "neptune3", "-p", "sandbox/demo", "--archive", str(work / "a4"), *common,
                env=dict(env, NEPTUNE_API_TOKEN=base64.b64encode(json.dumps(
                    {"api_address": sandbox.url, "api_url": sandbox.url, "api_key": API_KEY + "-wrong"}).encode()
                ).decode()), cwd=work),
    ]
    assert results[2].returncode == 0, results[2].stdout[-2000:] + results[2].stderr[-2000:]
    assert results[4].returncode != 0 and results[5].returncode != 0 and results[6].returncode != 0
    written = _everything_written(work)
    assert (work / "log.txt").exists() and (work / "report" / "report.json").exists()
    for secret in secrets:
        for r in results:
            assert secret not in r.stdout and secret not in r.stderr, (secret, r.args)
        assert secret.encode() not in written, secret
    assert (API_KEY + "-wrong").encode() not in written


def test_redact_removes_tokens_from_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    text = f"POST failed: Authorization: Bearer abcdefghijklmnop key={WANDB_KEY} token=xyz12345"
    cleaned = redact(text)
    assert WANDB_KEY not in cleaned and "abcdefghijklmnop" not in cleaned and "xyz12345" not in cleaned
