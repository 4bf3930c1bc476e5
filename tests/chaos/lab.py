"""One chaos trial's world: a fault-injecting server, a fresh cache, a registry, and the promise's checks.

The promise checked after every run, whatever the fault:

- *no wrong file under a final name*: a guard thread hashes every new ``*.pt`` in the cache while the trial
  runs, and the cache is checked again after each run;
- *no verified file damaged or lost*: a file verified before a run is still there, byte for byte, after it
  (or replaced by a verified copy);
- *a clear ending*: an exit code from the documented set, and on failure one ``error:`` line naming the
  model, its file, URL or cache, never a traceback;
- *nothing written outside the cache*: the trial's own directory (registry, markers) and HOME are unchanged,
  and the cache holds nothing but the model's files and whisperctl's state folder.

Then a plain re-run (``whisperctl download`` on a healed server) must give a verified file, which ``whisperctl
verify`` confirms, with no partial file or sidecar left behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import Cli, FinalGuard, Sleeps, file_sha256, sha256_hex
from tests.httpserver import HTTPServer
from whisperctl import api
from whisperctl.fetch.transfer import TransferOptions

KiB = 1024
MiB = 1024 * KiB
DOCUMENTED_EXIT_CODES = {0, 2, 3, 4, 5, 6, 7, 130}
HOOKS = Path(__file__).parent / "hooks"
NAME = "m"
FILENAME = f"{NAME}.pt"
ROUTE = f"/files/{FILENAME}"


class TrialFailure(AssertionError):
    """The promise was broken (or a run ended unclearly); the message says how."""


@dataclass
class Ending:
    """How one run of whisperctl ended."""

    how: str  # "api" (library call), "cli" (in-process CLI), "process" (a real child process)
    code: int | None  # exit code; None when the trial killed it
    message: str  # the record's error, or stderr
    stdout: str = ""

    @property
    def killed(self) -> bool:
        return self.code is None


def _snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in filenames:
            path = here / name
            if path in skip:
                continue
            with contextlib.suppress(FileNotFoundError):
                st = path.lstat()
                found[str(path)] = (st.st_size, st.st_mtime_ns)
        found[str(here) + os.sep] = (0, 0)
    return found


# A run killed inside its final rename (or a sidecar write) leaves one of these; the next run must remove it.
_TOP_TEMPORARY = re.compile(r"\.m\.pt(\.part\.json)?\.[0-9a-f]{12}\.tmp")
_STATE_FILES = (
    re.compile(r"stamps/m\.pt\.json"),
    re.compile(r"stamps/\.m\.pt\.json\.[0-9a-f]+\.tmp"),  # a stamp write cut short by SIGKILL
    re.compile(r"locks/m\.pt\.(lock|owner)"),
)


@dataclass
class Trial:
    """A fresh world for one trial; ``close()`` checks what must hold at its end."""

    def problems(self) -> list[str]:
        return [*self.lost_or_corrupt, *self.outside, *self.unclear, *self.left_behind]

    index: int
    kind: str
    rng: random.Random
    root: Path
    home: Path
    server: HTTPServer = field(init=False)
    faults: int = 0  # fault events actually injected
    details: Counter[str] = field(default_factory=Counter)  # what happened, for the figures
    lost_or_corrupt: list[str] = field(
        default_factory=list
    )  # a wrong digest under the final name, a lost file
    outside: list[str] = field(default_factory=list)  # written outside the cache
    unclear: list[str] = field(default_factory=list)  # an ending without a documented code and one clear line
    left_behind: list[str] = field(default_factory=list)  # stray files, or leftovers after a clean re-run
    endings: list[Ending] = field(default_factory=list)
    cleanups: list[Callable[[], object]] = field(default_factory=list)  # run by close(), e.g. unmount
    cleanups: list[Callable[[], object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = HTTPServer()
        self.cache_dir = self.root / "cache"
        self.cache_dir.mkdir(exist_ok=True)
        self.registry = self.root / "models.toml"
        self.marker = self.root / "marker"
        self.scratch = self.root / "scratch"  # the trial's own work space (mount probes)
        self.scratch.mkdir()
        self.guard = FinalGuard(self.cache_dir)
        self.sleeps = Sleeps(cap=0.02)  # real back-offs, shortened
        self.data = b""
        self.sized = True
        self.verified_before: str | None = None  # digest of a verified file that must survive a run
        self._outside = self._outside_snapshot()

    # -- setting up ----------------------------------------------------------------------------------------
    def draw_size(self, low: int = 256 * KiB, high: int = 2 * MiB) -> int:
        """A log-uniform size, not a multiple of anything in particular."""
        return int(math.exp(self.rng.uniform(math.log(low), math.log(high))))

    def model(self, data: bytes, *, sized: bool = True, **faults: Any) -> None:
        self.data, self.sized = data, sized
        self.server.add(ROUTE, data, **faults)
        self.register(data, sized=sized)

    def register(self, data: bytes, *, sized: bool = True) -> None:
        lines = [f"[models.{NAME}]", f'url = "{self.server.url(ROUTE)}"', f'sha256 = "{sha256_hex(data)}"']
        if sized:
            lines.append(f"size = {len(data)}")
        self.registry.write_text("\n".join(lines) + "\n", "utf-8")
        self.guard.allow(FILENAME, sha256_hex(data))
        self._outside = self._outside_snapshot()  # the trial's own writes are not the product's

    @property
    def expected(self) -> str:
        return sha256_hex(self.data)

    def options(self, **changes: Any) -> TransferOptions:
        """Engine knobs drawn for this trial: one stream or segments, short timeouts, quick back-off."""
        knobs: dict[str, Any] = {
            "connections": self.rng.choice([1, 2, 4]),
            "split_threshold": self.rng.choice([256 * KiB, 1 * MiB, 64 * MiB]),
            "min_segment": 128 * KiB,
            "stall_timeout": 0.3,
            "backoff": 0.01,
            "max_backoff": 0.05,
            "checkpoint_interval": self.rng.choice([0.02, 0.1, 2.0]),
            "sleep": self.sleeps,
            "rng": random.Random(self.rng.random()),
        }
        knobs.update(changes)
        return TransferOptions(**knobs)

    # -- running whisperctl --------------------------------------------------------------------------------
    def api_download(self, *, force: bool = False, options: TransferOptions | None = None) -> Ending:
        """The library's download, as the CLI calls it; an exception escaping it is an unclear ending."""
        before = self._verified_snapshot()
        try:
            (record,) = api.download(
                [NAME],
                cache_dir=self.cache_dir,
                registry=self.registry,
                mirrors=[],
                offline=False,
                force=force,
                options=options or self.options(),
                check=False,
            )
        except Exception:
            ending = Ending("api", 1, "Traceback (most recent call last):\n" + traceback.format_exc())
        else:
            ending = Ending("api", record.exit_code, record.error or "")
        self._after_run(ending, before)
        return ending

    def cli(self, *args: str) -> Ending:
        """The CLI in this process (typer's CliRunner)."""
        before = self._verified_snapshot()
        try:
            result = Cli()("--cache-dir", str(self.cache_dir), "--registry", str(self.registry), *args)
            ending = Ending("cli", result.exit_code, result.stderr, result.stdout)
        except Exception:
            ending = Ending("cli", 1, "Traceback (most recent call last):\n" + traceback.format_exc())
        self._after_run(ending, before)
        return ending

    def spawn(
        self,
        *args: str,
        hook: dict[str, Any] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> subprocess.Popen[str]:
        """``python -m whisperctl ARGS`` in a real child process (optionally with test hooks)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HOOKS), env.get("PYTHONPATH", "")) if p)
        env["CHAOS_HOOK"] = json.dumps({"marker": str(self.marker), **(hook or {})})
        argv = [sys.executable, "-m", "whisperctl", "--cache-dir", str(self.cache_dir)]
        return subprocess.Popen(
            [*argv, "--registry", str(self.registry), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=preexec,
        )

    def reap(self, proc: subprocess.Popen[str], *, killed_by_us: bool, before: str | None = None) -> Ending:
        """Wait for a child; record its ending (``code`` None when our SIGKILL ended it)."""
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            self.unclear.append(f"a child ran for over 60 s and was killed: {err[-500:]}")
        code: int | None = proc.returncode
        if killed_by_us and code == -signal.SIGKILL:
            code = None
        ending = Ending("process", code, err, out)
        self._after_run(ending, before)
        return ending

    def kill(self, proc: subprocess.Popen[str]) -> bool:
        """SIGKILL a child; True if it was still running (a fault was injected)."""
        if proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        return True

    def marked(self, what: str) -> bool:
        try:
            return what in self.marker.read_text().split()
        except FileNotFoundError:
            return False

    # -- the promise ---------------------------------------------------------------------------------------
    def _verified_snapshot(self) -> str | None:
        final = self.cache_dir / FILENAME
        try:
            digest = file_sha256(final)
        except OSError:
            return None
        return digest if digest in self.guard.allowed[FILENAME] else None

    def _after_run(self, ending: Ending, verified_before: str | None) -> None:
        self.endings.append(ending)
        self.check_ending(ending)
        self.check_cache(verified_before)

    def check_ending(self, ending: Ending) -> None:
        if ending.killed:
            return
        where = f"run {len(self.endings)} ({ending.how})"
        if "Traceback" in ending.message:
            self.unclear.append(f"{where}: a traceback: {ending.message[-2000:]}")
            return
        if ending.code not in DOCUMENTED_EXIT_CODES:
            self.unclear.append(f"{where}: undocumented exit code {ending.code}: {ending.message[-500:]}")
            return
        if ending.code == 0:
            return
        if ending.how == "api":
            lines = [ending.message] if ending.message and "\n" not in ending.message else []
        else:
            lines = [
                line[len("error: ") :] for line in ending.message.splitlines() if line.startswith("error: ")
            ]
        if len(lines) != 1:
            self.unclear.append(
                f"{where}: exit {ending.code} without exactly one error line: {ending.message!r}"
            )
            return
        names = (NAME, FILENAME, self.server.url(ROUTE), str(self.cache_dir))
        if not any(n in lines[0] for n in names):
            self.unclear.append(
                f"{where}: the error names neither the model, its file, URL nor cache: {lines[0]}"
            )

    def check_cache(self, verified_before: str | None = None) -> None:
        final = self.cache_dir / FILENAME
        try:
            digest: str | None = file_sha256(final)
        except FileNotFoundError:
            digest = None
        if digest is not None and digest not in self.guard.allowed[FILENAME]:
            self.lost_or_corrupt.append(f"{FILENAME} is in the cache with SHA-256 {digest}")
        if verified_before is not None and digest is None:
            self.lost_or_corrupt.append(f"the verified {FILENAME} was lost")
        for path in self._stray_files():
            if f"a stray file in the cache: {path}" not in self.left_behind:
                self.left_behind.append(f"a stray file in the cache: {path}")

    def _stray_files(self) -> list[str]:
        stray = []
        for dirpath, _, filenames in os.walk(self.cache_dir):
            for name in filenames:
                rel = (Path(dirpath) / name).relative_to(self.cache_dir).as_posix()
                if rel in (FILENAME, f"{FILENAME}.part", f"{FILENAME}.part.json") or _TOP_TEMPORARY.fullmatch(
                    rel
                ):
                    continue
                state = rel.partition("/")
                if state[0] == ".whisperctl" and any(p.fullmatch(state[2]) for p in _STATE_FILES):
                    continue
                stray.append(rel)
        return stray

    def _outside_snapshot(self) -> dict[str, tuple[int, int]]:
        skip = {self.cache_dir, self.marker, self.scratch}
        return {**_snapshot(self.root, skip), **_snapshot(self.home, set())}

    def check_outside(self) -> None:
        now = self._outside_snapshot()
        changed = sorted(set(now.items()) ^ set(self._outside.items()))
        if changed:
            self.outside.append(f"written outside the cache: {[p for p, _ in changed][:5]}")

    # -- the end of a trial --------------------------------------------------------------------------------
    def heal_and_rerun(self) -> None:
        """The server heals; a plain re-run must give a verified file, with nothing left half-done."""
        self.server.set_faults(ROUTE)
        ending = self.cli("download", NAME)
        if ending.code != 0:
            raise TrialFailure(f"the clean re-run failed (exit {ending.code}): {ending.message[-1000:]}")
        ending = self.cli("verify", NAME)
        if ending.code != 0:
            raise TrialFailure(f"verify after the re-run failed (exit {ending.code}): {ending.message}")
        if file_sha256(self.cache_dir / FILENAME) != self.expected:
            raise TrialFailure("the re-run left a file with the wrong digest")
        left = [p for p in (f"{FILENAME}.part", f"{FILENAME}.part.json") if (self.cache_dir / p).exists()]
        left += [p.name for p in self.cache_dir.iterdir() if _TOP_TEMPORARY.fullmatch(p.name)]
        stamps = self.cache_dir / ".whisperctl" / "stamps"
        # A stamp write cut short leaves a small temporary that `whisperctl prune` removes (an hour later):
        # counted, not failed, since stamps are also written by processes that hold no lock.
        self.details["stamp temporary left for prune"] += sum(1 for p in stamps.glob(".*.tmp"))
        if left:
            self.left_behind.append(f"left behind after a clean re-run: {left}")

    def close(self) -> None:
        for action in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                action()
        self.server.close()
        self.lost_or_corrupt.extend(self.guard.stop())
        self.check_outside()

    def expect(self, ending: Ending, codes: set[int], why: str) -> None:
        """A run whose outcome the fault decides: anything else is a failure of the trial."""
        if not ending.killed and ending.code not in codes:
            raise TrialFailure(
                f"{why}: expected exit {sorted(codes)}, got {ending.code}: {ending.message[-800:]}"
            )


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True
