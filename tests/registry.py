"""The CNCF distribution registry (Debian's ``docker-registry``) on 127.0.0.1 for tests and benchmarks.

    ca = make_pki(tmp / "pki")
    with serve(tmp / "reg", ca=ca) as reg:                       # TLS from a private CA, htpasswd
        env = reg.env(tmp / "auth.json")                          # SSL_CERT_FILE + REGISTRY_AUTH_FILE
        run whisperctl push reg.url("models") tiny ...            # "oci://127.0.0.1:PORT/models"
        assert any(line.method == "PATCH" for line in reg.requests())

Variants: ``serve(..., ca=None, auth=None)`` is a plain-http anonymous registry (``reg.url()`` is then
``oci+http://...``); ``auth="token"`` makes the registry answer with a bearer challenge whose realm is a
small token server of this module (:class:`TokenServer`: basic credentials in, a JWT signed RS256 by
``openssl`` with a key whose certificate is the registry's ``rootcertbundle``); ``upstream=reg`` makes a
pull-through proxy of another registry (its credentials, its CA trusted through SSL_CERT_FILE in the proxy's
environment). Distribution 2.8 keys a proxy's credentials by the realm URL of the upstream's challenge, so
a proxy with credentials needs a token upstream (an htpasswd realm is a name, not a URL).

The binaries come from Debian (``docker-registry``, ``htpasswd`` from apache2-utils, ``skopeo``), installed
with apt-get when missing, as tests/nginx.py does for nginx. Storage is a directory of the test's own with
deletes enabled, so a test can delete a blob; the access log is read through :meth:`Registry.requests`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from .nginx import free_port

PACKAGES = {"docker-registry": "docker-registry", "htpasswd": "apache2-utils", "skopeo": "skopeo"}


class RegistryUnavailableError(RuntimeError):
    """The registry (or htpasswd, skopeo, openssl) is missing and cannot be installed, or does not start."""


def ensure_binary(name: str) -> str:
    """``name`` on PATH, installed from its Debian package (``PACKAGES``) when missing."""
    found = shutil.which(name)
    if found:
        return found
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo"):
        prefix = ["sudo", "-n"]
    else:
        raise RegistryUnavailableError(f"{name} is not installed, and neither root nor sudo can install it")
    if not shutil.which("apt-get"):
        raise RegistryUnavailableError(f"{name} is not installed, and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = []
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", PACKAGES[name]]):
        proc = subprocess.run([*prefix, *step], env=env, capture_output=True, text=True, check=False)
        log.append(f"{' '.join(step)}: exit {proc.returncode} {proc.stderr.strip()[-300:]}")
    found = shutil.which(name)
    if not found:
        raise RegistryUnavailableError(f"cannot install {name}: " + " | ".join(log))
    return found


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    if not shutil.which("openssl"):
        raise RegistryUnavailableError("the registry fixtures need the openssl CLI")
    done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        raise RegistryUnavailableError(f"openssl {args[0]}: {done.stderr.decode(errors='replace')[-300:]}")
    return done.stdout


@dataclasses.dataclass(frozen=True)
class Pki:
    """A private CA (``ca_file``, what clients trust) and a server certificate for 127.0.0.1 and localhost."""

    ca_file: Path
    ca_key: Path
    cert: Path
    key: Path


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "2",
        "-subj",
        "/CN=whisperctl test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    _openssl("req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = directory / "server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
        "utf-8",
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        str(cert),
        "-extfile",
        str(ext),
    )
    return Pki(ca, ca_key, cert, key)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenServer:
    """A token endpoint as in the distribution token spec, over TLS from the test's CA, in a thread.

    ``GET /token?service=S&scope=repository:REPO:pull,push`` with HTTP basic credentials that match answers
    ``{"token": JWT, "access_token": JWT, "expires_in": ...}`` granting the scope asked for; without them, or
    with wrong ones, a 401. ``issued`` counts the tokens handed out, ``requests`` the scopes asked for.
    """

    service = "whisperctl-test"
    issuer = "whisperctl-test-issuer"

    def __init__(self, directory: Path, tls: Pki, username: str, password: str, *, lifetime: int = 300):
        self.directory, self.username, self.password, self.lifetime = directory, username, password, lifetime
        directory.mkdir(parents=True, exist_ok=True)
        self.signing_key, self.signing_cert = directory / "token.key", directory / "token.pem"
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(self.signing_key),
            "-out",
            str(self.signing_cert),
            "-days",
            "2",
            "-subj",
            "/CN=whisperctl test token issuer",
        )
        der = _openssl("x509", "-in", str(self.signing_cert), "-outform", "DER")
        self._x5c = base64.b64encode(der).decode("ascii")
        self.issued = 0
        self.requests: list[str] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, body = owner._answer(self.path, self.headers.get("Authorization", ""))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="token"')
                self.end_headers()
                self.wfile.write(body)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert, tls.key)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self.realm = f"https://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="token-server", daemon=True)
        self._thread.start()

    def _answer(self, path: str, authorization: str) -> tuple[int, bytes]:
        query = parse_qs(urlsplit(path).query)
        scopes = query.get("scope", [])
        with self._lock:
            self.requests.extend(scopes)
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if not secrets.compare_digest(authorization, expected):
            return 401, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        token = self.sign({"access": access, "sub": self.username})
        with self._lock:
            self.issued += 1
        return 200, json.dumps({"token": token, "access_token": token, "expires_in": self.lifetime}).encode()

    def sign(self, claims: dict[str, Any]) -> str:
        """A JWT the registry accepts: RS256, the signing certificate in ``x5c``, the registry's claims."""
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "aud": self.service,
            "iat": now,
            "nbf": now - 5,
            "exp": now + self.lifetime,
            "jti": secrets.token_hex(8),
            **claims,
        }
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(body).encode())
        signature = _openssl("dgst", "-sha256", "-sign", str(self.signing_key), stdin=signing_input.encode())
        return signing_input + "." + _b64url(signature)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@dataclasses.dataclass(frozen=True)
