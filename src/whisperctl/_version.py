"""The package's version: read by the build (hatch) and by the modules that send or print it."""

__version__ = "0.1.0"
