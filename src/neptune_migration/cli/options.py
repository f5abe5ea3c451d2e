"""Option bundles: every command-line option declared once, applied to each command that takes it.

The selection, the sources' and the targets' options come from their dataclasses (`options.option` fields), so
a plug-in's options appear on every command that reaches it, and `--to`/`--from` list what is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click

from neptune_migration import plugins
from neptune_migration.api import DEFAULT_REPORT_DIR
from neptune_migration.options import OptionSpec, specs
from neptune_migration.selection import SelectionOptions

F = TypeVar("F", bound=Callable[..., Any])

OBJECT_STORE_HELP = ("A folder, or a prefix on object storage: s3://BUCKET/PREFIX (credentials, region and "
                     "AWS_ENDPOINT_URL from the AWS environment) or gs://BUCKET/PREFIX; the ledger stays local.")
_KINDS: dict[type, Any] = {str: str, int: int, float: float, Path: click.Path(path_type=Path)}


def bundle(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several click decorators as one, applied in the order written (so --help lists them in that order)."""
    def apply(f: F) -> F:
        for decorate in reversed(decorators):
            f = decorate(f)
        return f

    return apply


def _click(spec: OptionSpec) -> Callable[[F], F]:
    if spec.argument:
        return click.argument(spec.name, required=False, type=click.Path(path_type=Path), metavar="[PATH]")
    decls = [spec.flag, *([spec.short] if spec.short else []), spec.name]
    if spec.kind is bool:
        return click.option(*decls, is_flag=True, default=bool(spec.default), help=spec.help)
    if spec.multiple:
        return click.option(*decls, multiple=True, help=spec.help)
    kind: Any = _KINDS.get(spec.kind, str)
    if spec.choices:
        kind = click.Choice(spec.choices)
    elif spec.kind is int and (spec.minimum is not None or spec.maximum is not None):
        kind = click.IntRange(spec.minimum, spec.maximum)
    return click.option(*decls, type=kind, default=spec.default, envvar=spec.envvar, show_envvar=bool(spec.envvar),
                        metavar=spec.metavar, show_default=spec.default not in (None, "", ()), help=spec.help)


def _merged(option_types: Iterable[type]) -> list[OptionSpec]:
    """Each option once, even when several plug-ins share it (the W&B targets, the Neptune sources' token)."""
    seen: dict[str, OptionSpec] = {}
    for options_type in option_types:
        for spec in specs(options_type):
            seen.setdefault(spec.name, spec)
    return list(seen.values())


def _not_on(f: Callable[..., Any], merged: list[OptionSpec]) -> list[OptionSpec]:
    """The options `f` does not take yet: a command with both a source and a target (migrate) gets the options
    they share (--timeout, --retry-budget) once, and its value reaches both."""
    have = {p.name for p in getattr(f, "__click_params__", [])}
    return [s for s in merged if s.name not in have]


selection_options = bundle(*(_click(s) for s in specs(SelectionOptions)))


def target_options(f: F) -> F:
    installed = plugins.targets()
    names = ", ".join(f"{name} ({p.summary})" for name, p in installed.items())
    decorators = [click.option("--to", default="mlflow", show_default=True,
                               metavar="[" + "|".join(installed) + "]", help=f"Target: {names}.")]
    decorators += [_click(s) for s in _not_on(f, _merged(p.options for p in installed.values()))]
    decorators.append(click.option(
        "--upload-workers", type=click.IntRange(1, 64), default=None,
        help="Concurrent uploads into the target: MLflow artifact files (default: --workers, at least 2), W&B runs "
             "being synced (default: --workers)."))
    return bundle(*decorators)(f)


def source_options(f: F) -> F:
    installed = plugins.sources()
    names = ", ".join(f"{name} ({p.summary})" for name, p in installed.items())
    merged = _not_on(f, _merged(p.options for p in installed.values()))
    # Positional arguments first: click lists them in the usage line in declaration order.
    decorators = [_click(s) for s in merged if s.argument]
    decorators.append(click.option("--from", "from_", default="neptune3", show_default=True,
                                   metavar="[" + "|".join(installed) + "]", help=f"Source: {names}."))
    decorators += [_click(s) for s in merged if not s.argument]
    return bundle(*decorators)(f)


def export_source_only(f: F) -> F:
    """What `export` and `migrate` add to a source: refresh and the 2.x model registry."""
    return bundle(
        click.option("--refresh", is_flag=True, help="Re-export runs whose Neptune modification time moved since "
                     "they were exported (their target copy is replaced), and reload runs loaded with an older "
                     "mapping version of the target."),
        click.option("--no-models", is_flag=True, help="neptune2: leave the model registry (models and model "
                     "versions) out."),
    )(f)


archive_input = bundle(
    click.option("--archive", required=True, metavar="DIR|URL", help="Archive root (holding data/ and files/) or a "
                 "neptune-exporter parquet root (one folder per project). " + OBJECT_STORE_HELP),
    click.option("--files", metavar="DIR|URL", help="neptune-exporter files root, when --archive is their parquet "
                 "root (a folder, s3://... or gs://...)."),
)

report_option = click.option("--report-dir", type=click.Path(path_type=Path), default=DEFAULT_REPORT_DIR,
                             show_default=True, help="Where report.json, report.html, report.md and errors.jsonl are "
                             "written.")

state_option = click.option("--state", default=None, metavar="PATH|URI",
                            help="Ledger: a SQLite file, or postgresql://USER:PASSWORD@HOST:PORT/DB to share progress "
                                 "between drivers and a cluster (required with --cluster). Default: "
                                 ".neptune-migration/state.db or $NEPTUNE_MIGRATION_STATE.")
relocate_option = click.option(
    "--relocate", is_flag=True,
    help="Move runs the target holds at another place (another --experiment-by or --experiment-prefix) to the "
         "place these options name: each is loaded there, validated, then its old copies are deleted. Without it "
         "such a load is refused before anything is written.")
json_option = click.option("--json", "json_output", is_flag=True, help="Machine-readable output.")

logging_options = bundle(
    click.option("--no-progress", is_flag=True, help="Plain log lines instead of progress bars."),
    click.option("--verbose", "-v", is_flag=True, help="Debug logging."),
    click.option("--log-file", type=click.Path(path_type=Path), default=None, help="Also write the full log to this "
                 "file."),
)

cluster_option = click.option(
    "--cluster", default=None, metavar="tcp://HOST:PORT", envvar="NEPTUNE_MIGRATION_CLUSTER", show_envvar=True,
    help="Send each run's work to the workers of this Dask scheduler (docs/cluster.md). Needs --state "
         "postgresql://... and an archive every worker can read (s3://, gs:// or a shared folder).")

run_options = bundle(
    click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True,
                 help="Runs processed in parallel (on a cluster: each worker's threads decide; this sizes uploads)."),
    state_option,
    cluster_option,
    logging_options,
)

stage_workers = bundle(
    click.option("--export-workers", type=click.IntRange(1, 64), default=None,
                 help="migrate: runs exported in parallel (default: --workers)."),
    click.option("--validate-workers", type=click.IntRange(1, 64), default=None,
                 help="migrate: runs read back in parallel (default: --workers)."),
)