class AccessLine:
    """One line of the registry's access log (combined log format)."""

    method: str
    path: str
    status: int
    bytes_sent: int
    user: str


_ACCESS = re.compile(r'^\S+ - (\S+) \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)')


@dataclasses.dataclass
class Registry:
    """A running registry: ``url(repo)`` is the whisperctl reference; credentials are None when anonymous."""

    root: Path
    port: int
    scheme: str
    ca_file: Path | None
    username: str | None
    password: str | None
    process: subprocess.Popen[bytes]
    token_server: TokenServer | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def url(self, repository: str = "models") -> str:
        prefix = "oci" if self.scheme == "https" else "oci+http"
        return f"{prefix}://{self.host}/{repository}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def log_lines(self) -> list[str]:
        """The registry's output so far, access log and application log interleaved, as written."""
        return (self.root / "registry.out").read_text("utf-8", "replace").splitlines()

    def requests(self) -> list[AccessLine]:
        """The access log's requests so far, in order."""
        found = []
        for line in self.log_lines():
            m = _ACCESS.match(line)
            if m:
                user, method, path, status, sent = m.groups()
                found.append(AccessLine(method, path, int(status), 0 if sent == "-" else int(sent), user))
        return found

    def auth_json(self, path: Path, *, username: str | None = None, password: str | None = None) -> Path:
        """A containers-auth.json (REGISTRY_AUTH_FILE, skopeo's and podman's format) with these credentials
        (the registry's own by default)."""
        user, secret = username or self.username or "", password or self.password or ""
        auth = base64.b64encode(f"{user}:{secret}".encode()).decode()
        path.write_text(json.dumps({"auths": {self.host: {"auth": auth}}}), "utf-8")
        return path

    def env(self, auth_file: Path | None = None) -> dict[str, str]:
        """``os.environ`` plus SSL_CERT_FILE (the private CA) and REGISTRY_AUTH_FILE (when given)."""
        env = dict(os.environ)
        if self.ca_file is not None:
            env["SSL_CERT_FILE"] = str(self.ca_file)
        if auth_file is not None:
            env["REGISTRY_AUTH_FILE"] = str(auth_file)
        return env

    def client(self) -> httpx.Client:
        """A raw httpx client that trusts the CA and sends the registry's basic credentials, if any (a token
        registry's requests need :meth:`bearer` headers instead)."""
        basic = self.username and self.password and self.token_server is None
        auth = (self.username or "", self.password or "") if basic else None
        verify: ssl.SSLContext | bool = True
        if self.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(self.ca_file))
        return httpx.Client(base_url=self.base_url, auth=auth, verify=verify, timeout=30)

    def bearer(self, scope: str) -> dict[str, str]:
        """Authorization for ``scope`` from the token server (token variant only)."""
        assert self.token_server is not None
        token = self.token_server.sign({"access": [_scope_claim(scope)], "sub": self.username})
        return {"Authorization": f"Bearer {token}"}

    def delete_blob(self, repository: str, digest: str) -> None:
        """Deletes ``sha256:...`` from ``repository`` through the API (storage deletes are enabled)."""
        headers = self.bearer(f"repository:{repository}:delete") if self.token_server else {}
        with self.client() as http:
            r = http.delete(f"/v2/{repository}/blobs/{digest}", headers=headers)
        if r.status_code != 202:
            raise RegistryUnavailableError(f"DELETE blob {digest}: {r.status_code} {r.text[:200]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.token_server is not None:
            self.token_server.stop()


def _scope_claim(scope: str) -> dict[str, Any]:
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return {"type": kind, "name": name, "actions": actions.split(",")}


def htpasswd_line(username: str, password: str) -> str:
    """A bcrypt htpasswd entry (the registry accepts no other hash)."""
    binary = ensure_binary("htpasswd")
    done = subprocess.run([binary, "-nbB", username, password], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RegistryUnavailableError(f"htpasswd -B: {done.stderr.strip()[-200:]}")
    return done.stdout.strip() + "\n"


def _config(
    root: Path,
    port: int,
    tls: Pki | None,
    auth: str | None,
    upstream: Registry | None,
    token: TokenServer | None,
) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  formatter: text",
        "  accesslog:",
        "    disabled: false",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {root / 'storage'}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        f"  secret: {secrets.token_hex(16)}",
        "  debug:",
        "    addr: ''",
    ]
    if tls is not None:
        lines += ["  tls:", f"    certificate: {tls.cert}", f"    key: {tls.key}"]
    if auth == "htpasswd":
        lines += ["auth:", "  htpasswd:", "    realm: whisperctl-test", f"    path: {root / 'htpasswd'}"]
    elif auth == "token":
        assert token is not None
        lines += [
            "auth:",
            "  token:",
            f"    realm: {token.realm}",
            f"    service: {token.service}",
            f"    issuer: {token.issuer}",
            f"    rootcertbundle: {token.signing_cert}",
        ]
    if upstream is not None:
        lines += ["proxy:", f"  remoteurl: {upstream.base_url}"]
        if upstream.username:
            lines += [f"  username: {upstream.username}", f"  password: {upstream.password}"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def serve(
    root: Path,
    *,
    ca: Pki | None,
    auth: str | None = "htpasswd",
    upstream: Registry | None = None,
    username: str = "fleet",
    password: str | None = None,
) -> Iterator[Registry]:
    """A registry under ``root`` on a free port of 127.0.0.1 (TLS when ``ca`` is given; ``auth`` is
    "htpasswd", "token" or None), once it answers /v2/ (15 s at most); always stopped afterwards."""
    binary = ensure_binary("docker-registry")
    root.mkdir(parents=True, exist_ok=True)
    (root / "storage").mkdir(exist_ok=True)
    port = free_port()
    password = password or secrets.token_urlsafe(12)
    token = None
    if auth == "htpasswd":
        (root / "htpasswd").write_text(htpasswd_line(username, password), "utf-8")
    elif auth == "token":
        if ca is None:
            raise ValueError("a token registry needs TLS (its realm is https)")
        token = TokenServer(root / "token", ca, username, password)
    (root / "config.yml").write_text(_config(root, port, ca, auth, upstream, token), "utf-8")
    env = dict(os.environ)
    if upstream is not None and upstream.ca_file is not None:
        env["SSL_CERT_FILE"] = str(upstream.ca_file)
    out = open(root / "registry.out", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [binary, "serve", str(root / "config.yml")],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
    )
    reg = Registry(
        root,
        port,
        "https" if ca else "http",
        ca.ca_file if ca else None,
        username if auth else None,
        password if auth else None,
        proc,
        token,
    )
    try:
        _wait_ready(reg)
        yield reg
    finally:
        reg.stop()
        out.close()


def _wait_ready(reg: Registry) -> None:
    deadline = time.monotonic() + 15
    while True:
        if reg.process.poll() is not None:
            tail = " | ".join(reg.log_lines()[-5:])[-600:]
            raise RegistryUnavailableError(f"docker-registry exited with {reg.process.returncode}: {tail}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", reg.port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RegistryUnavailableError(f"docker-registry did not listen on {reg.host} within 15 s")
        time.sleep(0.05)
