"""The version of the Comet mapping, recorded in each archive's `neptune_migration/mapping_version` other value and in
the ledger (docs/comet.md). Its own module, so the plug-in's face, the writer and the verifier read it without
importing each other.
"""

MAPPING_VERSION = 1
