"""Test-only hooks for the chaos suite's child processes; the product itself has none.

The chaos suite puts this directory first on a child's PYTHONPATH and describes what to do in the
``CHAOS_HOOK`` environment variable (JSON). Python imports ``sitecustomize`` at start-up, before whisperctl,
so these wrappers replace ``os`` functions for the whole child:

- ``slow``: seconds to sleep around each step of the final rename (``*.part`` -> a private name -> ``*.pt``)
  and of the stamp's rename, so that a SIGKILL sent at a random moment of that window lands *during* the
  rename or the stamp write. Each step is announced in ``marker`` ("rename-before", "rename-between",
  "rename-after", "stamp-before", "stamp-after").
- ``fail_op`` / ``fail_after`` / ``fail_errno``: make the disk "fill up": ``pwrite`` fails once ``fail_after``
  bytes were written, ``posix_fallocate`` fails for a length over ``fail_after``, ``fsync`` / ``fdatasync``
  fail on their ``fail_after``-th call. The first failure is announced in ``marker`` as "fired".
"""

from __future__ import annotations

import json
import os
import time

_CONFIG = json.loads(os.environ.get("CHAOS_HOOK") or "{}")


def _mark(what: str) -> None:
    marker = _CONFIG.get("marker")
    if marker:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{what}\n".encode())
        finally:
            os.close(fd)


def _install_slow(slow: float) -> None:
    """The final rename is two: ``m.pt.part`` -> a private ``.m.pt.<hex>.tmp`` -> ``m.pt``. A sleep before
    the first, between the two and after the second; likewise around the stamp's rename."""
    real_rename, real_replace = os.rename, os.replace

    def rename(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not str(src).endswith(".part"):
            return real_rename(src, dst, *args, **kwargs)
        _mark("rename-before")
        time.sleep(slow)
        result = real_rename(src, dst, *args, **kwargs)
        _mark("rename-between")
        time.sleep(slow)
        return result

    def replace(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
        d = str(dst)
        if d.endswith(".pt"):
            result = real_replace(src, dst, *args, **kwargs)
            _mark("rename-after")
            time.sleep(slow)
            return result
        if f"{os.sep}stamps{os.sep}" in d and d.endswith(".json"):
            _mark("stamp-before")
            time.sleep(slow)
            result = real_replace(src, dst, *args, **kwargs)
            _mark("stamp-after")
            time.sleep(slow)
            return result
        return real_replace(src, dst, *args, **kwargs)

    os.rename, os.replace = rename, replace


def _install_failure(op: str, after: int, code: int) -> None:
    state = {"written": 0, "calls": 0, "fired": False}

    def fail() -> None:
        if not state["fired"]:
            state["fired"] = True
            _mark("fired")
        raise OSError(code, os.strerror(code))

    if op == "pwrite":
        real_pwrite = os.pwrite

        def pwrite(fd, data, offset):  # type: ignore[no-untyped-def]
            if state["written"] + len(data) > after:
                fail()
            state["written"] += len(data)
            return real_pwrite(fd, data, offset)

        os.pwrite = pwrite
    elif op == "fallocate":
        real_fallocate = os.posix_fallocate

        def posix_fallocate(fd, offset, length):  # type: ignore[no-untyped-def]
            if length > after:
                fail()
            return real_fallocate(fd, offset, length)

        os.posix_fallocate = posix_fallocate
    elif op in ("fsync", "fdatasync"):
        real = getattr(os, op)

        def sync(fd):  # type: ignore[no-untyped-def]
            state["calls"] += 1
            if state["calls"] >= after:
                fail()
            return real(fd)

        setattr(os, op, sync)


if _CONFIG.get("slow"):
    _install_slow(float(_CONFIG["slow"]))
if _CONFIG.get("fail_op"):
    _install_failure(_CONFIG["fail_op"], int(_CONFIG["fail_after"]), int(_CONFIG.get("fail_errno", 28)))
