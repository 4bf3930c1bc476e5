"""Download benchmark: whisperctl against openai-whisper, curl and aria2c, all from a local nginx.

    .venv/bin/python bench/download.py [--sizes small,medium,large-v3] [--quick] [--rate 20m]
    .venv/bin/python bench/download.py --smoke    # only the fast-path rows, on a 64 MiB file: a minute

Files with the official byte sizes of the Whisper checkpoints are generated once in the work dir
(``.bench/download/`` by default) in the mirror layout ``<root>/<sha256>/<name>.pt``, and served by nginx
(installed from the distribution's packages if missing) on two ports of 127.0.0.1: one at full speed and one
with ``limit_rate`` per connection, as a CDN that caps each connection would. Each tool fetches each file
into a fresh empty directory and the clock stops when a *verified* file is on disk:

- whisperctl (``whisperctl download``, 8 connections by default): verifies while streaming, fsyncs;
- openai-whisper's ``_download``: one connection, then reads the whole file into memory to hash it;
- ``curl`` alone (no verification), then ``curl`` + ``sha256sum``;
- ``aria2c -x8 -s8 -k1M`` + ``sha256sum``.

Each tool runs in its own process; its peak RSS comes from ``wait4``. The source file is read just before
every run, so that every tool is served from memory, and dirty data is flushed (``sync``) before every run;
outputs are deleted between runs. Uncapped cells are run 3 times (median); before each run the benchmark
waits a little for the two cores to be idle, and it reports the CPU that other processes used meanwhile,
and a fingerprint of whisperctl's source (others may edit the engine during a
run). Results go to bench/results/download.md (and .json; ``--output`` renames them).

Fast-path rows (``--no-fast-path`` leaves them out, ``--fast-path-only`` runs only them): the engine's own
HTTP path against plain httpx, on the same nginx (at full speed; over http, and over https with a
certificate made for the run), the same file, in the same run. Each is one process calling
``whisperctl.api.download`` with ``--connections``: ``wire-splice`` (the lean path, bodies spliced from the
socket into the file: plain http on Linux), ``wire-buffer`` (the lean path, bodies through one reused buffer:
https, or http with splice off), ``httpx`` (``TransferOptions(lean_http=False)``), and ``curl`` for scale.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import ctypes
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import string
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import (
    busy_cpu,
    dist_version,
    fmt,
    ratio,
    read_file,
    source_fingerprint,
    wait_for_idle,
    wait_timed,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # for tests/nginx.py: the tests and this benchmark start nginx the same way

from tests.httpserver import TLSUnavailableError, _make_certificate  # noqa: E402
from tests.nginx import NginxUnavailableError, free_port  # noqa: E402
from tests.nginx import run as run_nginx  # noqa: E402

BIN = Path(sys.executable).parent
MiB = 1024 * 1024
BLOCK = 16 * MiB

# Byte sizes of the official checkpoints (openai-whisper 20250625).
SIZES = {"small": 483_617_219, "medium": 1_528_008_539, "large-v3": 3_087_371_615}
SIZES["smoke"] = 64 * MiB  # not a checkpoint: a quick file for --smoke
SETTINGS = ("uncapped", "capped")
TOOLS = ("whisperctl", "openai-whisper", "curl", "aria2c")
PACKAGES = {"nginx": "nginx-light", "aria2c": "aria2", "curl": "curl", "sha256sum": "coreutils"}

# openai-whisper's own downloader, run in a child so that its memory is measured on its own. The import
# (torch included) is timed apart from the download; tqdm's bar goes to /dev/null.
WHISPER_CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
from whisper import _download
t1 = time.perf_counter()
err, sys.stderr = sys.stderr, open(os.devnull, "w")
try:
    path = _download(sys.argv[1], sys.argv[2], False)
finally:
    sys.stderr = err
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "download_s": t2 - t1, "path": path}))
"""


# A fast-path row: one process downloading through the library with the engine's HTTP path chosen.
FAST_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from whisperctl.api import download
from whisperctl.fetch.http.connection import disable_splice
from whisperctl.fetch.transfer import TransferOptions
registry, name, cache, variant, connections = sys.argv[1:6]
if variant == "wire-buffer":
    disable_splice()
options = TransferOptions(connections=int(connections), lean_http=variant != "httpx")
t1 = time.perf_counter()
(record,) = download([name], cache_dir=cache, registry=registry, mirrors=[], options=options)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "download_s": t2 - t1, "status": record.status,
                  "sha256": record.sha256, "path": str(record.path), "engine_s": record.seconds}))
