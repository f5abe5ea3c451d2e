"""Option bundles: every command-line option declared once, applied to each command that takes it.

The selection, the sources' and the targets' options come from their dataclasses (`options.option` fields), so
a plug-in's options appear on every command that reaches it, and `--to`/`--from` list what is installed.

`--help` is in sections (cloup's option groups): each bundle names the section of the options it adds, and a
target plug-in's options land in a section of their own, named after the plug-ins that declare them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
import cloup

from neptune_migration import plugins
from neptune_migration.api import DEFAULT_REPORT_DIR
from neptune_migration.options import OptionSpec, specs
from neptune_migration.selection import SelectionOptions

F = TypeVar("F", bound=Callable[..., Any])

OBJECT_STORE_HELP = ("A folder, or a prefix on object storage: s3://BUCKET/PREFIX (credentials, region and "
                     "AWS_ENDPOINT_URL from the AWS environment) or gs://BUCKET/PREFIX; the ledger stays local.")
_KINDS: dict[type, Any] = {str: str, int: int, float: float, Path: click.Path(path_type=Path)}


SOURCE, SELECTION, TARGET, RUN, OUTPUT = "Source", "Selection", "Target", "Run control", "Output"
_ORDER = (SOURCE, SELECTION, TARGET, RUN, OUTPUT)


def _rank(title: str) -> int:
    """Sections in the order a command line is thought out; a plug-in's section ("Target: mlflow") after Target."""
    if title in _ORDER:
        return _ORDER.index(title) * 2
    return _ORDER.index(TARGET) * 2 + 1 if title.startswith(TARGET) else len(_ORDER) * 2


class SectionedCommand(cloup.Command):
    """A command whose `--help` shows its options by section: one option group per section an option names
    (`section`), made per command because an option group holds the options of one command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        groups: dict[str, cloup.OptionGroup] = {}
        for param in kwargs.get("params") or []:
            title = getattr(param, "section", None)
            if isinstance(param, click.Option) and title:
                param.group = groups.setdefault(title, cloup.OptionGroup(title))  # type: ignore[attr-defined]
        # A narrower first column leaves the help text room at 80 columns (a longer option goes on its own line).
        kwargs.setdefault("formatter_settings", cloup.HelpFormatter.settings(col1_max_width=26, col_spacing=2))
        super().__init__(*args, **kwargs)
        self.option_groups.sort(key=lambda group: _rank(group.title))  # stable: plug-ins keep their order


def section(title: str, *decorators: Callable[[F], F]) -> Callable[[F], F]:
    """`bundle`, the options it adds shown under `title` in `--help` (unless a bundle inside named theirs)."""
    def apply(f: F) -> F:
        before = len(getattr(f, "__click_params__", []))
        f = bundle(*decorators)(f)
        for param in getattr(f, "__click_params__", [])[before:]:
            if getattr(param, "section", None) is None:
                param.section = title  # type: ignore[attr-defined]
        return f

    return apply


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
    metavar = spec.metavar or ("N" if spec.kind is int and not spec.choices else None)
    return click.option(*decls, type=kind, default=spec.default, envvar=spec.envvar, show_envvar=bool(spec.envvar),
                        metavar=metavar, show_default=spec.default not in (None, "", ()), help=spec.help)


def _shared() -> set[str]:
    """Options both a source and a target declare (--timeout, --retry-budget): one value reaches both ends, so
    they are run control, not one plug-in's."""
    of_sources = {s.name for p in plugins.sources().values() for s in specs(p.options)}
    return of_sources & {s.name for p in plugins.targets().values() for s in specs(p.options)}


def _sectioned(owners: Iterable[tuple[type, str]]) -> list[tuple[OptionSpec, str]]:
    """Each option once, even when several plug-ins share it (the W&B targets, the Neptune sources' token), with
    its section: the one its field names (`option(panel=...)`), else run control for an option of both ends, else
    the section of the first options dataclass declaring it."""
    seen: dict[str, tuple[OptionSpec, str]] = {}
    shared = _shared()
    for options_type, title in owners:
        for spec in specs(options_type, panel=title):
            explicit = spec.panel != title
            seen.setdefault(spec.name, (spec, spec.panel if explicit else RUN if spec.name in shared else title))
    return list(seen.values())


def _not_on(f: Callable[..., Any], merged: list[tuple[OptionSpec, str]]) -> list[tuple[OptionSpec, str]]:
    """The options `f` does not take yet: a command with both a source and a target (migrate) gets the options
    they share (--timeout, --retry-budget) once, and its value reaches both."""
    have = {p.name for p in getattr(f, "__click_params__", [])}
    return [(s, title) for s, title in merged if s.name not in have]


selection_options = section(SELECTION, *(_click(s) for s in specs(SelectionOptions)))


