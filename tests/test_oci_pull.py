"""The OCI pull source against real sockets.

First a small registry endpoint in this file (the distribution API's blob GET with ranges, HTTP basic or the
bearer challenge with its token endpoint, a redirect to blob storage on another origin, with
``tests/httpserver.py`` as that storage): what a test must control (token expiry, redirects, headers seen).
Then the real CNCF distribution registry (``tests/registry.py``, TLS from a private CA, htpasswd or bearer
tokens), blobs pushed with plain httpx: parallel ranges, the token kept for the run, a resume with If-Range.
The end-to-end CLI cases (push then pull, skopeo, failures) are in ``test_oci_interop.py``."""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from whisperctl import api
from whisperctl.errors import ExitCode
from whisperctl.fetch.oci.auth import find_credentials
from whisperctl.fetch.oci.client import RegistryClient
from whisperctl.fetch.oci.reference import parse_oci_url
from whisperctl.fetch.sources import choose_source
from whisperctl.fetch.sources.oci import OCIRegistry
from whisperctl.fetch.transfer import TransferOptions

from .helpers import Cli, Sleeps, file_sha256, sha256_hex
from .httpserver import HTTPServer
from .registry import Registry

KiB, MiB = 1024, 1024 * 1024
SECRET = "pa55-w0rd-secret"
REPO = "team/whisper"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    status: int


