"""neptune 1.x client calls the 2.x contract tests make, run in a fresh interpreter (the client caches
its HTTP clients and reads NEPTUNE_* at call time; a subprocess keeps tests independent)."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import pathlib
import pickle
import sys
import traceback
import zipfile
from typing import Any


def _sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plain(value: Any) -> Any:
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _table(df: Any) -> list[dict[str, Any]]:
    rows = []
    for _, row in df.iterrows():
        cells = {}
        for col, value in row.items():
            v = _plain(value)
            if v is None or (isinstance(v, float) and math.isnan(v) and col != "nasty/float_nan"):
                continue
            cells[str(col)] = v
        rows.append(cells)
    return rows


def _series(df: Any) -> list[tuple[float, Any, int]]:
    out = []
    for _, row in df.iterrows():
        ts = row["timestamp"]
        # the client builds local naive datetimes from timestampMillis; undo that to compare exactly
        ts_ms = round(ts.to_pydatetime().timestamp() * 1000)
        out.append((float(row["step"]), _plain(row["value"]), ts_ms))
    return out


def contract_calls() -> dict[str, Any]:
    import neptune
    from neptune import management

    dest = pathlib.Path(os.environ["SANDBOX_TEST_DOWNLOADS"])
    results: dict[str, Any] = {}

    def record(name: str, call: Any) -> None:
        try:
            results[name] = call()
        except Exception:
            results[name] = RuntimeError(traceback.format_exc())

    record("projects", lambda: sorted(management.get_project_list()))

    project = neptune.init_project(project="sandbox/demo", mode="read-only")
    record(
        "runs_table",
        lambda: _table(
            project.fetch_runs_table(
                query='(`parameters/batch_size`:int = 64) AND (`sys/tags`:stringSet CONTAINS "gpu")',
                columns=["sys/id", "sys/custom_run_id", "parameters/learning_rate", "train/loss", "sys/creation_time"],
                sort_by="sys/id",
                ascending=True,
            ).to_pandas()
        ),
    )
    record("runs_table_all", lambda: _table(project.fetch_runs_table(sort_by="sys/id", ascending=True).to_pandas()))
    record("models_table", lambda: _table(project.fetch_models_table().to_pandas()))
    record(
        "runs_by_state",
        lambda: {
            state: sorted(project.fetch_runs_table(state=state, columns=["sys/id"]).to_pandas().get("sys/id", []))
            for state in ("inactive", "active")
        },
    )
    project.stop()

    run = neptune.init_run(project="sandbox/nasty", with_id="NASTY-1", mode="read-only")
    structure = run.get_structure()

    def flatten(node: Any, prefix: str = "") -> list[str]:
        out = []
        for key, value in node.items():
            if isinstance(value, dict):
                out += flatten(value, f"{prefix}{key}/")
            else:
                out.append(prefix + key)
        return out

    record("structure", lambda: sorted(flatten(structure)))
    record("fetch_params", lambda: run["params"].fetch())
    record(
        "fetch_sys", lambda: {k: run[f"sys/{k}"].fetch() for k in ("id", "custom_run_id", "owner", "tags", "failed")}
    )
    record(
        "fetch_atoms", lambda: {k: run[k].fetch() for k in ("nasty/int_max", "nasty/float_nan", "nasty/old_datetime")}
    )
    record("values_special", lambda: _series(run["nasty/special_values"].fetch_values()))
    record("values_m0", lambda: _series(run["metrics/m0"].fetch_values()))
    record("values_strings", lambda: _series(run["nasty/strings"].fetch_values()))
    record("last_m1", lambda: run["metrics/m1"].fetch_last())
    record("last_strings", lambda: run["nasty/strings"].fetch_last())

    def download_file() -> dict[str, str]:
        target = dest / "file"
        target.mkdir(parents=True, exist_ok=True)
        run["files/f0"].download(str(target))
        run["nasty/file with spaces & ünïcode.txt"].download(str(target / "weird.txt"))
        return {p.name: _sha(p) for p in target.iterdir()}

    def download_series() -> dict[str, str]:
        target = dest / "series"
        run["nasty/images"].download(str(target))
        return {p.name: _sha(p) for p in target.iterdir()}

    record("download_file", download_file)
    record("download_series", download_series)
    run.stop()

    demo_run = neptune.init_run(project="sandbox/demo", with_id="DEMO-1", mode="read-only")

    def download_file_set() -> dict[str, str]:
        target = dest / "fileset.zip"
        demo_run["source_code/files"].download(str(target))
        with zipfile.ZipFile(target) as zf:
            return {name: hashlib.sha256(zf.read(name)).hexdigest() for name in zf.namelist()}

    record("download_file_set", download_file_set)
    record(
        "list_file_set",
        lambda: sorted((e.name, e.size, e.file_type) for e in demo_run["source_code/files"].list_fileset_files()),
    )
    record(
        "list_file_set_sub",
        lambda: sorted((e.name, e.size) for e in demo_run["source_code/files"].list_fileset_files(path="utils")),
    )
    record("artifact_hash", lambda: demo_run["datasets/train"].fetch_hash())
    record(
        "artifact_files",
        lambda: [
            (f.file_path, f.file_hash, f.type, f.size, dict(f.metadata))
            for f in demo_run["datasets/train"].fetch_files_list()
        ],
    )
    demo_run.stop()

    model = neptune.init_model(project="sandbox/demo", with_id="DEMO-CLS", mode="read-only")
    record("model_fetch", lambda: model["config/architecture"].fetch())
    record("model_versions_table", lambda: _table(model.fetch_model_versions_table().to_pandas()))
    model.stop()
    version = neptune.init_model_version(project="sandbox/demo", with_id="DEMO-CLS-2", mode="read-only")

    def version_calls() -> dict[str, Any]:
        target = dest / "version"
        target.mkdir(parents=True, exist_ok=True)
        version["model/weights"].download(str(target))
        return {
            "stage": version["sys/stage"].fetch(),
            "accuracy": version["validation/accuracy"].fetch(),
            "files": {p.name: _sha(p) for p in target.iterdir()},
        }

    record("model_version", version_calls)
    version.stop()
    return results


def big_table_calls() -> dict[str, Any]:
    import neptune

    project = neptune.init_project(project="sandbox/big", mode="read-only")
    df = project.fetch_runs_table(columns=["sys/id"], sort_by="sys/creation_time", ascending=True).to_pandas()
    project.stop()
    return {"ids": list(df["sys/id"])}


def fault_calls() -> dict[str, Any]:
    import neptune

    run = neptune.init_run(project="sandbox/demo", with_id="DEMO-2", mode="read-only")
    out = {
        "lr": run["parameters/learning_rate"].fetch(),
        "loss": _series(run["train/loss"].fetch_values()),
    }
    run.stop()
    return out


def offline_n1_calls() -> dict[str, Any]:
    """Read back, through the 2.x API, the run neptune 1.x wrote offline and the sandbox replayed."""
    import neptune

    run = neptune.init_run(project="offline-ws/n1-proj", with_id="NONE-1", mode="read-only")
    out = {
        "params": run["params"].fetch(),
        "loss": _series(run["train/loss"].fetch_values()),
        "logs": [v for _, v, _ in _series(run["train/logs"].fetch_values())],
        "name": run["sys/name"].fetch(),
    }
    run.stop()
    return out


if __name__ == "__main__":
    _ = dt
    result = globals()[sys.argv[1]]()
    with open(sys.argv[2], "wb") as fh:
        pickle.dump(result, fh)
