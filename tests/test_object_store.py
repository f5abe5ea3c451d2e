"""Archives on object storage: export to, load from and validate against `s3://bucket/prefix`.

A real S3-compatible server (moto in server mode) runs on loopback for the module, with request signing enforced
so wrong credentials are refused as they would be by AWS. The CLI runs in subprocesses and finds the endpoint the
way a user's shell would give it: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neptune_migration.archive import Archive, ArchiveWriter
from neptune_migration.archive import storage as storage_module
from neptune_migration.errors import UnsafePathError
from neptune_migration.sandbox import Sandbox, demo_project
from neptune_migration.vocabulary import RunRef, folder_name

from .archive_compare import archive_digest
from .conftest import FIXTURES, free_port, run_cli

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

DEMO = "sandbox/demo"
BUCKET = "archives"


class S3Server:
    """moto's server on 127.0.0.1 with one bucket and one IAM user whose keys the tests use."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        admin = {"endpoint_url": self.url, "region_name": "us-east-1", "aws_access_key_id": "admin",
                 "aws_secret_access_key": "admin-secret"}
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="migrator")
        iam.put_user_policy(UserName="migrator", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="migrator")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
        # From here on every request must be signed by a known key: wrong credentials get 403 as on AWS.
        req = urllib.request.Request(self.url + "/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=5)
        self.client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                                   aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)

    def env(self, **override: str) -> dict[str, str]:
        env = {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
               "AWS_ENDPOINT_URL": self.url, "AWS_REGION": "us-east-1"}
        env.update(override)
        return env

    def keys(self, prefix: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["Size"]
        return out

    def upload_tree(self, local: Path, prefix: str) -> None:
        for path in sorted(local.rglob("*")):
            if path.is_file():
                self.client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(local).as_posix()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Any]:
    with Sandbox([demo_project()]) as sb:
        yield sb


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS environment in this process too (for reading the bucket archive in-process)."""
    env = s3.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return env


def _cli(*args: str, env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    # A private TMPDIR shows whether a command leaves fetched payloads behind.
    (tmp / "tmpdir").mkdir(exist_ok=True)
    return run_cli(*args, "--no-progress", env={**env, "TMPDIR": str(tmp / "tmpdir")}, cwd=tmp)


def _local_files(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_export_load_validate_round_trip(s3: S3Server, s3_env: dict[str, str], sandbox: Any, tmp_path: Path,
                                        mlflow_server: Any, prefix: str) -> None:
    env = {**sandbox.env(), **s3_env}
    url = f"s3://{BUCKET}/round-trip"
    exported = _cli("export", "--from", "neptune3", "-p", DEMO, "--archive", url + "/",
                    "--state", str(tmp_path / "s.db"), env=env, tmp=tmp_path)
    assert exported.returncode == 0, exported.stderr + exported.stdout
    assert f"Export into {url}" in exported.stdout
    local = _cli("export", "--from", "neptune3", "-p", DEMO, "--archive", str(tmp_path / "local"),
                 "--state", str(tmp_path / "local.db"), env=env, tmp=tmp_path)
    assert local.returncode == 0, local.stderr

    # The bucket holds exactly what the local export wrote: same rows, same payload files and sizes, no staging.
    assert archive_digest(url) == archive_digest(tmp_path / "local")  # type: ignore[arg-type]
    remote = {k.removeprefix("round-trip/"): v for k, v in s3.keys("round-trip/").items() if not k.endswith("/")}
    assert remote == _local_files(tmp_path / "local")
    assert not list((tmp_path / "tmpdir").iterdir()), "the export left staged parts or files behind"

    loaded = _cli("load", "--archive", url, "--to", "mlflow", "--mlflow-tracking-uri", mlflow_server.uri,
                  "--experiment-prefix", prefix, "--state", str(tmp_path / "s.db"), env=env, tmp=tmp_path)
    assert loaded.returncode == 0, loaded.stderr + loaded.stdout
    runs = len(Archive(tmp_path / "local").scan().runs)
    assert f"runs loaded                     {runs}" in loaded.stdout or f"runs loaded {runs}" in " ".join(
        loaded.stdout.split())
    checked = _cli("validate", "--archive", url, "--to", "mlflow", "--mlflow-tracking-uri", mlflow_server.uri,
                   "--experiment-prefix", prefix, "--state", str(tmp_path / "s.db"),
                   "--report-dir", str(tmp_path / "report"), env=env, tmp=tmp_path)
    assert checked.returncode == 0, checked.stderr + checked.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["totals"]["runs_validated"] == runs and report["archive"] == url
    assert not list((tmp_path / "tmpdir").iterdir()), "load/validate left fetched payloads behind"
    # The ledger is where --state says, never in the bucket.
    assert not [k for k in s3.keys("round-trip/") if k.endswith(".db")]

    # The same archive loaded from the local copy lands the same artifacts.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    local_prefix = prefix + "local-"
    again = _cli("load", "--archive", str(tmp_path / "local"), "--to", "mlflow", "--mlflow-tracking-uri",
                 mlflow_server.uri, "--experiment-prefix", local_prefix, "--state", str(tmp_path / "l.db"),
                 env=env, tmp=tmp_path)
    assert again.returncode == 0, again.stderr
    assert _mlflow_contents(client, prefix, exclude=local_prefix) == _mlflow_contents(client, local_prefix)


def _mlflow_contents(client: Any, prefix: str, exclude: str | None = None) -> dict[str, Any]:
    out = {}
    exps = [e.experiment_id for e in client.search_experiments()
            if e.name.startswith(prefix) and not (exclude and e.name.startswith(exclude))]
    for run in client.search_runs(exps):
        artifacts, stack = [], [""]
        while stack:
            for item in client.list_artifacts(run.info.run_id, stack.pop() or None):
                (stack.append(item.path) if item.is_dir else artifacts.append((item.path, item.file_size)))
        metrics = {k: len(client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}
        out[run.data.tags["neptune.run_key"]] = (run.data.params, metrics, sorted(artifacts))
    return out


def test_migrate_end_to_end(s3: S3Server, s3_env: dict[str, str], sandbox: Any, tmp_path: Path,
                            mlflow_server: Any, prefix: str) -> None:
    env = {**sandbox.env(), **s3_env}
    args = ["migrate", "--from", "neptune3", "-p", DEMO, "--archive", f"s3://{BUCKET}/migrate", "--to", "mlflow",
            "--mlflow-tracking-uri", mlflow_server.uri, "--experiment-prefix", prefix,
            "--state", str(tmp_path / "s.db"), "--report-dir", str(tmp_path / "report")]
    result = _cli(*args, env=env, tmp=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    runs = Archive(f"s3://{BUCKET}/migrate").scan().runs  # type: ignore[arg-type]
    assert runs and json.loads((tmp_path / "report" / "report.json").read_text())["totals"]["runs_validated"] == len(
        runs)
    again = _cli(*args, env=env, tmp=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "runs already exported (skipped)" in again.stdout and "runs already loaded (skipped)" in again.stdout
    assert not list((tmp_path / "tmpdir").iterdir())


def test_interrupted_export_is_incomplete_then_resumes(s3: S3Server, s3_env: dict[str, str], sandbox: Any,
                                                      tmp_path: Path) -> None:
    env = {**sandbox.env(), **s3_env}
    url, key_prefix = f"s3://{BUCKET}/resume", "resume"
    args = ["export", "--from", "neptune3", "-p", DEMO, "--archive", url, "--state", str(tmp_path / "s.db")]
    assert _cli(*args, env=env, tmp=tmp_path).returncode == 0
    complete = archive_digest(url)  # type: ignore[arg-type]

    # What an upload cut short looks like: the victim's part_0 never arrived, a part_1 and a payload did.
    victim = sorted(Archive(url).scan().runs, key=lambda r: r.ref)[0]  # type: ignore[arg-type]
    project, run = folder_name(victim.ref.project_id), folder_name(victim.ref.run_id)
    part0 = f"{key_prefix}/data/{project}/{run}_part_0.parquet"
    s3.client.copy_object(Bucket=BUCKET, Key=f"{key_prefix}/data/{project}/{run}_part_1.parquet",
                          CopySource={"Bucket": BUCKET, "Key": part0})
    s3.client.delete_object(Bucket=BUCKET, Key=part0)
    s3.client.put_object(Bucket=BUCKET, Key=f"{key_prefix}/files/{project}/{run}/stale.bin", Body=b"old")

    scan = Archive(url).scan()  # type: ignore[arg-type]
    assert victim.ref not in {r.ref for r in scan.runs}
    assert [(i.project_dir.name, i.run_folder) for i in scan.incomplete] == [(project, run)]
    loaded = _cli("load", "--archive", url, "--to", "mlflow", "--mlflow-tracking-uri",
                  f"sqlite:///{tmp_path / 'mlflow.db'}", "--state", str(tmp_path / "s.db"), env=env, tmp=tmp_path)
    assert "incomplete runs in archive (not loaded)" in loaded.stdout and f"{project}/{run}" in loaded.stdout

    resumed = _cli(*args, env=env, tmp=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "runs exported                    1" in resumed.stdout or "runs exported 1" in " ".join(
        resumed.stdout.split())
    assert not Archive(url).scan().incomplete  # type: ignore[arg-type]
    assert archive_digest(url) == complete  # type: ignore[arg-type]
    keys = s3.keys(f"{key_prefix}/")
    assert f"{key_prefix}/data/{project}/{run}_part_1.parquet" not in keys  # the stale part is gone
    assert f"{key_prefix}/files/{project}/{run}/stale.bin" not in keys


@pytest.mark.parametrize("flavour", ["neptune3", "neptune2"])
def test_exporter_archive_in_a_bucket_loads_and_validates(s3: S3Server, s3_env: dict[str, str], tmp_path: Path,
                                                          mlflow_server: Any, prefix: str, flavour: str) -> None:
    if not FIXTURES.exists():
        pytest.skip(f"neptune-exporter fixtures not found at {FIXTURES}")
    s3.upload_tree(FIXTURES / flavour, f"exporter-{flavour}")
    data, files = f"s3://{BUCKET}/exporter-{flavour}/data", f"s3://{BUCKET}/exporter-{flavour}/files"
    common = ["--archive", data, "--files", files, "--to", "mlflow", "--mlflow-tracking-uri", mlflow_server.uri,
              "--experiment-prefix", prefix, "--state", str(tmp_path / "s.db")]
    loaded = _cli("load", *common, env=s3_env, tmp=tmp_path)
    assert loaded.returncode == 0, loaded.stderr + loaded.stdout
    checked = _cli("validate", *common, "--report-dir", str(tmp_path / "report"), env=s3_env, tmp=tmp_path)
    assert checked.returncode == 0, checked.stderr + checked.stdout
    from mlflow.tracking import MlflowClient

    contents = _mlflow_contents(MlflowClient(mlflow_server.uri), prefix)
    assert len(contents) == (3 if flavour == "neptune3" else 2)
    if flavour == "neptune3":
        artifacts = [path for path, _ in contents["ws/proj/run-a"][2]]
        # docs/mlflow.md's layout: a file named like its attribute at the attribute path, the step not repeated
        assert "model/ckpt.bin" in artifacts and "images/preds/step_1/preds.png" in artifacts
    assert not list((tmp_path / "tmpdir").iterdir())


def _one_error_line(result: subprocess.CompletedProcess[str], *secrets: str) -> str:
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert not [s for s in secrets if s in output], "a secret reached the output"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_clear_errors_without_secrets(s3: S3Server, sandbox: Any, tmp_path: Path) -> None:
    sqlite = f"sqlite:///{tmp_path / 'mlflow.db'}"
    load = ["load", "--to", "mlflow", "--mlflow-tracking-uri", sqlite, "--state", str(tmp_path / "s.db")]

    line = _one_error_line(_cli(*load, "--archive", "s3://no-such-bucket/x", env=s3.env(), tmp=tmp_path), s3.secret)
    assert "bucket s3://no-such-bucket does not exist" in line
    line = _one_error_line(_cli(*load, "--archive", f"s3://{BUCKET}/nothing-here", env=s3.env(), tmp=tmp_path),
                           s3.secret)
    assert f"archive not found: s3://{BUCKET}/nothing-here" in line

    wrong_secret = "wrong-secret-" + s3.secret[:8]
    wrong = s3.env(AWS_SECRET_ACCESS_KEY=wrong_secret)
    line = _one_error_line(_cli(*load, "--archive", f"s3://{BUCKET}/x", env=wrong, tmp=tmp_path), wrong_secret)
    assert "denied" in line and "AWS_SECRET_ACCESS_KEY" in line
    export = ["export", "--from", "neptune3", "-p", DEMO, "--state", str(tmp_path / "e.db")]
    line = _one_error_line(_cli(*export, "--archive", f"s3://{BUCKET}/x", env={**sandbox.env(), **wrong},
                                tmp=tmp_path), wrong_secret)
    assert "denied" in line

    unreachable = s3.env(AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    line = _one_error_line(_cli(*load, "--archive", f"s3://{BUCKET}/x", env=unreachable, tmp=tmp_path), s3.secret)
    assert "cannot reach the object store" in line
    assert time.monotonic() - started < 60

    line = _one_error_line(_cli(*load, "--archive", f"s3://AKIA:{s3.secret}@{BUCKET}/x", env=s3.env(),
                                tmp=tmp_path), s3.secret)
    assert "credentials do not belong in the archive URL" in line

    line = _one_error_line(_cli("export", "--from", "neptune3", "-p", DEMO, "--archive", f"s3://{BUCKET}/x",
                                "--state", f"s3://{BUCKET}/state.db", env={**sandbox.env(), **s3.env()},
                                tmp=tmp_path))
    assert "--state must be a local file" in line


def test_writer_uploads_parts_before_part0_and_cleans_stale_parts(s3: S3Server, s3_env: dict[str, str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ref = RunRef("ws/proj", "RUN-1")
    url = f"s3://{BUCKET}/order"
    uploads: list[str] = []
    real_upload = storage_module.ObjectStorage.upload

    def recording(self: Any, local: Path, path: Any) -> None:
        uploads.append(str(path).rsplit("/", 1)[-1])
        real_upload(self, local, path)

    monkeypatch.setattr(storage_module.ObjectStorage, "upload", recording)
    writer = ArchiveWriter(url, rows_per_part=2, rows_per_batch=2)
    with writer.run(ref) as run:
        for i in range(5):
            run.add_atom(f"params/p{i}", "int", i)
        run.add_file("model/ckpt", "file", b"payload", "ckpt.bin")
    run_folder = folder_name(ref.run_id)
    assert uploads == ["ckpt.bin", *(f"{run_folder}_part_{n}.parquet" for n in (1, 2, 0))]
    assert writer.has_run(ref)
    assert not any(writer.data_root.rglob("*.parquet*")), "staged parts stay behind after upload"

    # An upload that dies before part_0 leaves an incomplete run, never a complete one with missing rows.
    def failing(self: Any, local: Path, path: Any) -> None:
        if str(path).endswith("_part_0.parquet"):
            raise OSError("connection reset")
        real_upload(self, local, path)

    monkeypatch.setattr(storage_module.ObjectStorage, "upload", failing)
    with pytest.raises(Exception, match="connection reset"), writer.run(ref) as run:
        for i in range(3):
            run.add_atom(f"params/q{i}", "int", i)
    scan = Archive(url).scan()  # type: ignore[arg-type]
    assert not scan.runs and [i.run_folder for i in scan.incomplete] == [run_folder]

    # A re-export with a single part removes every stale part (found by probing, not listing).
    monkeypatch.setattr(storage_module.ObjectStorage, "upload", real_upload)
    with writer.run(ref) as run:
        run.add_atom("params/only", "string", "x")
    # (pyarrow leaves an empty `folder/` marker object when it deletes a folder's last object.)
    keys = sorted(k.rsplit("/", 1)[-1] for k in s3.keys("order/data/") if not k.endswith("/"))
    assert keys == [f"{run_folder}_part_0.parquet"]
    (loaded,) = Archive(url).scan().runs  # type: ignore[arg-type]
    assert loaded.atoms().keys() == {"params/only"}


def test_hostile_object_keys_never_leave_the_staging_folder(s3: S3Server, s3_env: dict[str, str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "archive"
    ref = RunRef("ws/proj", "EVIL-1")
    with ArchiveWriter(local).run(ref) as run:
        good = run.add_file("model/ckpt", "file", b"fine", "ckpt.bin")
        run.add_rows([
            {"attribute_path": "sets/folder", "attribute_type": "file_set",
             "file_value": {"path": "EVIL-1/sets/folder"}, "file_name": "folder"},
            {"attribute_path": "sets/escape", "attribute_type": "file_set",
             "file_value": {"path": "../../../../escape-row"}, "file_name": "escape"},
        ])
    s3.upload_tree(local, "hostile")
    project = folder_name("ws/proj")
    s3.client.put_object(Bucket=BUCKET, Key=f"hostile/files/{project}/EVIL-1/sets/folder/ok.txt", Body=b"ok")
    # A key that, joined naively under the staging folder, lands four levels above it.
    s3.client.put_object(Bucket=BUCKET, Key=f"hostile/files/{project}/EVIL-1/sets/folder/../../../../../escape.txt",
                         Body=b"pwned")

    staging_parent = tmp_path / "tmp" / "a" / "b"
    staging_parent.mkdir(parents=True)
    monkeypatch.setattr("tempfile.tempdir", str(staging_parent))
    (archived,) = Archive(f"s3://{BUCKET}/hostile").scan().runs  # type: ignore[arg-type]
    fetched = archived.file_path(good.path)
    assert fetched.read_bytes() == b"fine" and staging_parent in fetched.parents
    with pytest.raises(UnsafePathError):
        archived.file_path("../../../../escape-row")
    with pytest.raises(UnsafePathError):
        archived.file_path("EVIL-1/sets/folder")
    archived.release_files()
    assert not list(tmp_path.rglob("escape*")), "a hostile key wrote outside the staging folder"
    assert not list(staging_parent.iterdir()), "release_files left payloads behind"

    # Through the CLI the run fails with one clear reason, and nothing lands outside TMPDIR's staging folder.
    result = _cli("load", "--archive", f"s3://{BUCKET}/hostile", "--to", "mlflow", "--mlflow-tracking-uri",
                  f"sqlite:///{tmp_path / 'mlflow.db'}", "--state", str(tmp_path / "s.db"), env=s3.env(),
                  tmp=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "refusing path that leaves the archive" in result.stdout + result.stderr
    assert not list(tmp_path.rglob("escape*"))
    assert not list((tmp_path / "tmpdir").iterdir())


def test_archive_location_parsing() -> None:
    from neptune_migration.archive import archive_location
    from neptune_migration.errors import UsageError

    assert archive_location("s3://b/p/") == "s3://b/p"
    assert archive_location("gs://b/p") == "gs://b/p"
    assert archive_location("./local/s3:/x") == Path("./local/s3:/x")
    assert archive_location(Path("a")) == Path("a")
    # gs:// builds pyarrow's GcsFileSystem without touching the network (credentials are resolved on first use).
    gcs, root = storage_module.open_storage("gs://some-bucket/pre/fix")
    assert gcs.remote and gcs.url(root / "data") == "gs://some-bucket/pre/fix/data"
    for bad in ("s3:///prefix", "s3://KEY:se/cret@bucket/p", "s3://KEY:secret@bucket/p", "s3://b:1/p", "s3://b/a/../c", "s3://b/p?endpoint_override=x"):
        with pytest.raises(UsageError):
            storage_module.open_storage(bad)
