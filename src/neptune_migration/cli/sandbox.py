"""`sandbox serve`: the built-in Neptune API emulator on 127.0.0.1, for trying the tool without a server."""

from __future__ import annotations

import click

from neptune_migration.errors import UsageError


@click.group(name="sandbox", no_args_is_help=True)
def sandbox_group() -> None:
    """The built-in Neptune API sandbox (for trying the tool without a server)."""


@sandbox_group.command("serve")
@click.option("--seed", default="demo", show_default=True, help="What to serve: demo, nasty, generate:runs=N,"
              "series=N,points=N,files=N, offline:PATH; join several with +.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port on 127.0.0.1 (0 picks a free one).")
def sandbox_serve(seed: str, port: int) -> None:
    """Serve a seeded Neptune API on 127.0.0.1 and print the NEPTUNE_API_TOKEN and environment to use it."""
    try:  # the sandbox speaks Neptune's protobuf wire format: it needs the Neptune clients' packages
        from neptune_migration.sandbox.serve import serve
    except ImportError as exc:
        raise UsageError(f"the sandbox needs the Neptune clients: pip install 'neptune-migration[all]' "
                         f"({exc})") from None
    try:
        serve(seed=seed, port=port)
    except OSError as exc:  # the port is taken, or not ours to bind
        raise UsageError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror or exc}; pass another --port (0 picks a "
                         "free one)") from None
