"""Hostile and broken servers (issue 11): every case ends with a documented exit code, one short and clean
``error:`` line (or the verified file), no traceback, under 100 MiB, no file under a final name, in time.

The cases and what their servers send are in ``cases.py``; the checks in ``runner.py``."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from .conftest import CASES, check
from .figures import Tally
from .runner import Outcome


@pytest.mark.parametrize("case_name", list(CASES))
def test_hostile_server(case_name: str, outcomes: dict[str, Future[Outcome]], tally: Tally) -> None:
    case = CASES[case_name]
    if case_name not in outcomes:
        pytest.skip("TLS test certificates cannot be made here (no openssl, no cryptography)")
    outcome = outcomes[case_name].result()
    found = check(case, outcome, tally)
    assert not found, (
        f"{case.klass} / {case_name}: exit {outcome.code} after {outcome.seconds:.1f} s: "
        + "; ".join(found)
        + f"\nstderr: {outcome.stderr[-1500:]}"
    )
