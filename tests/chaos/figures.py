"""The chaos suite's figures: per kind, trials run, fault events injected, files lost or corrupt, runs that
ended without a clear error, and the exit codes seen. Printed at the end of the session; written as JSON
(with a Markdown table) when ``CHAOS_REPORT`` names a file."""

from __future__ import annotations

import json
import os
import platform
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .lab import Trial


@dataclass
class KindFigures:
    trials: int = 0
    faults: int = 0
    lost_or_corrupt: int = 0
    outside: int = 0
    unclear: int = 0
    left_behind: int = 0
    failed: int = 0  # trials that failed for any reason (the two above, or an unexpected outcome)
    seconds: float = 0.0
    exit_codes: Counter[str] = field(default_factory=Counter)
    details: Counter[str] = field(default_factory=Counter)


@dataclass
class Tally:
    seed: int
    planned: int
    kinds: dict[str, KindFigures] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, trial: Trial, seconds: float, failure: str | None) -> None:
        k = self.kinds.setdefault(trial.kind, KindFigures())
        k.trials += 1
        k.faults += trial.faults
        k.lost_or_corrupt += len(trial.lost_or_corrupt)
        k.outside += len(trial.outside)
        k.unclear += len(trial.unclear)
        k.left_behind += len(trial.left_behind)
        k.failed += bool(failure or trial.problems())
        k.seconds += seconds
        for e in trial.endings:
            k.exit_codes["killed" if e.killed else str(e.code)] += 1
        k.details.update({key: n for key, n in trial.details.items() if n})
        problems = [*trial.problems(), *([failure] if failure else [])]
        if problems:
            self.failures.append(f"trial {trial.index} ({trial.kind}): {'; '.join(problems)[:300]}")

    @property
    def total(self) -> KindFigures:
        t = KindFigures()
        for k in self.kinds.values():
            t.trials += k.trials
            t.faults += k.faults
            t.lost_or_corrupt += k.lost_or_corrupt
            t.outside += k.outside
            t.unclear += k.unclear
            t.left_behind += k.left_behind
            t.failed += k.failed
            t.seconds += k.seconds
            t.exit_codes.update(k.exit_codes)
        return t

    def markdown(self) -> str:
        rows = [
            "| fault kind | trials | faults injected | files lost or corrupt | writes outside the cache "
            "| unclear endings | files left behind | failed trials | runs by exit code |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for name, k in [*sorted(self.kinds.items()), ("**all**", self.total)]:
            codes = ", ".join(f"{c}: {n}" for c, n in sorted(k.exit_codes.items()))
            rows.append(
                f"| {name} | {k.trials} | {k.faults} | {k.lost_or_corrupt} | {k.outside} | {k.unclear} "
                f"| {k.left_behind} | {k.failed} | {codes} |"
            )
        return "\n".join(rows)

    def as_json(self, wall_seconds: float) -> dict[str, Any]:
        total = self.total
        return {
            "seed": self.seed,
            "trials_planned": self.planned,
            "trials_run": total.trials,
            "wall_seconds": round(wall_seconds, 1),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
            "python": platform.python_version(),
            "totals": _kind_json(total),
            "kinds": {name: _kind_json(k) for name, k in sorted(self.kinds.items())},
            "failures": self.failures,
            "markdown": self.markdown(),
        }

    def write(self, path: Path, wall_seconds: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(wall_seconds), indent=1) + "\n", "utf-8")


def _kind_json(k: KindFigures) -> dict[str, Any]:
    return {
        "trials": k.trials,
        "faults_injected": k.faults,
        "files_lost_or_corrupt": k.lost_or_corrupt,
        "writes_outside_the_cache": k.outside,
        "unclear_endings": k.unclear,
        "files_left_behind": k.left_behind,
        "failed_trials": k.failed,
        "seconds": round(k.seconds, 1),
        "runs_by_exit_code": dict(sorted(k.exit_codes.items())),
        "details": dict(sorted(k.details.items())),
    }
