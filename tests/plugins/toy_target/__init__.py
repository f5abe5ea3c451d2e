"""A toy target from outside the package: one JSON file per run holding its params (atoms).

It exists to prove the plug-in seam: it is registered only through an entry point in a dist-info folder the test
writes, and `load`, `validate` and `--help` reach it with no change to neptune_migration.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from neptune_migration.archive import ArchivedRun
from neptune_migration.checks import RunCheck
from neptune_migration.options import option
from neptune_migration.selection import Selection
from neptune_migration.targets.base import LoadContext, LoadResult, TargetPlugin, TargetSettings


@dataclass
class ToyOptions:
    toy_dir: Path = option(Path("toy-target"), help="Folder the toy target writes one JSON file per run into.")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, set | frozenset | list | tuple):
        return sorted(str(v) for v in value)
    return value


def _params(run: ArchivedRun, wants: Any) -> dict[str, Any]:
    return {path: _plain(atom.value) for path, atom in sorted(run.atoms().items()) if wants(path, atom.type)}


class ToyTarget:
    name = "toy"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    @property
    def canonical(self) -> str:
        return f"toy:{self.root}"

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def file_for(self, run: ArchivedRun) -> Path:
        return self.root / (hashlib.sha256(run.ref.key.encode()).hexdigest()[:16] + ".json")

    def load_run(self, run: ArchivedRun, ctx: LoadContext) -> LoadResult:
        params = _params(run, ctx.wants_attribute)
        self.file_for(run).write_text(json.dumps({"key": run.ref.key, "params": params}, sort_keys=True))
        return LoadResult(target_id=self.file_for(run).stem)

    def close(self) -> None:
        pass


class ToyVerifier:
    def __init__(self, target: ToyTarget) -> None:
        self.target = target

    def verify(self, run: ArchivedRun, selection: Selection) -> RunCheck:
        check = RunCheck(run.ref, self.target.file_for(run).stem)
        path = self.target.file_for(run)
        if not path.exists():
            check.mismatch("run", "run_missing", "no file for this run in the toy target")
            return check
        held = json.loads(path.read_text())["params"]
        for key, value in _params(run, selection.wants_attribute).items():
            check.count("params")
            if held.get(key) != value:
                check.mismatch(key, "param_value", f"expected {value!r}, found {held.get(key)!r}")
        return check

    def discard(self, run: ArchivedRun) -> int:
        path = self.target.file_for(run)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return int(existed)

    def close(self) -> None:
        pass


plugin = TargetPlugin(
    name="toy",
    summary="a JSON file per run (test plug-in)",
    options=ToyOptions,
    build=lambda opts, _settings: ToyTarget(opts.toy_dir),
    verifier=ToyVerifier,
    hint=lambda target: f"Runs written to {target.root}",
)

_ = TargetSettings  # the factory's second argument, unused by a target without concurrency
