"""The chaos suite's fault kinds. Each draws its parameters from the trial's seeded RNG, injects its fault
into one or more runs of whisperctl, and counts the fault events that actually happened.

The runs that only need the network faulted call the library in-process (as the CLI does, with an injected
``sleep`` so that back-off and Retry-After cost milliseconds); the runs that must be killed or must hit a
full disk are real ``python -m whisperctl`` processes.
"""

from __future__ import annotations

import errno
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from email.utils import formatdate

from .lab import FILENAME, NAME, ROUTE, KiB, MiB, Trial, TrialFailure, wait_until

# -- the network -------------------------------------------------------------------------------------------


def _body_faults(t: Trial) -> dict[str, bool]:
    """Sometimes a server without ranges, or a body without a length."""
    faults: dict[str, bool] = {}
    if t.rng.random() < 0.2:
        faults["no_range"] = True
    if t.rng.random() < 0.15:
        faults[t.rng.choice(["chunked", "no_content_length"])] = True
    return faults


def reset_once(t: Trial) -> None:
    _reset(t, times=1)


def reset_repeated(t: Trial) -> None:
    _reset(t, times=t.rng.randint(2, 8))


def _reset(t: Trial, times: int) -> None:
    size = t.draw_size()
    t.model(t.rng.randbytes(size), reset_after=t.rng.randrange(size), reset_times=times, **_body_faults(t))
    ending = t.api_download()
    t.faults += t.server.fired(ROUTE)["reset"]
    # Giving up (3) is allowed when resets leave no progress; a digest error is not: no byte was wrong.
    t.expect(ending, {0, 3}, "connection resets")


def truncate(t: Trial) -> None:
    size = t.draw_size()
    sized = t.rng.random() < 0.8
    faults = _body_faults(t)
    t.model(
        t.rng.randbytes(size),
        sized=sized,
        truncate_after=t.rng.randrange(size),
        truncate_times=t.rng.randint(1, 3),
        **faults,
    )
    ending = t.api_download()
    t.faults += t.server.fired(ROUTE)["truncate"]
    # A body with neither a length nor a registry size ends where the server closed it: only its digest
    # can tell it was short (exit 4).
    unknowable = not sized and ("no_content_length" in faults or "chunked" in faults)
    t.expect(ending, {0, 3, 4} if unknowable else {0, 3}, "a truncated body")


def pad(t: Trial) -> None:
    size = t.draw_size()
    lie = t.rng.random() < 0.3  # Content-Length is true, the extra bytes follow it
    t.model(
        t.rng.randbytes(size),
        sized=t.rng.random() < 0.7,
        oversize_by=t.rng.randint(1, 64 * KiB),
        lie_length=lie,
        **_body_faults(t),
    )
    ending = t.api_download()
    t.faults += t.server.fired(ROUTE)["pad"]
    t.expect(ending, {0, 3, 4} if lie else {3, 4}, "a padded body")


def flip(t: Trial) -> None:
    size = t.draw_size()
    t.model(
        t.rng.randbytes(size),
        sized=t.rng.random() < 0.8,
        flip_byte_at=t.rng.randrange(size),
        **_body_faults(t),
    )
    ending = t.api_download()
    t.faults += t.server.fired(ROUTE)["flip"]
    t.expect(ending, {4}, "a flipped byte")
    if (t.cache_dir / f"{FILENAME}.part").exists():
        raise TrialFailure("a digest mismatch left its partial file")


def storm(t: Trial) -> None:
    """5xx/429 answers in a row, with or without Retry-After, at the start or after some bytes."""
    size = t.draw_size()
    statuses = [t.rng.choice([500, 502, 503, 504, 429]) for _ in range(t.rng.randint(1, 8))]
    retry_after = t.rng.choice([None, None, "0", "1", "date"])
    header = formatdate(time.time() + 1, usegmt=True) if retry_after == "date" else retry_after
    storm_faults = {"status_sequence": statuses, "retry_after": header}
    mid_body = t.rng.random() < 0.4
    t.model(t.rng.randbytes(size))
    if mid_body:  # a reset after some bytes, then the storm for the retries
        t.server.set_faults(ROUTE, reset_after=t.rng.randrange(1, size), reset_times=1)
        t.sleeps.then.append(lambda: t.server.set_faults(ROUTE, **storm_faults))
    else:
        t.server.set_faults(ROUTE, **storm_faults)
    ending = t.api_download()
    fired = t.server.fired(ROUTE)
    t.faults += fired["status"] + fired["reset"]
    t.details["retry-after"] += retry_after is not None
    t.expect(ending, {0, 3}, "a 5xx/429 storm")
    delays = t.sleeps.delays[1:] if mid_body else t.sleeps.delays
    if retry_after in ("0", "1") and any(d != float(retry_after) for d in delays):
        raise TrialFailure(f"Retry-After: {retry_after} was not honoured: slept {delays}")
    if retry_after == "date" and any(d > 1.5 for d in delays):
        raise TrialFailure(f"Retry-After (a date 1 s ahead) was not honoured: slept {delays}")


