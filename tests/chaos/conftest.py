"""The chaos suite's plan and figures.

``CHAOS_TRIALS`` (default 120, what `make test` runs) trials are drawn from ``CHAOS_SEED`` (default 6):
the kinds come in shuffled rounds so that every kind gets its share, and trial *i* draws its parameters from
``random.Random(f"{seed}/{i}")``. The same seed gives the same plan: one failing trial is reproduced with
``CHAOS_SEED=S CHAOS_TRIALS=N pytest tests/chaos -k trial_0042``.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from .figures import Tally
from .kinds import KINDS

DEFAULT_TRIALS = 120
DEFAULT_SEED = 6
_TALLY = pytest.StashKey[Tally]()
_STARTED = pytest.StashKey[float]()


def chaos_seed() -> int:
    return int(os.environ.get("CHAOS_SEED") or DEFAULT_SEED)


def chaos_trials() -> int:
    return int(os.environ.get("CHAOS_TRIALS") or DEFAULT_TRIALS)


def plan(seed: int, n: int) -> list[tuple[int, str]]:
    """(index, kind) of each trial: every kind once per round, in a seeded order."""
    rng, kinds = random.Random(seed), []
    while len(kinds) < n:
        round_ = list(KINDS)
        rng.shuffle(round_)
        kinds += round_
    return list(enumerate(kinds[:n]))


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_TALLY] = Tally(chaos_seed(), chaos_trials())
    config.stash[_STARTED] = time.monotonic()


def pytest_report_header(config: pytest.Config) -> str:
    return f"chaos: CHAOS_SEED={chaos_seed()} CHAOS_TRIALS={chaos_trials()}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "trial_plan" in metafunc.fixturenames:
        seed = chaos_seed()
        trials = plan(seed, chaos_trials())
        metafunc.parametrize(
            "trial_plan",
            [(seed, i, kind) for i, kind in trials],
            ids=[f"trial_{i:04d}-{kind.replace(' ', '_').replace('/', '_')}" for i, kind in trials],
        )


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Tally:
    return request.config.stash[_TALLY]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    tally = config.stash[_TALLY]
    if not tally.kinds:
        return
    wall = time.monotonic() - config.stash[_STARTED]
    total = tally.total
    tr = terminalreporter
    tr.section(f"chaos: {total.trials} trials, CHAOS_SEED={tally.seed}")
    tr.write_line(tally.markdown())
    tr.write_line(
        f"files lost or corrupt: {total.lost_or_corrupt}; writes outside the cache: {total.outside}; "
        f"unclear endings: {total.unclear}; files left behind: {total.left_behind}; "
        f"trial time {total.seconds:.1f} s (session {wall:.1f} s)"
    )
    for failure in tally.failures[:20]:
        tr.write_line(f"FAILED {failure}")
    if report := os.environ.get("CHAOS_REPORT"):
        tally.write(Path(report), wall)
        tr.write_line(f"figures written to {report}")
