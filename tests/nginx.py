"""nginx from Debian's packages as a static mirror for tests, on 127.0.0.1 with its own config.

The binary is found on PATH or in the sbin directories; when missing it is installed with ``apt-get install
nginx-light`` (as root, or through ``sudo -n``). The server runs in the foreground (``daemon off``) under a
prefix of the test's own, and is always stopped. ``bench/download.py`` starts its servers with :func:`run`
too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import string
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


class NginxUnavailableError(RuntimeError):
    """nginx is not installed and cannot be (no root, no sudo, no apt), or does not start."""


def find_nginx() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/local/sbin:/usr/sbin:/sbin")


def ensure_nginx() -> str:
    """The nginx binary, installed from Debian's packages when it is missing."""
    found = find_nginx()
    if found:
        return found
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo"):
        prefix = ["sudo", "-n"]
    else:
        raise NginxUnavailableError("nginx is not installed, and neither root nor sudo can install it")
    if not shutil.which("apt-get"):
        raise NginxUnavailableError("nginx is not installed, and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = []
    steps = [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nginx-light"]]
    # Debian 13 folded nginx-light into the plain package.
    steps.append(["apt-get", "install", "-y", "-qq", "nginx"])
    for step in steps:
        proc = subprocess.run([*prefix, *step], env=env, capture_output=True, text=True, check=False)
        log.append(f"{' '.join(step)}: exit {proc.returncode} {proc.stderr.strip()[-300:]}")
        if step[1] == "install" and proc.returncode == 0:
            break
    found = find_nginx()
    if not found:
        raise NginxUnavailableError("cannot install nginx: " + " | ".join(log))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LogLine:
    port: int
    method: str
    path: str
    status: int
    bytes_sent: int
    range: str | None


@dataclass
class Nginx:
    prefix: Path
    ports: dict[str, int]

    def url(self, server: str) -> str:
        return f"http://127.0.0.1:{self.ports[server]}"

    def log(self) -> list[LogLine]:
        lines = []
        for raw in (self.prefix / "access.log").read_text("utf-8").splitlines():
            port, method, path, status, sent, rng = raw.split(" ", 5)
            rng = rng.strip('"')
            lines.append(
                LogLine(int(port), method, path, int(status), int(sent), None if rng == "-" else rng)
            )
        return lines


@contextlib.contextmanager
def run(
    binary: str,
    prefix: Path,
    conf: str,
    ports: Iterable[int],
    *,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """nginx in the foreground with the config text ``conf`` under ``prefix``, once it listens on every one of
    ``ports`` of 127.0.0.1 (10 s at most, else :class:`NginxUnavailableError`); always stopped afterwards.

    The tests' :func:`serve` and ``bench/download.py`` both start their servers through it.
    """
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(conf, "utf-8")
    out = open(prefix / "nginx.out", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=preexec_fn,
    )
    try:
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                if proc.poll() is not None:
                    tail = " | ".join(
                        (prefix / name).read_text("utf-8", "replace").strip()[-300:]
                        for name in ("nginx.out", "error.log")
                        if (prefix / name).is_file()
                    )
                    raise NginxUnavailableError(f"nginx exited with {proc.returncode}: {tail}")
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if time.monotonic() > deadline:
                    raise NginxUnavailableError(f"nginx did not listen on 127.0.0.1:{port} within 10 s")
                time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()  # fast shutdown: the master stops its workers
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()


@contextlib.contextmanager
def serve(root: Path, work: Path, *, rate: str = "0") -> Iterator[Nginx]:
    """nginx serving ``root`` on two ports of 127.0.0.1 (``private`` and ``shared``); stopped afterwards."""
    binary = ensure_nginx()
    prefix = work / "nginx"
    ports = {"private": free_port(), "shared": free_port()}
    template = string.Template((HERE / "nginx.conf.template").read_text("utf-8"))
    conf = template.substitute(
        # As root, nginx would switch its workers to nobody, who may not reach the test's directory.
        user_directive="user root;" if os.geteuid() == 0 else "",
        prefix=prefix,
        root=root,
        port_private=ports["private"],
        port_shared=ports["shared"],
        rate=rate,
    )
    with run(binary, prefix, conf, ports.values()):
        yield Nginx(prefix, ports)
