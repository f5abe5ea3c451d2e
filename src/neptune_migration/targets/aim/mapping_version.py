"""The version of the Aim mapping, recorded in each run's `neptune_migration.mapping_version` param and in the ledger
(docs/aim.md). Its own module, so the plug-in's face, the loader and the verifier read it without importing each other.
"""

MAPPING_VERSION = 1
