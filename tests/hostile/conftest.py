"""The hostile suite runs its cases in parallel: the first test starts every selected case in a pool of
``HOSTILE_JOBS`` threads (default 12: most cases spend their time waiting), each case a child process of its
own; each test then waits for its case and checks it. The figures are printed at the end, and written to
``HOSTILE_REPORT`` when it is set."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.httpserver import TLSUnavailableError, _make_certificate

from .cases import Case, all_cases
from .figures import Tally
from .runner import Outcome, problems, run_case

CASES = {c.name: c for c in all_cases()}
_SELECTED = pytest.StashKey[list[str]]()
_TALLY = pytest.StashKey[Tally]()


def jobs() -> int:
    return int(os.environ.get("HOSTILE_JOBS") or 12)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_TALLY] = Tally()
    config.stash[_SELECTED] = []


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what they deselect
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[_SELECTED] = [
        str(item.callspec.params["case_name"])
        for item in items
        if isinstance(item, pytest.Function)
        and hasattr(item, "callspec")
        and "case_name" in item.callspec.params
    ]


@pytest.fixture(scope="session")
def certificate() -> Iterator[tuple[Path, Path] | None]:
    directory = tempfile.mkdtemp(prefix="hostile-tls-")
    try:
        yield _make_certificate(Path(directory))
    except TLSUnavailableError:
        yield None
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def outcomes(
    request: pytest.FixtureRequest, certificate: tuple[Path, Path] | None
) -> Iterator[dict[str, Future[Outcome]]]:
    """Every selected case, started at once (the longest first); a test waits for its own."""
    request.config.stash[_TALLY].started = time.monotonic()
    selected = [CASES[n] for n in request.config.stash[_SELECTED]]
    selected = [c for c in selected if certificate is not None or not c.tls]
    selected.sort(key=lambda c: -c.timeout)
    env = dict(os.environ)  # once, here: the tests' own fixtures change os.environ while the cases run
    pool = ThreadPoolExecutor(max_workers=jobs(), thread_name_prefix="hostile")
    try:
        yield {c.name: pool.submit(run_case, c, certificate, env) for c in selected}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after -x, the cases not started yet are dropped


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Tally:
    return request.config.stash[_TALLY]


def check(case: Case, outcome: Outcome, tally: Tally) -> list[str]:
    found = problems(case, outcome)
    tally.add(outcome, found)
    return found


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    tally = config.stash[_TALLY]
    if not tally.classes:
        return
    tr = terminalreporter
    tr.section(f"hostile servers: {tally.total.cases} cases, {jobs()} at a time, {tally.wall:.1f} s")
    tr.write_line(tally.markdown())
    for failure in tally.failures:
        tr.write_line(f"FAILED {failure}")
    if report := os.environ.get("HOSTILE_REPORT"):
        tally.write(Path(report), jobs())
        tr.write_line(f"figures written to {report}")
