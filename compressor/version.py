"""The package version, in one place: `compressor.__version__`, the provenance of every result and
pyproject.toml's dynamic version (setuptools reads this assignment without importing anything)."""

__version__ = "0.2.0"
