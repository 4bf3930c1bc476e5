"""The run of one transfer: start or resume, the workers over the plan, retries, checkpoints, the digest.

State is passed explicitly: a :class:`Job` (what is asked, fixed), a :class:`~.request.Route` (where the
requests go), a :class:`Remote` (what the server said), and a :class:`~.body.Sink` (the open partial file with
its plan, hasher, pace and progress), which exists only once the file is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from whisperctl.errors import CacheError, IntegrityError, NetworkError
from whisperctl.fetch.transfer.answers import Untrusted, Validators, check_partial, probe_total, requested_end
from whisperctl.fetch.transfer.body import Sink, stream_body
from whisperctl.fetch.transfer.options import TransferOptions, TransferProgress, TransferResult
from whisperctl.fetch.transfer.pace import Pace
from whisperctl.fetch.transfer.plan import Plan, Segment
from whisperctl.fetch.transfer.request import Authorizer, Restart, Retry, Route, shown
from whisperctl.fetch.transfer.sidecar import load_sidecar, sidecar_text, write_checkpoint
from whisperctl.store.files import create_partial, open_nofollow
from whisperctl.store.hashing import FollowingHasher

__all__ = ["fetch_url"]


@dataclass(frozen=True)
class Job:
    """What one transfer is asked to do."""

    part: Path
    state_path: Path
    sha256: str
    size: int | None  # the registry's, when it has one
    options: TransferOptions
    progress: TransferProgress | None
    resume: bool  # continue the partial file an earlier run left, when its record allows


@dataclass
class Remote:
    """What the server said about its file: the size (if it said), whether ranges work, its validators."""

    total: int | None
    ranges: bool
    validators: Validators


@dataclass
class _Start:
    """An open partial file and the first answer to continue it with (None: nothing left to fetch)."""

    fd: int
    remote: Remote
    plan: Plan
    resumed_from: int
    first: httpx.Response | None
    first_segment: Segment | None


def _delay(opt: TransferOptions, failures: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(retry_after, opt.max_retry_after)
    cap = min(opt.max_backoff, opt.backoff * 2 ** (failures - 1))
    return opt.rng.uniform(0, cap)  # full jitter: many clients do not retry in lockstep


async def _with_retries(
    opt: TransferOptions, open_: Callable[[], Awaitable[httpx.Response]]
) -> httpx.Response:
    failures = 0
    while True:
        try:
            return await open_()
        except Retry as exc:
            failures += 1
            if failures > opt.retries:
                raise NetworkError(f"{exc}; gave up after {opt.retries} retries") from None
            await opt.sleep(_delay(opt, failures, exc.retry_after))


def _rejected(url: str, exc: Untrusted) -> Exception:
    message = f"{shown(url)}: {exc}; the answer was rejected (check the URL or the mirror)"
    return IntegrityError(message) if exc.integrity else NetworkError(message)


def _check_piece(response: httpx.Response, url: str, seg: Segment, remote: Remote) -> None:
    """A later answer must be the 206 for exactly the bytes asked, of a file of the same size."""
    if response.status_code != 206:
        raise Restart(f"{shown(url)}: the server stopped honouring byte ranges (or the file changed)")
    # The end asked for, not the segment's: another worker may have taken its tail meanwhile.
    end = requested_end(response.request.headers.get("range", ""))
    try:
        span = check_partial(response.headers, seg.pos, end, None)
    except Untrusted as exc:
        raise _rejected(url, exc) from None
    if span.total != remote.total:
        raise Restart(f"{shown(url)}: the server's file is now {span.total:,} bytes (the file changed)")


def _check_space(part: Path, needed: int) -> None:
    try:
        free = shutil.disk_usage(part.parent).free
    except OSError:
        return
    if needed > free:
        raise CacheError(
            f"{part.parent}: not enough free space ({free:,} bytes free, {needed:,} to download); "
            "free some space or use another --cache-dir"
        )


def _remove_files(job: Job) -> None:
    for path in (job.part, job.state_path):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


async def _resume(job: Job, route: Route) -> _Start | None:
    """Continue what an earlier run left, when its record describes this file and the server agrees."""
    opt = job.options
    found = load_sidecar(
        job.state_path,
        job.part,
        sha256=job.sha256,
        size=job.size,
        urls=(route.origin_url, route.url),
        min_segment=opt.min_segment,
    )
    if found is None:
        return None
    try:
        fd = open_nofollow(job.part, os.O_RDWR)
    except OSError:
        return None
    try:
        remote = Remote(found.total, True, found.validators)
        pending = found.plan.pending()
        first = None
        if pending is not None:
            first = await _with_retries(opt, lambda: route.open(pending.pos, pending.end, remote.validators))
            try:
                # A 200 to an If-Range request means the file changed (or ranges are gone): start over.
                _check_piece(first, route.url, pending, remote)
            except BaseException:
                await first.aclose()
                raise
            remote.validators = remote.validators.renewed(first.headers, route.url)
        return _Start(fd, remote, found.plan, found.plan.done, first, pending)
    except BaseException:
        _close(fd)
        raise


async def _begin(job: Job, route: Route) -> _Start:
    """A fresh partial file, sized from the first answer once that answer is believed."""
    opt = job.options
    _remove_files(job)
    first = await _with_retries(opt, lambda: route.open(0, None, Validators()))
    try:
        status = first.status_code
        try:
            total = probe_total(status, first.headers, job.size, opt.max_unknown_size)
        except Untrusted as exc:
            raise _rejected(route.url, exc) from None
        remote = Remote(total, status == 206, Validators.from_answer(first.headers, route.url))
        if (needed := total if total is not None else job.size) is not None:
            _check_space(job.part, needed)
        fd = create_partial(job.part, job.state_path, total)
    except BaseException:
        # Not enough space, or no partial file: close the probe, or its connection stays checked out of the
        # caller's client while the server keeps pushing the body into it.
        await first.aclose()
        raise
    plan = Plan.fresh(total, remote.ranges, opt)
    return _Start(fd, remote, plan, 0, first, plan.segments[0])


class _Checkpoints:
    """Flush the data, then record it: the sidecar never claims bytes that are not durable."""

    def __init__(self, job: Job, route: Route, sink: Sink, remote: Remote) -> None:
        self._job, self._route, self._sink, self._remote = job, route, sink, remote
        self._writing: asyncio.Future[None] | None = None  # the sidecar write in flight, if any

    async def save(self) -> None:
        remote = self._remote
        if not remote.ranges or remote.total is None:
            return
        text = sidecar_text(
            sha256=self._job.sha256,
            url=self._route.origin_url,
            total=remote.total,
            validators=remote.validators,
            plan=self._sink.plan,
        )
        # Shielded: cancelling the checkpointer cannot stop the thread, so the workers' end awaits it.
        self._writing = asyncio.ensure_future(
            asyncio.to_thread(write_checkpoint, self._sink.fd, self._job.state_path, text)
        )
        await asyncio.shield(self._writing)

    async def every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.save()

    async def settle(self) -> None:
        """A write that a cancelled checkpointer left running in its thread must land now, before the final
        record: later, it could recreate the sidecar after the rename or the discard."""
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)


async def _fetch_segment(
    job: Job, route: Route, sink: Sink, remote: Remote, seg: Segment, response: httpx.Response | None
) -> None:
    opt = job.options
    failures = 0
    while seg.remaining > 0:
        before = seg.done
        try:
            if response is None:
                response = await route.open(seg.pos, seg.end, remote.validators)
                if remote.ranges:
                    _check_piece(response, route.url, seg, remote)
            await stream_body(sink, response, seg, route.url)
            if seg.end is None:
                # A body of unknown length ends when the server closes it; short of the registry's size, that
                # close was a failure, not the end.
                if job.size is not None and seg.pos < job.size:
                    raise Retry(f"{shown(route.url)}: the body ended early at byte {seg.pos:,}")
                # Its size is now known: close the segment, or its infinite `remaining` would make the worker
                # take it again and ask for bytes past the end.
                seg.end = seg.pos
                return
            if seg.remaining > 0:
                raise Retry(f"{shown(route.url)}: the body ended early at byte {seg.pos:,}")
        except Retry as exc:
            if not remote.ranges:
                raise Restart(str(exc)) from exc  # nothing to resume from without ranges
            # Progress below the minimum does not count: a server that gives a few bytes per connection
            # and hangs up runs out of retries like one that gives none.
            failures = 0 if seg.done - before >= opt.least_progress else failures + 1
            if failures > opt.retries:
                raise NetworkError(
                    f"{exc}; gave up after {opt.retries} retries (the partial file is kept: "
                    "run the same command again to resume)"
                ) from None
            await opt.sleep(_delay(opt, failures, exc.retry_after))
        finally:
            if response is not None:
                await response.aclose()
            response = None


async def _worker(
    job: Job, route: Route, sink: Sink, remote: Remote, response: httpx.Response | None, seg: Segment | None
) -> None:
    while True:
        if seg is None:
            seg = sink.plan.take()
            if seg is None:
                return
        seg.busy = True
        try:
            await _fetch_segment(job, route, sink, remote, seg, response)
        finally:
            seg.busy = False
            response = None
        seg = None


async def _run_workers(job: Job, route: Route, sink: Sink, remote: Remote, start: _Start) -> None:
    opt = job.options
    n_workers = min(opt.connections, max(1, sink.plan.open_count())) if remote.ranges else 1
    checkpoints = _Checkpoints(job, route, sink, remote)
    checkpointer = asyncio.create_task(checkpoints.every(opt.checkpoint_interval))
    tasks: list[asyncio.Task[None]] = []
    finished = False
    try:
        tasks.append(asyncio.create_task(_worker(job, route, sink, remote, start.first, start.first_segment)))
        for _ in range(n_workers - 1):
            tasks.append(asyncio.create_task(_worker(job, route, sink, remote, None, None)))
        # The first fatal error cancels the other workers (asyncio.TaskGroup is 3.11+ only).
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if (exc := task.exception()) is not None:
                raise exc
        finished = True
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        checkpointer.cancel()
        await asyncio.gather(checkpointer, return_exceptions=True)
        await checkpoints.settle()
        if start.first is not None:
            await start.first.aclose()
        if not finished:
            # Whatever went wrong (error, Ctrl-C), leave an exact record of what is on disk. After a complete
            # transfer the record would be removed moments later: its flush is left to the final fsync,
            # which overlaps the hash's catching up.
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await asyncio.shield(checkpoints.save())


async def _digest(job: Job, fd: int, hasher: FollowingHasher, total: int) -> str:
    # The hasher's catching up and the flush to disk overlap: both wait on something other than the CPU that
    # the other does not need (the hasher reads from the page cache).
    digest, synced = await asyncio.gather(
        asyncio.to_thread(hasher.finish, total), asyncio.to_thread(os.fsync, fd), return_exceptions=True
    )
    for outcome in (digest, synced):
        if isinstance(outcome, OSError):
            # The bytes cannot be read back or made durable (a full disk at fsync, an I/O error): nothing here
            # can be trusted enough to rename, nor resumed from.
            raise CacheError(
                f"{job.part}: cannot read back or flush the downloaded data ({outcome.strerror or outcome}); "
                "the partial file was removed; free some space or check the disk, then download again"
            ) from outcome
        if isinstance(outcome, BaseException):
            raise outcome
    if not isinstance(digest, str):  # pragma: no cover - gather returned the hasher's result
        raise TypeError(digest)
    return digest


async def _attempt(job: Job, route: Route) -> TransferResult:
    start = await _resume(job, route) if job.resume else None
    if start is None:
        start = await _begin(job, route)
    opt, remote, fd = job.options, start.remote, start.fd
    hasher = FollowingHasher(fd)
    try:
        sink = Sink(
            fd=fd,
            part=job.part,
            plan=start.plan,
            total=remote.total,
            cap=job.size or opt.max_unknown_size,
            hasher=hasher,
            pace=Pace(opt.speed_limit, opt.speed_time),
            progress=job.progress,
        )
        if job.progress is not None:
            job.progress.start(remote.total if remote.total is not None else job.size, start.resumed_from)
        hasher.advance(sink.plan.frontier())
        await _run_workers(job, route, sink, remote, start)
        total = sink.plan.frontier()
        if remote.total is not None and total != remote.total:  # pragma: no cover - guarded by the workers
            raise NetworkError(f"{shown(route.url)}: transfer ended at byte {total:,} of {remote.total:,}")
        digest = await _digest(job, fd, hasher, total)
    except BaseException:
        hasher.abort()
        _close(fd)
        raise
    return TransferResult(sha256=digest, size=total, url=route.url, resumed_from=start.resumed_from, fd=fd)


async def fetch_url(
    client: httpx.AsyncClient,
    url: str,
    part: Path,
    state_path: Path,
    *,
    expected_sha256: str,
    expected_size: int | None,
    options: TransferOptions | None = None,
    progress: TransferProgress | None = None,
    resume: bool = True,
    authorizer: Authorizer | None = None,
) -> TransferResult:
    """Download ``url`` into ``part`` (resuming what an earlier run left) and return its digest.

    On success the file is complete and fsynced, and its descriptor is returned open in the result. On a
    transient failure the partial file and its sidecar are kept for a later resume; on a disk-full error,
    an oversized body or a size mismatch they are removed. ``resume=False`` starts afresh. ``authorizer``
    adds the headers a source needs (a registry's token) to requests to ``url``'s host, and answers its 401s.
    """
    opt = options or TransferOptions()
    job = Job(part, state_path, expected_sha256, expected_size, opt, progress, resume)
    route = Route(client, url, opt, authorizer)
    restarts = 0
    try:
        while True:
            try:
                return await _attempt(job, route)
            except Restart:
                restarts += 1
                _remove_files(job)
                if restarts > opt.retries:
                    raise NetworkError(
                        f"{shown(route.url)}: the transfer had to start over {restarts} times (the server "
                        "dropped the connection without range support, or kept changing the file); "
                        "try again later"
                    ) from None
                await opt.sleep(_delay(opt, restarts, None))
    except (IntegrityError, CacheError):
        _remove_files(job)
        raise
