"""Offline W&B target: load generated and real exporter archives, read the run files back, compare all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from wandb_archives import runs_of
from wandb_expect import assert_run_matches

from neptune_migration.targets.base import LoadContext
from neptune_migration.targets.wandb.loader import WandbOfflineTarget, fork_parent
from neptune_migration.targets.wandb.records import read_records
from neptune_migration.vocabulary import RunRef

WANDB = Path(sys.executable).parent / "wandb"


def _load_all(archive: Path, out: Path, files_root: Path | None = None) -> tuple[WandbOfflineTarget, dict]:
    target = WandbOfflineTarget(out)
    target.check()
    loaded = {}
    for key, run in runs_of(archive, files_root).items():
        loaded[key] = (run, target.load_run(run, LoadContext()), target.read_back(run))
    return target, loaded


def test_nasty_archive_round_trip(nasty_archive: Path, tmp_path: Path) -> None:
    _target, loaded = _load_all(nasty_archive, tmp_path / "out")
    assert set(loaded) == {"ws/nasty proj/NAS-1", "ws/nasty proj/NAS-2", "ws/other/OTH-1"}
    for run, result, data in loaded.values():
        assert_run_matches(run, result, data)

    run, result, data = loaded["ws/nasty proj/NAS-1"]
    assert data.project == "nasty-proj"
    assert data.group == "exp nasty" and data.name == "NAS-1"
    assert data.notes == "description ünïcödé ✓"
    assert all(1 <= len(t) <= 64 for t in data.tags) and "short" in data.tags and len(data.tags) == 3
    assert data.config["neptune_migration"]["tags"][1] == "t" * 100  # the full tag survives in the config
    assert data.config["params"]["a"] == {"_value": "leaf", "b": 2}
    assert data.config["params"]["long"] == "ß€𝄞" * 3000
    assert data.start_time_ms == 1_700_000_000_000
    assert data.state == "failed"
    assert result.approximations["histogram_rebinned_to_512"] == 1
    # Per-series steps at different timestamps: ordinal `_step`, exact step in `neptune_step`.
    assert data.config["neptune_migration"]["step_mode"] == "ordinal"
    assert data.points("frac/x") == [(0.5, 1.0, 1_700_000_000_500), (1.25, 2.0, 1_700_000_001_250),
                                     (2.000001, 3.0, 1_700_000_002_000)]
    assert result.renamed["_step"] == "n_step" and result.renamed["loss"].startswith("loss__")
    # Big string series: beyond 10k rows, an artifact of tables.
    assert data.summary["logs/big"]["_type"] == "neptune-string-series"
    assert data.summary["logs/stdout"]["_type"] == "table-file"

    run, result, data = loaded["ws/nasty proj/NAS-2"]
    nas1 = loaded["ws/nasty proj/NAS-1"][2].run_id
    assert data.config["neptune_migration"]["fork"] == {"parent": "NAS-1", "parent_wandb_run_id": nas1, "step": 2.0}
    assert fork_parent(run) == RunRef("ws/nasty proj", "NAS-1")
    assert [p[0] for p in data.points("m/x")] == [-3.0, 0.5, 1.25, 7.1234567, 1e15, 1e15 + 2]

    run, result, data = loaded["ws/other/OTH-1"]
    assert len(run.parts) > 3
    assert data.config["neptune_migration"]["step_mode"] == "step"
    assert data.history_rows == 2000


def test_history_steps_strictly_increase(nasty_archive: Path, tmp_path: Path) -> None:
    """The data-loss traps: histograms interleaved with metrics, rows spread over shuffled parquet parts.
    Any non-increasing `_step` would be dropped online or renumbered by `wandb sync`."""
    _target, loaded = _load_all(nasty_archive, tmp_path / "out")
    for folder in sorted((tmp_path / "out" / "wandb").glob("offline-run-*")):
        steps = []
        for rec in read_records(next(folder.glob("*.wandb"))):
            if rec.WhichOneof("record_type") == "history":
                steps.append(rec.history.step.num)
                items = {tuple(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                assert items[("_step",)] == rec.history.step.num
                assert ("_timestamp",) in items and ("_runtime",) in items
        assert steps == sorted(set(steps)), folder
    # In step mode `_step` is the Neptune step itself: histograms at every 10th step sit in the same rows.
    _run, _result, data = loaded["ws/other/OTH-1"]
    assert [s for s, _v, _t in data.points("train/hist")] == list(range(0, 2000, 10))
    assert [s for s, _v, _t in data.points("train/loss")] == list(range(2000))


def test_wandb_reads_our_run_files(nasty_archive: Path, tmp_path: Path) -> None:
    """wandb's own reader (`wandb leet inspect`) parses the files: framing across 32 KiB blocks is right."""
    _load_all(nasty_archive, tmp_path / "out")
    folder = next((tmp_path / "out" / "wandb").glob("offline-run-*NAS-1-*"))
    assert (next(folder.glob("*.wandb"))).stat().st_size > 2 * 32 * 1024
    out = subprocess.run([str(WANDB), "leet", "inspect", "--json", str(folder)], capture_output=True, text=True,
                         check=True, timeout=120)
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    ours = list(read_records(next(folder.glob("*.wandb"))))
    assert len(records) == len(ours)
    assert sum(r["type"] == "history" for r in records) == sum(r.HasField("history") for r in ours)
    summary = json.loads(subprocess.run([str(WANDB), "leet", "inspect", "--summary", "--json", str(folder)],
                                        capture_output=True, text=True, check=True, timeout=120).stdout)
    assert summary["state"] == "failed" and summary["start_time"].startswith("2023-11-14T22:13:20")


