"""Downloads over real sockets: segments, resume, retries, faults, redirects, locks, mirrors, exit codes.

Every test runs the engine against the fault-injecting server of ``tests/httpserver.py`` with small random
files and small engine knobs, and a guard thread watches the cache for the whole test: a file whose digest
the registry does not allow must never appear under a model's final name, whatever the network did.

The engine reads bodies with its own lean HTTP/1.1 reader (``wire.py``) on direct connections and with httpx
otherwise (proxies, a client passed in): the tests marked ``@both_paths`` run once over each.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest

from whisperctl import api
from whisperctl.fetch.download import DownloadRecord, download_models
from whisperctl.fetch.http import connection
from whisperctl.fetch.transfer import TransferOptions
from whisperctl.models.registry import ModelSpec, load_registry
from whisperctl.store.cache import Cache, CacheEntry

from .helpers import Cli, FinalGuard, Result, Sleeps, file_sha256, sha256_hex
from .httpserver import HTTPServer, RequestRecord, TLSUnavailableError

KiB = 1024
MiB = 1024 * KiB
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused


# -- test doubles that are not mocks: a recording progress (Sleeps and FinalGuard are in helpers) ---------
class Progress:
    """A ``DownloadProgress`` that records what it is told."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, int | None, int]] = []
        self.advanced: dict[str, int] = defaultdict(int)
        self.notes: list[str] = []
        self.finished: list[DownloadRecord] = []

    def start(self, name: str, total: int | None, completed: int) -> None:
        self.starts.append((name, total, completed))

    def advance(self, name: str, nbytes: int) -> None:
        self.advanced[name] += nbytes

    def note(self, name: str, message: str) -> None:
        self.notes.append(f"{name}: {message}")

    def finish(self, record: DownloadRecord) -> None:
        self.finished.append(record)


