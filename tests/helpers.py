"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from whisperctl.cli.app import app


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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


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


class FinalGuard:
    """Polls a cache directory from a thread and hashes every new file under a final ``*.pt`` name.

    "The lock is for efficiency, the hash is for correctness": whatever happens on the network, what sits
    under a model's final name must be a file whose digest the test allowed for it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.allowed: dict[str, set[str]] = defaultdict(set)
        self.violations: list[str] = []
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="final-guard", daemon=True)
        self._thread.start()

    def allow(self, filename: str, digest: str) -> None:
        with self._lock:
            self.allowed[filename].add(digest)

    def _loop(self) -> None:
        while not self._stop.wait(0.005):
            self.scan()

    def scan(self) -> None:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return
        for name in names:
            if not name.endswith(".pt"):
                continue
            path = self.root / name
            try:
                st = path.stat()
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
                if self._seen.get(name) == key:
                    continue
                digest = file_sha256(path)
            except FileNotFoundError:
                continue
            self._seen[name] = key
            with self._lock:
                if digest not in self.allowed[name]:
                    self.violations.append(f"{name} appeared with SHA-256 {digest}")

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join()
        self.scan()
        return self.violations


def resident_bytes(path: Path) -> int:
    """Bytes of ``path``'s mappings resident in this process (Linux's /proc/self/smaps)."""
    total, current = 0, False
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                current = line.rstrip("\n").endswith(str(path))
            elif current and fields[:1] == ["Rss:"]:
                total += int(fields[1]) * 1024
    return total


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (clean pages only: it is fsynced first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache (Linux's ``mincore`` on a private mapping of it)."""
    import ctypes
    import mmap

    size = path.stat().st_size
    if not size:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    pages = -(-size // mmap.PAGESIZE)
    vector = (ctypes.c_ubyte * pages)()
    with path.open("rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mm:
        anchor = ctypes.c_char.from_buffer(mm)  # a copy-on-write mapping lends its address
        try:
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vector):
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del anchor
    return sum(b & 1 for b in vector) * mmap.PAGESIZE