@dataclass
class Endpoint:
    """What the endpoint does: its auth mode, its blobs, where it redirects, what it saw."""

    mode: str = "bearer"  # "bearer", "basic" or "none"
    users: dict[str, str] = field(default_factory=lambda: {"ann": SECRET})
    blobs: dict[str, bytes] = field(default_factory=dict)
    storage: HTTPServer | None = None  # blob GETs answered by a 307 to it
    revoke_after: int | None = None  # every token issued so far expires after this many ranges served
    served: int = 0
    realm: str | None = None  # the realm the challenge names (default: this endpoint's /token)
    forbidden: bool = False  # authenticated, but not allowed to pull: 403
    redirects: int = 0  # to storage, each to a URL of its own
    token_busy: int = 0  # the token endpoint answers 503 to this many requests once tokens were issued
    storage_faults: dict[str, Any] = field(default_factory=dict)  # for each new storage URL
    seen: list[Seen] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)  # valid token -> uses left (-1: unlimited)
    issued: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def push(self, data: bytes) -> str:
        digest = "sha256:" + sha256_hex(data)
        self.blobs[digest] = data
        return digest

    def ref(self, scheme: str = "oci+http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{REPO}"

    def blob_gets(self) -> list[Seen]:
        return [s for s in self.seen if "/blobs/" in s.path]

    def token_gets(self) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/token")]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        reg = self.server.registry
        with reg.lock:
            reg.seen.append(
                Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, status)
            )
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/token"):
            self._token()
        else:
            self._blob()

    do_HEAD = do_GET

    def _token(self) -> None:
        reg = self.server.registry
        with reg.lock:
            busy = reg.issued > 0 and reg.token_busy > 0
            reg.token_busy -= busy
        if busy:
            self._reply(503, b"busy")
            return
        sent = self.headers.get("Authorization", "")
        anonymous = not sent
        if not anonymous:
            user, _, password = base64.b64decode(sent.removeprefix("Basic ")).decode().partition(":")
            if reg.users.get(user) != password:
                self._reply(401, b'{"details":"bad credentials"}')
                return
        with reg.lock:
            reg.issued += 1
            token = f"{'anon' if anonymous else 'user'}-{reg.issued}"
            reg.tokens[token] = -1
        self._reply(200, json.dumps({"token": token, "expires_in": 60}).encode())

    def _authorized(self) -> bool:
        reg = self.server.registry
        sent = self.headers.get("Authorization", "")
        if reg.mode == "basic":
            pairs = {f"Basic {base64.b64encode(f'{u}:{p}'.encode()).decode()}" for u, p in reg.users.items()}
            return sent in pairs
        if reg.mode == "bearer":
            token = sent.removeprefix("Bearer ")
            with reg.lock:
                if reg.revoke_after is not None and reg.served >= reg.revoke_after:
                    reg.tokens.clear()  # they all expire at once, as at the end of a token's lifetime
                    reg.revoke_after = None
                return token in reg.tokens and token.startswith("user-")
        return True

    def _challenge(self) -> dict[str, str]:
        reg = self.server.registry
        if reg.mode == "basic":
            return {"WWW-Authenticate": 'Basic realm="fake registry"'}
        realm = reg.realm or f"http://127.0.0.1:{reg.port}/token"
        scope = f"repository:{REPO}:pull"
        return {"WWW-Authenticate": f'Bearer realm="{realm}",service="fake",scope="{scope}"'}

    def _blob(self) -> None:
        reg = self.server.registry
        match = re.fullmatch(rf"/v2/{REPO}/blobs/(sha256:[0-9a-f]{{64}})", self.path)
        if match is None:
            self._reply(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')
            return
        if not self._authorized():
            self._reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', self._challenge())
            return
        if reg.forbidden:
            self._reply(403, b'{"errors":[{"code":"DENIED"}]}')
            return
        digest = match.group(1)
        data = reg.blobs.get(digest)
        if data is None:
            self._reply(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
            return
        if reg.storage is not None:
            with reg.lock:
                reg.redirects += 1
                where = f"/storage/{digest}/{reg.redirects}"  # a fresh "presigned" URL each time
            # One object behind every URL: the same validators, as S3 gives for presigned URLs of one object.
            faults = {"etag": f'"{digest}"', "last_modified": False, **reg.storage_faults}
            reg.storage.add(where, data, **faults)
            self._reply(307, headers={"Location": reg.storage.url(where)})
            return
        start, end = 0, len(data) - 1
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        base = {"ETag": f'"{digest}"', "Accept-Ranges": "bytes", "Docker-Content-Digest": digest}
        if wanted is None:
            self._reply(200, data, base)
            return
        start = int(wanted.group(1))
        end = min(end, int(wanted.group(2))) if wanted.group(2) else end
        base["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        with reg.lock:
            reg.served += 1
        self._reply(206, data[start : end + 1], base)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.registry = endpoint
        endpoint.port = self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up is no error here
            super().handle_error(request, client_address)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    reg = Endpoint()
    server = _Server(reg)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield reg
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def auth_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG", "SSL_CERT_FILE"):
        monkeypatch.delenv(var, raising=False)


def log_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reg: Endpoint, password: str = SECRET) -> Path:
    """An auth file as `podman login` writes it, named by REGISTRY_AUTH_FILE."""
    path = tmp_path / "auth.json"
    entry = base64.b64encode(f"ann:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {f"127.0.0.1:{reg.port}": {"auth": entry}}}), "utf-8")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(path))
    return path


class Models:
    """A registry file of random models whose official URL answers 404 (or is given), and a cache."""

    def __init__(self, tmp_path: Path, official: HTTPServer) -> None:
        self.official = official
        self.file = tmp_path / "models.toml"
        self.cache = tmp_path / "cache"
        self.cache.mkdir()
        self.entries: list[str] = []
        self.sleeps = Sleeps()

    def add(self, name: str, size: int, url: str | None = None) -> bytes:
        data = os.urandom(size)
        self.entries.append(
            f'[models.{name}]\nurl = "{url or self.official.url("/gone/" + name + ".pt")}"\n'
            f'sha256 = "{sha256_hex(data)}"\nsize = {size}\n'
        )
        self.file.write_text("\n".join(self.entries), "utf-8")
        return data

    def options(self, **changes: Any) -> TransferOptions:
        knobs: dict[str, Any] = {
            "split_threshold": 1 * MiB,
            "min_segment": 256 * KiB,
            "piece_size": 512 * KiB,
            "connections": 4,
            "backoff": 0.01,
            "checkpoint_interval": 0.05,
            "sleep": self.sleeps,
        }
        knobs.update(changes)
        return TransferOptions(**knobs)

    def download(self, name: str, mirror: str, **changes: Any) -> api.DownloadRecord:
        (record,) = api.download(
            [name],
            cache_dir=self.cache,
            registry=self.file,
            mirrors=[mirror],
            offline=False,
            options=self.options(**changes),
            check=False,
        )
        return record

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return Cli()("--cache-dir", str(self.cache), "--registry", str(self.file), *args, env=env)

    def finals(self) -> list[str]:
        return sorted(p.name for p in self.cache.iterdir() if p.suffix == ".pt")


@pytest.fixture
def models(tmp_path: Path, server: HTTPServer) -> Models:
    return Models(tmp_path, server)


# -- pulls ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lean", [True, False], ids=["wire", "httpx"])
def test_bearer_pull_in_parallel_ranges(
    endpoint: Endpoint, models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lean: bool
) -> None:
    log_in(tmp_path, monkeypatch, endpoint)
    data = models.add("m", 3 * MiB)
    digest = endpoint.push(data)
    record = models.download("m", endpoint.ref(), lean_http=lean)
    assert (record.status, record.source) == ("downloaded", f"{endpoint.ref()}@{digest}")
    assert file_sha256(models.cache / "m.pt") == sha256_hex(data)
    # One token for the run, fetched with the credentials of the auth file; each range carried it.
    (token_get,) = endpoint.token_gets()
    assert (
        token_get.headers["authorization"] == "Basic " + base64.b64encode(f"ann:{SECRET}".encode()).decode()
    )
    query = parse_qs(urlsplit(token_get.path).query)
    assert query == {"service": ["fake"], "scope": [f"repository:{REPO}:pull"]}
    served = [s for s in endpoint.blob_gets() if s.status == 206]
    assert len(served) >= 4  # parallel ranges through the registry
    assert {s.headers.get("authorization") for s in served} == {"Bearer user-1"}
    assert [s.status for s in endpoint.blob_gets()].count(401) == 1  # only the first, anonymous, request


def test_expired_tokens_are_renewed_mid_transfer(
    endpoint: Endpoint, models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_in(tmp_path, monkeypatch, endpoint)
    endpoint.revoke_after = 2
    data = models.add("m", 3 * MiB)
    endpoint.push(data)
    record = models.download("m", endpoint.ref())
    assert record.status == "downloaded", record.error
    assert file_sha256(models.cache / "m.pt") == sha256_hex(data)
    assert len(endpoint.token_gets()) == 2  # renewed once, whichever connection met the expiry first
    assert "Bearer user-2" in {
        s.headers.get("authorization") for s in endpoint.blob_gets() if s.status == 206
    }


def test_a_busy_token_endpoint_is_retried_like_a_busy_server(
    endpoint: Endpoint, models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_in(tmp_path, monkeypatch, endpoint)
    endpoint.revoke_after, endpoint.token_busy = 2, 2
    data = models.add("m", 3 * MiB)
    endpoint.push(data)
    record = models.download("m", endpoint.ref())
    assert record.status == "downloaded", record.error
    assert [s.status for s in endpoint.token_gets()] == [200, 503, 503, 200]
    assert len(models.sleeps.delays) >= 2  # backed off as for any transient failure
    assert file_sha256(models.cache / "m.pt") == sha256_hex(data)


def test_redirect_to_blob_storage_drops_the_authorization(
    endpoint: Endpoint, models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_in(tmp_path, monkeypatch, endpoint)
    with HTTPServer() as storage:
        endpoint.storage = storage
        data = models.add("m", 3 * MiB)
        digest = endpoint.push(data)
        record = models.download("m", endpoint.ref())
        assert record.status == "downloaded"
        gets = storage.requests_for(f"/storage/{digest}/1")
        assert len(gets) >= 2 and all("authorization" not in {k.lower() for k in r.headers} for r in gets)
        assert endpoint.redirects == 1  # later ranges go to the redirect target directly
    assert endpoint.blob_gets()[-1].headers["authorization"] == "Bearer user-1"
    assert file_sha256(models.cache / "m.pt") == sha256_hex(data)


def test_an_interrupted_pull_resumes_through_the_registry(
    endpoint: Endpoint, models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_in(tmp_path, monkeypatch, endpoint)
    with HTTPServer() as storage:
        endpoint.storage = storage
        data = models.add("m", 4 * MiB)
        route = f"/storage/{endpoint.push(data)}"
        endpoint.storage_faults = {"rate_limit": 2 * MiB}
        argv = [
            sys.executable,
            "-m",
            "whisperctl",
            "--cache-dir",
            str(models.cache),
            "--registry",
            str(models.file),
        ]
        proc = subprocess.Popen(
            [*argv, "download", "--mirror", endpoint.ref(), "m"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_for(lambda: (models.cache / "m.pt.part").exists())
            time.sleep(0.4)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == ExitCode.INTERRUPTED, stderr
        assert models.finals() == []
        _wait_for(lambda: len(storage.requests_for(route + "/1")) == 1)  # it noticed the client gone
        endpoint.storage_faults = {}
        second = models.download("m", endpoint.ref(), connections=1)
        (resumed,) = storage.requests_for(route + "/2")
    assert second.status == "downloaded" and 0 < second.resumed_from < 4 * MiB
    assert resumed.range == f"bytes={second.resumed_from}-{4 * MiB - 1}"
    assert "authorization" not in {k.lower() for k in resumed.headers}
    assert file_sha256(models.cache / "m.pt") == sha256_hex(data)


class ExpireAt:
    """A download progress that makes a storage URL refuse (403, as an expired presigned URL does) once
    ``after`` bytes arrived."""

    def __init__(self, storage: HTTPServer, route: str, after: int) -> None:
        self.storage, self.route, self.after, self.seen = storage, route, after, 0

    def start(self, name: str, total: int | None, completed: int) -> None:
        pass

    def advance(self, name: str, nbytes: int) -> None:
        before, self.seen = self.seen, self.seen + nbytes
        if before < self.after <= self.seen:
            self.storage.set_faults(self.route, status=403)

    def note(self, name: str, message: str) -> None:
        pass

    def finish(self, record: api.DownloadRecord) -> None:
        pass


def test_an_expired_blob_url_sends_the_request_back_to_the_registry(
    endpoint: Endpoint, models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_in(tmp_path, monkeypatch, endpoint)
    with HTTPServer() as storage:
        endpoint.storage = storage
        data = models.add("m", 4 * MiB)
        digest = endpoint.push(data)
        (record,) = api.download(
            ["m"],
            cache_dir=models.cache,
            registry=models.file,
            mirrors=[endpoint.ref()],
            options=models.options(connections=2),
            progress=ExpireAt(storage, f"/storage/{digest}/1", MiB),
            check=False,
        )
        assert record.status == "downloaded", record.error
        first = storage.requests_for(f"/storage/{digest}/1")
        assert 403 in [r.status for r in first] and endpoint.redirects >= 2
        later = [r for r in storage.requests if r.path.startswith(f"/storage/{digest}/") and r not in first]
        assert later and {r.status for r in later} == {206}
        assert all("authorization" not in {k.lower() for k in r.headers} for r in storage.requests)
    assert file_sha256(models.cache / "m.pt") == sha256_hex(data)


def _wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_basic_auth_from_a_credential_helper(
    endpoint: Endpoint, models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint.mode = "basic"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-test"
    helper.write_text(
        f'#!/bin/sh\nread server\nprintf \'{{"Username":"ann","Secret":"{SECRET}"}}\'\n', "utf-8"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"credHelpers": {f"127.0.0.1:{endpoint.port}": "test"}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    data = models.add("m", 2 * MiB)
    endpoint.push(data)
    assert models.download("m", endpoint.ref()).status == "downloaded"
    assert file_sha256(models.cache / "m.pt") == sha256_hex(data)
    assert endpoint.token_gets() == []


def test_an_anonymous_registry_through_the_cli_and_the_environment(
    endpoint: Endpoint, models: Models
) -> None:
    endpoint.mode = "none"
    data = models.add("m", 256 * KiB)
    endpoint.push(data)
    result = models.cli("download", "--json", "m", env={"WHISPERCTL_MIRROR": endpoint.ref()})
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)[0]["source"].startswith(endpoint.ref() + "@sha256:")
    assert "authorization" not in endpoint.blob_gets()[0].headers


# -- failures: one line, exit 3 (5 offline), nothing under a final name -------------------------------------
def test_no_credentials_is_one_line_naming_what_was_tried(endpoint: Endpoint, models: Models) -> None:
    models.add("m", 64 * KiB)
    result = models.cli("download", "--mirror", endpoint.ref(), "m")
    assert result.exit_code == ExitCode.NETWORK
    assert f"{endpoint.ref()}: HTTP 401, authentication required (credentials tried: none (anonymous" in (
        result.stderr
    )
    assert "docker login" in result.stderr
    assert models.finals() == []


def test_wrong_credentials_name_the_file_never_the_secret(
    endpoint: Endpoint, models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = log_in(tmp_path, monkeypatch, endpoint, password="wrong-" + SECRET)
    models.add("m", 64 * KiB)
    result = models.cli("download", "--mirror", endpoint.ref(), "m")
    assert result.exit_code == ExitCode.NETWORK
    assert f"the token endpoint refused the credentials (credentials tried: REGISTRY_AUTH_FILE {path})" in (
        result.stderr
    )
    assert SECRET not in result.stderr + result.stdout and models.finals() == []


def test_a_forbidden_repository_is_one_line_naming_the_source(
    endpoint: Endpoint, models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = log_in(tmp_path, monkeypatch, endpoint)
    endpoint.forbidden = True
    models.add("m", 64 * KiB)
    record = models.download("m", endpoint.ref())
    assert record.exit_code == ExitCode.NETWORK
    assert f"{endpoint.ref()}: HTTP 403, access denied (credentials tried: REGISTRY_AUTH_FILE {path}); " in (
        record.error or ""
    )
    assert [s.status for s in endpoint.blob_gets()] == [401, 403]  # a 403 is not retried


def test_a_missing_blob_falls_through_to_the_next_source(endpoint: Endpoint, models: Models) -> None:
    endpoint.mode = "none"
    with HTTPServer() as official:
        data = models.add("m", 256 * KiB, url=official.url("/m.pt"))
        official.add("/m.pt", data)
        record = models.download("m", endpoint.ref())
        assert (record.status, record.source) == ("downloaded", official.url("/m.pt"))
        assert any("HTTP 404" in w and "trying the next source" in w for w in record.warnings)


def test_a_missing_blob_with_no_other_source_is_exit_3(endpoint: Endpoint, models: Models) -> None:
    endpoint.mode = "none"
    models.add("m", 64 * KiB)
    result = models.cli("download", "--mirror", endpoint.ref(), "m")
    assert result.exit_code == ExitCode.NETWORK
    assert "/blobs/sha256:" in result.stderr and "HTTP 404" in result.stderr
    assert models.finals() == []


def test_offline_an_oci_mirror_is_not_used(endpoint: Endpoint, models: Models) -> None:
    models.add("m", 64 * KiB)
    result = models.cli("download", "--offline", "--mirror", endpoint.ref(), "m")
    assert result.exit_code == ExitCode.NOT_CACHED
    assert endpoint.seen == []


def test_credentials_never_go_to_a_plain_http_realm_on_another_host(
    endpoint: Endpoint, models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_in(tmp_path, monkeypatch, endpoint)
    endpoint.realm = f"http://localhost:{endpoint.port}/token"  # the same server under another name
    models.add("m", 64 * KiB)
    record = models.download("m", endpoint.ref())
    assert record.exit_code == ExitCode.NETWORK and "HTTP 401" in (record.error or "")
    assert endpoint.token_gets() and all("authorization" not in s.headers for s in endpoint.token_gets())


# -- the client's own rules ----------------------------------------------------------------------------------
def test_authorization_only_for_the_registry_origin(endpoint: Endpoint, tmp_path: Path) -> None:
    endpoint.mode = "basic"

    digest = endpoint.push(b"x")
    env = {"REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    (tmp_path / "auth.json").write_text(
        json.dumps({"auths": {f"127.0.0.1:{endpoint.port}": {"username": "ann", "password": SECRET}}})
    )

    async def go() -> dict[str, dict[str, str]]:
        async with httpx.AsyncClient() as http:
            client = RegistryClient(
                parse_oci_url(endpoint.ref()),
                http,
                lookup=lambda r: find_credentials(r.netloc, r.repository, env),
            )
            response = await client.request("GET", client.blob_path(digest), scope=client.pull_scope())
            assert (response.status_code, response.content) == (200, b"x")
            base = f"http://127.0.0.1:{endpoint.port}"
            scope = client.pull_scope()
            return {
                url: client.auth_headers_for(url, scope)
                for url in (
                    base + "/v2/x",
                    f"https://127.0.0.1:{endpoint.port}/v2/x",
                    f"http://127.0.0.1:{endpoint.port + 1}/v2/x",
                    f"http://localhost:{endpoint.port}/v2/x",
                    "http://127.0.0.1/v2/x",
                    "not a url",
                )
            }

    headers = asyncio.run(go())
    values = list(headers.values())
    assert values[0] == {"Authorization": "Basic " + base64.b64encode(f"ann:{SECRET}".encode()).decode()}
    assert values[1:] == [{}] * 5


def test_choose_source_reads_oci_urls() -> None:
    source = choose_source("oci://endpoint.example:5000/team/whisper")
    assert isinstance(source, OCIRegistry) and not source.offline
    assert source.ref.base_url == "https://endpoint.example:5000"
    assert choose_source("oci+http://127.0.0.1:5000/m").ref.scheme == "http"  # type: ignore[attr-defined]


# -- the CNCF distribution registry ------------------------------------------------------------------------
def push_blob(reg: Registry, repository: str, data: bytes) -> str:
    """``data`` as a blob of ``repository``, by the distribution API's monolithic upload (POST, then PUT)."""
    digest = "sha256:" + sha256_hex(data)
    headers = reg.bearer(f"repository:{repository}:pull,push") if reg.token_server else {}
    with reg.client() as http:
        started = http.post(f"/v2/{repository}/blobs/uploads/", headers=headers)
        assert started.status_code == 202, started.text
        location = started.headers["location"]  # its query (the upload's state) is kept
        done = http.put(
            f"{location}{'&' if '?' in location else '?'}digest={digest}",
            content=data,
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, done.text
    return digest


def use(reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """This process's environment for ``reg`` (its CA, its credentials); the ``--mirror`` value."""
    if reg.ca_file is not None:
        monkeypatch.setenv("SSL_CERT_FILE", str(reg.ca_file))
    if reg.username:
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(reg.auth_json(tmp_path / "auth.json")))
    return reg.url(REPO)


def blob_gets(reg: Registry, digest: str) -> list[tuple[int, int]]:
    """(status, bytes sent) of each GET of the blob in the registry's access log."""
    path = f"/v2/{REPO}/blobs/{digest}"
    return [(r.status, r.bytes_sent) for r in reg.requests() if r.method == "GET" and r.path == path]


class Interrupt:
    """A download progress that stops the run, as Ctrl-C does, once ``after`` bytes arrived."""

    def __init__(self, after: int) -> None:
        self.after, self.seen = after, 0

    def start(self, name: str, total: int | None, completed: int) -> None:
        pass

    def advance(self, name: str, nbytes: int) -> None:
        self.seen += nbytes
        if self.seen >= self.after:
            raise KeyboardInterrupt

    def note(self, name: str, message: str) -> None:
        pass

    def finish(self, record: api.DownloadRecord) -> None:
        pass


def test_real_registry_parallel_ranges_over_tls_and_htpasswd(
    registry: Registry, models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = use(registry, tmp_path, monkeypatch)
    data = models.add("m", 3 * MiB + 5)
    digest = push_blob(registry, REPO, data)
    record = models.download("m", mirror)
    assert (record.status, record.source) == ("downloaded", f"{mirror}@{digest}")
    assert file_sha256(models.cache / "m.pt") == sha256_hex(data)
    gets = blob_gets(registry, digest)
    ranges = [sent for status, sent in gets if status == 206]
    assert len(ranges) >= 4  # parallel ranges (the registry logs what it wrote, not what was read)
    assert [status for status, _ in gets].count(401) == 1  # anonymous once, then basic on every request


def test_real_registry_bearer_token_is_fetched_once_for_the_run(
    token_registry: Registry, models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = use(token_registry, tmp_path, monkeypatch)
    token = token_registry.token_server
    assert token is not None
    first, second = models.add("a", 2 * MiB), models.add("b", 1 * MiB + 3)
    digests = [push_blob(token_registry, REPO, data) for data in (first, second)]
    issued = token.issued
    records = api.download(
        ["a", "b"], cache_dir=models.cache, registry=models.file, mirrors=[mirror], options=models.options()
    )
    assert [r.status for r in records] == ["downloaded", "downloaded"]
    assert token.issued == issued + 1  # one token for both models and all their ranges
    assert token.requests[-1] == f"repository:{REPO}:pull"
    for digest in digests:
        assert [status for status, _ in blob_gets(token_registry, digest)].count(206) >= 2


def test_real_registry_resume_with_if_range(
    registry: Registry, models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = use(registry, tmp_path, monkeypatch)
    data = models.add("m", 16 * MiB)
    digest = push_blob(registry, REPO, data)
    with pytest.raises(KeyboardInterrupt):
        api.download(
            ["m"],
            cache_dir=models.cache,
            registry=models.file,
            mirrors=[mirror],
            options=models.options(connections=1),
            progress=Interrupt(256 * KiB),
        )
    assert (models.cache / "m.pt.part").exists() and models.finals() == []
    before = len(registry.requests())
    record = models.download("m", mirror, connections=1)
    assert record.status == "downloaded" and 0 < record.resumed_from < len(data)
    resumed = [r for r in registry.requests()[before:] if r.path == f"/v2/{REPO}/blobs/{digest}"]
    assert [(r.status, r.bytes_sent) for r in resumed if r.method == "GET" and r.status != 401] == [
        (206, len(data) - record.resumed_from)
    ]
    assert file_sha256(models.cache / "m.pt") == sha256_hex(data)