# -- the lab: a server, a cache and a user registry ----------------------------------------------------------
@dataclass(frozen=True)
class Model:
    name: str
    data: bytes
    route: str  # its path on the test server

    @property
    def sha256(self) -> str:
        return sha256_hex(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"


class Lab:
    """Shortcuts around one test server, one cache directory and one registry file."""

    def __init__(
        self, server: HTTPServer, cache_dir: Path, tmp_path: Path, guard: FinalGuard, *, lean: bool = True
    ) -> None:
        self.server = server
        self.lean = lean  # bodies through wire.py (True) or through httpx
        self.cache_dir = cache_dir
        self.cache = Cache(cache_dir)
        self.tmp = tmp_path
        self.guard = guard
        self.sleeps = Sleeps()
        self.registry = tmp_path / "models.toml"
        self.registry.write_text("", "utf-8")
        self._entries: dict[str, str] = {}

    # setting up
    def model(
        self,
        name: str = "m",
        size: int = 1 * MiB,
        *,
        data: bytes | None = None,
        sized: bool = True,
        serve: bool = True,
        url: str | None = None,
        **faults: Any,
    ) -> Model:
        """A random file served at ``/files/<name>.pt`` and registered with its genuine digest."""
        model = Model(name, os.urandom(size) if data is None else data, f"/files/{name}.pt")
        if serve:
            self.server.add(model.route, model.data, **faults)
        self.register(model, url=url, sized=sized)
        return model

    def register(
        self,
        model: Model,
        *,
        url: str | None = None,
        sha256: str | None = None,
        size: int | None = None,
        sized: bool = True,
    ) -> None:
        digest = sha256 or model.sha256
        lines = [
            f"[models.{model.name}]",
            f'url = "{url or self.server.url(model.route)}"',
            f'sha256 = "{digest}"',
        ]
        if sized:
            lines.append(f"size = {size or model.size}")
        self._entries[model.name] = "\n".join(lines)
        self.registry.write_text("\n\n".join(self._entries.values()) + "\n", "utf-8")
        self.guard.allow(model.filename, digest)

    def place(self, model: Model, data: bytes) -> Path:
        """Put ``data`` under the model's final name (atomically, as another tool would), unstamped."""
        self.guard.allow(model.filename, sha256_hex(data))
        tmp = self.cache_dir / f".{model.filename}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.final(model))
        return self.final(model)

    def options(self, **changes: Any) -> TransferOptions:
        knobs: dict[str, Any] = {
            "split_threshold": 2 * MiB,
            "min_segment": 256 * KiB,
            "connections": 4,
            "stall_timeout": 0.5,
            "backoff": 0.01,
            "checkpoint_interval": 0.05,
            "sleep": self.sleeps,
            "lean_http": self.lean,
        }
        knobs.update(changes)
        return TransferOptions(**knobs)

    # downloading
    def download(
        self,
        *models: Model,
        force: bool = False,
        mirrors: list[str] | None = None,
        options: TransferOptions | None = None,
        progress: Progress | None = None,
    ) -> list[DownloadRecord]:
        return api.download(
            [m.name for m in models],
            cache_dir=self.cache_dir,
            registry=self.registry,
            mirrors=mirrors or [],
            offline=False,
            force=force,
            options=options or self.options(),
            progress=progress,
            check=False,
        )

    def get(self, model: Model, **kwargs: Any) -> DownloadRecord:
        (record,) = self.download(model, **kwargs)
        return record

    def run_async(
        self, *models: Model, client: httpx.AsyncClient | None = None, options: TransferOptions | None = None
    ) -> list[DownloadRecord]:
        """``download_models`` in a fresh event loop, with an injected client (closed afterwards)."""

        async def go() -> list[DownloadRecord]:
            try:
                return await download_models(
                    [self.spec(m) for m in models],
                    self.cache,
                    options=options or self.options(),
                    client=client,
                )
            finally:
                if client is not None:
                    await client.aclose()

        return asyncio.run(go())

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return Cli()("--cache-dir", str(self.cache_dir), "--registry", str(self.registry), *args, env=env)

    def argv(self, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "whisperctl",
            "--cache-dir", str(self.cache_dir), "--registry", str(self.registry), *args,
        ]  # fmt: skip

    # looking
    def spec(self, model: Model) -> ModelSpec:
        return load_registry(self.registry).get(model.name)

    def entry(self, model: Model) -> CacheEntry:
        return self.cache.entry(self.spec(model))

    def final(self, model: Model) -> Path:
        return self.cache_dir / model.filename

    def part(self, model: Model) -> Path:
        return self.cache_dir / f"{model.filename}.part"

    def sidecar(self, model: Model) -> Path:
        return self.cache_dir / f"{model.filename}.part.json"

    def sidecar_segments(self, model: Model) -> list[tuple[int, int, int]] | None:
        """(start, end, done) of each segment the sidecar records, or None while there is none."""
        try:
            data = json.loads(self.sidecar(model).read_text("utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return [(s, e, d) for s, e, d in data["segments"]]

    def sidecar_done(self, model: Model) -> int:
        return sum(d for _, _, d in self.sidecar_segments(model) or [])

    def gets(self, model: Model, count: int | None = None) -> list[RequestRecord]:
        """The GETs the server logged for ``model``; with ``count``, once at least that many are logged.

        A response the client closed early is logged only when the server notices (its next write fails),
        possibly after the download returned, and then after responses that began later.
        """
        if count is not None:
            wait_for(lambda: len(self.gets(model)) >= count, f"{count} GET requests", timeout=5)
        return self.server.requests_for(model.route, "GET")

    def settled_gets(self, model: Model) -> list[RequestRecord]:
        """The GETs for ``model`` once the log has stopped growing for a moment."""
        seen = -1
        while len(gets := self.gets(model)) != seen:
            seen = len(gets)
            time.sleep(0.3)
        return gets

    def assert_verified(self, model: Model) -> None:
        assert file_sha256(self.final(model)) == model.sha256
        assert self.entry(model).status == "verified"
        assert not self.part(model).exists()
        assert not self.sidecar(model).exists()

    def assert_nothing(self, model: Model) -> None:
        """No final file, no partial file, no sidecar: a failure that left nothing behind."""
        assert not self.final(model).exists()
        assert not self.part(model).exists()
        assert not self.sidecar(model).exists()


@pytest.fixture
def lab(request: pytest.FixtureRequest, server: HTTPServer, cache_dir: Path, tmp_path: Path) -> Iterator[Lab]:
    guard = FinalGuard(cache_dir)
    yield Lab(server, cache_dir, tmp_path, guard, lean=getattr(request, "param", "wire") == "wire")
    violations = guard.stop()
    assert not violations, f"a wrong file sat under a final name: {violations}"


# Run a test once with bodies read by wire.py and once by httpx.
both_paths = pytest.mark.parametrize("lab", ["wire", "httpx"], indirect=True)


def span(record: RequestRecord) -> tuple[int, int | None]:
    """The [start, end) a request asked for (end None for an open range)."""
    assert record.range is not None and record.range.startswith("bytes=")
    first, _, last = record.range[len("bytes=") :].partition("-")
    return int(first), int(last) + 1 if last else None


def header(record: RequestRecord, name: str) -> str | None:
    return next((v for k, v in record.headers.items() if k.lower() == name.lower()), None)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def flipped(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0xFF
    return bytes(out)


# -- 1. plain downloads --------------------------------------------------------------------------------------
@both_paths
def test_small_file_is_one_stream_and_stamped_verified(lab: Lab) -> None:
    m = lab.model(size=1 * MiB)
    progress = Progress()
    rec = lab.get(m, progress=progress)
    assert (rec.status, rec.exit_code, rec.error) == ("downloaded", 0, None)
    assert (rec.name, rec.path, rec.sha256, rec.size_bytes) == (m.name, lab.final(m), m.sha256, m.size)
    assert rec.source == lab.server.url(m.route)
    assert rec.resumed_from == 0
    assert [(r.range, r.status, r.bytes_sent, r.outcome) for r in lab.gets(m)] == [
        ("bytes=0-", 206, m.size, "ok")
    ]
    assert progress.advanced[m.name] == m.size
    assert [f.status for f in progress.finished] == ["downloaded"]
    lab.assert_verified(m)
    stamp = lab.entry(m).stamp
    assert stamp is not None and stamp.sha256 == m.sha256 and stamp.size == m.size


@both_paths
def test_large_file_is_fetched_in_ranges_that_tile_it(lab: Lab) -> None:
    m = lab.model(size=4 * MiB)
    progress = Progress()
    # min_segment = 1 MiB: four segments, each too small for a worker to split: the plan is deterministic.
    rec = lab.get(m, options=lab.options(min_segment=1 * MiB), progress=progress)
    assert rec.status == "downloaded"
    gets = sorted(lab.gets(m, 4), key=lambda r: span(r)[0])
    assert all(r.status == 206 for r in gets)
    # The probe (bytes=0-) doubles as the first segment and is read only up to the second one.
    assert [r.range for r in gets] == [
        "bytes=0-",
        f"bytes={1 * MiB}-{2 * MiB - 1}",
        f"bytes={2 * MiB}-{3 * MiB - 1}",
        f"bytes={3 * MiB}-{4 * MiB - 1}",
    ]
    assert [r.bytes_sent for r in gets[1:]] == [1 * MiB] * 3
    assert progress.advanced[m.name] == m.size  # every byte written exactly once
    lab.assert_verified(m)


@both_paths
def test_work_stealing_still_writes_every_byte_once(lab: Lab) -> None:
    m = lab.model(size=6 * MiB)
    progress = Progress()
    rec = lab.get(m, options=lab.options(min_segment=256 * KiB, connections=4), progress=progress)
    assert rec.status == "downloaded"
    gets = lab.settled_gets(m)
    assert len(gets) >= 4 and all(r.status == 206 for r in gets)
    starts = [span(r)[0] for r in gets]
    assert len(set(starts)) == len(starts)  # no range asked for twice
    covered = 0  # the requested ranges, sorted, leave no hole
    for start, end in sorted(span(r) for r in gets):
        assert start <= covered
        covered = max(covered, m.size if end is None else end)
    assert covered == m.size
    assert progress.advanced[m.name] == m.size
    lab.assert_verified(m)


# -- 2. idempotence ------------------------------------------------------------------------------------------
def test_second_download_is_cached_without_a_request_and_force_fetches_again(lab: Lab) -> None:
    m = lab.model()
    assert lab.get(m).status == "downloaded"
    before = len(lab.server.requests)
    rec = lab.get(m)
    assert (rec.status, rec.source, rec.sha256, rec.size_bytes) == ("cached", "cache", m.sha256, m.size)
    result = lab.cli("download", m.name)
    assert result.exit_code == 0, result.stderr
    assert "cached" in result.stderr
    assert len(lab.server.requests) == before
    rec = lab.get(m, force=True)
    assert (rec.status, rec.sha256) == ("downloaded", m.sha256)
    assert len(lab.gets(m)) == 2
    lab.assert_verified(m)


# -- 3. files found in place ---------------------------------------------------------------------------------
def test_unstamped_file_is_hashed_and_stamped_without_network(lab: Lab) -> None:
    m = lab.model(serve=False, url=f"{UNREACHABLE}/m.pt")
    lab.place(m, m.data)  # as openai-whisper leaves it: right bytes, never hashed by whisperctl
    assert lab.entry(m).status == "present"
    rec = lab.get(m)
    assert (rec.status, rec.source, rec.sha256) == ("cached", "cache", m.sha256)
    assert lab.server.requests == []
    lab.assert_verified(m)


def test_wrong_unstamped_file_is_replaced_by_a_download(lab: Lab) -> None:
    m = lab.model()
    lab.place(m, os.urandom(m.size))
    rec = lab.get(m)
    assert (rec.status, rec.sha256) == ("downloaded", m.sha256)
    assert len(lab.gets(m)) == 1
    lab.assert_verified(m)


# -- 4, 5. resets and truncation -----------------------------------------------------------------------------
@both_paths
@pytest.mark.parametrize("times", [1, 3])
def test_reset_is_resumed_from_the_bytes_received(lab: Lab, times: int) -> None:
    m = lab.model(size=1 * MiB, reset_after=200 * KiB, reset_times=times)
    progress = Progress()
    rec = lab.get(m, progress=progress)
    assert rec.status == "downloaded"
    gets = lab.gets(m)
    assert [r.outcome for r in gets] == ["reset"] * times + ["ok"]
    assert all(r.status == 206 for r in gets)
    starts = [span(r)[0] for r in gets]
    assert starts[0] == 0 and starts[-1] > 0
    for before, after in itertools.pairwise(starts):
        assert before <= after <= before + 200 * KiB  # never past what that response delivered
    assert all(header(r, "If-Range") for r in gets[1:])  # resuming checks the file did not change
    assert gets[-1].bytes_sent == m.size - starts[-1]
    # Each resume started exactly where the received bytes ended: none written twice, none missing.
    assert progress.advanced[m.name] == m.size
    lab.assert_verified(m)


@both_paths
def test_reset_in_a_segment_resumes_only_that_segment(lab: Lab) -> None:
    m = lab.model(size=4 * MiB, reset_after=300 * KiB, reset_times=2)
    progress = Progress()
    rec = lab.get(m, options=lab.options(min_segment=1 * MiB), progress=progress)
    assert rec.status == "downloaded"
    gets = lab.gets(m, 6)
    assert len(gets) == 6 and all(r.status == 206 for r in gets)
    segments = {i * MiB: (i + 1) * MiB for i in range(4)}
    retried = [r for r in gets if span(r)[0] not in segments]
    assert len(retried) == 2
    for r in retried:
        start, end = span(r)
        seg_start = max(s for s in segments if s < start)
        assert start - seg_start <= 300 * KiB
        assert end == segments[seg_start]  # the same segment end: nothing re-fetched outside it
    assert progress.advanced[m.name] == m.size
    lab.assert_verified(m)


@both_paths
def test_truncated_body_is_resumed_exactly_where_it_stopped(lab: Lab) -> None:
    m = lab.model(size=1 * MiB, truncate_after=300_000, truncate_times=1)
    rec = lab.get(m)
    assert rec.status == "downloaded"
    assert [(r.range, r.outcome, r.bytes_sent) for r in lab.gets(m)] == [
        ("bytes=0-", "truncated", 300_000),
        (f"bytes=300000-{m.size - 1}", "ok", m.size - 300_000),
    ]
    lab.assert_verified(m)


# -- 6. wrong bytes ------------------------------------------------------------------------------------------
@both_paths
@pytest.mark.parametrize("size", [1 * MiB, 4 * MiB], ids=["one-stream", "segmented"])
def test_wrong_bytes_are_an_integrity_error_and_leave_nothing(lab: Lab, size: int) -> None:
    flip = size - 12_345
    m = lab.model(size=size, flip_byte_at=flip)
    rec = lab.get(m)
    assert (rec.status, rec.exit_code, rec.sha256) == ("failed", 4, None)
    assert rec.error is not None
    assert m.sha256 in rec.error and sha256_hex(flipped(m.data, flip)) in rec.error
    assert "partial file was removed" in rec.error
    lab.assert_nothing(m)
    assert lab.entry(m).status == "missing"


def test_wrong_bytes_through_the_cli_exit_4(lab: Lab) -> None:
    m = lab.model(size=256 * KiB, flip_byte_at=7)
    result = lab.cli("download", m.name)
    assert result.exit_code == 4
    assert m.sha256 in result.stderr and sha256_hex(flipped(m.data, 7)) in result.stderr
    lab.assert_nothing(m)


def test_forced_download_of_wrong_bytes_keeps_the_verified_file(lab: Lab) -> None:
    m = lab.model()
    assert lab.get(m).status == "downloaded"
    before = lab.final(m).stat()
    lab.server.set_faults(m.route, flip_byte_at=100)
    rec = lab.get(m, force=True)
    assert (rec.status, rec.exit_code) == ("failed", 4)
    assert lab.cli("download", "--force", m.name).exit_code == 4
    after = lab.final(m).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    lab.assert_verified(m)


# -- 7. transient statuses and giving up ---------------------------------------------------------------------
@both_paths
def test_transient_statuses_are_retried_with_backoff(lab: Lab) -> None:
    m = lab.model(status_sequence=[503, 500, 429, 502, 408])
    rec = lab.get(m)
    assert rec.status == "downloaded"
    assert [r.status for r in lab.gets(m)] == [503, 500, 429, 502, 408, 206]
    assert len(lab.sleeps.delays) == 5
    for i, delay in enumerate(lab.sleeps.delays):  # full jitter under a doubling cap
        assert 0 <= delay <= 0.01 * 2**i
    lab.assert_verified(m)


@pytest.mark.parametrize("retry_after", ["7", "date"])
def test_retry_after_is_honoured(lab: Lab, retry_after: str) -> None:
    value = formatdate(time.time() + 30, usegmt=True) if retry_after == "date" else retry_after
    m = lab.model(status_sequence=[503, 429], retry_after=value)
    rec = lab.get(m)
    assert rec.status == "downloaded"
    if retry_after == "date":
        assert len(lab.sleeps.delays) == 2 and all(27 <= d <= 30 for d in lab.sleeps.delays)
    else:
        assert lab.sleeps.delays == [7.0, 7.0]
    lab.assert_verified(m)


def test_retry_after_is_capped(lab: Lab) -> None:
    m = lab.model(status_sequence=[503], retry_after="86400")
    rec = lab.get(m, options=lab.options(max_retry_after=5.0))
    assert rec.status == "downloaded"
    assert lab.sleeps.delays == [5.0]


def test_persistent_server_error_gives_up_with_a_network_error(lab: Lab) -> None:
    m = lab.model(status=503)
    rec = lab.get(m, options=lab.options(retries=3))
    assert (rec.status, rec.exit_code) == ("failed", 3)
    assert rec.error is not None and lab.server.url(m.route) in rec.error and "gave up" in rec.error
    assert len(lab.gets(m)) == 4 and len(lab.sleeps.delays) == 3
    lab.assert_nothing(m)  # no byte arrived: nothing to keep


@both_paths
def test_failure_after_some_bytes_keeps_the_partial_file_and_resumes_it(lab: Lab) -> None:
    m = lab.model(size=1 * MiB, reset_after=256 * KiB, reset_times=1)
    lab.sleeps.then.append(lambda: lab.server.set_faults(m.route, status=503))
    rec = lab.get(m, options=lab.options(retries=2))
    assert (rec.status, rec.exit_code) == ("failed", 3)
    assert rec.error is not None and lab.server.url(m.route) in rec.error
    assert "partial file is kept" in rec.error
    done = lab.sidecar_done(m)
    assert 0 < done <= 256 * KiB
    assert lab.part(m).exists() and not lab.final(m).exists()
    assert lab.entry(m).status == "partial"

    lab.server.set_faults(m.route)
    lab.server.clear_requests()
    rec = lab.get(m)
    assert (rec.status, rec.resumed_from) == ("downloaded", done)
    (resumed,) = lab.gets(m)
    assert span(resumed) == (done, m.size)
    assert header(resumed, "If-Range") and resumed.bytes_sent == m.size - done
    lab.assert_verified(m)


# -- 8. permanent client errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [404, 403, 410])
def test_client_errors_fail_at_once(lab: Lab, status: int) -> None:
    m = lab.model(status=status)
    rec = lab.get(m)
    assert (rec.status, rec.exit_code) == ("failed", 3)
    assert rec.error is not None and lab.server.url(m.route) in rec.error and f"HTTP {status}" in rec.error
    assert len(lab.gets(m)) == 1 and lab.sleeps.delays == []
    lab.assert_nothing(m)


def test_not_found_through_the_cli_exits_3_with_the_url(lab: Lab) -> None:
    m = lab.model(status=404)
    result = lab.cli("download", m.name)
    assert result.exit_code == 3
    assert lab.server.url(m.route) in result.stderr
    assert len(lab.gets(m)) == 1
    lab.assert_nothing(m)


# -- 9. servers without Range support ------------------------------------------------------------------------
@both_paths
def test_no_range_support_means_one_stream(lab: Lab) -> None:
    m = lab.model(size=4 * MiB, no_range=True)  # over the split threshold, but the server answers 200
    rec = lab.get(m)
    assert rec.status == "downloaded"
    assert [(r.range, r.status, r.bytes_sent) for r in lab.gets(m)] == [("bytes=0-", 200, m.size)]
    lab.assert_verified(m)


@both_paths
def test_reset_without_range_support_starts_over(lab: Lab) -> None:
    m = lab.model(size=1 * MiB, no_range=True, reset_after=300 * KiB, reset_times=1)
    progress = Progress()
    rec = lab.get(m, progress=progress)
    assert rec.status == "downloaded"
    gets = lab.gets(m)
    assert [(r.range, r.status, r.outcome) for r in gets] == [
        ("bytes=0-", 200, "reset"),
        ("bytes=0-", 200, "ok"),
    ]
    assert header(gets[1], "If-Range") is None
    assert [s[2] for s in progress.starts] == [0, 0]  # the progress started over too
    lab.assert_verified(m)


# -- 10. bodies without Content-Length -----------------------------------------------------------------------
@both_paths
@pytest.mark.parametrize(
    "faults",
    [
        {"no_content_length": True},
        {"chunked": True},
        {"no_content_length": True, "no_range": True},
        {"chunked": True, "no_range": True},
    ],
    ids=["close-delimited", "chunked", "close-delimited-no-range", "chunked-no-range"],
)
@pytest.mark.parametrize("sized", [True, False], ids=["size-known", "size-unknown"])
def test_body_without_content_length_completes(lab: Lab, faults: dict[str, bool], sized: bool) -> None:
    m = lab.model(size=3 * MiB, sized=sized, **faults)
    rec = lab.get(m)
    assert (rec.status, rec.size_bytes) == ("downloaded", m.size)
    if "no_range" in faults:  # one stream, read to its end once: never asked for again
        assert [r.range for r in lab.gets(m, 1)] == ["bytes=0-"]
    lab.assert_verified(m)


# -- 11. stalls ----------------------------------------------------------------------------------------------
@both_paths
def test_stalled_connection_is_dropped_and_the_range_resumed(lab: Lab) -> None:
    m = lab.model(size=1 * MiB, stall_after=300_000, stall_seconds=5, stall_times=1)
    t0 = time.monotonic()
    rec = lab.get(m)  # stall_timeout is 0.5 s
    assert rec.status == "downloaded"
    assert time.monotonic() - t0 < 3
    lab.assert_verified(m)
    lab.server.close()  # ends the stalled response, so that it is in the log
    stalled, resumed = sorted(lab.gets(m), key=lambda r: span(r)[0])
    assert (stalled.range, stalled.bytes_sent) == ("bytes=0-", 300_000)
    assert resumed.range == f"bytes=300000-{m.size - 1}"


# -- 12. redirects -------------------------------------------------------------------------------------------
@both_paths
def test_redirect_chain_is_followed_once(lab: Lab) -> None:
    m = lab.model(size=4 * MiB)
    lab.server.add("/r1", b"", redirect_to="/r2")
    lab.server.add("/r2", b"", redirect_to=lab.server.url(m.route), redirect_status=307)
    lab.register(m, url=lab.server.url("/r1"))
    rec = lab.get(m)
    assert (rec.status, rec.source) == ("downloaded", lab.server.url("/r1"))
    assert [r.status for r in lab.server.requests_for("/r1")] == [302]
    assert [r.status for r in lab.server.requests_for("/r2")] == [307]
    assert len(lab.gets(m)) >= 2  # the later ranges went straight to the final location
    lab.assert_verified(m)


@both_paths
def test_redirect_loop_fails_with_exit_3(lab: Lab) -> None:
    m = lab.model(serve=False)
    lab.server.add("/loop", b"", redirect_to="/loop")
    lab.register(m, url=lab.server.url("/loop"))
    rec = lab.get(m)
    assert (rec.status, rec.exit_code) == ("failed", 3)
    assert rec.error is not None and "redirects" in rec.error and lab.server.url("/loop") in rec.error
    assert len(lab.server.requests_for("/loop")) == 6  # max_redirects (5) + 1, then it stops
    lab.assert_nothing(m)


@pytest.fixture
def tls_server() -> Iterator[HTTPServer]:
    try:
        srv = HTTPServer(tls=True)
    except TLSUnavailableError as exc:
        pytest.skip(str(exc))
    with srv:
        yield srv


def test_https_download_with_a_trusted_certificate(lab: Lab, tls_server: HTTPServer) -> None:
    m = lab.model(size=4 * MiB, serve=False)
    tls_server.add(m.route, m.data)
    lab.register(m, url=tls_server.url(m.route))
    assert tls_server.cert_path is not None
    ctx = ssl.create_default_context(cafile=str(tls_server.cert_path))
    (rec,) = lab.run_async(m, client=httpx.AsyncClient(verify=ctx, timeout=5))
    assert (rec.status, rec.source) == ("downloaded", tls_server.url(m.route))
    assert len(tls_server.requests_for(m.route, "GET")) >= 2
    lab.assert_verified(m)


def test_https_to_http_redirect_is_refused(lab: Lab, tls_server: HTTPServer) -> None:
    m = lab.model(size=256 * KiB)  # served over plain http by lab.server
    tls_server.add(m.route, b"", redirect_to=lab.server.url(m.route))
    lab.register(m, url=tls_server.url(m.route))
    assert tls_server.cert_path is not None
    ctx = ssl.create_default_context(cafile=str(tls_server.cert_path))
    (rec,) = lab.run_async(m, client=httpx.AsyncClient(verify=ctx, timeout=5))
    assert (rec.status, rec.exit_code) == ("failed", 3)
    assert rec.error is not None and "https to plain http" in rec.error
    # The CLI, trusting the test CA through SSL_CERT_FILE, refuses it the same way.
    result = lab.cli("download", m.name, env={"SSL_CERT_FILE": str(tls_server.cert_path)})
    assert result.exit_code == 3 and "https to plain http" in result.stderr
    assert len(tls_server.requests_for(m.route)) == 2
    assert lab.server.requests == []  # nothing was fetched from the http target
    lab.assert_nothing(m)


@both_paths
def test_https_trusts_the_bundle_in_ssl_cert_file(
    lab: Lab, tls_server: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = lab.model(size=4 * MiB, serve=False)
    tls_server.add(m.route, m.data)
    lab.register(m, url=tls_server.url(m.route))
    assert tls_server.cert_path is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.cert_path))
    rec = lab.get(m)  # the engine's own client: wire.py for the bodies unless lab.lean is off
    assert (rec.status, rec.source) == ("downloaded", tls_server.url(m.route))
    assert len(tls_server.requests_for(m.route, "GET")) >= 2
    lab.assert_verified(m)


@both_paths
def test_https_with_an_untrusted_certificate_fails_at_once(lab: Lab, tls_server: HTTPServer) -> None:
    m = lab.model(size=256 * KiB, serve=False)
    tls_server.add(m.route, m.data)
    lab.register(m, url=tls_server.url(m.route))
    rec = lab.get(m)
    assert (rec.status, rec.exit_code) == ("failed", 3)
    assert rec.error is not None and "TLS certificate verification failed" in rec.error
    assert lab.sleeps.delays == [] and tls_server.requests == []
    lab.assert_nothing(m)


@both_paths
def test_a_proxy_from_the_environment_is_honoured(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    m = lab.model()
    for var in ("no_proxy", "all_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", UNREACHABLE)
    monkeypatch.setenv("http_proxy", UNREACHABLE)
    rec = lab.get(m, options=lab.options(retries=1))
    assert (rec.status, rec.exit_code) == ("failed", 3)
    assert lab.server.requests == []  # the proxy refused: nothing went around it to the server


@both_paths
def test_pieces_share_kept_alive_connections(lab: Lab) -> None:
    m = lab.model(size=8 * MiB)
    progress = Progress()
    # 1 MiB pieces that no worker may split (min_segment 1 MiB): eight requests, two connections.
    options = lab.options(connections=2, min_segment=1 * MiB, piece_size=1 * MiB)
    rec = lab.get(m, options=options, progress=progress)
    assert rec.status == "downloaded"
    gets = lab.gets(m, 8)
    assert sorted(span(r) for r in gets) == [(0, None)] + [(i * MiB, (i + 1) * MiB) for i in range(1, 8)]
    # The probe's connection is dropped after its first piece; the others carry one piece after another.
    assert len({r.connection for r in gets}) <= 3
    assert progress.advanced[m.name] == m.size
    lab.assert_verified(m)


def _refuse_splice_into_files(monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    """os.splice as on a file system that takes none (EINVAL) or has no room left (ENOSPC)."""
    if not hasattr(os, "splice") or sys.platform != "linux":
        pytest.skip("splice is Linux-only")
    real = os.splice

    def splice(
        src: int, dst: int, count: int, offset_src: Any = None, offset_dst: Any = None, flags: int = 0
    ) -> int:
        if offset_dst is not None:  # into the partial file
            raise OSError(err, os.strerror(err))
        return real(src, dst, count, offset_src, offset_dst, flags)

    monkeypatch.setattr(os, "splice", splice)
    monkeypatch.setattr(connection, "_splice_works", True)


def test_a_file_system_without_splice_gets_ordinary_writes(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse_splice_into_files(monkeypatch, errno.EINVAL)
    m = lab.model(size=4 * MiB)
    rec = lab.get(m)
    assert rec.status == "downloaded"
    assert not connection.can_splice()  # the rest went through the read buffer
    lab.assert_verified(m)


def test_a_full_disk_under_splice_exits_6_and_leaves_nothing(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse_splice_into_files(monkeypatch, errno.ENOSPC)
    m = lab.model(size=4 * MiB)
    rec = lab.get(m)
    assert (rec.status, rec.exit_code) == ("failed", 6)
    assert rec.error is not None and "disk is full" in rec.error and "partial file was removed" in rec.error
    lab.assert_nothing(m)


# -- 13. oversized bodies ------------------------------------------------------------------------------------
@both_paths
def test_content_length_larger_than_the_registry_size_is_rejected_before_the_body(lab: Lab) -> None:
    m = lab.model(size=1 * MiB, no_range=True, oversize_by=4096)
    progress = Progress()
    rec = lab.get(m, progress=progress)
    assert (rec.status, rec.exit_code) == ("failed", 4)
    assert rec.error is not None and f"expected {m.size:,}" in rec.error
    assert progress.starts == [] and progress.advanced[m.name] == 0  # not one body byte was taken
    assert len(lab.gets(m, 1)) == 1  # not retried: it is the wrong file, not a bad connection
    lab.assert_nothing(m)


@both_paths
def test_ranged_body_longer_than_its_range_is_rejected_before_the_body(lab: Lab) -> None:
    m = lab.model(size=1 * MiB, oversize_by=4096)  # 206: Content-Range says 1 MiB, Content-Length 4 KiB more
    progress = Progress()
    rec = lab.get(m, progress=progress)
    assert (rec.status, rec.exit_code) == ("failed", 4)
    assert rec.error is not None and "disagrees with Content-Range" in rec.error
    assert progress.advanced[m.name] == 0
    assert len(lab.gets(m, 1)) == 1
    lab.assert_nothing(m)


@both_paths
def test_oversized_body_of_unknown_size_fails_the_digest(lab: Lab) -> None:
    m = lab.model(size=1 * MiB, sized=False, no_range=True, oversize_by=4096)
    rec = lab.get(m)
    assert (rec.status, rec.exit_code) == ("failed", 4)
    assert rec.error is not None and "SHA-256 mismatch" in rec.error and m.sha256 in rec.error
    lab.assert_nothing(m)


@both_paths
def test_endless_body_without_length_is_cut_off_at_the_expected_size(lab: Lab) -> None:
    m = lab.model(size=1 * MiB, no_range=True, no_content_length=True, oversize_by=256 * MiB)
    rec = lab.get(m)
    assert (rec.status, rec.exit_code) == ("failed", 4)
    assert rec.error is not None and "more than the expected" in rec.error
    (response,) = lab.gets(m, 1)  # logged once the server's next write fails: the client is gone
    assert response.outcome == "client_gone" and response.bytes_sent < 64 * MiB
    lab.assert_nothing(m)


@both_paths
def test_endless_body_of_unknown_size_is_cut_off_at_the_cap(lab: Lab) -> None:
    m = lab.model(size=1 * MiB, sized=False, no_range=True, no_content_length=True, oversize_by=256 * MiB)
    rec = lab.get(m, options=lab.options(max_unknown_size=2 * MiB))
    assert (rec.status, rec.exit_code) == ("failed", 4)
    lab.assert_nothing(m)


def test_a_slow_checkpoint_never_outlives_the_download(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sidecar write still in its thread when the download ends must land before the file is renamed."""
    real_fsync, slowed = os.fsync, threading.Event()

    def slow_disk(fd: int) -> None:  # the first fsync (the first checkpoint's) is slow, as on a busy disk
        if not slowed.is_set():
            slowed.set()
            time.sleep(0.5)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_disk)
    m = lab.model(size=1 * MiB, rate_limit=4 * MiB)  # 0.25 s: a checkpoint (every 0.05 s) starts meanwhile
    rec = lab.get(m)
    assert rec.status == "downloaded" and slowed.is_set()
    lab.assert_verified(m)  # no stale .part.json written after the rename


# -- 14. resuming an interrupted process ---------------------------------------------------------------------
@pytest.mark.slow
def test_resume_after_kill_9(lab: Lab) -> None:
    m = lab.model(size=4 * MiB, rate_limit=1 * MiB)  # about 4 s; the CLI checkpoints every 2 s
    proc = subprocess.Popen(lab.argv("download", m.name), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: lab.sidecar_done(m) > 0, "the first checkpoint")
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    wait_for(lambda: len(lab.gets(m)) == 1, "the server to notice the dead client")
    done = lab.sidecar_done(m)  # read after the kill: the last record the process made
    assert 0 < done < m.size and lab.part(m).exists() and not lab.final(m).exists()

    lab.server.set_faults(m.route)  # full speed for the second run
    lab.server.clear_requests()
    result = subprocess.run(
        lab.argv("download", "--json", m.name), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    (rec,) = json.loads(result.stdout)
    assert (rec["status"], rec["resumed_from"]) == ("downloaded", done)
    gets = lab.gets(m)
    assert all(span(r)[0] >= done for r in gets)
    assert sum(r.bytes_sent for r in gets) == m.size - done
    lab.assert_verified(m)


@pytest.mark.slow
def test_ctrl_c_exits_130_and_the_rerun_resumes(lab: Lab) -> None:
    m = lab.model(size=4 * MiB, rate_limit=2 * MiB)
    proc = subprocess.Popen(
        lab.argv("download", m.name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: lab.part(m).exists(), "the partial file")
        time.sleep(0.4)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    wait_for(lambda: len(lab.gets(m)) == 1, "the server to notice the interrupted client")
    # Ctrl-C recorded what was on disk, even between two periodic checkpoints.
    done = lab.sidecar_done(m)
    assert 0 < done < m.size and lab.part(m).exists() and not lab.final(m).exists()

    lab.server.set_faults(m.route)
    lab.server.clear_requests()
    result = subprocess.run(lab.argv("download", m.name), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (resumed,) = lab.gets(m)
    assert span(resumed)[0] == done and resumed.bytes_sent == m.size - done
    lab.assert_verified(m)


@both_paths
def test_segmented_resume_after_cancellation_fetches_only_what_is_missing(lab: Lab) -> None:
    m = lab.model(size=4 * MiB, rate_limit=2 * MiB)  # per connection: each 1 MiB segment takes 0.5 s
    options = lab.options(min_segment=1 * MiB)

    async def interrupted() -> None:
        task = asyncio.create_task(download_models([lab.spec(m)], lab.cache, options=options))
        while lab.sidecar_done(m) < 1 * MiB:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    segments = lab.sidecar_segments(m)
    assert segments is not None and len(segments) == 4
    done = sum(d for _, _, d in segments)
    assert 0 < done < m.size and not lab.final(m).exists()
    wait_for(lambda: len(lab.gets(m)) == 4, "the server to notice the cancelled connections")

    lab.server.set_faults(m.route)
    lab.server.clear_requests()
    progress = Progress()
    rec = lab.get(m, options=options, progress=progress)
    assert (rec.status, rec.resumed_from) == ("downloaded", done)
    gets = lab.gets(m)
    missing = sorted((s + d, e) for s, e, d in segments if d < e - s)
    assert sorted(span(r) for r in gets) == missing  # each segment resumed where its record ends
    assert all(header(r, "If-Range") and r.status == 206 for r in gets)
    assert sum(r.bytes_sent for r in gets) == m.size - done
    assert progress.advanced[m.name] == m.size - done
    lab.assert_verified(m)


# -- 15. resume validation -----------------------------------------------------------------------------------
def leave_partial(lab: Lab, m: Model) -> int:
    """A first run that got some bytes, then only 503s: it fails with the partial file kept."""
    lab.server.set_faults(m.route, reset_after=256 * KiB, reset_times=1)
    lab.sleeps.then.append(lambda: lab.server.set_faults(m.route, status=503))
    rec = lab.get(m, options=lab.options(retries=1))
    assert (rec.status, rec.exit_code) == ("failed", 3)
    done = lab.sidecar_done(m)
    assert done > 0 and lab.part(m).exists()
    lab.server.set_faults(m.route)
    lab.server.clear_requests()
    return done


@both_paths
def test_file_changed_on_the_server_starts_over_and_fails_the_old_digest(lab: Lab) -> None:
    m = lab.model()
    done = leave_partial(lab, m)
    new = os.urandom(m.size)
    lab.server.replace(m.route, new)
    rec = lab.get(m)  # the registry still names the old file
    assert (rec.status, rec.exit_code) == ("failed", 4)
    assert rec.error is not None and m.sha256 in rec.error and sha256_hex(new) in rec.error
    (first,), (again,) = validated_and_fresh(lab.gets(m, 2))
    assert span(first)[0] == done and first.status == 200  # If-Range: the file changed, here is all of it
    assert (again.range, again.status) == ("bytes=0-", 206)
    lab.assert_nothing(m)


def test_file_changed_on_the_server_to_the_registry_digest_is_downloaded_anew(lab: Lab) -> None:
    new = os.urandom(1 * MiB)
    m = lab.model(data=new)
    lab.server.replace(m.route, os.urandom(m.size))  # a stale copy is served first
    leave_partial(lab, m)
    lab.server.replace(m.route, new)
    rec = lab.get(m)
    assert (rec.status, rec.resumed_from) == ("downloaded", 0)
    (first,), (again,) = validated_and_fresh(lab.gets(m, 2))
    assert first.status == 200
    assert (again.range, again.status) == ("bytes=0-", 206)
    lab.assert_verified(m)


def test_registry_digest_changed_since_the_partial_starts_over(lab: Lab) -> None:
    old = lab.model()
    leave_partial(lab, old)
    m = Model(old.name, os.urandom(old.size), old.route)
    lab.server.replace(m.route, m.data)
    lab.register(m)
    rec = lab.get(m)
    assert (rec.status, rec.resumed_from) == ("downloaded", 0)
    (fresh,) = lab.gets(m)
    assert fresh.range == "bytes=0-" and header(fresh, "If-Range") is None
    lab.assert_verified(m)


@both_paths
def test_server_that_dropped_range_support_starts_over(lab: Lab) -> None:
    m = lab.model()
    leave_partial(lab, m)
    lab.server.set_faults(m.route, no_range=True)
    rec = lab.get(m)
    assert (rec.status, rec.resumed_from) == ("downloaded", 0)
    (first,), (again,) = validated_and_fresh(lab.gets(m, 2))
    assert first.status == 200
    assert (again.range, again.status) == ("bytes=0-", 200)
    lab.assert_verified(m)


def validated_and_fresh(gets: list[RequestRecord]) -> tuple[list[RequestRecord], list[RequestRecord]]:
    """The requests with an If-Range header (resume attempts), and those without (fresh starts)."""
    return [r for r in gets if header(r, "If-Range")], [r for r in gets if not header(r, "If-Range")]


# -- 16. concurrent processes --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_concurrent_processes_download_once(lab: Lab, n: int) -> None:
    # Four seconds of download: ample overlap, even when a loaded machine starts the processes late.
    m = lab.model(size=4 * MiB, rate_limit=1 * MiB)
    procs = [
        subprocess.Popen(
            lab.argv("download", m.name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    outputs = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, outputs
    gets = lab.gets(m)
    assert len(gets) == 1 and gets[0].bytes_sent == m.size  # one download, not n
    (downloader,) = [p for p, err in zip(procs, outputs, strict=True) if f"{m.name}: downloaded" in err]
    waited = [err for err in outputs if "waiting for process" in err]
    assert waited and all(f"waiting for process {downloader.pid} " in err for err in waited), outputs
    others = [err for p, err in zip(procs, outputs, strict=True) if p is not downloader]
    assert all(f"{m.name}: cached" in err for err in others)
    lab.assert_verified(m)


# -- 17. offline ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["flag", "env"])
def test_offline_mode(lab: Lab, how: str) -> None:
    m = lab.model()
    args: list[str] = ["download", "--offline", m.name] if how == "flag" else ["download", m.name]
    env = {"WHISPERCTL_OFFLINE": "1"} if how == "env" else None
    result = lab.cli(*args, env=env)
    assert result.exit_code == 5
    assert "offline" in result.stderr and m.name in result.stderr
    assert lab.server.requests == []
    lab.assert_nothing(m)

    assert lab.get(m).status == "downloaded"
    lab.server.clear_requests()
    result = lab.cli("download", "--json", *args[1:], env=env)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)[0]["status"] == "cached"
    assert lab.server.requests == []


# -- 18. mirrors ---------------------------------------------------------------------------------------------
def mirror_tree(root: Path, m: Model, data: bytes) -> Path:
    path = root / m.sha256 / m.filename
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def test_directory_mirror_needs_no_server(lab: Lab, tmp_path: Path) -> None:
    m = lab.model(serve=False, url=f"{UNREACHABLE}/m.pt")
    source = mirror_tree(tmp_path / "mirror", m, m.data)
    rec = lab.get(m, mirrors=[str(tmp_path / "mirror")])
    assert (rec.status, rec.source, rec.sha256) == ("downloaded", str(source), m.sha256)
    assert source.read_bytes() == m.data  # copied, not moved
    lab.assert_verified(m)


def test_directory_mirror_works_offline_through_the_cli(lab: Lab, tmp_path: Path) -> None:
    m = lab.model(serve=False, url=f"{UNREACHABLE}/m.pt")
    mirror_tree(tmp_path / "mirror", m, m.data)
    result = lab.cli("download", "--offline", "--mirror", str(tmp_path / "mirror"), "--json", m.name)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)[0]["status"] == "downloaded"
    lab.assert_verified(m)


@pytest.mark.parametrize("wrong", ["same-size", "other-size"])
def test_directory_mirror_with_wrong_bytes_falls_through_to_the_url(
    lab: Lab, tmp_path: Path, wrong: str
) -> None:
    m = lab.model()
    bad = os.urandom(m.size if wrong == "same-size" else m.size // 2)
    source = mirror_tree(tmp_path / "mirror", m, bad)
    progress = Progress()
    rec = lab.get(m, mirrors=[str(tmp_path / "mirror")], progress=progress)
    assert (rec.status, rec.source) == ("downloaded", lab.server.url(m.route))
    assert len(lab.gets(m)) == 1
    assert any(str(source) in note and "trying the next source" in note for note in progress.notes)
    assert len(rec.warnings) == 1 and str(source) in rec.warnings[0]  # in the record (and --json) too
    assert source.read_bytes() == bad  # the mirror is not ours to fix
    lab.assert_verified(m)


def test_a_stamp_that_cannot_be_written_is_a_warning_in_the_json(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = lab.model()

    def full(*_: Any, **__: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Cache, "write_stamp", full)
    result = lab.cli("download", "--json", m.name)
    assert result.exit_code == 0, result.stderr
    (record,) = json.loads(result.stdout)
    assert record["status"] == "downloaded" and record["sha256"] == m.sha256
    (warning,) = record["warnings"]
    assert "stamp could not be written" in warning and "hashed again" in warning
    assert lab.entry(m).stamp is None and lab.final(m).read_bytes() == m.data


def test_http_mirror_that_404s_falls_through_to_the_official_url(lab: Lab) -> None:
    m = lab.model()
    rec = lab.get(m, mirrors=[lab.server.url("/mirror")])
    assert (rec.status, rec.source) == ("downloaded", lab.server.url(m.route))
    (miss,) = lab.server.requests_for(f"/mirror/{m.sha256}/{m.filename}")
    assert miss.status == 404
    assert len(lab.gets(m)) == 1
    lab.assert_verified(m)


def test_http_mirror_is_used_first(lab: Lab) -> None:
    m = lab.model()
    lab.server.add(f"/mirror/{m.sha256}/{m.filename}", m.data)
    rec = lab.get(m, mirrors=[lab.server.url("/mirror") + "/"])
    assert (rec.status, rec.source) == ("downloaded", lab.server.url(f"/mirror/{m.sha256}/{m.filename}"))
    assert lab.gets(m) == []
    lab.assert_verified(m)


def test_every_source_failing_names_each_of_them(lab: Lab, tmp_path: Path) -> None:
    m = lab.model(status=404)
    (tmp_path / "empty").mkdir()
    rec = lab.get(m, mirrors=[str(tmp_path / "empty"), lab.server.url("/mirror")])
    assert (rec.status, rec.exit_code) == ("failed", 3)
    assert rec.error is not None and "every source failed" in rec.error
    for where in (str(tmp_path / "empty"), lab.server.url("/mirror"), lab.server.url(m.route)):
        assert where in rec.error
    lab.assert_nothing(m)


# -- 19. a full disk -----------------------------------------------------------------------------------------
def _limit_file_size() -> None:
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as on a full disk.
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * KiB, 256 * KiB))


@pytest.mark.parametrize(
    "faults",
    [{}, {"no_range": True, "no_content_length": True}],
    ids=["preallocated", "streamed-unknown-length"],
)
def test_disk_full_exits_6_and_leaves_nothing(lab: Lab, faults: dict[str, bool]) -> None:
    m = lab.model(size=1 * MiB, **faults)
    result = subprocess.run(
        lab.argv("download", m.name),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_file_size,
    )
    assert result.returncode == 6, result.stderr
    assert "File too large" in result.stderr and "the partial file was removed" in result.stderr
    lab.assert_nothing(m)


def test_not_enough_free_space_is_refused_before_the_body(lab: Lab, tmp_path: Path) -> None:
    size = shutil.disk_usage(lab.cache_dir).free + (1 << 30)
    huge = tmp_path / "huge.bin"
    try:
        with open(huge, "wb") as f:
            f.truncate(size)  # sparse: it costs no space
    except OSError as exc:
        pytest.skip(f"cannot make a sparse file of {size:,} bytes here: {exc}")
    m = Model("huge", b"", "/files/huge.pt")
    lab.server.add(m.route, huge)
    lab.register(m, sha256=sha256_hex(b"never downloaded"), size=size)
    client = httpx.AsyncClient(timeout=5)

    async def refused() -> list[DownloadRecord]:
        async with client:
            records = await download_models([lab.spec(m)], lab.cache, options=lab.options(), client=client)
            # The probe response was closed, not left streaming into the caller's still open client.
            await asyncio.to_thread(wait_for, lambda: len(lab.gets(m)) == 1, "the probe to be closed", 5)
            return records

    (rec,) = asyncio.run(refused())
    assert (rec.status, rec.exit_code) == ("failed", 6)
    assert rec.error is not None and "not enough free space" in rec.error
    assert lab.gets(m)[0].outcome == "client_gone"
    lab.assert_nothing(m)


# -- 20. the download command --------------------------------------------------------------------------------
DOWNLOAD_KEYS = {"name", "path", "sha256", "size_bytes", "status", "seconds", "source", "error"}


def test_cli_download_json(lab: Lab) -> None:
    m = lab.model(size=256 * KiB)
    result = lab.cli("download", "--json", m.name)
    assert result.exit_code == 0, result.stderr
    (rec,) = json.loads(result.stdout)
    assert set(rec) >= DOWNLOAD_KEYS
    assert rec["name"] == m.name and rec["path"] == str(lab.final(m))
    assert (rec["sha256"], rec["size_bytes"], rec["status"]) == (m.sha256, m.size, "downloaded")
    assert rec["source"] == lab.server.url(m.route) and rec["error"] is None
    assert isinstance(rec["seconds"], float | int) and rec["seconds"] >= 0
    result = lab.cli("download", "--json", m.name)
    assert json.loads(result.stdout)[0]["status"] == "cached"
    lab.assert_verified(m)


def test_cli_download_json_reports_failures(lab: Lab) -> None:
    good, bad = lab.model("good", size=64 * KiB), lab.model("bad", status=404)
    result = lab.cli("download", "--json", good.name, bad.name)
    assert result.exit_code == 3
    records = {r["name"]: r for r in json.loads(result.stdout)}
    assert records["good"]["status"] == "downloaded"
    assert records["bad"]["status"] == "failed" and lab.server.url(bad.route) in records["bad"]["error"]
    assert records["bad"]["sha256"] is None
    lab.assert_verified(good)
    lab.assert_nothing(bad)


def test_cli_download_unknown_name_exits_2(lab: Lab) -> None:
    lab.model()
    result = lab.cli("download", "nope")
    assert result.exit_code == 2
    assert "unknown model 'nope'" in result.stderr
    assert lab.server.requests == []


def test_cli_download_without_names_exits_2(lab: Lab) -> None:
    result = lab.cli("download")
    assert result.exit_code == 2
    assert lab.server.requests == []
