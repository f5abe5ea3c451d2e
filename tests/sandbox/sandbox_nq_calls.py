"""neptune-query calls the contract tests make, run in a fresh interpreter.

neptune-query reads NEPTUNE_* and its batch sizes when it is imported (some as default arguments), so
each batch of calls runs in a subprocess with the sandbox's environment. Results are turned into plain
Python (tuples, sets, datetimes, floats) so the test process can compare them with the model without
caring about pandas shapes.
"""

from __future__ import annotations

import hashlib
import math
import os
import pathlib
import pickle
import sys
import traceback
import warnings
from typing import Any


def plain(value: Any) -> Any:
    import pandas as pd
    from neptune_query.types import File, Histogram

    if isinstance(value, File):
        return ("file", value.path, value.size_bytes, value.mime_type)
    if isinstance(value, Histogram):
        return ("histogram", value.type, list(value.edges), list(value.values))
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def table(df: Any) -> dict[str, dict[str, Any]]:
    """{label: {column: value}} with absent cells left out (NaN floats are kept as values only when typed)."""
    import pandas as pd

    out: dict[str, dict[str, Any]] = {}
    for label, row in df.iterrows():
        cells = {}
        for col, value in row.items():
            if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
                cells[col] = float("nan") if isinstance(value, float) else None
                continue
            cells[col] = plain(value)
        out[str(label)] = cells
    return out


def metrics(df: Any) -> dict[tuple[str, str], list[tuple[float, float, int | None, bool, float]]]:
    """{(label, attribute): [(step, value, ts_ms, is_preview, completion)]}, present points only."""
    import pandas as pd

    out: dict[tuple[str, str], list[Any]] = {}
    attrs = sorted({c[0] for c in df.columns})
    for (label, step), row in df.iterrows():
        for attr in attrs:
            ts = row[(attr, "absolute_time")] if (attr, "absolute_time") in row.index else None
            if ts is None or ts is pd.NaT or (isinstance(ts, float) and math.isnan(ts)):
                continue
            is_preview = bool(row[(attr, "is_preview")]) if (attr, "is_preview") in row.index else False
            completion = float(row[(attr, "preview_completion")]) if (attr, "preview_completion") in row.index else 1.0
            ts_ms = round(pd.Timestamp(ts).timestamp() * 1000)
            out.setdefault((str(label), attr), []).append(
                (float(step), float(row[(attr, "value")]), ts_ms, is_preview, completion)
            )
    return out


def series(df: Any) -> dict[tuple[str, str], list[tuple[float, Any, int]]]:
    import pandas as pd

    out: dict[tuple[str, str], list[Any]] = {}
    attrs = sorted({c[0] for c in df.columns})
    for (label, step), row in df.iterrows():
        for attr in attrs:
            ts = row[(attr, "absolute_time")]
            if ts is None or ts is pd.NaT:
                continue
            ts_ms = round(pd.Timestamp(ts).timestamp() * 1000)
            out.setdefault((str(label), attr), []).append((float(step), plain(row[(attr, "value")]), ts_ms))
    return out


def downloads(df: Any) -> dict[tuple[Any, ...], str | None]:
    """{(label, step or None, column): sha256 of the downloaded file, or None when nothing was saved}."""
    out: dict[tuple[Any, ...], str | None] = {}
    for label, row in df.iterrows():
        name, step = label if isinstance(label, tuple) else (label, None)
        step = None if step is None or (isinstance(step, float) and math.isnan(step)) else float(step)
        for col, value in row.items():
            digest = None
            if isinstance(value, str) and value:
                digest = hashlib.sha256(pathlib.Path(value).read_bytes()).hexdigest()
            out[(str(name), step, str(col))] = digest
    return out


# ---------------------------------------------------------------- the call sets


