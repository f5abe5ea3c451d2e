"""neptune-migration: move Neptune experiment history into MLflow or Weights & Biases, exactly."""

__version__ = "0.1.0"
