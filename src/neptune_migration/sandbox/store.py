"""Lookups over the seeded projects that both API layers need (runs by id, files by storage path)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from neptune_migration.sandbox.web import HttpError
from neptune_migration.sandbox.world import FileValue, Project, Run


@dataclass
class Store:
    projects: dict[str, Project]
    base_url: str = ""
    # Server-side page size of string/file/histogram series replies; small values make clients page.
    series_page_size: int = 1000
    files: dict[str, FileValue] = field(default_factory=dict)

    @classmethod
    def build(cls, projects: Iterable[Project], **kwargs: object) -> Store:
        by_id: dict[str, Project] = {}
        for project in projects:
            if project.project_id in by_id:
                raise ValueError(f"project {project.project_id} given twice")
            project.assign_file_paths()
            by_id[project.project_id] = project
        store = cls(by_id, **kwargs)  # type: ignore[arg-type]
        for project in by_id.values():
            for run in project.runs:
                for _, _, fv in run.files():
                    store.files[fv.path] = fv
        return store

    def project(self, project_id: str | None) -> Project:
        if not project_id or project_id not in self.projects:
            raise HttpError(404, f"project {project_id} not found")
        return self.projects[project_id]

    def run_by_identifier(self, identifier: str) -> tuple[Project, Run] | None:
        """Resolve ``ws/proj/SYS-1`` or ``CUSTOM/ws/proj/<custom run id>``."""
        custom = identifier.startswith("CUSTOM/")
        if custom:
            identifier = identifier[len("CUSTOM/") :]
        parts = identifier.split("/", 2)
        if len(parts) == 2 and not custom and identifier in self.projects:
            project = self.projects[identifier]
            return project, project.container
        if len(parts) != 3:
            return None
        project = self.projects.get(f"{parts[0]}/{parts[1]}")
        if project is None:
            return None
        run = project.run_by_custom_id(parts[2]) if custom else project.run_by_sys_id(parts[2])
        return None if run is None else (project, run)