"""
# (scheme, variant) of the fast-path rows, in the order of the table.
FAST_ROWS = (
    ("http", "wire-splice"),
    ("http", "wire-buffer"),
    ("http", "httpx"),
    ("http", "curl"),
    ("https", "wire-buffer"),
    ("https", "httpx"),
    ("https", "curl"),
)


class BenchError(Exception):
    """A run that did not give a verified file, or a setup step that failed."""


# -- small helpers -------------------------------------------------------------------------------------------
def parse_rate(value: str) -> int:
    """An nginx ``limit_rate`` value (``20m``, ``512k``, ``1000000``) in bytes per second."""
    match = re.fullmatch(r"(\d+)([kKmM]?)", value.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{value!r}: give a rate like 20m, 512k or 1000000 (bytes/s)")
    scale = {"": 1, "k": 1024, "m": MiB}[match.group(2).lower()]
    return int(match.group(1)) * scale


def find_binary(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def clean_env() -> dict[str, str]:
    """The environment for every tool: no proxies (everything is on 127.0.0.1), no whisperctl settings."""
    drop = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in drop and not k.startswith("WHISPERCTL_")}
    env.update(NO_COLOR="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In a child before exec: get SIGTERM if the benchmark dies, so that no server outlives it."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def ensure_packages(needed: Sequence[str] = tuple(PACKAGES)) -> dict[str, str]:
    """Paths of the external tools (``needed``: binaries), installing the missing ones with apt-get."""
    wanted = {binary: PACKAGES[binary] for binary in needed}
    missing = [pkg for binary, pkg in wanted.items() if find_binary(binary) is None]
    if missing:
        if os.geteuid() == 0:
            prefix: list[str] = []
        elif shutil.which("sudo"):
            prefix = ["sudo", "-n"]
        else:
            raise BenchError(
                f"missing {', '.join(missing)}: install them (apt-get install {' '.join(missing)})"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print(f"installing {', '.join(missing)} with apt-get...", file=sys.stderr)
        subprocess.run([*prefix, "apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run([*prefix, "apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    found = {binary: find_binary(binary) for binary in wanted}
    lost = [binary for binary, path in found.items() if path is None]
    if lost:
        raise BenchError(f"still missing after apt-get: {', '.join(lost)}")
    return {binary: str(path) for binary, path in found.items()}


# -- the test files ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TestFile:
    name: str
    size: int
    sha256: str
    path: Path  # <work>/mirror/<sha256>/<name>.pt

    @property
    def url_path(self) -> str:
        return f"/{self.sha256}/{self.name}.pt"


def _write_test_file(path: Path, name: str, size: int) -> str:
    """Pseudo-random content (seeded by the name, so the digest is reproducible), 16 MiB at a time: one random
    block, with the block counter written at every MiB so that no two blocks are alike."""
    base = random.Random(f"whisperctl-bench-{name}").randbytes(BLOCK)
    buf = bytearray(base)
    h = hashlib.sha256()
    with open(path, "wb", buffering=0) as f:
        written, index = 0, 0
        while written < size:
            for off in range(0, BLOCK, MiB):
                struct.pack_into("<QQ", buf, off, index, off)
            n = min(BLOCK, size - written)
            view = memoryview(buf)[:n]
            h.update(view)
            while view:
                view = view[f.write(view) :]
            written += n
            index += 1
    return h.hexdigest()


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.hexdigest()


def prepare_files(work: Path, names: Sequence[str]) -> dict[str, TestFile]:
    """Generate (or reuse) one file per size; each is read once here, which also warms the page cache."""
    mirror = work / "mirror"
    mirror.mkdir(parents=True, exist_ok=True)
    index_path = work / "files.json"
    try:
        index: dict[str, dict[str, Any]] = json.loads(index_path.read_text("utf-8"))
    except (OSError, ValueError):
        index = {}
    files = {}
    for name in names:
        size, entry = SIZES[name], index.get(name, {})
        path = mirror / str(entry.get("sha256", "-")) / f"{name}.pt"
        reuse = entry.get("size") == size and path.is_file() and path.stat().st_size == size
        t0 = time.perf_counter()
        if reuse and _hash(path) == entry["sha256"]:
            print(
                f"{name}: reusing {path} ({size:,} bytes, digest checked in {time.perf_counter() - t0:.1f} s)"
            )
            files[name] = TestFile(name, size, entry["sha256"], path)
            continue
        if path.parent != mirror and path.parent.is_dir():
            shutil.rmtree(path.parent)
        tmp = mirror / f".{name}.tmp"
        digest = _write_test_file(tmp, name, size)
        final = mirror / digest / f"{name}.pt"
        final.parent.mkdir(exist_ok=True)
        os.replace(tmp, final)
        for p in (final.parent, final):
            p.chmod(0o755 if p.is_dir() else 0o644)  # nginx's workers may run as another user
        index[name] = {"size": size, "sha256": digest}
        index_path.write_text(json.dumps(index, indent=1) + "\n", "utf-8")
        print(f"{name}: generated {final} ({size:,} bytes) in {time.perf_counter() - t0:.1f} s")
        files[name] = TestFile(name, size, digest, final)
    return files


# -- nginx ---------------------------------------------------------------------------------------------------
def make_certificate(work: Path) -> tuple[Path, Path] | None:
    """A certificate for 127.0.0.1 (as the tests make theirs), or None: the https rows are then left out."""
    folder = work / "tls"
    folder.mkdir(exist_ok=True)
    try:
        return _make_certificate(folder)
    except TLSUnavailableError as exc:
        print(f"no https rows: {exc}", file=sys.stderr)
        return None


@contextlib.contextmanager
def nginx_servers(
    nginx: str, work: Path, root: Path, rate: int, tls: tuple[Path, Path] | None = None
) -> Iterator[dict[str, str]]:
    """nginx on ports of 127.0.0.1 (``uncapped``, ``capped``, and ``tls`` when given a certificate and its
    key); their base URLs. Always stopped."""
    prefix = work / "nginx"
    ports = {"uncapped": free_port(), "capped": free_port()}
    tls_server = ""
    if tls is not None:
        ports["tls"] = free_port()
        tls_server = (
            f"\n    server {{\n        listen 127.0.0.1:{ports['tls']} ssl;\n        root {root};\n"
            f"        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};\n    }}\n"
        )
    template = string.Template((HERE / "nginx.conf.template").read_text("utf-8"))
    conf = template.substitute(
        # Run as root, nginx would switch its workers to nobody, who may not reach the work dir.
        user_directive="user root;" if os.geteuid() == 0 else "",
        workers=os.cpu_count() or 1,
        prefix=prefix,
        root=root,
        port_uncapped=ports["uncapped"],
        port_capped=ports["capped"],
        rate=rate,
        tls_server=tls_server,
    )
    try:
        with run_nginx(nginx, prefix, conf, ports.values(), preexec_fn=_die_with_parent) as proc:
            _NGINX[:] = [proc.pid]
            try:
                yield {
                    setting: f"{'https' if setting == 'tls' else 'http'}://127.0.0.1:{port}"
                    for setting, port in ports.items()
                }
            finally:
                _NGINX.clear()
    except NginxUnavailableError as exc:
        raise BenchError(str(exc)) from exc


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


# -- running and measuring -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proc:
    seconds: float
    rss: int  # peak resident set size, bytes
    cpu: float  # user + system seconds
    background: float  # CPU seconds used meanwhile by other processes than this one and nginx
    returncode: int
    stdout: str
    stderr: str


_CURRENT: list[subprocess.Popen[bytes]] = []


_NGINX: list[int] = []  # the master's pid while nginx runs
_HZ = os.sysconf("SC_CLK_TCK")


def _nginx_pids() -> list[int]:
    return [*_NGINX, *_children(_NGINX[0])] if _NGINX else []


def _pids_cpu(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _HZ


def measure(cmd: Sequence[str], *, timeout: float, logs: Path, env: dict[str, str]) -> Proc:
    """Run ``cmd``: its wall time, peak RSS (from ``wait4``) and CPU; it is killed at ``timeout``."""
    stem = Path(cmd[0]).name
    out, err = logs / f"{stem}.stdout", logs / f"{stem}.stderr"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        nginx = _nginx_pids()
        busy0, nginx0 = busy_cpu(), _pids_cpu(nginx)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, env=env, preexec_fn=_die_with_parent
        )
        _CURRENT.append(proc)
        try:
            seconds, usage, killed = wait_timed(proc, t0, timeout)
        finally:
            _CURRENT.remove(proc)
        busy1, nginx1 = busy_cpu(), _pids_cpu(nginx)
    stdout, stderr = out.read_text("utf-8", "replace"), err.read_text("utf-8", "replace")
    if killed:
        raise BenchError(f"{cmd[0]} timed out after {timeout:.0f} s")
    cpu = usage.ru_utime + usage.ru_stime
    background = max(0.0, busy1 - busy0 - (nginx1 - nginx0) - cpu)
    return Proc(seconds, usage.ru_maxrss * 1024, cpu, background, proc.returncode, stdout, stderr)


def _kill_current() -> None:
    for proc in list(_CURRENT):
        with contextlib.suppress(OSError):
            proc.kill()


@dataclass
class Result:
    size: str
    setting: str
    tool: str
    seconds: float | None
    rss_bytes: int | None
    ok: bool
    cpu_s: float | None = None  # user + system time of the tool's processes
    error: str | None = None  # when some runs failed: the first failure
    parts: dict[str, float] = field(default_factory=dict)  # component timings
    source: str | None = None  # whisperctl only: fingerprint(s) of its source code when it ran


@dataclass(frozen=True)
class Context:
    bins: dict[str, str]
    work: Path
    urls: dict[str, str]
    rate: int
    connections: int
    env: dict[str, str]
    idle_wait: float
    cert: Path | None = None  # the https server's certificate, trusted by the https rows


def _timeout(ctx: Context, size: int) -> float:
    # Four times what one capped connection needs, plus a minute: only a hung tool gets near it.
    return 60 + 4 * size / ctx.rate


def _check(proc: Proc, what: str) -> None:
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise BenchError(f"{what} exited with {proc.returncode}: {detail}")


def _sha256sum(ctx: Context, path: Path, f: TestFile, logs: Path) -> Proc:
    proc = measure(["sha256sum", str(path)], timeout=_timeout(ctx, f.size), logs=logs, env=ctx.env)
    _check(proc, "sha256sum")
    digest = proc.stdout.split()[0] if proc.stdout.split() else ""
    if digest != f.sha256:
        raise BenchError(f"sha256sum of {path}: {digest}, expected {f.sha256}")
    return proc


def _sync(ctx: Context, path: Path, logs: Path) -> Proc:
    proc = measure(["sync", str(path)], timeout=600, logs=logs, env=ctx.env)  # fsync, as whisperctl does
    _check(proc, "sync")
    return proc


def _size_ok(path: Path, f: TestFile) -> None:
    actual = path.stat().st_size if path.is_file() else None
    if actual != f.size:
        raise BenchError(f"{path}: {actual} bytes, expected {f.size}")


Runner = Callable[["Context", "TestFile", str, Path, Path], list["Result"]]


def run_whisperctl(ctx: Context, f: TestFile, setting: str, dest: Path, logs: Path) -> list[Result]:
    registry = ctx.work / f"registry-{setting}.toml"
    name = f"bench-{f.name}"
    cmd = [
        str(BIN / "whisperctl"),
        "--registry",
        str(registry),
        "--cache-dir",
        str(dest),
        "-q",
        "download",
        name,
        "--connections",
        str(ctx.connections),
        "--json",
    ]
    source = source_fingerprint()  # other people may be editing the engine while this runs
    compile_whisperctl()
    proc = measure(cmd, timeout=_timeout(ctx, f.size), logs=logs, env=ctx.env)
    _check(proc, "whisperctl")
    try:
        (record,) = json.loads(proc.stdout)
    except ValueError as exc:
        raise BenchError(f"whisperctl printed no JSON record: {proc.stdout[-500:]!r}") from exc
    if record.get("status") != "downloaded" or record.get("sha256") != f.sha256:
        raise BenchError(f"whisperctl record: {record}")
    path = Path(record["path"])
    _size_ok(path, f)
    # Outside the clock: check the bytes on disk independently of whisperctl's own digest.
    if _hash(path) != f.sha256:
        raise BenchError(f"{path}: whisperctl said it was verified, but its SHA-256 is not {f.sha256}")
    parts = {"engine_s": float(record.get("seconds") or 0.0), "bg_cpu_s": proc.background}
    return [
        Result(
            f.name, setting, "whisperctl", proc.seconds, proc.rss, True, proc.cpu, parts=parts, source=source
        )
    ]


def run_openai_whisper(ctx: Context, f: TestFile, setting: str, dest: Path, logs: Path) -> list[Result]:
    url = ctx.urls[setting] + f.url_path
    cmd = [sys.executable, "-c", WHISPER_CHILD, url, str(dest)]
    proc = measure(cmd, timeout=_timeout(ctx, f.size) + 60, logs=logs, env=ctx.env)
    _check(proc, "openai-whisper _download")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    _size_ok(Path(info["path"]), f)
    parts = {"process_s": proc.seconds, "import_s": info["import_s"], "bg_cpu_s": proc.background}
    # The headline is the time inside _download: importing whisper (and torch) is not counted against it.
    return [
        Result(f.name, setting, "openai-whisper", info["download_s"], proc.rss, True, proc.cpu, parts=parts)
    ]


def _then_check(
    ctx: Context, f: TestFile, setting: str, tool: str, fetch: Proc, path: Path, logs: Path
) -> list[Result]:
    """Rows for a fetch alone, then + ``sha256sum``, then + ``sync FILE``: the same run, cumulated."""
    _size_ok(path, f)
    digest = _sha256sum(ctx, path, f, logs)
    sync = _sync(ctx, path, logs)
    steps = [(tool, fetch), (f"{tool}+sha256sum", digest), (f"{tool}+sha256sum+sync", sync)]
    detail = {f"{tool}_s": fetch.seconds, "sha256sum_s": digest.seconds, "sync_s": sync.seconds}
    rows, seconds, cpu, background, rss = [], 0.0, 0.0, 0.0, 0
    for name, proc in steps:
        seconds, cpu, background = seconds + proc.seconds, cpu + proc.cpu, background + proc.background
        rss = max(rss, proc.rss)
        parts = {**detail, "bg_cpu_s": background}
        rows.append(Result(f.name, setting, name, seconds, rss, True, cpu, parts=parts))
    return rows


def run_curl(ctx: Context, f: TestFile, setting: str, dest: Path, logs: Path) -> list[Result]:
    path = dest / f"{f.name}.pt"
    url = ctx.urls[setting] + f.url_path
    cmd = [ctx.bins["curl"], "-sS", "-o", str(path), url]
    curl = measure(cmd, timeout=_timeout(ctx, f.size), logs=logs, env=ctx.env)
    _check(curl, "curl")
    return _then_check(ctx, f, setting, "curl", curl, path, logs)


def run_aria2c(ctx: Context, f: TestFile, setting: str, dest: Path, logs: Path) -> list[Result]:
    name = f"{f.name}.pt"
    url = ctx.urls[setting] + f.url_path
    cmd = [
        ctx.bins["aria2c"],
        "--no-conf",
        "--summary-interval=0",
        f"-x{ctx.connections}",
        f"-s{ctx.connections}",
        "-k1M",
        "--file-allocation=falloc",
        "-d",
        str(dest),
        "-o",
        name,
        url,
    ]
    aria = measure(cmd, timeout=_timeout(ctx, f.size), logs=logs, env=ctx.env)
    _check(aria, "aria2c")
    return _then_check(ctx, f, setting, "aria2c", aria, dest / name, logs)


def fast_path_runner(scheme: str, variant: str) -> Runner:
    """The runner of one fast-path row: the library with the HTTP path ``variant``, or curl."""

    def run(ctx: Context, f: TestFile, setting: str, dest: Path, logs: Path) -> list[Result]:
        base = ctx.urls["tls" if scheme == "https" else "uncapped"]
        env = dict(ctx.env)
        if scheme == "https":
            assert ctx.cert is not None
            env["SSL_CERT_FILE"] = str(ctx.cert)
            env.pop("SSL_CERT_DIR", None)
        if variant == "curl":
            path = dest / f"{f.name}.pt"
            trust = ["--cacert", str(ctx.cert)] if scheme == "https" else []
            cmd = [ctx.bins["curl"], "-sS", *trust, "-o", str(path), base + f.url_path]
            proc = measure(cmd, timeout=_timeout(ctx, f.size), logs=logs, env=env)
            _check(proc, "curl")
            _size_ok(path, f)
            parts = {"bg_cpu_s": proc.background}
            return [Result(f.name, scheme, variant, proc.seconds, proc.rss, True, proc.cpu, parts=parts)]
        registry = ctx.work / f"registry-{'tls' if scheme == 'https' else 'uncapped'}.toml"
        cmd = [sys.executable, "-c", FAST_CHILD, str(registry), f"bench-{f.name}", str(dest), variant,
               str(ctx.connections)]  # fmt: skip
        compile_whisperctl()
        source = source_fingerprint()
        proc = measure(cmd, timeout=_timeout(ctx, f.size), logs=logs, env=env)
        _check(proc, f"whisperctl ({variant})")
        try:
            info = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise BenchError(f"{variant}: no JSON line: {proc.stdout[-500:]!r}") from exc
        if info["status"] != "downloaded" or info["sha256"] != f.sha256:
            raise BenchError(f"{variant}: {info}")
        path = Path(info["path"])
        _size_ok(path, f)
        if _hash(path) != f.sha256:  # outside the clock, independently of the engine's digest
            raise BenchError(f"{path}: {variant} said it was verified, but its SHA-256 is not {f.sha256}")
        parts = {"engine_s": float(info["engine_s"]), "import_s": info["import_s"]}
        parts["bg_cpu_s"] = proc.background
        row = Result(
            f.name, scheme, variant, proc.seconds, proc.rss, True, proc.cpu, parts=parts, source=source
        )
        return [row]

    return run


RUNNERS = {
    "whisperctl": run_whisperctl,
    "openai-whisper": run_openai_whisper,
    "curl": run_curl,
    "aria2c": run_aria2c,
}


def run_one(
    ctx: Context, tool: str, f: TestFile, setting: str, run: int, runner: Runner | None = None
) -> list[Result]:
    dest = ctx.work / "runs" / f"{f.name}-{setting}-{tool}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    logs = ctx.work / "logs" / dest.name / f"run{run}"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    os.sync()  # no writeback left over from the previous run (the page cache itself is kept)
    read_file(f.path)
    load = wait_for_idle(ctx.idle_wait)
    if load >= 0.3:
        print(f"  (the machine is busy: {load:.1f} cores used by others; measuring anyway)", file=sys.stderr)
    try:
        return (runner or RUNNERS[tool])(ctx, f, setting, dest, logs)
    except BenchError as exc:
        print(f"  FAILED {tool} {f.name} {setting}: {exc}", file=sys.stderr)
        return [Result(f.name, setting, tool, None, None, False, error=str(exc))]
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def run_fast_path(ctx: Context, f: TestFile, repeat: int) -> list[Result]:
    """The fast-path rows of one file (the https ones when nginx serves https), ``repeat`` runs each."""
    rows = []
    for scheme, variant in FAST_ROWS:
        if (scheme == "https" and ctx.cert is None) or (variant == "wire-splice" and sys.platform != "linux"):
            continue
        runner = fast_path_runner(scheme, variant)
        runs = [run_one(ctx, variant, f, scheme, i + 1, runner) for i in range(repeat)]
        for r in combine(variant, runs):
            status = "FAILED" if r.seconds is None else f"{r.seconds:.2f} s"
            print(f"  {f.name:9} {scheme:9} {variant:22} {status}", file=sys.stderr)
            rows.append(r)
    return rows


def combine(tool: str, runs: list[list[Result]]) -> list[Result]:
    """Repeated runs of one tool: per row, the median time and the highest peak RSS of the runs that gave a
    verified file; a failed run is reported in every row of the tool (and fails its targets)."""
    failures = [r for run in runs for r in run if not r.ok]
    good_runs = [run for run in runs if all(r.ok for r in run)]
    if not good_runs:
        first = failures[0]
        return [Result(first.size, first.setting, tool, None, None, False, error=first.error)]
    combined = []
    for i, first in enumerate(good_runs[0]):
        rows = [run[i] for run in good_runs]
        seconds = statistics.median(r.seconds or 0.0 for r in rows)
        rss = max(r.rss_bytes or 0 for r in rows)
        cpu = statistics.median(r.cpu_s or 0.0 for r in rows)
        parts = {k: statistics.median(r.parts[k] for r in rows) for k in first.parts}
        parts["runs"] = float(len(rows))
        parts["failed_runs"] = float(len(failures))
        error = f"{len(failures)} of {len(runs)} runs failed: {failures[0].error}" if failures else None
        sources = sorted({r.source for r in rows if r.source})
        source = ",".join(sources) or None
        combined.append(
            Result(
                first.size, first.setting, first.tool, seconds, rss, not failures, cpu, error, parts, source
            )
        )
    return combined


# -- the report ----------------------------------------------------------------------------------------------
def _version(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "?"


def compile_whisperctl() -> None:
    """Write whisperctl's bytecode (only what is stale), as pip does when it installs a package: an editable
    install run under PYTHONDONTWRITEBYTECODE would otherwise compile every module on every run, a cost that
    no installed copy pays (and that openai-whisper, installed from its wheel, does not pay either)."""
    spec = importlib.util.find_spec("whisperctl")
    if spec is not None and spec.origin is not None:
        compileall.compile_dir(Path(spec.origin).parent, quiet=1)


def _git_head() -> str:
    head = _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"])
    return f"{head}{'+uncommitted src changes' if dirty not in ('', '?') else ''}"


def machine_info(bins: dict[str, str], work: Path) -> dict[str, str]:
    meminfo = Path("/proc/meminfo").read_text().split()
    mem_kib = int(meminfo[meminfo.index("MemTotal:") + 1])
    cpu = "?"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.partition(":")[2].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    fs = _version(["findmnt", "-n", "-o", "FSTYPE", "--target", str(work)])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{mem_kib / MiB:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "filesystem": fs,
        "python": platform.python_version(),
        "whisperctl": f"{dist_version('whisperctl')} (git {_git_head()}, source {source_fingerprint()})",
        "openai-whisper": dist_version("openai-whisper"),
        "httpx": dist_version("httpx"),
        "h11": dist_version("h11"),
        "nginx": _version([bins["nginx"], "-v"]).rpartition("/")[2],
        "curl": " ".join(_version([bins["curl"], "--version"]).split()[1:2]),
        "aria2c": _version([bins.get("aria2c", "aria2c"), "--version"]).rpartition(" ")[2],
        "sha256sum": _version([bins.get("sha256sum", "sha256sum"), "--version"]).rpartition(" ")[2],
    }


def _find(results: list[Result], size: str, setting: str, tool: str) -> float | None:
    for r in results:
        if (r.size, r.setting, r.tool) == (size, setting, tool) and r.seconds is not None:
            return r.seconds
    return None


def targets(results: list[Result], sizes: Sequence[str], settings: Sequence[str]) -> list[tuple[bool, str]]:
    """The issue's targets, one (passed, line) each; a target whose figures are missing fails."""
    lines = []
    for size in sizes:
        w = {s: _find(results, size, s, "whisperctl") for s in settings}
        if "capped" in settings:
            speedup = ratio(_find(results, size, "capped", "openai-whisper"), w["capped"])
            lines.append(
                (
                    speedup is not None and speedup >= 6,
                    f"capped {size}: whisperctl {fmt(speedup, '.1f', 'x')} faster than openai-whisper "
                    "(target >= 6x)",
                )
            )
            vs_aria = ratio(_find(results, size, "capped", "aria2c+sha256sum"), w["capped"])
            lines.append(
                (
                    vs_aria is not None and vs_aria >= 1,
                    f"capped {size}: whisperctl {fmt(vs_aria, '.2f', 'x')} the speed of aria2c+sha256sum "
                    "(target >= 1.00x)",
                )
            )
        if "uncapped" in settings:
            slower = ratio(w["uncapped"], _find(results, size, "uncapped", "curl"))
            lines.append(
                (
                    slower is not None and slower <= 1.25,
                    f"uncapped {size}: whisperctl takes {fmt(slower, '.2f', 'x')} the time of curl alone "
                    "(target <= 1.25x)",
                )
            )
    rss = [r.rss_bytes for r in results if r.tool == "whisperctl" and r.rss_bytes is not None]
    failed = [r for r in results if r.tool == "whisperctl" and not r.ok]
    peak = max(rss) / MiB if rss else None
    lines.append(
        (
            peak is not None and peak < 150 and not failed,
            f"whisperctl peak RSS {fmt(peak, '.0f', ' MiB')} over {len(rss)} runs"
            + (f", {len(failed)} failed runs" if failed else "")
            + " (target < 150 MiB)",
        )
    )
    return lines


