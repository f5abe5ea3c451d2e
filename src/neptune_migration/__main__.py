"""`python -m neptune_migration`: the same command line as `neptune-migrate`."""

from neptune_migration.cli import main

main()
