"""The command line: Typer commands (``app``) and their rendering; the only part of whisperctl that prints."""

from __future__ import annotations

from whisperctl.cli.app import app, main

__all__ = ["app", "main"]