def fast_path_targets(fast: list[Result], sizes: Sequence[str]) -> list[tuple[bool, str]]:
    """The fast path must earn its place: faster than plain httpx on the same server, file and run."""
    lines = []
    for size in sizes:
        for scheme, variant in (("http", "wire-splice"), ("http", "wire-buffer"), ("https", "wire-buffer")):
            share = ratio(_find(fast, size, scheme, variant), _find(fast, size, scheme, "httpx"))
            if share is None and not any(r.size == size and r.setting == scheme for r in fast):
                continue  # no https server in this run
            lines.append(
                (
                    share is not None and share <= 1.0,
                    f"fast path {size} {scheme}: {variant} takes {fmt(share, '.2f', 'x')} the time of plain "
                    "httpx (target <= 1.00x)",
                )
            )
    return lines


def render_fast_path(fast: list[Result], args: argparse.Namespace) -> list[str]:
    if not fast:
        return []
    lines = [
        "",
        f"Fast path against plain httpx (same nginx at full speed, same file, same run; `--connections "
        f"{args.connections}`; median of {args.repeat}). Time = the whole process (Python start-up and "
        "imports included, the same for every variant):",
        "",
        "| size | scheme | client | seconds | MB/s | peak RSS MiB | CPU s | vs httpx | / curl | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in fast:
        mbs = SIZES[r.size] / 1e6 / r.seconds if r.seconds else None
        rss = r.rss_bytes / MiB if r.rss_bytes is not None else None
        httpx_s, curl_s = _find(fast, r.size, r.setting, "httpx"), _find(fast, r.size, r.setting, "curl")
        note = f"engine {r.parts['engine_s']:.2f} s" if "engine_s" in r.parts else ""
        if not r.ok:
            note = f"FAILED: {(r.error or '').replace('|', '/')[:300]}"
        lines.append(
            f"| {r.size} | {r.setting} | {r.tool} | {fmt(r.seconds, '.2f')} | {fmt(mbs, '.0f')} | "
            f"{fmt(rss, '.0f')} | {fmt(r.cpu_s, '.2f')} | {fmt(ratio(httpx_s, r.seconds), '.2f', 'x')} | "
            f"{fmt(ratio(r.seconds, curl_s), '.2f', 'x')} | {note} |"
        )
    lines += [
        "",
        "vs httpx > 1: faster than plain httpx; / curl: the row's time over curl's on the same scheme.",
    ]
    return lines


def render(
    results: list[Result],
    info: dict[str, str],
    args: argparse.Namespace,
    checks: list[tuple[bool, str]],
    fast: list[Result],
) -> str:
    rate = args.rate
    lines = [
        f"# Download benchmark ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
        f"Server: nginx on 127.0.0.1 with sendfile; *capped* = `limit_rate {args.rate_text}` per connection "
        f"({rate / 1e6:.1f} MB/s), *uncapped* = no limit. Source files in the page cache (read before each "
        f"run); `sync` before each run; fresh empty destination per run; {args.repeat} run(s) per uncapped "
        "cell, "
        f"{args.repeat_capped} per capped cell (median time, highest RSS). MB/s = 10^6 bytes/s.",
    ]
    if results:  # not with --fast-path-only
        lines += [
            "",
            "| size | setting | tool | seconds | MB/s | peak RSS MiB | CPU s | bg CPU s | note |",
            "|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in results:
            mbs = SIZES[r.size] / 1e6 / r.seconds if r.seconds else None
            rss = r.rss_bytes / MiB if r.rss_bytes is not None else None
            note, bg = _note(r), r.parts.get("bg_cpu_s")
            lines.append(
                f"| {r.size} | {r.setting} | {r.tool} | {fmt(r.seconds, '.2f')} | {fmt(mbs, '.0f')} | "
                f"{fmt(rss, '.0f')} | {fmt(r.cpu_s, '.2f')} | {fmt(bg, '.2f')} | {note} |"
            )
        lines += [
            "",
            "Ratios (>1 means whisperctl is faster, except the last column: whisperctl's time / curl's):",
            "",
            "| size | setting | vs openai-whisper | vs aria2c+sha256sum | vs curl+sha256sum | "
            "vs curl+sha256sum+sync | whisperctl / curl alone |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for size in args.sizes:
            for setting in args.settings:
                w = _find(results, size, setting, "whisperctl")

                def vs(tool: str, size: str = size, setting: str = setting, w: float | None = w) -> str:
                    return fmt(ratio(_find(results, size, setting, tool), w), ".2f", "x")

                slower = fmt(ratio(w, _find(results, size, setting, "curl")), ".2f", "x")
                lines.append(
                    f"| {size} | {setting} | {vs('openai-whisper')} | {vs('aria2c+sha256sum')} | "
                    f"{vs('curl+sha256sum')} | {vs('curl+sha256sum+sync')} | {slower} |"
                )
    lines += render_fast_path(fast, args)
    lines += ["", "Targets:", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'} {text}" for ok, text in checks]
    sources = sorted({s for r in results if r.source for s in r.source.split(",")})
    if len(sources) > 1:
        lines += [
            "",
            f"Warning: whisperctl's source changed during the benchmark ({', '.join(sources)}): its rows "
            "were measured with different versions of the engine (see `source` in the JSON).",
        ]
    noisy = [r for r in results if r.seconds and r.parts.get("bg_cpu_s", 0.0) > r.seconds / 3]
    if noisy:
        cells = ", ".join(f"{r.size}/{r.setting}/{r.tool}" for r in noisy)
        lines += ["", f"Warning: other processes used much CPU during {len(noisy)} row(s): {cells}."]
    lines += [
        "",
        "Notes: whisperctl's time is the whole `whisperctl download` process (start-up, streaming with live "
        "SHA-256, fsync, rename), its bytecode compiled beforehand as an installed copy's is; "
        "openai-whisper's is the time inside `_download` (its `import whisper`, torch included, is left out, "
        "in its favour); curl and aria2c write to the page cache without fsync, "
        "the `+sync` rows add an fsync of the file (`sync FILE`) for an equal footing. "
        f"aria2c: `aria2c -x{args.connections} -s{args.connections} -k1M --file-allocation=falloc`; "
        f"whisperctl: `--connections {args.connections}`. CPU s = user + system time of the tool's own "
        "processes (nginx's is not counted; openai-whisper's includes its import); bg CPU s = CPU time "
        "used meanwhile by every other process on the machine (other than the tool and nginx): above "
        "about a third of the run's seconds, another job competed for the two cores and the row is noisy.",
    ]
    return "\n".join(lines)


def _note(r: Result) -> str:
    p, note = r.parts, ""
    if r.seconds is None:
        pass
    elif r.tool == "whisperctl":
        note = f"engine {p['engine_s']:.2f} s, source {r.source}"
    elif r.tool == "openai-whisper":
        note = f"process {p['process_s']:.2f} s (import {p['import_s']:.2f} s)"
    elif "sha256sum" in r.tool:
        first = p.get("curl_s", p.get("aria2c_s", 0.0))
        sync = f" + sync {p['sync_s']:.2f}" if r.tool.endswith("+sync") else ""
        note = f"{first:.2f} + sha256sum {p['sha256sum_s']:.2f}{sync}"
    if not r.ok:
        error = (r.error or "").replace("|", "/").replace("\n", " ")[:300]
        note = f"{note}; FAILED: {error}" if note else f"FAILED: {error}"
    return note


# -- main ----------------------------------------------------------------------------------------------------
def _names(value: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{what}: choose among {', '.join(allowed)} (got {value!r})")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="small,medium,large-v3", help="comma-separated (%(default)s)")
    parser.add_argument("--quick", action="store_true", help="only `small`: a smoke run of a minute or two")
    parser.add_argument("--rate", default="20m", help="nginx limit_rate per connection (%(default)s)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated (%(default)s)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated (%(default)s)")
    parser.add_argument("--connections", type=int, default=8, help="for whisperctl and aria2c (%(default)s)")
    parser.add_argument(
        "--repeat", type=int, help="runs per uncapped cell; the median is reported (3, or 1 with --quick)"
    )
    parser.add_argument("--repeat-capped", type=int, default=1, help="runs per capped cell (%(default)s)")
    parser.add_argument(
        "--idle-wait",
        type=float,
        help="before each run, wait up to this many seconds for other processes to leave the CPUs idle "
        "(30, or 5 with --quick)",
    )
    parser.add_argument(
        "--fast-path",
        choices=("on", "off", "only"),
        default="on",
        help="the rows of the engine's HTTP paths against plain httpx: with the others, not at all, or "
        "alone (%(default)s)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a quick check: only the fast-path rows, on a 64 MiB file, one run each "
        "(results in download-smoke.md unless --output)",
    )
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".bench" / "download")
    parser.add_argument(
        "--output", help="results go to bench/results/OUTPUT.md and .json (download, or download-smoke)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.fast_path, args.sizes, args.quick = "only", "smoke", False
        args.repeat = args.repeat or 1
        args.idle_wait = 2.0 if args.idle_wait is None else args.idle_wait
    args.output = args.output or ("download-smoke" if args.smoke else "download")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.idle_wait is None:
        args.idle_wait = 5.0 if args.quick else 30.0
    try:
        args.sizes = ["small"] if args.quick else _names(args.sizes, list(SIZES), "--sizes")
        args.settings = _names(args.settings, SETTINGS, "--settings")
        args.tools = _names(args.tools, TOOLS, "--tools")
        args.rate_text, args.rate = args.rate, parse_rate(args.rate)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if min(args.repeat, args.repeat_capped, args.connections) < 1:
        parser.error("--repeat, --repeat-capped and --connections must be at least 1")
    return args


def write_registries(work: Path, files: dict[str, TestFile], urls: dict[str, str]) -> None:
    for setting, base in urls.items():
        text = "".join(
            f'[models.bench-{f.name}]\nurl = "{base}{f.url_path}"\nsha256 = "{f.sha256}"\nsize = {f.size}\n\n'
            for f in files.values()
        )
        (work / f"registry-{setting}.toml").write_text(text, "utf-8")


def _estimate(args: argparse.Namespace) -> float:
    """A rough upper bound of the measuring time, in seconds: single-connection capped runs dominate."""
    total = 0.0
    for size in args.sizes:
        nbytes = SIZES[size]
        capped_single = nbytes / args.rate
        single = sum(t in args.tools for t in ("openai-whisper", "curl"))
        multi = sum(t in args.tools for t in ("whisperctl", "aria2c"))
        if args.fast_path != "off":
            total += len(FAST_ROWS) * nbytes / 300e6 * args.repeat
        if args.fast_path == "only":
            continue
        if "capped" in args.settings:
            capped = single * capped_single + multi * capped_single / args.connections
            total += capped * args.repeat_capped
        if "uncapped" in args.settings:
            total += (single + multi) * nbytes / 300e6 * args.repeat
    return total


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work: Path = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks: nginx is stopped

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        bins = ensure_packages(("nginx", "curl") if args.fast_path == "only" else tuple(PACKAGES))
        info = machine_info(bins, work)
        print(f"work dir {work}; about {_estimate(args) / 60:.0f} min of transfers expected", file=sys.stderr)
        files = prepare_files(work, args.sizes)
        os.sync()  # the generated files are written back now, not during the first measurement
        results: list[Result] = []
        fast: list[Result] = []
        tls = make_certificate(work) if args.fast_path != "off" else None
        with nginx_servers(bins["nginx"], work, work / "mirror", args.rate, tls) as urls:
            write_registries(work, files, urls)
            cert = tls[0] if tls is not None else None
            ctx = Context(bins, work, urls, args.rate, args.connections, clean_env(), args.idle_wait, cert)
            for size in args.sizes:
                if args.fast_path != "off":
                    fast += run_fast_path(ctx, files[size], args.repeat)
                for setting in args.settings if args.fast_path != "only" else ():
                    for tool in args.tools:
                        repeat = args.repeat_capped if setting == "capped" else args.repeat
                        runs = [run_one(ctx, tool, files[size], setting, i + 1) for i in range(repeat)]
                        rows = combine(tool, runs)
                        for r in rows:
                            status = "FAILED" if r.seconds is None else f"{r.seconds:.2f} s"
                            status += "" if r.ok else f" ({r.error})"
                            rss = f", {r.rss_bytes / MiB:.0f} MiB" if r.rss_bytes else ""
                            print(f"  {size:9} {setting:9} {r.tool:22} {status}{rss}", file=sys.stderr)
                        results += rows
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        _kill_current()
    checks = targets(results, args.sizes, args.settings) if args.fast_path != "only" else []
    checks += fast_path_targets(fast, args.sizes)
    text = render(results, info, args, checks, fast)
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"{args.output}.md").write_text(text + "\n", "utf-8")
    payload = {
        "machine": info,
        "rate_bytes_per_s": args.rate,
        "rate": args.rate_text,
        "connections": args.connections,
        "repeat": args.repeat,
        "repeat_capped": args.repeat_capped,
        "sizes": {s: SIZES[s] for s in args.sizes},
        "sha256": {name: f.sha256 for name, f in files.items()},
        "results": [asdict(r) for r in results],
        "fast_path": [asdict(r) for r in fast],
        "targets": [{"passed": ok, "text": text} for ok, text in checks],
    }
    (out / f"{args.output}.json").write_text(json.dumps(payload, indent=1) + "\n", "utf-8")
    return 0 if all(ok for ok, _ in checks) and all(r.ok for r in results + fast) else 2


if __name__ == "__main__":
    sys.exit(main())
