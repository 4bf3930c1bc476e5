"""The engine's rules against broken and hostile servers, over real sockets (tests/httpserver.py switches):
the minimum pace, the head deadline, the bound on fruitless retries, ranges that lie, validators that are not
sent back. Every case ends by itself, quickly, with a documented exit code."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from . import test_download
from .httpserver import HTTPServer
from .test_download import KiB, Lab, MiB, both_paths, header

lab = test_download.lab  # the fixture: a test server, a cache, a registry and a guard on final names

CONTROL = {chr(c) for c in range(32)} | {"\x7f"}


def one_line(error: str | None) -> str:
    assert error is not None
    assert not CONTROL & set(error), repr(error)
    assert len(error) < 600, error
    return error


# -- slowness --------------------------------------------------------------------------------------------
@both_paths
def test_a_body_that_drips_ends_by_itself(lab: Lab) -> None:
    # A byte every 20 ms never trips a read timeout; the pace does, and an attempt that moved less than the
    # minimum does not reset the count of failures.
    m = lab.model(size=512 * KiB, drip_after=1000, drip_seconds=0.02)
    t0 = time.monotonic()
    rec = lab.get(m, options=lab.options(speed_limit=20_000, speed_time=0.4, stall_timeout=5, retries=2))
    assert time.monotonic() - t0 < 15
    assert (rec.status, rec.exit_code) == ("failed", 3)
    assert "below the minimum of 20,000 bytes/s" in one_line(rec.error) and "gave up after 2" in rec.error
    assert len(lab.settled_gets(m)) == 3  # the first attempt and two retries, no more


@both_paths
def test_a_drip_after_real_progress_is_cut_and_resumed(lab: Lab) -> None:
    m = lab.model(size=512 * KiB, drip_after=128 * KiB, drip_seconds=0.02)
    rec = lab.get(m, options=lab.options(speed_limit=20_000, speed_time=0.4, stall_timeout=5, retries=1))
    assert rec.status == "downloaded", rec.error  # each attempt moved 128 KiB: progress, not a failure
    assert len(lab.settled_gets(m)) >= 4
    lab.assert_verified(m)


def test_an_honest_slow_link_never_trips_the_minimum(lab: Lab) -> None:
    m = lab.model(size=3 * MiB, rate_limit=256 * KiB)  # per connection; four connections
    options = lab.options(speed_limit=100_000, speed_time=0.5, min_segment=512 * KiB)
    rec = lab.get(m, options=options)
    assert rec.status == "downloaded", rec.error
    assert lab.sleeps.delays == []  # not one retry


def test_a_head_that_drips_ends_by_itself(lab: Lab) -> None:
    m = lab.model(size=64 * KiB, head_drip=0.02)
    t0 = time.monotonic()
    rec = lab.get(m, options=lab.options(head_timeout=0.5, stall_timeout=5, retries=1))
    assert time.monotonic() - t0 < 10
    assert (rec.status, rec.exit_code) == ("failed", 3)
    assert "no response head within 0.5 s" in one_line(rec.error)


def test_a_server_that_never_answers_ends_by_itself(lab: Lab) -> None:
    m = lab.model(size=64 * KiB, silent=True)
    t0 = time.monotonic()
    rec = lab.get(m, options=lab.options(head_timeout=0.3, stall_timeout=5, retries=2))
    assert time.monotonic() - t0 < 10
    assert (rec.status, rec.exit_code) == ("failed", 3)
    assert "no response head within 0.3 s" in one_line(rec.error)
    assert len(lab.sleeps.delays) == 2


@both_paths
@pytest.mark.parametrize("fault", ["reset_after", "truncate_after"])
def test_a_thousand_bytes_per_connection_runs_out_of_retries(lab: Lab, fault: str) -> None:
    m = lab.model(size=1 * MiB, **{fault: 1000})  # every response, for ever
    rec = lab.get(m, options=lab.options(retries=3))
    assert (rec.status, rec.exit_code) == ("failed", 3)
    assert "gave up after 3 retries" in one_line(rec.error)
    assert len(lab.settled_gets(m)) == 4
    assert lab.part(m).exists()  # the bytes received are kept for a later run


def test_progress_above_the_minimum_still_resets_the_count(lab: Lab) -> None:
    m = lab.model(size=1 * MiB, reset_after=100 * KiB)  # every response, but 100 KiB each time
    rec = lab.get(m, options=lab.options(retries=1, speed_limit=1024, speed_time=60))
    assert rec.status == "downloaded", rec.error
    lab.assert_verified(m)


def test_the_cli_takes_the_minimum_pace(lab: Lab) -> None:
    lab.model(size=256 * KiB, drip_after=100, drip_seconds=0.05)
    args = ("download", "m", "--speed-limit", "100000", "--speed-time", "0.3", "--stall-timeout", "5")
    t0 = time.monotonic()
    result = lab.cli(*args)
    assert time.monotonic() - t0 < 40
    assert result.exit_code == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--speed-limit" in errors[0] and "Traceback" not in result.stderr


# -- ranges that lie -------------------------------------------------------------------------------------
LIES = {
    "wrong start": ("bytes 5-1048575/1048576", 3, "asked from 0"),
    "wrong total": ("bytes 0-1048575/2097152", 4, "expected 1,048,576"),
    "no Content-Range": ("", 3, "without Content-Range"),
    "negative total": ("bytes 0-1048575/-1", 3, "unusable Content-Range"),
    "absurd total": ("bytes 0-1048575/99999999999999999999", 3, "unusable Content-Range"),
    "garbage": ("bytes 0-1048575/1048576\x01", 3, "unusable Content-Range"),
}


@both_paths
@pytest.mark.parametrize("lie", list(LIES))
def test_a_range_that_lies_is_the_servers_fault(lab: Lab, lie: str) -> None:
    value, code, says = LIES[lie]
    m = lab.model(size=1 * MiB, content_range=value)
    rec = lab.get(m)
    if rec.exit_code == 3 and "Content-Range" not in (rec.error or "") and "\x01" in value:
        # h11 (the httpx path) refuses a control character in any field: a protocol error, retried, then 3.
        assert "gave up" in one_line(rec.error)
        return
    assert (rec.status, rec.exit_code) == ("failed", code), rec.error
    assert says in one_line(rec.error)
    assert not lab.final(m).exists()


def test_an_absurd_total_without_a_registry_size_never_becomes_a_full_disk(lab: Lab) -> None:
    m = lab.model(size=1 * MiB, sized=False, content_range=f"bytes 0-1048575/{10**18}")
    rec = lab.get(m)
    assert (rec.status, rec.exit_code) == ("failed", 4), rec.error
    assert "more than the limit" in one_line(rec.error)
    assert not lab.part(m).exists()


def test_a_later_piece_with_a_wrong_start_is_refused(lab: Lab) -> None:
    m = lab.model(size=1 * MiB, reset_after=256 * KiB, reset_times=1)
    lab.sleeps.then.append(lambda: lab.server.set_faults(m.route, content_range="bytes 0-1048575/1048576"))
    rec = lab.get(m)
    assert (rec.status, rec.exit_code) == ("failed", 3), rec.error
    assert "asked from" in one_line(rec.error)
    assert lab.sidecar_done(m) > 0  # what was good stays, for a later run


# -- validators ------------------------------------------------------------------------------------------
def _leave_partial(lab: Lab, **faults: object) -> object:
    """A first run that got some bytes, then only 503s: a partial file and its record stay."""
    m = lab.model(size=1 * MiB, reset_after=256 * KiB, reset_times=1, **faults)
    lab.sleeps.then.append(lambda: lab.server.set_faults(m.route, status=503, **faults))
    rec = lab.get(m, options=lab.options(retries=1))
    assert rec.exit_code == 3, rec.error
    assert lab.sidecar(m).exists()
    return m


@both_paths
def test_validators_that_are_not_valid_values_are_never_sent_back(lab: Lab) -> None:
    faults = {"etag": 'W/"x" junk', "last_modified": "not a date"}
    m = _leave_partial(lab, **faults)
    record = json.loads(lab.sidecar(m).read_text())
    assert record["etag"] is None and record["last_modified"] is None
    lab.server.set_faults(m.route, **faults)
    rec = lab.get(m)
    assert rec.status == "downloaded" and rec.resumed_from > 0
    assert all(header(r, "If-Range") is None for r in lab.gets(m))
    lab.assert_verified(m)


def test_validators_with_control_characters_are_never_sent_back(lab: Lab) -> None:
    # The lean reader takes such a field as it is (the engine then drops it); h11 refuses the whole answer.
    m = lab.model(size=1 * MiB, reset_after=256 * KiB, reset_times=1, etag='"a\x01b"', last_modified="x\x7fy")
    rec = lab.get(m, options=lab.options(retries=2))
    assert rec.exit_code in (0, 3), rec.error
    for r in lab.gets(m):
        value = header(r, "If-Range")
        assert value is None or not CONTROL & set(value)


@pytest.fixture
def other_server() -> Iterator[HTTPServer]:
    with HTTPServer() as srv:
        yield srv


def test_validators_go_to_their_own_origin_only_after_a_redirect(lab: Lab, other_server: HTTPServer) -> None:
    # Run 1: the mirror redirects to a CDN, which gives the validators and fails midway.
    m = lab.model(size=1 * MiB, serve=False)
    other_server.add(m.route, m.data, reset_after=256 * KiB, reset_times=1)
    lab.server.add(m.route, m.data, redirect_to=other_server.url(m.route))
    lab.sleeps.then.append(lambda: other_server.set_faults(m.route, status=503))
    assert lab.get(m, options=lab.options(retries=1)).exit_code == 3
    assert header(other_server.requests_for(m.route)[0], "If-Range") is None  # the first asks for all
    lab.server.clear_requests()
    other_server.clear_requests()
    other_server.set_faults(m.route)
    # Run 2: the CDN's validators go to the CDN, never to the mirror that redirects there.
    rec = lab.get(m)
    assert rec.status == "downloaded" and rec.resumed_from > 0
    assert [header(r, "If-Range") for r in lab.server.requests_for(m.route)] == [None]
    assert all(header(r, "If-Range") for r in other_server.requests_for(m.route))
    lab.assert_verified(m)


def test_validators_never_follow_a_redirect_to_another_origin(lab: Lab, other_server: HTTPServer) -> None:
    # Run 1: the mirror serves the file itself and fails midway.
    m = _leave_partial(lab)
    # Run 2: the mirror now redirects elsewhere: its validators stay with it.
    other_server.add(m.route, m.data)
    lab.server.set_faults(m.route, redirect_to=other_server.url(m.route))
    rec = lab.get(m)
    assert rec.status == "downloaded" and rec.resumed_from > 0
    assert all(header(r, "If-Range") for r in lab.server.requests_for(m.route)[-1:])
    assert [header(r, "If-Range") for r in other_server.requests_for(m.route)] == [None]
    lab.assert_verified(m)