def test_folders_are_self_contained_and_rerun_is_identical(nasty_archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    target, _ = _load_all(nasty_archive, out)
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for p in out.rglob("*"):
        assert not p.is_symlink(), p
    for rec_file in out.rglob("*.wandb"):
        for rec in read_records(rec_file):
            if rec.HasField("artifact"):
                for e in rec.artifact.manifest.contents:
                    assert not Path(e.local_path).is_absolute()
                    assert (out / e.local_path).is_file()
    cmd = target.sync_command()
    assert cmd.startswith(f"cd {out}") and "wandb sync wandb/offline-run-" in cmd
    # An interrupted attempt leaves a temporary folder; the rerun replaces it and writes the same bytes.
    victim = next((out / "wandb").glob("offline-run-*NAS-2-*"))
    (victim.parent / (".tmp-" + victim.name)).mkdir()
    _load_all(nasty_archive, out)
    second = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert first == second


@pytest.mark.parametrize("flavour", ["neptune3", "neptune2"])
def test_exporter_archives_load_as_they_are(exporter_archives: Path, tmp_path: Path, flavour: str) -> None:
    _target, loaded = _load_all(exporter_archives / flavour, tmp_path / "out")
    assert len(loaded) == (3 if flavour == "neptune3" else 2)
    for run, result, data in loaded.values():
        assert_run_matches(run, result, data)
        assert result.files >= 3 and not result.warnings
        assert data.project == "proj"
        assert data.start_time_ms is not None
        if flavour == "neptune3":  # 3.x: the run id names the run, the experiment groups it
            assert (data.name, data.group) == (run.ref.run_id, run.atom_value("sys/name"))
        else:  # 2.x: `sys/name` is a display name, there are no experiments
            assert (data.name, data.group) == (run.atom_value("sys/name"), "")


def test_filters_are_honoured(nasty_archive: Path, tmp_path: Path) -> None:
    run = runs_of(nasty_archive)["ws/nasty proj/NAS-1"]
    target = WandbOfflineTarget(tmp_path / "out")
    ctx = LoadContext(wants_attribute=lambda p, t: t != "histogram_series" and not p.startswith("logs/"),
                      wants_file=lambda p, name, size: not name.endswith(".png"))
    result = target.load_run(run, ctx)
    data = target.read_back(run)
    assert "hist/w" not in data.history and "logs/stdout" not in data.string_series
    assert all(not f.endswith(".png") for a in data.artifacts.values() for f in a["files"])
    assert result.files == 2


def test_bounded_memory_merge_writes_the_same_files(nasty_archive: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Large runs are sorted in chunks spilled to disk and merged; the result must equal the in-memory sort."""
    from neptune_migration.targets.wandb import history as wandb_history

    _load_all(nasty_archive, tmp_path / "memory")
    monkeypatch.setattr(wandb_history, "CHUNK_POINTS", 97)
    monkeypatch.setattr(wandb_history, "_BLOCK", 13)  # windows far smaller than one step's group of points
    spilled: list[Path] = []
    real_mkdtemp = wandb_history.tempfile.mkdtemp
    monkeypatch.setattr(wandb_history.tempfile, "mkdtemp",
                        lambda **kw: spilled.append(Path(real_mkdtemp(**kw))) or spilled[-1])
    _load_all(nasty_archive, tmp_path / "spilled")
    assert spilled and not any(p.exists() for p in spilled)  # it did spill, and cleaned up
    a = {p.relative_to(tmp_path / "memory"): p.read_bytes() for p in (tmp_path / "memory").rglob("*") if p.is_file()}
    b = {p.relative_to(tmp_path / "spilled"): p.read_bytes() for p in (tmp_path / "spilled").rglob("*") if p.is_file()}
    assert a == b
    # One chunk exactly full is spilled and read back whole, never element by element (a 1M-point run once
    # took minutes that way).
    monkeypatch.setattr(wandb_history, "CHUNK_POINTS", 4200)  # OTH-1: 2000 + 2000 + 200 points
    singles = []
    real_getitem = wandb_history._SpilledColumn.__getitem__
    monkeypatch.setattr(wandb_history._SpilledColumn, "__getitem__",
                        lambda self, key: (singles.append(key) if isinstance(key, int) else None)
                        or real_getitem(self, key))
    _load_all(nasty_archive, tmp_path / "single")
    assert len(singles) < 50
    c = {p.relative_to(tmp_path / "single"): p.read_bytes() for p in (tmp_path / "single").rglob("*") if p.is_file()}
    assert a == c