def stall(t: Trial) -> None:
    size = t.draw_size()
    t.model(
        t.rng.randbytes(size),
        stall_after=t.rng.randrange(size),
        stall_seconds=t.rng.uniform(0.6, 1.2),
        stall_times=t.rng.randint(1, 2),
        **_body_faults(t),
    )
    ending = t.api_download()  # stall_timeout is 0.3 s
    t.faults += t.server.fired(ROUTE)["stall"]
    t.expect(ending, {0, 3}, "a stalled body")


def _leave_partial(t: Trial) -> None:
    """A first run that got some bytes, then only 503s: it fails (3) and keeps its partial file."""
    size = t.draw_size(512 * KiB)
    t.model(t.rng.randbytes(size), reset_after=t.rng.randrange(64 * KiB, size), reset_times=1)
    t.sleeps.then.append(lambda: t.server.set_faults(ROUTE, status=503))
    ending = t.api_download(options=t.options(retries=1, connections=1, checkpoint_interval=2.0))
    t.faults += t.server.fired(ROUTE)["reset"]
    t.expect(ending, {3}, "the first run, cut off")
    if not (t.cache_dir / f"{FILENAME}.part.json").exists():
        raise TrialFailure("the first run kept no resumable partial file")


def range_dropped(t: Trial) -> None:
    """The server stops honouring Range between two runs: the second starts over and succeeds."""
    _leave_partial(t)
    t.server.set_faults(ROUTE, no_range=True)
    t.faults += 1
    t.expect(t.api_download(), {0}, "the run after Range support was dropped")


def file_changed(t: Trial) -> None:
    """The file changes on the server (new ETag, usually a new size) between two runs."""
    _leave_partial(t)
    old = t.data
    size = (
        len(old)
        if t.rng.random() < 0.3
        else max(1, len(old) + t.rng.choice([-1, 1]) * t.rng.randint(1, len(old) // 2))
    )
    new = t.rng.randbytes(size)
    t.server.set_faults(ROUTE)
    t.server.replace(ROUTE, new)
    t.faults += 1
    t.expect(t.api_download(), {4}, "the run after the file changed (the registry names the old one)")
    left = [p.name for p in t.cache_dir.iterdir() if p.name.startswith(FILENAME)]
    if left:
        raise TrialFailure(f"a changed file left {left} in the cache")
    if t.rng.random() < 0.5:  # the registry is updated to the new file...
        t.register(new)
        t.data = new
        t.details["registry updated"] += 1
    else:  # ...or the server is put back
        t.server.replace(ROUTE, old)
        t.details["server restored"] += 1


# -- the process -------------------------------------------------------------------------------------------


def kill(t: Trial) -> None:
    """SIGKILL during the download, during the final rename, or during the stamp write; then restart."""
    phase = t.rng.choice(["download", "rename", "stamp"])
    force = t.rng.random() < 0.3  # over a verified file, which must survive whatever happens
    size = t.draw_size()
    t.model(t.rng.randbytes(size))
    before = None
    if force:
        t.expect(t.cli("download", NAME), {0}, "the first, clean download")
        before = t.expected
    slow = 0.1
    if phase == "download":
        duration = t.rng.uniform(0.3, 3.0)
        t.server.set_faults(ROUTE, rate_limit=max(64 * KiB, int(size / duration)))
        proc = t.spawn("download", *(["--force"] if force else []), NAME)
        wait_until(lambda: (t.cache_dir / f"{FILENAME}.part").exists() or proc.poll() is not None, 30)
        time.sleep(t.rng.uniform(0, duration))
    else:
        proc = t.spawn("download", *(["--force"] if force else []), NAME, hook={"slow": slow})
        if not wait_until(lambda: t.marked(f"{phase}-before") or proc.poll() is not None, 30):
            proc.kill()
            raise TrialFailure(f"the child never reached the {phase}")
        time.sleep(t.rng.uniform(0, (3 if phase == "rename" else 2) * slow + 0.02))
    killed = t.kill(proc)
    t.faults += killed
    ending = t.reap(proc, killed_by_us=killed, before=before)
    t.expect(ending, {0}, "a download that was not killed after all")
    steps = ["before", "between", "after"] if phase == "rename" else ["before", "after"]
    reached = [s for s in steps if t.marked(f"{phase}-{s}")]
    where = phase if phase == "download" else f"{phase} ({reached[-1] if reached else 'not reached'})"
    t.details[f"killed {where}" if killed else f"finished before the kill ({phase})"] += 1
    if killed and (t.cache_dir / f"{FILENAME}.part.json").exists():
        t.details["sidecar left by the kill"] += 1


def concurrent(t: Trial) -> None:
    """2 to 8 processes download the same model into the same cache; some are killed."""
    n = t.rng.randint(2, 8)
    victims = t.rng.sample(range(n), t.rng.randint(0, n - 1))
    size = t.draw_size(512 * KiB)
    duration = t.rng.uniform(0.5, 2.0)
    t.model(t.rng.randbytes(size), rate_limit=max(64 * KiB, int(size / duration)))
    t0 = time.monotonic()
    procs = [t.spawn("download", "--stall-timeout", "5", NAME) for _ in range(n)]
    schedule = sorted((t.rng.uniform(0, duration + 0.6), i) for i in victims)
    killed: set[int] = set()
    for at, i in schedule:
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        if t.kill(procs[i]):
            killed.add(i)
    t.faults += len(killed)
    t.details[f"{n} processes"] += 1
    for i, proc in enumerate(procs):
        ending = t.reap(proc, killed_by_us=i in killed)
        t.expect(ending, {0}, f"a surviving process ({i + 1} of {n})")


# -- the disk ----------------------------------------------------------------------------------------------

_TMPFS: dict[str, bool] = {}


def _tmpfs_available(probe_dir: str) -> bool:
    """Can this process mount a small tmpfs (root with CAP_SYS_ADMIN)? Checked once."""
    if "ok" not in _TMPFS:
        ok = shutil.which("mount") is not None
        if ok:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe_dir], capture_output=True
            )
            ok = done.returncode == 0
            if ok:
                subprocess.run(["umount", probe_dir], capture_output=True, check=False)
        _TMPFS["ok"] = ok
    return _TMPFS["ok"]


