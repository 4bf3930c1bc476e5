"""The hostile suite's figures, per class: cases, cases failed, the exit codes seen, the longest run and the
largest peak RSS. Printed at the end of the session; written as JSON (with a Markdown table) when
``HOSTILE_REPORT`` names a file."""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cases import CLASSES
from .runner import Outcome


@dataclass
class ClassFigures:
    cases: int = 0
    failed: int = 0
    exit_codes: Counter[str] = field(default_factory=Counter)
    longest: float = 0.0
    longest_case: str = ""
    rss_bytes: int = 0

    def add(self, o: Outcome, failed: bool) -> None:
        self.cases += 1
        self.failed += failed
        self.exit_codes["killed at timeout" if o.code is None else str(o.code)] += 1
        if o.seconds > self.longest:
            self.longest, self.longest_case = o.seconds, o.name
        self.rss_bytes = max(self.rss_bytes, o.rss_bytes)


@dataclass
class Tally:
    classes: dict[str, ClassFigures] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)  # one row per case, for the JSON report
    started: float = 0.0  # time.monotonic() when the cases were started
    last_checked: float = 0.0  # ... when the last case was checked: the suite's own wall time ends there

    @property
    def wall(self) -> float:
        return max(0.0, self.last_checked - self.started)

    def add(self, o: Outcome, problems: list[str]) -> None:
        self.last_checked = time.monotonic()
        self.classes.setdefault(o.klass, ClassFigures()).add(o, bool(problems))
        self.cases.append(
            {
                "name": o.name,
                "class": o.klass,
                "exit_code": o.code,
                "seconds": round(o.seconds, 2),
                "peak_rss_bytes": o.rss_bytes,
                "problems": problems,
                "stderr_tail": o.stderr[-600:],
            }
        )
        if problems:
            self.failures.append(f"{o.name}: {'; '.join(problems)[:400]}")

    @property
    def total(self) -> ClassFigures:
        t = ClassFigures()
        for k in self.classes.values():
            t.cases += k.cases
            t.failed += k.failed
            t.exit_codes.update(k.exit_codes)
            if k.longest > t.longest:
                t.longest, t.longest_case = k.longest, k.longest_case
            t.rss_bytes = max(t.rss_bytes, k.rss_bytes)
        return t

    def markdown(self) -> str:
        rows = [
            "| class | cases | failed | exit codes | longest | largest peak RSS |",
            "|---|---:|---:|---|---:|---:|",
        ]
        order = sorted(self.classes, key=lambda k: CLASSES.index(k) if k in CLASSES else len(CLASSES))
        for name, k in [*((n, self.classes[n]) for n in order), ("**all**", self.total)]:
            codes = ", ".join(f"{c}: {n}" for c, n in sorted(k.exit_codes.items()))
            rows.append(
                f"| {name} | {k.cases} | {k.failed} | {codes} | {k.longest:.1f} s | "
                f"{k.rss_bytes / 2**20:.0f} MiB |"
            )
        return "\n".join(rows)

    def write(self, path: Path, jobs: int) -> None:
        total = self.total
        report: dict[str, Any] = {
            "wall_seconds": round(self.wall, 1),
            "jobs": jobs,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
            "python": platform.python_version(),
            "totals": _json(total),
            "classes": {name: _json(k) for name, k in self.classes.items()},
            "failures": self.failures,
            "cases": sorted(self.cases, key=lambda c: (c["class"], c["name"])),
            "markdown": self.markdown(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n", "utf-8")


def _json(k: ClassFigures) -> dict[str, Any]:
    return {
        "cases": k.cases,
        "failed": k.failed,
        "exit_codes": dict(sorted(k.exit_codes.items())),
        "longest_seconds": round(k.longest, 2),
        "longest_case": k.longest_case,
        "largest_peak_rss_bytes": k.rss_bytes,
    }
