"""What this process has cost so far, without PyTorch: its peak resident memory (load and convert say it)."""

from __future__ import annotations

import resource
import sys

__all__ = ["peak_rss"]


def peak_rss() -> int:
    """This process's peak resident set. On Linux VmHWM, which starts afresh at exec: ru_maxrss carries the
    high-water mark of the process that forked this one (a large parent would show as our peak)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
