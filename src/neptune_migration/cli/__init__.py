"""The `neptune-migrate` command line: a thin shell over the Python API (`neptune_migration.api`).

Each command parses its options (declared once, in `cli/options.py` and in the plug-ins' option dataclasses),
calls one API function, prints the result and exits with its verdict. Errors are one line, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version

import click
from rich.markup import escape

from neptune_migration import interrupt
from neptune_migration._version import __version__
from neptune_migration.cli.commands import COMMANDS
from neptune_migration.cli.demo import demo
from neptune_migration.cli.output import console, out
from neptune_migration.cli.sandbox import sandbox_group
from neptune_migration.errors import Interrupted, MigrationError, describe
from neptune_migration.secrets import redact

CLIENTS = ("mlflow", "wandb", "neptune-query", "neptune", "neptune-scale", "pyarrow", "click")


def _versions() -> str:
    lines = [f"neptune-migrate {__version__}"]
    for name in CLIENTS:
        try:
            lines.append(f"  {name} {version(name)}")
        except PackageNotFoundError:
            lines.append(f"  {name} not installed")
    return "\n".join(lines)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        out.print(_versions(), highlight=False)
        ctx.exit(0)


@click.group(
    name="neptune-migrate",
    no_args_is_help=True,
    epilog="Tokens are read from the environment (NEPTUNE_API_TOKEN or --api-token-file FILE, WANDB_API_KEY, "
    "MLFLOW_TRACKING_TOKEN / MLFLOW_TRACKING_PASSWORD) and never printed, logged or stored. "
    "Try it without a server: neptune-migrate demo.",
)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version, and the versions of the client libraries found, and exit.")
def app() -> None:
    """Move Neptune experiment history into MLflow or Weights & Biases, and prove nothing was lost."""


for command in (*COMMANDS, demo, sandbox_group):
    app.add_command(command)


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    interrupt.exit_at_once_on_second_signal()
    try:
        # Without standalone mode click returns the exit code of an Exit instead of exiting with it.
        code = app.main(prog_name="neptune-migrate", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except Interrupted as exc:
        console.print(f"[yellow]{escape(str(exc))}[/yellow]", highlight=False, soft_wrap=True)
        _exit_now(exc.exit_code)
    except MigrationError as exc:
        # Messages name options, extras and paths with brackets: never read them as rich markup.
        console.print(f"[red]error:[/red] {escape(redact(str(exc)))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        console.print("[red]aborted[/red]")
        sys.exit(130)
    except click.ClickException as exc:  # usage errors: click's own message and suggestion, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: rerun the same command to continue where it stopped[/yellow]")
        sys.exit(130)
    except Exception as exc:  # a bug: still one line, never a secret
        console.print(f"[red]error:[/red] {escape(redact(describe(exc)))}", highlight=False, soft_wrap=True)
        console.print("rerun with -v --log-file FILE for details")
        sys.exit(1)


def _exit_now(code: int) -> None:
    """Exit without waiting: a run that outlived the grace period would otherwise be joined by the interpreter
    (with the target's upload threads) first, and a second Ctrl-C during that slow shutdown would kill the
    process with the default handler. The ledger already holds every run's state, so nothing is lost."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


__all__ = ["app", "main"]
