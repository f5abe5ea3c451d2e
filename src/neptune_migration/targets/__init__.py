"""Targets: where archived runs are loaded (MLflow, Weights & Biases)."""
