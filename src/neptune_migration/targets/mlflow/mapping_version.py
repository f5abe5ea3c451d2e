"""The version of the MLflow mapping, recorded on every run (tag `neptune.migration.mapping`) and in the ledger.

Raised when a change to where or how a Neptune value lands would make runs loaded before it differ from runs
loaded after it (docs/mlflow.md, "Mapping versions"). Its own module, so the plug-in's face, the loaders, the
sync and the verifier all read it without importing each other.
"""

# 1: up to 0.1.0 (no tag: runs loaded then read as 1); 2: one step scale per metric key across an experiment,
# pictures and logs beside series, the cleaned-up file layout and tag set.
MAPPING_VERSION = 2
