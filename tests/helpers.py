"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from whisperctl.cli import app


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


class Cli:
    """Runs the Typer app in-process and returns exit code, stdout and stderr separately."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        r = self.runner.invoke(app, list(args), env=env, catch_exceptions=False)
        return Result(r.exit_code, r.stdout, r.stderr)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_registry(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


class Sleeps:
    """The engine's injected ``sleep``, not a mock: records every delay it asks for, and sleeps at most
    ``cap`` seconds of it (0: returns at once, yielding to the event loop).

    Callbacks in ``then`` run on successive sleeps (the first on the first back-off), so a test can change
    the server's behaviour between two attempts.
    """

    def __init__(self, cap: float = 0.0) -> None:
        self.cap = cap
        self.delays: list[float] = []
        self.then: list[Callable[[], None]] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.then:
            self.then.pop(0)()
        await asyncio.sleep(min(delay, self.cap))
