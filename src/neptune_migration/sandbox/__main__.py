"""python -m neptune_migration.sandbox [--seed SPEC] [--port N]"""

from __future__ import annotations

import argparse

from neptune_migration.sandbox.serve import SEED_HELP, serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neptune_migration.sandbox", description=__doc__)
    parser.add_argument("--seed", default="demo", help=SEED_HELP)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        serve(args.seed, args.port, host=args.host)
    except ValueError as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
