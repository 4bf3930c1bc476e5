"""Running one case: its servers, a fresh cache and registry, the real CLI in a child process, and the checks
that every case must pass whatever its server did.

The child is ``python -m whisperctl --cache-dir D --registry R download m --json ...``; its peak RSS comes
from ``os.wait4``'s rusage, and a child still running at the case's timeout is killed (its process group,
which this runner made), which fails the case: every run must end by itself.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cases import INJECTED, Case
from .scripts import World
from .server import ScriptedServer

NAME = "m"
FILENAME = f"{NAME}.pt"
MAX_LINE = 300  # characters of one source's failure in the error line
MAX_RSS = 100 * 1024 * 1024
DOCUMENTED = {0, 2, 3, 4, 5, 6, 7, 130}
_PROXY_VARS = re.compile(r"(?i)(https?|all|no)_proxy$")


@dataclass
class Outcome:
    """How one case's run ended, and what its servers saw."""

    name: str
    klass: str
    code: int | None  # None: killed at the timeout
    seconds: float
    rss_bytes: int
    stdout: str
    stderr: str
    final_digest: str | None  # SHA-256 of m.pt, if the run left one
    expected_digest: str
    finals: list[str]  # every *.pt in the cache
    requests: list[bytes] = field(default_factory=list)  # raw request heads, all servers
    server_errors: list[str] = field(default_factory=list)

    @property
    def timed_out(self) -> bool:
        return self.code is None


def payload(case: Case) -> bytes:
    return random.Random(case.name).randbytes(case.size)


def run_case(case: Case, cert: tuple[Path, Path] | None, environ: dict[str, str]) -> Outcome:
    """Run ``case`` against its servers; ``environ`` is the environment the child starts from."""
    data = payload(case)
    root = Path(tempfile.mkdtemp(prefix=f"hostile-{case.name[:40]}-"))
    world = World(data)
    tls = cert if case.tls else None
    servers = [ScriptedServer(case.script(world), tls=tls, handshake=case.handshake)]
    if case.second is not None:
        servers.append(ScriptedServer(case.second(world), tls=tls))
    world.urls = [s.base_url for s in servers]
    try:
        return _run(case, root, servers, data, cert, environ)
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(root, ignore_errors=True)


def _run(
    case: Case,
    root: Path,
    servers: list[ScriptedServer],
    data: bytes,
    cert: tuple[Path, Path] | None,
    environ: dict[str, str],
) -> Outcome:
    cache, home = root / "cache", root / "home"
    cache.mkdir()
    home.mkdir()
    registry = root / "models.toml"
    digest = hashlib.sha256(data).hexdigest()
    entry = [f"[models.{NAME}]", f'url = "{servers[0].url("/" + FILENAME)}"', f'sha256 = "{digest}"']
    if case.sized:
        entry.append(f"size = {len(data)}")
    registry.write_text("\n".join(entry) + "\n", "utf-8")
    argv = [sys.executable, "-m", "whisperctl", "--cache-dir", str(cache), "--registry", str(registry)]
    argv += ["download", NAME, "--json", *case.args]
    if case.mirror:
        argv += ["--mirror", servers[0].url("/mirror")]
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("WHISPERCTL_") and not _PROXY_VARS.match(k)
    }
    env.update(HOME=str(home), NO_COLOR="1", COLUMNS="200", PYTHONUNBUFFERED="1")
    if cert is not None:
        env["SSL_CERT_FILE"] = str(cert[0])
    code, seconds, rss, out, err = _spawn(argv, env, root, case.timeout)
    finals = sorted(p.name for p in cache.glob("*.pt"))
    final = cache / FILENAME
    final_digest = hashlib.sha256(final.read_bytes()).hexdigest() if final.is_file() else None
    return Outcome(
        case.name,
        case.klass,
        code,
        seconds,
        rss,
        out,
        err,
        final_digest,
        digest,
        finals,
        [r.raw for s in servers for r in s.requests],
        [e for s in servers for e in s.errors],
    )


