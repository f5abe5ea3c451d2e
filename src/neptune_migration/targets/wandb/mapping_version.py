"""The version of the W&B mapping, recorded in each run's config (`neptune_migration.mapping_version`) and in
the ledger (docs/wandb.md, "Mapping versions"). Its own module, so the plug-in's face, the folder writer, the
sync and the verifier all read it without importing each other.
"""

MAPPING_VERSION = 1
