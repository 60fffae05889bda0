"""The package version, in one place (the engine reads it without importing the top-level package)."""

__version__ = "0.1.0"