# The child is started by a small launcher that forks it and reports its rusage: a child forked from this
# (large) pytest process would count the parent's pages in its peak RSS until it execs.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss * 1024}")
"""


def _spawn(
    argv: list[str], env: dict[str, str], root: Path, timeout: float
) -> tuple[int | None, float, int, str, str]:
    """Run the child to its end (or kill it at ``timeout``): exit code, seconds, peak RSS, stdout, stderr."""
    out_path, err_path, report = root / "stdout", root / "stderr", root / "rusage"
    killed = threading.Event()
    launcher = [sys.executable, "-c", _LAUNCHER, str(report), *argv[1:]]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            launcher, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )

        def kill() -> None:  # the launcher and the child: the process group this runner made
            killed.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
        seconds = time.monotonic() - t0
    stdout = out_path.read_bytes().decode("utf-8", "replace")
    stderr = err_path.read_bytes().decode("utf-8", "replace")
    if killed.is_set():
        return None, seconds, 0, stdout, stderr
    if not report.exists():  # the launcher itself failed: its own exit code, which no case expects
        return proc.returncode, seconds, 0, stdout, stderr
    code, rss = (int(x) for x in report.read_text().split())
    return code, seconds, rss, stdout, stderr


# -- the checks every case must pass ----------------------------------------------------------------------
def _controls(text: str) -> list[str]:
    """Control and format characters (C0, DEL, C1, bidi overrides, zero-width marks) in ``text``."""
    return sorted({f"U+{ord(ch):04X}" for ch in text if unicodedata.category(ch) in ("Cc", "Cf")})


def problems(case: Case, o: Outcome) -> list[str]:
    """Everything that is wrong with how the case ended; empty when it ended as it must."""
    found: list[str] = []
    if o.timed_out:
        return [f"still running after {case.timeout:.0f} s: killed; stderr {o.stderr[-400:]!r}"]
    limit = MAX_LINE * (2 if case.mirror else 1)
    if o.code not in case.expect:
        found.append(f"exit {o.code}, expected {sorted(case.expect)}")
    if o.code not in DOCUMENTED:
        found.append(f"exit {o.code} is not a documented exit code")
    if "Traceback" in o.stderr:
        found.append("a traceback on stderr")
    lines = o.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    if o.code == 0 and errors:
        found.append(f"exit 0 with an error line: {errors[0][:200]!r}")
    if o.code != 0 and len(errors) != 1:
        found.append(f"{len(errors)} error lines, not one: {o.stderr[-600:]!r}")
    for line in lines:
        if len(line) > limit:
            found.append(f"a stderr line of {len(line)} characters (at most {limit}): {line[:160]!r}...")
        if bad := _controls(line):
            found.append(f"control characters {bad} on stderr: {line[:200]!r}")
    found += _json_problems(o, limit)
    if o.rss_bytes >= MAX_RSS:
        found.append(f"peak RSS {o.rss_bytes / 2**20:.0f} MiB")
    if o.code == 0:
        if o.final_digest != o.expected_digest:
            found.append(f"exit 0 but {FILENAME} has SHA-256 {o.final_digest}")
    elif o.finals:
        found.append(f"a file under a final name after a failure: {o.finals}")
    if o.final_digest is not None and o.final_digest != o.expected_digest:
        found.append(f"{FILENAME} in the cache with a wrong SHA-256 {o.final_digest}")
    if case.echo_check:
        found += _echo_problems(o)
    found += [f"the case's own server failed: {e}" for e in o.server_errors]
    return found


def _json_problems(o: Outcome, limit: int) -> list[str]:
    try:
        records: Any = json.loads(o.stdout)
    except ValueError:
        return [f"stdout is not the --json array: {o.stdout[:200]!r}"]
    if not isinstance(records, list) or len(records) != 1 or not isinstance(records[0], dict):
        return [f"--json printed {str(records)[:200]!r}, not one record"]
    record = records[0]
    found = []
    status = "downloaded" if o.code == 0 else "failed"
    if record.get("status") != status:
        found.append(f"--json status {record.get('status')!r} after exit {o.code}")
    texts = [record.get("error") or "", *(record.get("warnings") or [])]
    for text in texts:
        if not isinstance(text, str):
            found.append(f"--json holds a non-string message {text!r}")
            continue
        if len(text) > limit:
            found.append(f"a --json message of {len(text)} characters (at most {limit})")
        if bad := _controls(text):
            found.append(f"control characters {bad} in a --json message: {text[:200]!r}")
    return found


_CONDITIONS = ("if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
_STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e]*"')


def _valid_validator(value: str) -> bool:
    """A strong entity-tag or an HTTP date (RFC 9110, 13.1.5), in printable ASCII and nothing more."""
    if _STRONG_ETAG.fullmatch(value):
        return True
    if not value.isascii() or not value.isprintable() or INJECTED in value.lower():
        return False
    try:
        return email.utils.parsedate_to_datetime(value) is not None
    except (TypeError, ValueError):
        return False


def _echo_problems(o: Outcome) -> list[str]:
    """A request must be well formed and carry nothing the server smuggled into a validator; a validator
    sent back must be a valid one."""
    found = []
    for raw in o.requests:
        head = raw[:-4]  # the final CRLF CRLF
        for line in re.split(rb"\r\n|\r|\n", head):
            if line.strip().lower().startswith(INJECTED.encode()):
                found.append(f"a field the server chose was sent back as a header: {line[:120]!r}")
        for name, sep, value in (line.partition(":") for line in head.decode("latin-1").split("\r\n")[1:]):
            if sep and name.strip().lower() in _CONDITIONS and not _valid_validator(value.strip()):
                found.append(f"a validator sent back that is not a valid one: {name}:{value[:120]!r}")
        stray = head.replace(b"\r\n", b"")
        if any(c in stray for c in (b"\r", b"\n", b"\0")):
            found.append(f"a request head with a bare CR, LF or NUL: {raw[:300]!r}")
    if o.code == 0 and len(o.requests) < 2:
        found.append(f"exit 0 after {len(o.requests)} request(s): the broken first answer was not resumed")
    return found