def disk_full(t: Trial) -> None:
    """The disk fills up at a random point: a small filesystem, RLIMIT_FSIZE, or an injected ENOSPC/EIO."""
    size = t.draw_size()
    streamed = t.rng.random() < 0.5  # no length: nothing to preallocate, the write fails mid-body
    body = {"no_range": True, t.rng.choice(["chunked", "no_content_length"]): True} if streamed else {}
    sized = not streamed or t.rng.random() < 0.5
    t.model(t.rng.randbytes(size), sized=sized, **body)
    mode = t.rng.choice(["small-fs", "rlimit", "injected"])
    probe = t.scratch / "probe"
    probe.mkdir()
    if mode == "small-fs" and not _tmpfs_available(str(probe)):
        mode = "rlimit"
        t.details["no tmpfs here: rlimit instead"] += 1
    t.details[mode] += 1
    if mode == "rlimit":
        limit = t.rng.randrange(size)

        def limit_file_size() -> None:
            # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as on a full disk.
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        ending = t.reap(t.spawn("download", NAME, preexec=limit_file_size), killed_by_us=False)
        t.faults += 1
        t.expect(ending, {6}, f"a file size limit of {limit:,} bytes")
    elif mode == "small-fs":
        capacity = t.rng.randint(size // 2, size + 64 * KiB)
        _mount(t, capacity)
        try:
            ending = t.reap(t.spawn("download", NAME), killed_by_us=False)
            t.faults += ending.code == 6
            t.expect(ending, {0, 6}, f"a {capacity:,}-byte filesystem")
            _mount(t, 4 * size + MiB, remount=True)  # the user frees some space
            t.cleanups.append(lambda: subprocess.run(["umount", "-l", str(t.cache_dir)], check=False))
        except BaseException:
            subprocess.run(["umount", "-l", str(t.cache_dir)], check=False)
            raise
    else:
        op = t.rng.choice(["pwrite", "fallocate", "fsync", "fdatasync"])
        after = t.rng.randrange(size) if op in ("pwrite", "fallocate") else t.rng.randint(1, 3)
        code = t.rng.choice([errno.ENOSPC, errno.ENOSPC, errno.EDQUOT, errno.EIO])
        if op == "fdatasync":  # only checkpoints call it: give the download time for one or two
            t.server.set_faults(ROUTE, rate_limit=max(64 * KiB, int(size / t.rng.uniform(1.0, 3.0))))
        hook = {"fail_op": op, "fail_after": after, "fail_errno": code}
        ending = t.reap(t.spawn("download", NAME, hook=hook), killed_by_us=False)
        fired = t.marked("fired")
        t.faults += fired
        t.details[f"injected {op}{'' if fired else ' (not reached)'}"] += 1
        final = (t.cache_dir / FILENAME).exists()
        t.expect(
            ending,
            {0, 6} if fired and final else {6} if fired else {0},
            f"{op} failing with {errno.errorcode[code]}",
        )
    if ending.code == 6 and (t.cache_dir / f"{FILENAME}.part").exists():
        raise TrialFailure(f"a full disk left the partial file ({mode}): {ending.message}")


def _mount(t: Trial, capacity: int, *, remount: bool = False) -> None:
    opts = f"{'remount,' if remount else ''}size={capacity}"
    args = (
        ["mount", "-o", opts, str(t.cache_dir)]
        if remount
        else ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(t.cache_dir)]
    )
    subprocess.run(args, check=True, capture_output=True)


KINDS: dict[str, Callable[[Trial], None]] = {
    "reset once": reset_once,
    "reset repeatedly": reset_repeated,
    "truncated body": truncate,
    "padded body": pad,
    "flipped byte": flip,
    "5xx/429 storm": storm,
    "stalled body": stall,
    "Range dropped between runs": range_dropped,
    "file changed between runs": file_changed,
    "SIGKILL and restart": kill,
    "concurrent processes": concurrent,
    "disk full": disk_full,
}
