"""The package version (the same as pyproject.toml's), importable without importing the API."""

__version__ = "0.1.0"
