"""`discover`: what a selection matches at the source, counted, with no data moved."""

from __future__ import annotations

from typing import Any

from neptune_migration.stages.export import Source


def discover(source: Source) -> dict[str, Any]:
    """Per project: runs, experiment names, attribute counts by type and the bytes of file attributes.

    Only listings and atom values are read (run ids, attribute definitions, `sys/name`, file sizes), so this is
    cheap next to an export. Series point counts are not known to Neptune's listing API and come from `export`.
    """
    source.check()
    projects = []
    total_runs = total_bytes = 0
    for project in source.projects:
        runs = source.list_runs(project)
        by_type: dict[str, int] = {}
        experiments: set[str] = set()
        file_bytes = 0
        details = []
        for run in runs:
            described = source.describe_run(run)
            # Sources that derive what their data does not record (offline folders) say where it came from.
            extra = {k: v for k, v in described.items() if k not in ("attributes_by_type", "experiment", "file_bytes")}
            if extra:
                details.append({"run_id": run.ref.run_id, **extra})
            for type_, n in described["attributes_by_type"].items():
                by_type[type_] = by_type.get(type_, 0) + n
            if described.get("experiment"):
                experiments.add(described["experiment"])
            file_bytes += described.get("file_bytes", 0)
        projects.append({
            "project": project,
            "runs": len(runs),
            "run_ids": [r.ref.run_id for r in runs],
            "experiments": sorted(experiments),
            "attributes": sum(by_type.values()),
            "attributes_by_type": by_type,
            "file_bytes": file_bytes,
            **({"run_details": details} if details else {}),
        })
        total_runs += len(runs)
        total_bytes += file_bytes
    return {"source": source.name, "runs": total_runs, "file_bytes": total_bytes, "projects": projects}
