"""`neptune-migrate sandbox serve`: start a sandbox, print what clients need, serve until stopped."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from neptune_migration.sandbox.replay import replay_offline_tree
from neptune_migration.sandbox.seed import demo_project, generate_project
from neptune_migration.sandbox.server import Sandbox
from neptune_migration.sandbox.world import Project

SEED_HELP = (
    "demo (a small realistic project), nasty (the generator's edge cases), "
    "generate:runs=N,series=N,points=N,files=N,seed=N (synthetic, for scale), "
    "offline:PATH (runs neptune-scale or neptune 1.x wrote in offline mode under PATH, as project offline/offline), "
    "or several joined with '+', e.g. demo+nasty"
)


def projects_from_seed(seed: str) -> list[Project]:
    """Build the projects a seed spec names (see SEED_HELP)."""
    projects: list[Project] = []
    for part in filter(None, (p.strip() for p in seed.split("+"))):
        kind, _, args = part.partition(":")
        if kind == "demo":
            projects.append(demo_project())
        elif kind == "nasty":
            projects.append(generate_project("nasty"))
        elif kind == "generate":
            options: dict[str, int] = {}
            for item in filter(None, args.split(",")):
                key, _, value = item.partition("=")
                if key not in ("runs", "series", "points", "files", "seed") or not value.isdigit():
                    raise ValueError(f"bad generate option {item!r}; expected runs/series/points/files/seed=N")
                options[key] = int(value)
            projects.append(generate_project("generated", nasty=False, **options))  # type: ignore[arg-type]
        elif kind == "offline":
            if not args or not Path(args).is_dir():
                raise ValueError(f"offline seed needs an existing folder, got {args!r}")
            project = Project("offline", "offline", key="OFF")
            replay_offline_tree(project, Path(args))
            projects.append(project)
        else:
            raise ValueError(f"unknown seed {part!r}; use {SEED_HELP}")
    if not projects:
        raise ValueError(f"empty seed; use {SEED_HELP}")
    return projects


def serve(
    seed: str = "demo",
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    out: TextIO | None = None,
    ready: Callable[[Sandbox], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set). Prints the env lines a shell can ``eval``."""
    out = out or sys.stdout
    stop = stop or threading.Event()
    sandbox = Sandbox(projects_from_seed(seed), host=host, port=port, request_log_limit=10_000)
    # handlers first: whoever reads the printed lines may signal us right after the last one
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    with sandbox:
        print(f"# Neptune sandbox on {sandbox.url} with projects: {', '.join(sandbox.projects)}", file=out)
        for key, value in sandbox.env().items():
            print(f"export {key}={shlex.quote(value)}", file=out)
        print("# Ctrl+C stops it.", file=out, flush=True)
        if ready is not None:
            ready(sandbox)
        stop.wait()
