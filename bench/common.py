"""Helpers shared by the benchmarks: machine load, warm files, figures, and which whisperctl was measured."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import resource
import subprocess
import threading
import time
from pathlib import Path

BLOCK = 16 * 1024 * 1024
_HZ = os.sysconf("SC_CLK_TCK")


def busy_cpu() -> float:
    """CPU seconds spent busy by the whole machine since boot (idle and iowait left out)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _HZ


def wait_for_idle(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (at most ``max_wait`` s) until the machine is nearly idle; the load seen last, in cores."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = busy_cpu(), time.monotonic()
        time.sleep(0.5)
        load = (busy_cpu() - b0) / (time.monotonic() - t0)
        if load < threshold or time.monotonic() > deadline:
            return load
        time.sleep(1)


def read_file(path: Path) -> float:
    """Read the whole file (seconds). Before a run, this makes sure it is served from memory: a kernel may
    reclaim page cache left unused for a while (this VM runs DAMON with a pageout scheme for memory idle
    30 s), and a "warm" run would otherwise read part of it from disk. After an eviction, it times a cold
    read."""
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return time.perf_counter() - t0


def wait_timed(
    proc: subprocess.Popen[bytes], started: float, timeout: float
) -> tuple[float, resource.struct_rusage, bool]:
    """Wait for ``proc`` (spawned at ``perf_counter()`` = ``started``), killing it at ``timeout`` seconds:
    its wall time, its rusage from ``wait4`` (peak RSS included), and whether it was killed. Sets
    ``proc.returncode``."""
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage, killed.is_set()


def ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def source_fingerprint() -> str:
    """12 hex digits of SHA-256 over whisperctl's installed source files (an editable install: src/)."""
    spec = importlib.util.find_spec("whisperctl")
    if spec is None or spec.origin is None:
        return "?"
    package = Path(spec.origin).parent
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        with contextlib.suppress(OSError):
            h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]