def _target_sections(installed: dict[str, Any]) -> list[tuple[type, str]]:
    """One section per target options dataclass, named after the plug-ins using it ("Target: wandb, wandb-offline")."""
    names: dict[type, list[str]] = {}
    for name, plugin in installed.items():
        names.setdefault(plugin.options, []).append(name)
    return [(options_type, f"{TARGET}: {', '.join(using)}") for options_type, using in names.items()]


def target_options(f: F) -> F:
    installed = plugins.targets()
    names = ", ".join(f"{name} ({p.summary})" for name, p in installed.items())
    decorators = [section(TARGET, click.option("--to", default="mlflow", show_default=True,
                                               metavar="[" + "|".join(installed) + "]", help=f"Target: {names}."))]
    decorators += [section(title, _click(s)) for s, title in _not_on(f, _sectioned(_target_sections(installed)))]
    decorators.append(section(TARGET, click.option(
        "--upload-workers", type=click.IntRange(1, 64), default=None, metavar="N",
        help="Concurrent uploads into the target: MLflow artifact files (default: --workers, at least 2), W&B runs "
             "being synced (default: --workers).")))
    return bundle(*decorators)(f)


def source_options(f: F) -> F:
    installed = plugins.sources()
    names = ", ".join(f"{name} ({p.summary})" for name, p in installed.items())
    merged = _not_on(f, _sectioned((p.options, SOURCE) for p in installed.values()))
    # Positional arguments first: click lists them in the usage line in declaration order.
    decorators = [_click(s) for s, _ in merged if s.argument]
    decorators.append(section(SOURCE, click.option("--from", "from_", default="neptune3", show_default=True,
                                                   metavar="[" + "|".join(installed) + "]", help=f"Source: {names}.")))
    decorators += [section(title, _click(s)) for s, title in merged if not s.argument]
    return bundle(*decorators)(f)


def export_source_only(f: F) -> F:
    """What `export` and `migrate` add to a source: refresh and the 2.x model registry."""
    return bundle(
        section(RUN, click.option("--refresh", is_flag=True, help="Re-export runs whose Neptune modification time "
                                  "moved since they were exported (their target copy is replaced), and reload runs "
                                  "loaded with an older mapping version of the target.")),
        section(SOURCE, click.option("--no-models", is_flag=True, help="neptune2: leave the model registry (models "
                                     "and model versions) out.")),
    )(f)


archive_input = section(SOURCE,
    click.option("--archive", required=True, metavar="DIR|URL", help="Archive root (holding data/ and files/) or a "
                 "neptune-exporter parquet root (one folder per project). " + OBJECT_STORE_HELP),
    click.option("--files", metavar="DIR|URL", help="neptune-exporter files root, when --archive is their parquet "
                 "root (a folder, s3://... or gs://...)."),
)

report_option = section(OUTPUT, click.option(
    "--report-dir", type=click.Path(path_type=Path), default=DEFAULT_REPORT_DIR, show_default=True,
    help="Where report.json, report.html, report.md and errors.jsonl are written."))

state_option = section(RUN, click.option("--state", default=None, metavar="PATH|URI",
                            help="Ledger: a SQLite file, or postgresql://USER:PASSWORD@HOST:PORT/DB to share progress "
                                 "between drivers and a cluster (required with --cluster). Default: "
                                 ".neptune-migration/state.db or $NEPTUNE_MIGRATION_STATE."))
relocate_option = section(RUN, click.option(
    "--relocate", is_flag=True,
    help="Move runs the target holds at another place (another --experiment-by or --experiment-prefix) to the "
         "place these options name: each is loaded there, validated, then its old copies are deleted. Without it "
         "such a load is refused before anything is written. MLflow only: W&B refuses it (see docs/wandb.md)."))
json_option = section(OUTPUT, click.option("--json", "json_output", is_flag=True, help="Machine-readable output."))

logging_options = section(OUTPUT,
    click.option("--no-progress", is_flag=True, help="Plain log lines instead of progress bars."),
    click.option("--verbose", "-v", is_flag=True, help="Debug logging."),
    click.option("--log-file", type=click.Path(path_type=Path), default=None, help="Also write the full log to this "
                 "file."),
)

cluster_option = click.option(
    "--cluster", default=None, metavar="tcp://HOST:PORT", envvar="NEPTUNE_MIGRATION_CLUSTER", show_envvar=True,
    help="Send each run's work to the workers of this Dask scheduler (docs/cluster.md). Needs --state "
         "postgresql://... and an archive every worker can read (s3://, gs:// or a shared folder).")

run_options = section(RUN,
    click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True, metavar="N",
                 help="Runs processed in parallel (on a cluster: each worker's threads decide; this sizes uploads)."),
    state_option,
    cluster_option,
    logging_options,
)

stage_workers = section(RUN,
    click.option("--export-workers", type=click.IntRange(1, 64), default=None, metavar="N",
                 help="migrate: runs exported in parallel (default: --workers)."),
    click.option("--validate-workers", type=click.IntRange(1, 64), default=None, metavar="N",
                 help="migrate: runs read back in parallel (default: --workers)."),
)
