"""The transfer engine's pure parts on their own: answers checked, validators cleaned, the plan, the pace,
the resume record."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from whisperctl.fetch.transfer import TransferOptions
from whisperctl.fetch.transfer.answers import (
    ContentRange,
    Untrusted,
    Validators,
    check_partial,
    origin_of,
    parse_content_range,
    parse_retry_after,
    probe_total,
    requested_end,
)
from whisperctl.fetch.transfer.pace import Pace
from whisperctl.fetch.transfer.plan import Plan, Segment
from whisperctl.fetch.transfer.sidecar import Resumable, load_sidecar, sidecar_text

MiB = 1024 * 1024


# -- Content-Range ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-99/100", ContentRange(0, 99, 100)),
        ("bytes 10-10/11", ContentRange(10, 10, 11)),
        (None, None),
        ("", None),
        ("bytes 0-99/*", None),  # no total: nothing to size a file with
        ("bytes */100", None),
        ("bytes 0-99/-100", None),
        ("bytes -5-99/100", None),
        ("bytes 0-100/100", None),  # past the end
        ("bytes 50-10/100", None),
        ("bytes 0-99/99999999999999999999", None),  # 20 digits: absurd
        ("bits 0-99/100", None),
        ("bytes 0-99/100, bytes 0-99/100", None),  # two fields joined
        ("bytes 0-99/100\r\nX: y", None),
        ("bytes ٠-٩/١٠", None),  # Unicode digits are not digits here
    ],
)
def test_parse_content_range(value: str | None, expected: ContentRange | None) -> None:
    assert parse_content_range(value) == expected


def test_check_partial_accepts_exactly_the_range_asked() -> None:
    headers = {"content-range": "bytes 100-199/1000", "content-length": "100"}
    assert check_partial(headers, 100, 200, 1000) == ContentRange(100, 199, 1000)
    assert check_partial(headers, 100, None, None).total == 1000
    # a shorter answer than asked is allowed (the body then ends early and is resumed)
    assert check_partial(headers, 100, 500, 1000).last == 199


@pytest.mark.parametrize(
    ("headers", "start", "end", "total", "says"),
    [
        ({}, 0, None, None, "without Content-Range"),
        ({"content-range": "garbage"}, 0, None, None, "unusable Content-Range"),
        ({"content-range": "bytes 5-99/100"}, 0, None, None, "asked from 0"),
        ({"content-range": "bytes 0-99/100"}, 0, 50, None, "asked up to 49"),
        ({"content-range": "bytes 0-99/100"}, 0, None, 200, "file of 200 bytes"),
        ({"content-range": "bytes 0-99/100", "content-length": "101"}, 0, None, None, "disagrees"),
    ],
)
def test_check_partial_refuses_a_range_that_lies(
    headers: dict[str, str], start: int, end: int | None, total: int | None, says: str
) -> None:
    with pytest.raises(Untrusted, match=says):
        check_partial(headers, start, end, total)


def test_untrusted_messages_quote_what_the_server_said() -> None:
    with pytest.raises(Untrusted) as info:
        check_partial({"content-range": "x" * 10_000 + "\x1b[31m"}, 0, None, None)
    assert len(str(info.value)) < 200 and "\x1b" not in str(info.value)


def test_probe_total_is_checked_before_anything_is_allocated() -> None:
    assert probe_total(200, {"content-length": "100"}, 100, 1000) == 100
    assert probe_total(200, {}, None, 1000) is None
    assert probe_total(200, {"content-length": "-1"}, None, 1000) is None  # not a length: unknown size
    assert probe_total(206, {"content-range": "bytes 0-99/100"}, None, 1000) == 100
    with pytest.raises(Untrusted, match="expected 100") as info:
        probe_total(200, {"content-length": "101"}, 100, 1000)
    assert info.value.integrity
    with pytest.raises(Untrusted, match="more than the limit") as info:
        probe_total(206, {"content-range": f"bytes 0-0/{10**18}"}, None, 1000)
    assert info.value.integrity
    # the registry's size, however large, is the registry's: no cap then
    assert probe_total(200, {"content-length": str(10**15)}, 10**15, 1000) == 10**15
    with pytest.raises(Untrusted, match="without Content-Range") as info:
        probe_total(206, {}, None, 1000)
    assert not info.value.integrity


def test_retry_after_and_requested_end() -> None:
    assert parse_retry_after("7", 0.0) == 7.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 40.0) == 60.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 1e9) == 0.0
    assert parse_retry_after("soon", 0.0) is None
    assert parse_retry_after("-3", 0.0) is None
    assert parse_retry_after(None, 0.0) is None
    assert requested_end("bytes=10-19") == 20
    assert requested_end("bytes=10-") is None


# -- validators ------------------------------------------------------------------------------------------
GOOD_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


@pytest.mark.parametrize(
    ("etag", "kept"),
    [
        ('"abc"', '"abc"'),
        ('W/"abc"', 'W/"abc"'),
        ('""', '""'),
        ('"a\x01b"', None),
        ('"a\x00b"', None),
        ('"a\x7fb"', None),
        ('"a"\r\nX-Injected: 1', None),
        ('"a\tb"', None),
        ('"a"b"', None),
        ("abc", None),  # not quoted
        ('"ä"', None),
    ],
)
def test_an_etag_is_kept_only_when_it_is_a_valid_entity_tag(etag: str, kept: str | None) -> None:
    assert Validators.of(etag, None, "http://h:80").etag == kept


@pytest.mark.parametrize(
    ("date", "kept"),
    [
        (GOOD_DATE, GOOD_DATE),
        (GOOD_DATE + "\r\nX-Injected: 1", None),
        (GOOD_DATE.replace(" ", "\x00", 1), None),
        ("yesterday", None),
        ("", None),
    ],
)
def test_a_last_modified_is_kept_only_when_it_is_a_clean_date(date: str, kept: str | None) -> None:
    assert Validators.of(None, date, "http://h:80").last_modified == kept


def test_validators_go_back_only_to_their_origin() -> None:
    v = Validators.from_answer({"etag": '"e"', "last-modified": GOOD_DATE}, "http://a.example/x/m.pt")
    assert v.if_range("http://a.example:80/other") == '"e"'
    assert v.if_range("http://A.EXAMPLE/x/m.pt") == '"e"'
    assert v.if_range("https://a.example/x/m.pt") is None  # another scheme is another origin
    assert v.if_range("http://a.example:8080/x/m.pt") is None
    assert v.if_range("http://cdn.example/x/m.pt") is None
    weak = Validators.from_answer({"etag": 'W/"e"', "last-modified": GOOD_DATE}, "http://a.example/")
    assert weak.if_range("http://a.example/") == GOOD_DATE  # a weak ETag may not be used in If-Range
    dirty = Validators.from_answer({"etag": '"\x01"'}, "http://a.example/")
    assert dirty.if_range("http://a.example/") is None


def test_renewed_validators_keep_the_old_ones_a_later_answer_omits() -> None:
    v = Validators.from_answer({"etag": '"e"', "last-modified": GOOD_DATE}, "http://a/")
    assert v.renewed({"etag": '"f"'}, "http://a/") == Validators('"f"', GOOD_DATE, origin_of("http://a/"))
    assert v.renewed({"etag": '"\r"'}, "http://a/") == v
    assert v.renewed({"etag": '"g"'}, "http://b/") == Validators('"g"', None, origin_of("http://b/"))


def test_origin_of() -> None:
    assert origin_of("https://Example.com/a") == "https://example.com:443"
    assert origin_of("http://example.com:8080/a") == "http://example.com:8080"
    assert origin_of("http://[::1]/a") == "http://::1:80"


# -- the plan --------------------------------------------------------------------------------------------
def test_a_fresh_plan_tiles_the_file_in_pieces() -> None:
    opt = TransferOptions(split_threshold=4 * MiB, min_segment=1 * MiB, piece_size=2 * MiB, connections=4)
    plan = Plan.fresh(10 * MiB + 1, True, opt)
    spans = [(s.start, s.end) for s in plan.segments]
    assert spans[0][0] == 0 and spans[-1][1] == 10 * MiB + 1
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert all(end is not None and end - start <= 2 * MiB for start, end in spans)
    assert [(s.start, s.end) for s in Plan.fresh(10 * MiB, False, opt).segments] == [(0, 10 * MiB)]
    assert [(s.start, s.end) for s in Plan.fresh(None, True, opt).segments] == [(0, None)]


def test_take_splits_the_largest_busy_segment_and_the_frontier_follows() -> None:
    plan = Plan([Segment(0, 100)], min_segment=10)
    first = plan.take()
    assert first is plan.segments[0]
    first.busy = True
    second = plan.take()
    assert second is not None and (second.start, second.end) == (50, 100) and first.end == 50
    second.busy = True
    second.done = 50  # the second half lands first: the prefix has not grown
    assert plan.frontier() == 0
    first.done = 20
    assert plan.is_front(first) and plan.frontier() == 20
    first.done = 50
    assert plan.frontier() == 100
    assert plan.take() is None


@pytest.mark.parametrize(
    "spans",
    [
        [],
        [(0, 50, 0)],  # short of the total
        [(0, 50, 0), (60, 100, 0)],  # a hole
        [(0, 60, 0), (50, 100, 0)],  # an overlap
        [(0, 100, 101)],  # more done than the segment holds
        [(0, 100, -1)],
        [(0, 0, 0), (0, 100, 0)],  # an empty segment
    ],
)
def test_a_restored_plan_must_tile_the_file(spans: list[tuple[int, int, int]]) -> None:
    assert Plan.restored(spans, 100, 10) is None


def test_a_restored_plan_resumes_where_it_stopped() -> None:
    plan = Plan.restored([(50, 100, 10), (0, 50, 50)], 100, 10)
    assert plan is not None and plan.done == 60
    assert plan.pending() is plan.segments[1] and plan.frontier() == 60


# -- the pace --------------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_pace_counts_the_whole_transfer_over_windows() -> None:
    clock = Clock()
    pace = Pace(1000, 10.0, clock)
    window = pace.window()
    clock.now = 9.9
    assert window.shortfall() is None  # the window is not over
    pace.moved += 10_000
    clock.now = 10.0
    assert window.shortfall() is None  # 1,000 bytes/s: enough, and a new window starts
    pace.moved += 9_000
    clock.now = 20.0
    why = window.shortfall()
    assert why is not None and "9,000 bytes in 10 s" in why and "--speed-limit" in why


def test_a_connection_that_drips_beside_fast_ones_is_carried_by_them() -> None:
    clock = Clock()
    pace = Pace(1000, 10.0, clock)
    dripping, fast = pace.window(), pace.window()
    pace.moved += 1 + 50_000  # one byte from the dripper, the rest from the other connection
    clock.now = 10.0
    assert dripping.shortfall() is None and fast.shortfall() is None


def test_no_minimum_with_a_limit_of_zero() -> None:
    clock = Clock()
    window = Pace(0, 1.0, clock).window()
    clock.now = 1e6
    assert window.shortfall() is None
    assert TransferOptions(speed_limit=0).least_progress == 1
    assert TransferOptions().least_progress == 60 * 1024


# -- the resume record -----------------------------------------------------------------------------------
def _load(state: Path, part: Path, url: str = "http://a/m.pt") -> Resumable | None:
    return load_sidecar(state, part, sha256="s" * 64, size=100, urls=(url,), min_segment=10)


def _record(tmp_path: Path, **changes: object) -> tuple[Path, Path]:
    part, state = tmp_path / "m.pt.part", tmp_path / "m.pt.part.json"
    part.write_bytes(b"\0" * 100)
    plan = Plan.restored([(0, 100, 40)], 100, 10)
    assert plan is not None
    v = Validators('"e"', GOOD_DATE, "http://a:80")
    data = json.loads(sidecar_text(sha256="s" * 64, url="http://a/m.pt", total=100, validators=v, plan=plan))
    data.update(changes)
    state.write_text(json.dumps(data))
    return part, state


def test_the_resume_record_round_trips(tmp_path: Path) -> None:
    part, state = _record(tmp_path)
    found = _load(state, part)
    assert found is not None and found.total == 100 and found.plan.done == 40
    assert found.validators == Validators('"e"', GOOD_DATE, "http://a:80")
    other = _load(state, part, "http://b/m.pt")
    assert other is not None and other.validators == Validators()  # another URL: no validators


@pytest.mark.parametrize(
    "changes",
    [
        {"etag": '"e"\r\nX-Injected: 1', "last_modified": None},
        {"etag": None, "last_modified": GOOD_DATE + "\n"},
        {"etag": ["not", "a", "string"]},
        {"validator_origin": None},  # a record of an older version: no origin, no validators
    ],
)
def test_a_tampered_record_gives_no_validator_to_send(tmp_path: Path, changes: dict[str, object]) -> None:
    part, state = _record(tmp_path, **changes)
    found = _load(state, part)
    assert found is not None
    assert found.validators.if_range("http://a/m.pt") in (None, GOOD_DATE, '"e"')
    assert "\r" not in json.dumps([found.validators.etag, found.validators.last_modified])
    assert "\n" not in json.dumps([found.validators.etag, found.validators.last_modified])


@pytest.mark.parametrize(
    "changes",
    [{"version": 2}, {"sha256": "t" * 64}, {"total": 99}, {"segments": [[0, 50, 0]]}, {"segments": "x"}],
)
def test_a_record_of_another_download_is_ignored(tmp_path: Path, changes: dict[str, object]) -> None:
    part, state = _record(tmp_path, **changes)
    assert _load(state, part) is None


def test_a_record_beside_a_symlink_is_ignored(tmp_path: Path) -> None:
    part, state = _record(tmp_path)
    target = tmp_path / "elsewhere"
    os.replace(part, target)
    part.symlink_to(target)
    assert _load(state, part) is None
