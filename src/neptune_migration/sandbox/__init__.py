"""A local Neptune API server that the real neptune-query and neptune 1.x clients talk to.

from neptune_migration.sandbox import Sandbox, demo_project
with Sandbox([demo_project()]) as sb:
    os.environ.update(sb.env())
"""

from neptune_migration.sandbox.faults import Faults
from neptune_migration.sandbox.seed import demo_project, generate_project
from neptune_migration.sandbox.server import LoggedRequest, Sandbox
from neptune_migration.sandbox.world import ATTRIBUTE_TYPES, Attribute, FileValue, Histogram, Point, Project, Run

__all__ = [
    "ATTRIBUTE_TYPES",
    "Attribute",
    "Faults",
    "FileValue",
    "Histogram",
    "LoggedRequest",
    "Point",
    "Project",
    "Run",
    "Sandbox",
    "demo_project",
    "generate_project",
]