def contract_calls() -> dict[str, Any]:
    import neptune_query as nq
    import neptune_query.runs as nq_runs
    from neptune_query.filters import Attribute, AttributeFilter, Filter

    demo, nasty = "sandbox/demo", "sandbox/nasty"
    dest = pathlib.Path(os.environ["SANDBOX_TEST_DOWNLOADS"])
    calls: dict[str, Any] = {
        "experiments_all": lambda: nq.list_experiments(project=demo),
        "experiments_regex": lambda: nq.list_experiments(project=demo, experiments="^base"),
        "experiments_filter": lambda: nq.list_experiments(
            project=demo,
            experiments=Filter.eq("parameters/batch_size", 64) & Filter.contains_all("sys/tags", "gpu"),
        ),
        "experiments_names": lambda: nq.list_experiments(project=demo, experiments=["baseline", "lr-sweep"]),
        "experiments_metric_filter": lambda: nq.list_experiments(
            project=demo, experiments=Filter.lt(Attribute("train/loss", type="float_series"), 0.2)
        ),
        "runs_all": lambda: nq_runs.list_runs(project=nasty),
        "runs_regex": lambda: nq_runs.list_runs(project=demo, runs=r"^lr-sweep-[12]$"),
        "runs_filter": lambda: nq_runs.list_runs(
            project=nasty,
            runs=Filter.matches("sys/custom_run_id", "^run-000") & ~Filter.eq("params/flag", True),
        ),
        "runs_exists": lambda: nq_runs.list_runs(project=nasty, runs=Filter.exists("nasty/strings")),
        "attributes_exp": lambda: nq.list_attributes(project=demo, experiments="^baseline$"),
        "attributes_regex": lambda: nq.list_attributes(project=demo, attributes="^parameters/"),
        "attributes_typed": lambda: nq_runs.list_attributes(
            project=nasty, attributes=AttributeFilter(name=r"^nasty/", type=["float_series", "file"])
        ),
        "exp_table": lambda: table(
            nq.fetch_experiments_table(project=demo, attributes=".*", type_suffix_in_column_names=True)
        ),
        "runs_table": lambda: table(
            nq_runs.fetch_runs_table(project=nasty, attributes=".*", type_suffix_in_column_names=True)
        ),
        "runs_table_sorted": lambda: list(
            nq_runs.fetch_runs_table(
                project=nasty, attributes=["params/lr"], sort_by="params/lr", sort_direction="asc"
            ).index
        ),
        "metrics_runs": lambda: metrics(
            nq_runs.fetch_metrics(
                project=nasty,
                runs=".*",
                attributes=".*",
                include_time="absolute",
                include_point_previews=True,
                lineage_to_the_root=False,
            )
        ),
        "metrics_no_preview": lambda: metrics(
            nq_runs.fetch_metrics(
                project=nasty, runs="^run-0000$", attributes="nasty/with_preview", include_time="absolute"
            )
        ),
        "metrics_lineage": lambda: metrics(
            nq_runs.fetch_metrics(project=nasty, runs="^run-fork$", attributes="metrics/m0", include_time="absolute")
        ),
        "metrics_experiments": lambda: metrics(
            nq.fetch_metrics(
                project=demo,
                experiments="^baseline",
                attributes="train/loss",
                include_time="absolute",
                step_range=(10, 60),
                tail_limit=30,
            )
        ),
        "series_demo": lambda: series(
            nq.fetch_series(
                project=demo,
                experiments=".*",
                attributes="train/logs|train/weights|eval/predictions",
                include_time="absolute",
            )
        ),
        "series_nasty": lambda: series(
            nq_runs.fetch_series(project=nasty, runs=".*", attributes="^nasty/", include_time="absolute")
        ),
        "series_tail": lambda: series(
            nq.fetch_series(
                project=demo, experiments="^baseline$", attributes="train/logs", include_time="absolute", tail_limit=4
            )
        ),
        "download_table": lambda: downloads(
            nq.download_files(
                files=nq.fetch_experiments_table(project=demo, attributes="model/checkpoint"), destination=dest / "t"
            )
        ),
        "download_series": lambda: downloads(
            nq.download_files(
                files=nq.fetch_series(project=demo, experiments="^wider-net$", attributes="eval/predictions"),
                destination=dest / "s",
            )
        ),
    }
    only = os.environ.get("SANDBOX_TEST_ONLY")
    results: dict[str, Any] = {}
    for name, call in calls.items():
        if only and name not in only.split(","):
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                value = call()
            results[name] = value if not hasattr(value, "tolist") else value.tolist()
            results[f"{name}__warnings"] = [str(w.message) for w in caught]
        except Exception:
            results[name] = RuntimeError(traceback.format_exc())
    return results


def paging_calls() -> dict[str, Any]:
    """Shrink the client's own per-request point budget so fetch_metrics must page with afterStep."""
    import neptune_query.internal.retrieval.metrics as nq_metrics
    import neptune_query.runs as nq_runs

    nq_metrics.TOTAL_POINT_LIMIT = 7
    df = nq_runs.fetch_metrics(
        project="sandbox/demo", runs="^baseline-1$", attributes="train/loss", include_time="absolute"
    )
    return {"metrics": metrics(df)}


def fault_calls() -> dict[str, Any]:
    import neptune_query as nq
    import neptune_query.runs as nq_runs

    return {
        "experiments": nq.list_experiments(project="sandbox/demo"),
        "table": table(nq_runs.fetch_runs_table(project="sandbox/demo", attributes="parameters/.*")),
        "metrics": metrics(
            nq_runs.fetch_metrics(
                project="sandbox/demo", runs="^baseline-1$", attributes="train/loss", include_time="absolute"
            )
        ),
    }


def offline_calls() -> dict[str, Any]:
    """Read back the runs neptune-scale wrote offline, once the sandbox serves them."""
    import neptune_query.runs as nq_runs

    project = "offline-ws/scale-proj"
    return {
        "table": table(nq_runs.fetch_runs_table(project=project, attributes=".*", type_suffix_in_column_names=True)),
        "metrics": metrics(
            nq_runs.fetch_metrics(
                project=project,
                runs=".*",
                attributes="train/loss",
                include_time="absolute",
                include_point_previews=True,
                lineage_to_the_root=True,
            )
        ),
        "series": series(nq_runs.fetch_series(project=project, runs=".*", attributes=".*", include_time="absolute")),
    }


if __name__ == "__main__":
    result = globals()[sys.argv[1]]()
    with open(sys.argv[2], "wb") as fh:
        pickle.dump(result, fh)
