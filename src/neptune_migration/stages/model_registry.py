"""The Neptune 2.x model registry: export models and versions into the archive, load them as MLflow registered models.

In the archive, models and model versions are stored like runs (same schema), under `models/` and `model_files/`.
In MLflow (docs/mlflow.md, "Model registry"):
- a Neptune model becomes a registered model named `<prefix><workspace>.<project>.<model id>` (MLflow refuses `/`
  in model names), with its atoms as tags;
- each version's attributes and files are logged to an MLflow run (experiment `<prefix><project>/models`), and
  a model version points at that run's artifacts; its Neptune id, name and stage are tags;
- `sys/stage` becomes an alias (`production`, `staging`, `archived`) on the newest version holding that stage.
MLflow numbers versions itself and stamps its own creation time; the Neptune ones are kept as tags.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from neptune_migration.archive import Archive, ArchivedRun, ArchiveWriter
from neptune_migration.errors import MigrationError
from neptune_migration.ledger import Ledger
from neptune_migration.naming import fit_length
from neptune_migration.retry import retrying
from neptune_migration.secrets import redact
from neptune_migration.stages.export import EXPORT, ExportOutcome, archive_key, export_one
from neptune_migration.stages.load import LOAD
from neptune_migration.targets.base import LoadContext
from neptune_migration.targets.mlflow.mapping import param_text
from neptune_migration.vocabulary import RunRef

log = logging.getLogger("neptune_migration")

MODELS_DIR, MODEL_FILES_DIR = "models", "model_files"


def registry_writer(root: Path) -> ArchiveWriter:
    return ArchiveWriter(root, data_dir=MODELS_DIR, files_dir=MODEL_FILES_DIR)


def export_registry(source: Any, root: Path, ledger: Ledger) -> list[ExportOutcome]:
    """Export every model and model version of the source's projects into the archive's registry folders."""
    writer = registry_writer(root)
    outcomes = []
    for project in source.projects:
        for entry in source.list_registry(project):
            outcomes.append(export_one(entry, source, writer, ledger))
    return outcomes


def load_registry(archive: Archive, target: Any, ledger: Ledger) -> list[tuple[str, str, str | None]]:
    """Load the registry into MLflow: models first, then their versions. Returns (key, status, error) per entry."""
    registry = archive.registry()
    if registry is None:
        return []
    entries = registry.scan().runs
    models = [e for e in entries if e.atom_value("sys/model_id") is None]
    versions = sorted((e for e in entries if e.atom_value("sys/model_id") is not None),
                      key=lambda e: (str(e.atom_value("sys/model_id")), _version_number(e.ref.run_id)))
    results = []
    key = target.canonical + "#registry"
    for entry in [*models, *versions]:
        if ledger.is_done(entry.ref, LOAD, key):
            results.append((entry.ref.key, "already_loaded", None))
            continue
        ledger.start(entry.ref, LOAD, key)
        try:
            target_id = _load_model(target, entry) if entry in models else _load_version(target, entry, ledger)
        except Exception as exc:  # recorded; a rerun retries this entry
            message = redact(str(exc) if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}")
            log.error("model registry entry %s failed to load: %s", entry.ref.key, message)
            ledger.fail(entry.ref, LOAD, key, message)
            results.append((entry.ref.key, "failed", message))
            continue
        ledger.finish(entry.ref, LOAD, key, target_id)
        results.append((entry.ref.key, "loaded", None))
    _set_aliases(target, versions)
    return results


def model_name(target: Any, project_id: str, model_id: str) -> str:
    """`ws/proj` model `PROJ-MOD` -> `ws.proj.PROJ-MOD`: MLflow model names cannot hold `/` or `:`."""
    name = f"{target.experiment_prefix}{project_id}.{model_id}".replace("/", ".").replace(":", "_")
    return fit_length(name, 250)


def _atom_tags(entry: ArchivedRun) -> dict[str, str]:
    tags = {"neptune.project": entry.ref.project_id, "neptune.id": entry.ref.run_id}
    for path, atom in entry.atoms().items():
        if atom.value is not None and atom.type != "string_set":
            tags[f"neptune.{path}"[:250]] = param_text(atom.type, atom.value)[:5000]
        elif atom.value:
            tags[f"neptune.{path}"[:250]] = ",".join(sorted(atom.value))[:5000]
    return tags


def _load_model(target: Any, entry: ArchivedRun) -> str:
    from neptune_migration.targets.mlflow.loader import write_once  # with the target: keeps the CLI's start light

    client = target.client
    name = model_name(target, entry.ref.project_id, entry.ref.run_id)
    if retrying(lambda: _get_model(client, name)) is None:
        description = entry.atom_value("sys/description") or entry.atom_value("sys/name") or None
        write_once(lambda: client.create_registered_model(name, tags=_atom_tags(entry), description=description),
                   lambda: _get_model(client, name), target.patience.budget)
    else:
        for k, v in _atom_tags(entry).items():
            retrying(lambda k=k, v=v: client.set_registered_model_tag(name, k, v))
    return name


def _load_version(target: Any, entry: ArchivedRun, ledger: Ledger) -> str:
    """The version's attributes and files go to an MLflow run (the target's own run loader, so resumable and
    exact); the registered model version points at that run."""
    from neptune_migration.targets.mlflow.loader import write_once

    client = target.client
    model_id = str(entry.atom_value("sys/model_id"))
    name = model_name(target, entry.ref.project_id, model_id)
    def existing() -> Any:
        found = [v for v in client.search_model_versions(f"name = '{name}'")
                 if v.tags.get("neptune.id") == entry.ref.run_id]
        return found[0] if found else None

    known = retrying(existing)
    if known is not None:
        return f"{name}/{known.version}"
    # Version runs live in their own experiment (`<project>/models`), apart from the project's training runs.
    holder = dataclasses.replace(entry, ref=RunRef(f"{entry.ref.project_id}/models", entry.ref.run_id))
    result = target.load_run(holder, LoadContext())
    tags = _atom_tags(entry)
    stage = entry.atom_value("sys/stage")
    if stage:
        tags["neptune.stage"] = str(stage)
    # A version the server committed before its answer was lost is found by its Neptune id, not created twice.
    version = write_once(lambda: client.create_model_version(
        name, source=f"runs:/{result.target_id}", run_id=result.target_id, tags=tags,
        description=str(entry.atom_value("sys/name") or "") or None), existing, target.patience.budget)
    return f"{name}/{version.version}"


def _set_aliases(target: Any, versions: list[ArchivedRun]) -> None:
    """Neptune stages as aliases; an alias names one version, so the newest version with that stage wins."""
    client = target.client
    newest: dict[tuple[str, str], ArchivedRun] = {}
    for entry in versions:
        stage = str(entry.atom_value("sys/stage") or "").lower()
        if stage and stage != "none":
            newest[(str(entry.atom_value("sys/model_id")), stage)] = entry
    for (model_id, stage), entry in newest.items():
        name = model_name(target, entry.ref.project_id, model_id)
        found = [v for v in client.search_model_versions(f"name = '{name}'")
                 if v.tags.get("neptune.id") == entry.ref.run_id]
        if found:
            retrying(lambda n=name, s=stage, v=found[0].version: client.set_registered_model_alias(n, s, v))


def _get_model(client: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _version_number(sys_id: str) -> int:
    tail = sys_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


__all__ = ["EXPORT", "archive_key", "export_registry", "load_registry", "registry_writer"]
