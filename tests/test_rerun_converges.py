"""The rerun rule (issue 24): a rerun converges the target on what THIS command asks, whatever earlier commands
asked. Real parts: the session's MLflow server, neptune-exporter's own archives, the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import neptune_migration as nm
from neptune_migration.errors import UsageError

from .conftest import run_cli


def _opts(server, state: Path, prefix: str, **extra) -> dict:
    return dict(to="mlflow", mlflow_tracking_uri=server.uri, experiment_prefix=prefix, state=state, progress=False,
                workers=2) | extra


def _runs(client: MlflowClient, name: str) -> dict[str, object]:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return {}
    return {r.data.tags["neptune.run_key"]: r for r in client.search_runs([exp.experiment_id])}


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path or None):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_exclude_files_then_without_adds_files_to_the_same_runs(exporter_archives: Path, mlflow_server, prefix,
                                                                tmp_path: Path) -> None:
    root = exporter_archives / "neptune3"
    state = tmp_path / "state.db"
    first = nm.load(root / "data", files=root / "files", exclude=["files"], **_opts(mlflow_server, state, prefix))
    assert first.ok, first.to_dict()
    client = MlflowClient(mlflow_server.uri)
    before = _runs(client, prefix + "ws/proj")
    assert len(before) == 3
    files_before = {k: _artifacts(client, r.info.run_id) for k, r in before.items()}

    second = nm.load(root / "data", files=root / "files", **_opts(mlflow_server, state, prefix))
    assert second.ok, second.to_dict()
    assert second.summary.files > 0
    assert second.summary.points == 0  # the metrics were there: nothing sent twice
    after = _runs(client, prefix + "ws/proj")
    assert {k: r.info.run_id for k, r in after.items()} == {k: r.info.run_id for k, r in before.items()}
    for key, run in after.items():
        assert run.info.status == before[key].info.status
        assert run.info.end_time == before[key].info.end_time
        assert len(_artifacts(client, run.info.run_id)) > len(files_before[key]) or key.endswith("run-b-old")
    check = nm.validate(root / "data", files=root / "files", report_dir=tmp_path / "report",
                        **_opts(mlflow_server, state, prefix))
    assert check.ok, [c.summary_line() for c in check.summary.checks if c.status != "validated"]


def _all_copies(client: MlflowClient, prefix: str) -> dict[str, list[str]]:
    """Neptune run key -> experiments holding an active copy, over every experiment this test made."""
    out: dict[str, list[str]] = {}
    for exp in client.search_experiments(filter_string=f"name LIKE '{prefix}%'"):
        for run in client.search_runs([exp.experiment_id]):
            out.setdefault(run.data.tags["neptune.run_key"], []).append(exp.name)
    return out


def test_another_placement_is_refused_then_relocated(exporter_archives: Path, mlflow_server, prefix,
                                                     tmp_path: Path) -> None:
    root = exporter_archives / "neptune3"
    state = tmp_path / "state.db"
    client = MlflowClient(mlflow_server.uri)
    assert nm.load(root / "data", files=root / "files", **_opts(mlflow_server, state, prefix)).ok
    placed = _all_copies(client, prefix)
    assert set(map(len, placed.values())) == {1}

    moved = prefix + "neptune/"
    args = ["load", "--archive", str(root / "data"), "--files", str(root / "files"), "--mlflow-tracking-uri",
            mlflow_server.uri, "--experiment-by", "experiment", "--experiment-prefix", moved, "--state", str(state),
            "--no-progress"]
    refused = run_cli(*args)
    assert refused.returncode != 0
    lines = [line for line in (refused.stdout + refused.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "--relocate" in lines[0] and f"'{prefix}ws/proj'" in lines[0], lines
    assert _all_copies(client, prefix) == placed  # refused before anything was written
    assert not client.search_experiments(filter_string=f"name LIKE '{moved}%'")

    # What validation says while they are at the old place: missing here, a copy elsewhere.
    new_place = _opts(mlflow_server, state, moved, experiment_by="experiment")
    check = nm.validate(root / "data", files=root / "files", report_dir=tmp_path / "r1", **new_place)
    kinds = {m.kind for c in check.summary.checks for m in c.mismatches}
    assert {"run_missing", "run_elsewhere"} <= kinds

    relocated = run_cli(*args, "--relocate")
    assert relocated.returncode == 0, relocated.stdout + relocated.stderr
    copies = _all_copies(client, prefix)
    assert set(copies) == set(placed)
    for key, where in copies.items():
        assert len(where) == 1 and where[0].startswith(moved), (key, where)
    assert not _runs(client, prefix + "ws/proj")

    check = nm.validate(root / "data", files=root / "files", report_dir=tmp_path / "r2", **new_place)
    assert check.ok, [c.summary_line() for c in check.summary.checks if c.status != "validated"]
    old = nm.validate(root / "data", files=root / "files", report_dir=tmp_path / "r3",
                      **_opts(mlflow_server, state, prefix))
    assert not old.ok
    assert {m.kind for c in old.summary.checks for m in c.mismatches} == {"run_missing", "run_elsewhere"}

    # A rerun at the new place has nothing to move; the old placement is now the one refused.
    again = nm.load(root / "data", files=root / "files", **new_place)
    assert again.ok and again.summary.count("already_loaded") == 3
    with pytest.raises(UsageError, match="--relocate"):
        nm.load(root / "data", files=root / "files", **_opts(mlflow_server, state, prefix))


def test_retry_after_another_placement_never_makes_a_second_copy(exporter_archives: Path, mlflow_server, prefix,
                                                                 tmp_path: Path) -> None:
    root = exporter_archives / "neptune3"
    state = tmp_path / "state.db"
    client = MlflowClient(mlflow_server.uri)
    assert nm.load(root / "data", files=root / "files", **_opts(mlflow_server, state, prefix)).ok
    new_place = _opts(mlflow_server, state, prefix + "neptune/", experiment_by="experiment")
    nm.validate(root / "data", files=root / "files", report_dir=tmp_path / "r", **new_place)
    with pytest.raises(UsageError, match="--relocate"):
        nm.retry(root / "data", files=root / "files", report_dir=tmp_path / "r", **new_place)
    assert set(map(len, _all_copies(client, prefix).values())) == {1}
    moved = nm.retry(root / "data", files=root / "files", report_dir=tmp_path / "r", relocate=True, **new_place)
    assert moved.ok
    copies = _all_copies(client, prefix)
    assert len(copies) == 3 and set(map(len, copies.values())) == {1}


def test_narrower_pass_deletes_nothing_and_says_what_stays(exporter_archives: Path, mlflow_server, prefix,
                                                           tmp_path: Path) -> None:
    root = exporter_archives / "neptune3"
    state = tmp_path / "state.db"
    client = MlflowClient(mlflow_server.uri)
    assert nm.load(root / "data", files=root / "files", **_opts(mlflow_server, state, prefix)).ok
    before = _runs(client, prefix + "ws/proj")
    held = {k: sorted(_artifacts(client, r.info.run_id)) for k, r in before.items()}

    narrow = nm.load(root / "data", files=root / "files", exclude=["files"], **_opts(mlflow_server, state, prefix))
    assert narrow.ok
    assert narrow.summary.count("already_loaded") == 3
    stays = [w for w in narrow.summary.warnings if "stay" in w]
    assert len(stays) == 1 and "nothing is deleted" in stays[0], narrow.summary.warnings
    after = _runs(client, prefix + "ws/proj")
    assert {k: r.info.run_id for k, r in after.items()} == {k: r.info.run_id for k, r in before.items()}
    assert {k: sorted(_artifacts(client, r.info.run_id)) for k, r in after.items()} == held
    assert {k: r.data.params for k, r in after.items()} == {k: r.data.params for k, r in before.items()}
    # The same pass from the command line: exit 0, and the one line about what stays.
    cli = run_cli("load", "--archive", str(root / "data"), "--files", str(root / "files"), "--mlflow-tracking-uri",
                  mlflow_server.uri, "--experiment-prefix", prefix, "--state", str(state), "--exclude", "files",
                  "--no-progress")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert (cli.stdout + cli.stderr).count("nothing is deleted") == 1, cli.stdout + cli.stderr


def test_wandb_offline_wider_pass_completes_the_same_run(exporter_archives: Path, tmp_path: Path) -> None:
    from neptune_migration.targets.wandb.readback import read_offline_run, run_folders

    root = exporter_archives / "neptune3"
    opts = dict(to="wandb-offline", wandb_dir=tmp_path / "wandb-offline", state=tmp_path / "state.db",
                progress=False)
    first = nm.load(root / "data", files=root / "files", exclude=["files", "metrics"], **opts)
    assert first.ok, first.to_dict()
    ids = {o.key: o.result.target_id.rsplit("/", 1)[-1] for o in first.summary.outcomes}
    narrow = {key: read_offline_run(tmp_path / "wandb-offline", rid) for key, rid in ids.items()}
    assert not any(d.artifacts for d in narrow.values())

    second = nm.load(root / "data", files=root / "files", **opts)
    assert second.ok, second.to_dict()
    assert {o.key: o.result.target_id.rsplit("/", 1)[-1] for o in second.summary.outcomes if o.result} == ids
    for key, rid in ids.items():
        assert len(run_folders(tmp_path / "wandb-offline", rid)) == 1  # the same run, not a second one
        wide = read_offline_run(tmp_path / "wandb-offline", rid)
        assert wide.config == narrow[key].config  # what the first pass wrote is still there
        assert set(wide.history) > set(narrow[key].history)  # the metrics joined the histograms
        for series, points in narrow[key].history.items():
            assert wide.history[series] == points
        assert wide.artifacts  # and the files
    check = nm.validate(root / "data", files=root / "files", report_dir=tmp_path / "report", **opts)
    assert check.ok, [c.summary_line() for c in check.summary.checks if c.status != "validated"]


def test_a_ledger_from_before_is_migrated_and_the_target_says_where_runs_are(exporter_archives: Path, mlflow_server,
                                                                            prefix, tmp_path: Path) -> None:
    """A ledger written before placements were kept (schema 0, no `loaded` table): its done loads keep their
    mapping version, and the placement check asks MLflow where the runs are."""
    import sqlite3

    from neptune_migration.ledger import open_ledger
    from neptune_migration.vocabulary import RunRef

    root = exporter_archives / "neptune3"
    state = tmp_path / "state.db"
    assert nm.load(root / "data", files=root / "files", **_opts(mlflow_server, state, prefix)).ok
    with sqlite3.connect(state) as db:
        db.execute("DROP TABLE loaded")
        db.execute("PRAGMA user_version = 0")
    with open_ledger(state) as ledger:
        target = f"mlflow:{mlflow_server.uri}"
        held = ledger.loaded(RunRef("ws/proj", "run-a"), target)
        assert held is not None and (held.placement, held.selection, held.mapping_version) == (None, None, 2)
    with pytest.raises(UsageError, match=f"already in mlflow at experiment '{prefix}ws/proj'.*--relocate"):
        nm.load(root / "data", files=root / "files",
                **_opts(mlflow_server, state, prefix + "other/", experiment_by="experiment"))
    assert not MlflowClient(mlflow_server.uri).search_experiments(filter_string=f"name LIKE '{prefix}other/%'")
    with sqlite3.connect(state) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2


@pytest.mark.parametrize("bulk", [False, True])
def test_wider_pass_adds_a_metric_beside_the_ones_held(tmp_path: Path, bulk: bool) -> None:
    """A first pass without one metric (and with fractional steps, so the run's step-scale tag grows), then one
    with it: the same run gains the series, the held one is not sent again, in bulk too."""
    from datetime import UTC, datetime, timedelta

    from neptune_migration.archive import ArchiveWriter
    from neptune_migration.vocabulary import RunRef

    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    with ArchiveWriter(tmp_path / "archive").run(RunRef("ws/wide", "W-1")) as w:
        w.add_atom("sys/creation_time", "datetime", t0)
        w.add_atom("params/lr", "float", 0.1)
        w.add_series("train/a", "float_series", list(range(50)), [t0 + timedelta(seconds=i) for i in range(50)],
                     [float(i) for i in range(50)])
        w.add_series("train/b", "float_series", [i * 0.5 for i in range(40)],
                     [t0 + timedelta(seconds=i) for i in range(40)], [i * 2.0 for i in range(40)])
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    opts = dict(to="mlflow", mlflow_tracking_uri=uri, mlflow_bulk=bulk, state=tmp_path / "s.db", progress=False)
    first = nm.load(tmp_path / "archive", exclude_attributes="train/b", **opts)
    assert first.ok and first.summary.points == 50
    second = nm.load(tmp_path / "archive", **opts)
    assert second.ok, second.to_dict()
    assert second.summary.points == 40  # train/b only: train/a was there
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ws/wide").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == first.summary.outcomes[0].result.target_id
    assert len(client.get_metric_history(runs[0].info.run_id, "train/a")) == 50
    assert len(client.get_metric_history(runs[0].info.run_id, "train/b")) == 40
    check = nm.validate(tmp_path / "archive", report_dir=tmp_path / "report", **opts)
    assert check.ok, [c.summary_line() for c in check.summary.checks if c.status != "validated"]
