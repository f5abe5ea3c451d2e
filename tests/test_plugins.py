"""Targets are plug-ins: a toy target from a test package, registered only through an entry point, works with
`load`, `validate` and `--help`, with no change to neptune_migration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from neptune_migration.samples import write_nasty_archive

from .conftest import VENV_BIN

TOY = Path(__file__).parent / "plugins" / "toy_target"


def _install_toy(site: Path) -> dict[str, str]:
    """A minimal installed distribution: the package plus a dist-info folder declaring the entry point."""
    shutil.copytree(TOY, site / "toy_target")
    info = site / "toy_target-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-target\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[neptune_migration.targets]\ntoy = toy_target:plugin\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "neptune-migrate"), *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


def test_toy_target_appears_in_help_only_while_installed(tmp_path: Path) -> None:
    without = _cli("load", "--help")
    assert without.returncode == 0, without.stderr
    assert "toy" not in without.stdout and "--toy-dir" not in without.stdout
    with_toy = _cli("load", "--help", env=_install_toy(tmp_path / "site"))
    assert with_toy.returncode == 0, with_toy.stderr
    text = " ".join(with_toy.stdout.split())  # --help wraps its columns
    assert "toy (a JSON file per run" in text and "[aim|comet-offline|mlflow|toy|wandb|wandb-offline]" in text
    assert "--toy-dir" in text


def test_toy_target_options_land_in_their_own_help_section(tmp_path: Path) -> None:
    from .test_help_sections import sections

    shown = _cli("load", "--help", env=_install_toy(tmp_path / "site") | {"COLUMNS": "80"})
    assert shown.returncode == 0, shown.stderr
    found = sections(shown.stdout)
    assert found["Target: toy"] == ["--toy-dir", "--toy-pause"]
    titles = [s for s in found if s.startswith("Target")]
    assert titles[0] == "Target" and {"Target: mlflow", "Target: toy", "Target: wandb, wandb-offline"} <= set(titles)
    assert not [f for title, flags in found.items() if title != "Target: toy" for f in flags if "toy" in f]


def test_load_and_validate_through_a_toy_target(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    env = _install_toy(tmp_path / "site")
    common = ["--archive", str(archive), "--to", "toy", "--toy-dir", str(tmp_path / "toy"),
              "--state", str(tmp_path / "state.db"), "--no-progress"]
    loaded = _cli("load", *common, env=env)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    # The hint is wrapped at spaces to the terminal: the folder whole, on the next line when it does not fit.
    assert f"Runs written to {tmp_path / 'toy'}" in " ".join(loaded.stdout.split())
    files = sorted((tmp_path / "toy").glob("*.json"))
    assert files and all(json.loads(f.read_text())["params"] for f in files)
    checked = _cli("validate", *common, "--report-dir", str(tmp_path / "report"), env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["totals"]["runs_validated"] == len(files)

    # The verifier really compares: a changed value is a mismatch, and validate exits 1.
    first = json.loads(files[0].read_text())
    path = next(iter(first["params"]))
    first["params"][path] = "changed"
    files[0].write_text(json.dumps(first))
    again = _cli("validate", *common, "--report-dir", str(tmp_path / "report2"), env=env)
    assert again.returncode == 1, again.stdout + again.stderr

    # The same through the Python API, in a process that sees the plug-in.
    script = (
        "import neptune_migration as nm, sys\n"
        f"r = nm.retry(archive={str(archive)!r}, to='toy', toy_dir={str(tmp_path / 'toy')!r}, "
        f"state={str(tmp_path / 'state.db')!r}, report_dir={str(tmp_path / 'report3')!r})\n"
        "print(r.ok, r.reloaded)\n"
    )
    retried = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, **env))
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert retried.stdout.startswith("True"), retried.stdout
