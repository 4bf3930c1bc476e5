"""Shared fixtures: every test runs with its own HOME, XDG dirs and no whisperctl environment variables."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Cli
from .httpserver import HTTPServer


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME so that no test reads or writes the real ~/.cache/whisper or ~/.config."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(var, raising=False)
    for var in list(os.environ):
        if var.startswith("WHISPERCTL_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("COLUMNS", "200")
    return home


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cache"
    d.mkdir()
    return d


@pytest.fixture
def server() -> Iterator[HTTPServer]:
    """A real HTTP/1.1 server on 127.0.0.1 with fault switches (tests/httpserver.py), closed afterwards."""
    with HTTPServer() as srv:
        yield srv
