"""Load and validate against MLflow on real PostgreSQL and MariaDB stores, over REST and in-process.

What differs from SQLite (docs/mlflow.md, "Database stores"): PostgreSQL refuses NUL in text and keeps -0.0;
MySQL/MariaDB's default collations ignore case, accents and trailing spaces in keys and store -0.0 as 0.0.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from neptune_migration.archive import Archive, ArchiveWriter
from neptune_migration.ledger import Ledger
from neptune_migration.progress import Tracker
from neptune_migration.samples import write_demo_archive, write_nasty_archive
from neptune_migration.selection import Selection
from neptune_migration.stages.load import load
from neptune_migration.stages.validate import validate
from neptune_migration.targets.mlflow.loader import MlflowTarget
from neptune_migration.vocabulary import RunRef

from ..conftest import run_cli
from .conftest import SqlBackend

VIA = ("rest", "inproc")


def _quiet(n: int) -> Tracker:
    return Tracker("t", n, Console(quiet=True), enabled=False)


def _uri(backend: SqlBackend, via: str) -> str:
    return backend.rest.uri if via == "rest" else backend.uri


def _load_and_validate(archive: Path, uri: str, prefix: str, state: Path, files: Path | None = None,
                       workers: int = 2, target_class: type[MlflowTarget] = MlflowTarget):
    target = target_class(uri, experiment_prefix=prefix)
    target.check()
    try:
        with Ledger(state) as ledger:
            loaded = load(Archive(archive, files), target, Selection(), ledger, _quiet, workers=workers)
            assert not loaded.failed, [o.error for o in loaded.failed]
            summary = validate(Archive(archive, files), target, Selection(), ledger, _quiet, workers=workers)
    finally:
        target.close()
    problems = [(c.ref.key, m.attribute, m.kind, m.detail) for c in summary.checks for m in c.mismatches]
    assert problems == [] and summary.ok, problems
    return loaded, summary


def _approx(summary, kind: str) -> int:
    return sum(c.approximations.get(kind, 0) for c in summary.checks)


@pytest.mark.parametrize("via", VIA)
def test_nasty_archive_validates(backend: SqlBackend, via: str, tmp_path: Path, prefix: str) -> None:
    archive = write_nasty_archive(tmp_path / "archive", rows_per_part=700)
    loaded, summary = _load_and_validate(archive, _uri(backend, via), prefix, tmp_path / "state.db")
    assert _approx(summary, "inf_clamped_by_mlflow") == 2
    assert _approx(summary, "param_truncated_full_value_in_artifact") == 1
    # PostgreSQL keeps -0.0 (float8), and MLflow hands it back as -0.0 over REST too; MariaDB stores 0.0.
    kept = backend.name == "postgresql"
    assert _approx(summary, "negative_zero_stored_as_zero") == (0 if kept else 1)
    if via == "inproc":
        assert loaded.approximations().get("negative_zero_stored_as_zero", 0) == (0 if kept else 1)


@pytest.mark.parametrize("flavour", ["neptune3", "neptune2"])
@pytest.mark.parametrize("via", VIA)
def test_exporter_archives_validate(backend: SqlBackend, via: str, flavour: str, exporter_archives: Path,
                                    tmp_path: Path, prefix: str) -> None:
    root = exporter_archives / flavour
    _, summary = _load_and_validate(root / "data", _uri(backend, via), prefix, tmp_path / "s.db",
                                    files=root / "files")
    assert sum(c.checked.get("files", 0) for c in summary.checks) > 0
    assert sum(c.checked.get("points", 0) for c in summary.checks) > 0


def _write_clashing_archive(root: Path) -> Path:
    """Names one collation holds as one key, text PostgreSQL cannot store, and doubles at the edges."""
    writer = ArchiveWriter(root)
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    with writer.run(RunRef("ws/clash", "C-1")) as w:
        w.add_atom("sys/creation_time", "datetime", t0)
        w.add_atom("sys/tags", "string_set", {"Foo", "foo", "ünï", "uni"})
        w.add_atom("sys/description", "string", "a NUL \x00 inside, and 🙂")
        for key, value in [("params/Case", "upper"), ("params/case", "lower"), ("params/ünï", "accent"),
                           ("params/uni", "plain"), ("params/pad", "no pad"), ("params/pad ", "pad"),
                           ("params/ß", "eszett"), ("params/s", "s"), ("params/nul", "a\x00b"),
                           ("params/emoji", "🙂 " * 10)]:
            w.add_atom(key, "string", value)
        values = [5e-324, 2.2250738585072014e-308, 1e-310, -0.0, float("nan"), float("-inf"), 0.1]
        w.add_series("m/values", "float_series", list(range(len(values))), [t0] * len(values), values)
        w.add_series("m/Loss", "float_series", [0.0, 1.0], [t0, t0], [1.0, 2.0])
        w.add_series("m/loss", "float_series", [0.0, 1.0], [t0, t0], [1.0, 3.0])
    return root


@pytest.mark.parametrize("via", VIA)
def test_names_a_collation_merges_and_text_postgres_refuses(backend: SqlBackend, via: str, tmp_path: Path,
                                                            prefix: str) -> None:
    archive = _write_clashing_archive(tmp_path / "archive")
    uri = _uri(backend, via)
    loaded, summary = _load_and_validate(archive, uri, prefix, tmp_path / "s.db")
    renamed = loaded.outcomes[0].result.renamed
    # The first of each folded group (sorted) keeps its name; the others get a hash suffix, on every store.
    assert set(renamed) == {"params/case", "params/pad ", "params/ünï", "params/ß", "m/loss"}
    check = summary.checks[0]
    assert check.approximations["param_nul_replaced_full_value_in_artifact"] == 1
    # sys/description lands once, in mlflow.note.content (no neptune.sys/description tag repeats it)
    assert check.approximations["nul_replaced_in_tags"] == 1
    assert "neptune.sys/description" not in MlflowClient(uri).get_run(check.target_id).data.tags
    run = MlflowClient(uri).get_run(check.target_id)
    assert run.data.tags["mlflow.note.content"] == "a NUL \u2400 inside, and 🙂"
    assert run.data.params["params/nul"] == "a\u2400b" and run.data.params["params/emoji"] == "🙂 " * 10
    assert {k for k in run.data.tags if k.startswith("neptune.tag.")} == {
        "neptune.tag.Foo", "neptune.tag.uni", _suffixed(run.data.tags, "neptune.tag.foo"),
        _suffixed(run.data.tags, "neptune.tag.ünï")}
    full = Path(MlflowClient(uri).download_artifacts(check.target_id, "params/nul.txt",
                                                     str(tmp_path / "dl")))
    assert full.read_bytes() == b"a\x00b"


def _suffixed(tags: dict[str, str], base: str) -> str:
    found = [k for k in tags if k.startswith(base + "_")]
    assert len(found) == 1, (base, sorted(tags))
    return found[0]


def test_postgres_keeps_negative_zero_and_subnormals(postgresql_backend: SqlBackend, tmp_path: Path,
                                                     prefix: str) -> None:
    """The raw rows: what the API reads back is what the table holds."""
    archive = _write_clashing_archive(tmp_path / "archive")
    _, summary = _load_and_validate(archive, postgresql_backend.uri, prefix, tmp_path / "s.db")
    rows = postgresql_backend.execute(
        "SELECT step, value, is_nan FROM metrics WHERE run_uuid = %s AND key = 'm/values' ORDER BY step",
        (summary.checks[0].target_id,))
    assert [r[1] for r in rows][:3] == [5e-324, 2.2250738585072014e-308, 1e-310]
    assert str(rows[3][1]) == "-0.0" and rows[4][1:] == (0.0, True) and rows[5][1] == -1.7976931348623157e308


@pytest.mark.parametrize("via", VIA)
def test_several_workers_write_one_store(backend: SqlBackend, via: str, tmp_path: Path, prefix: str) -> None:
    """Four runs at once: no lost update, deadlock or duplicate run under the database's own locking."""
    archive = write_demo_archive(tmp_path / "archive", runs=8, steps=400)
    _, summary = _load_and_validate(archive, _uri(backend, via), prefix, tmp_path / "s.db", workers=4)
    assert summary.count("validated") == 8


def test_cli_with_a_database_uri_never_prints_its_password(backend: SqlBackend, tmp_path: Path,
                                                           prefix: str) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    common = ["--archive", str(archive), "--to", "mlflow", "--mlflow-tracking-uri", backend.uri,
              "--experiment-prefix", prefix, "--state", str(tmp_path / "s.db"), "--no-progress"]
    loaded = run_cli("load", *common)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    checked = run_cli("validate", *common, "--report-dir", str(tmp_path / "report"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    password = backend.server.password
    for text in (loaded.stdout, loaded.stderr, checked.stdout, checked.stderr,
                 *(p.read_text() for p in (tmp_path / "report").iterdir() if p.is_file())):
        assert password not in text
