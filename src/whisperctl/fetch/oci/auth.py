"""Registry credentials as container tools find them, and the bearer-token challenge.

Credentials come only from the files that skopeo, podman, docker and oras read, in their order:
``$REGISTRY_AUTH_FILE`` (else ``$XDG_RUNTIME_DIR/containers/auth.json``),
``$XDG_CONFIG_HOME/containers/auth.json`` (``~/.config/...``) and ``$DOCKER_CONFIG/config.json``
(``~/.docker/config.json``): an ``auths`` entry (a base64 ``auth`` or ``username``/``password``), or a
credential helper named by ``credHelpers`` or ``credsStore``, run as ``docker-credential-NAME get`` with the
registry on stdin, bounded in time and output.
Never from the command line.

A ``WWW-Authenticate`` challenge and a token endpoint's answer are untrusted: sizes are bounded, text is
sanitised before it reaches a message, and where a token is fetched is checked (:func:`token_request`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from whisperctl.errors import NetworkError, UsageError, quoted, sanitized

__all__ = [
    "Challenge",
    "Credential",
    "Lookup",
    "TokenRequest",
    "find_credentials",
    "parse_challenges",
    "parse_token",
    "token_request",
]

_MAX_FILE = 4 << 20  # an auth file is a few KiB; a bigger one is not one
_MAX_HELPER_OUTPUT = 64 << 10
_HELPER_TIMEOUT = 15.0
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_CHALLENGE = 4096
_MAX_TOKEN = 16 << 10
_MAX_TOKEN_BODY = 256 << 10
_DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credential:
    """A user name and secret, and where they came from (the secret is never shown)."""

    username: str
    password: str = field(repr=False)
    source: str  # "REGISTRY_AUTH_FILE /path", "docker-credential-pass", ...

    def basic(self) -> str:
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


@dataclass(frozen=True)
class Lookup:
    """A search's outcome: the credential found (None: anonymous) and what was looked at, for messages."""

    credential: Credential | None
    tried: str


def _auth_files(env: Mapping[str, str], home: Path) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    if env.get("REGISTRY_AUTH_FILE"):  # in place of the runtime file, as containers-auth.json(5) says
        files.append(("REGISTRY_AUTH_FILE", Path(env["REGISTRY_AUTH_FILE"])))
    elif env.get("XDG_RUNTIME_DIR"):
        files.append(("podman's auth file", Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"))
    config = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    files.append(("containers auth file", config / "containers" / "auth.json"))
    docker = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"
    files.append(("docker config", docker / "config.json"))
    return files


def _read_json(path: Path, label: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(
            f"{label} {path}: cannot read it ({exc.strerror or exc}); fix its permissions or move it away"
        ) from None
    if len(data) > _MAX_FILE:
        raise UsageError(f"{label} {path}: over {_MAX_FILE:,} bytes, not an auth file; fix or move it")
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        # The decoder's message may quote the file, which holds secrets: only where it failed.
        where = f"line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise UsageError(f"{label} {path}: not valid JSON ({where}); fix it or log in again") from None
    if not isinstance(parsed, dict):
        raise UsageError(f"{label} {path}: not a JSON object; fix it or log in again")
    return parsed


def _key_matches(key: str, netloc: str, repository: str) -> int:
    """How well an ``auths`` key names this registry: -1 not at all, else the length of its path (podman
    allows ``host/namespace`` keys; the most specific wins)."""
    text = key.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    host, _, path = text.partition("/")
    host = host.lower()
    if host in _DOCKER_HUB:
        host = "docker.io"
    if host != netloc:
        return -1
    path = path.strip("/")
    if path in ("", "v1", "v2"):
        return 0
    if repository == path or repository.startswith(path + "/"):
        return len(path)
    return -1


def _decode_entry(entry: Any, path: Path, label: str) -> tuple[str, str] | None:
    if not isinstance(entry, dict):
        return None
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(password, str) and user:
        return user, password
    auth = entry.get("auth")
    if not isinstance(auth, str) or not auth:
        return None
    try:
        pair = base64.b64decode(auth, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise UsageError(
            f"{label} {path}: an 'auth' value is not base64 of 'user:password'; log in again"
        ) from None
    user, sep, password = pair.partition(":")
    if not sep or not user:
        raise UsageError(f"{label} {path}: an 'auth' value is not base64 of 'user:password'; log in again")
    return user, password


def _run_bounded(
    argv: list[str], stdin: bytes, env: Mapping[str, str], timeout: float
) -> tuple[int, bytes, bytes]:
    """Run a helper in its own session: its exit code and output, each read up to just over the bound;
    past ``timeout`` (or the bound), the whole session is killed (a shell script's children too)."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        start_new_session=True,
    )
    outputs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    deadline = time.monotonic() + timeout
    finished = False
    try:
        with contextlib.suppress(BrokenPipeError), proc.stdin as feed:  # type: ignore[union-attr]
            feed.write(stdin)
        with selectors.DefaultSelector() as selector:
            for stream in outputs:
                selector.register(stream, selectors.EVENT_READ)  # type: ignore[arg-type]
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 65536)
                    kept = outputs[key.fileobj]  # type: ignore[index]
                    kept += chunk
                    if len(kept) > _MAX_HELPER_OUTPUT:
                        return -1, bytes(kept), b""  # the finally kills it
                    if not chunk:
                        selector.unregister(key.fileobj)
        code = proc.wait(max(0.0, deadline - time.monotonic()))
        finished = True
        return code, bytes(outputs[proc.stdout]), bytes(outputs[proc.stderr])
    except subprocess.TimeoutExpired:
        raise TimeoutError from None
    finally:
        if not finished:  # its children too, which may hold the pipes open
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for stream in outputs:
            stream.close()  # type: ignore[union-attr]


def _helper(name: str, server: str, env: Mapping[str, str], timeout: float) -> tuple[Credential | None, str]:
    """``docker-credential-NAME get``: a credential, or None and why (not installed, no entry)."""
    program = f"docker-credential-{name}"
    if not _HELPER_NAME.fullmatch(name):
        return None, f"credential helper {quoted(name)} (not a valid helper name)"
    found = shutil.which(program, path=env.get("PATH"))
    if found is None:
        return None, f"{program} (not found on PATH)"
    try:
        code, out, err = _run_bounded([found, "get"], server.encode(), env, timeout)
    except TimeoutError:
        return None, f"{program} (no answer within {timeout:g} s)"
    except OSError as exc:
        return None, f"{program} (cannot run it: {exc.strerror or exc})"
    if len(out) > _MAX_HELPER_OUTPUT:
        return None, f"{program} (an answer over {_MAX_HELPER_OUTPUT:,} bytes, refused)"
    if code != 0:
        # "credentials not found in native keychain": no entry for this registry, the usual case.
        return None, f"{program} (no credentials: {sanitized(out.strip() or err.strip(), 80)})"
    try:
        answer = json.loads(out)
        user, secret = answer["Username"], answer["Secret"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return None, f"{program} (an answer that is not its JSON)"
    if not isinstance(user, str) or not isinstance(secret, str) or not user:
        return None, f"{program} (an answer without a user name and secret)"
    if user == "<token>":
        return None, f"{program} (an identity token, which whisperctl does not use; log in with a password)"
    return Credential(user, secret, program), program


def _from_file(
    config: dict[str, Any],
    path: Path,
    label: str,
    netloc: str,
    repository: str,
    env: Mapping[str, str],
    timeout: float,
) -> tuple[Credential | None, str] | None:
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if isinstance(name, str) and _key_matches(key, netloc, repository) >= 0:
                return _helper(name, key, env, timeout)
    auths = config.get("auths")
    if isinstance(auths, dict):
        best: tuple[int, str] | None = None
        for key in auths:
            score = _key_matches(key, netloc, repository) if isinstance(key, str) else -1
            if score >= 0 and (best is None or score > best[0]):
                best = (score, key)
        if best is not None:
            pair = _decode_entry(auths[best[1]], path, label)
            if pair is not None:
                return Credential(pair[0], pair[1], f"{label} {path}"), f"{label} {path}"
            store = config.get("credsStore")
            if isinstance(store, str) and store:
                return _helper(store, best[1], env, timeout)
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return _helper(store, netloc, env, timeout)
    return None


def find_credentials(
    netloc: str,
    repository: str,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    *,
    helper_timeout: float = _HELPER_TIMEOUT,
) -> Lookup:
    """The credential for ``netloc`` (``host[:port]``) from the first auth file that names it; anonymous
    (``credential`` None) when none does. Runs a credential helper when a file says so: call it off the
    event loop."""
    environ = os.environ if env is None else env
    netloc = netloc.lower()
    if netloc in _DOCKER_HUB:
        netloc = "docker.io"
    base = home if home is not None else Path(environ.get("HOME") or Path.home())
    looked: list[str] = []
    for label, path in _auth_files(environ, base):
        config = _read_json(path, label)
        if config is None:
            continue
        looked.append(f"{label} {path}")
        found = _from_file(config, path, label, netloc, repository, environ, helper_timeout)
        if found is not None:
            return Lookup(found[0], found[1])
    tried = "none (anonymous; no auth file names this registry" + (
        f": looked in {', '.join(looked)})" if looked else ")"
    )
    return Lookup(None, tried)


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: its scheme (lowercase) and parameters (names lowercase)."""

    scheme: str
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)(?:\s+|$)")


def parse_challenges(values: list[str]) -> list[Challenge]:
    """The challenges in the ``WWW-Authenticate`` headers of an answer: Basic and Bearer with their
    parameters. What is malformed or oversized is left out (the caller then reports a plain 401)."""
    found: list[Challenge] = []
    for value in values[:8]:
        if len(value) > _MAX_CHALLENGE:
            continue
        pos = 0
        while pos < len(value):
            match = _SCHEME.match(value, pos)
            if match is None:
                break
            scheme, pos = match.group(1).lower(), match.end()
            params: dict[str, str] = {}
            while pos < len(value):
                param = _PARAM.match(value, pos)
                if param is None:
                    break
                raw = param.group(2)
                text = re.sub(r"\\(.)", r"\1", raw) if raw is not None else param.group(3)
                params.setdefault(param.group(1).lower(), text)
                pos = param.end()
            if scheme in ("basic", "bearer"):
                found.append(Challenge(scheme, params))
            if pos < len(value) and _PARAM.match(value, pos) is None and _SCHEME.match(value, pos) is None:
                break
    return found


@dataclass(frozen=True)
class TokenRequest:
    """Where to ask for a token and whether the credentials may go there."""

    url: str
    params: list[tuple[str, str | int | float | bool | None]]
    send_credentials: bool


def token_request(
    challenge: Challenge, registry_scheme: str, registry_host: str, scopes: list[str], display: str
) -> TokenRequest:
    """The token endpoint a Bearer challenge names, checked: an http(s) URL of bounded size without
    credentials in it; https unless the registry itself is plain http; and credentials sent over plain http
    only to the registry's own host."""
    realm = challenge.params.get("realm", "")
    if not realm or len(realm) > 2048 or not realm.isprintable():
        raise NetworkError(
            f"{display}: a Bearer challenge without a usable realm ({quoted(realm, 80)}); "
            "check the registry's auth configuration"
        )
    try:
        parts = urlsplit(realm)
        host = parts.hostname
    except ValueError:
        host, parts = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host or "@" in parts.netloc:
        raise NetworkError(
            f"{display}: refused the token realm {quoted(realm, 120)} (not an http(s) URL without "
            "credentials); check the registry's auth configuration"
        )
    if parts.scheme == "http" and registry_scheme == "https":
        raise NetworkError(
            f"{display}: refused the token realm {quoted(realm, 120)} (plain http for an https registry); "
            "check the registry's auth configuration"
        )
    params: list[tuple[str, str | int | float | bool | None]] = (
        [("service", challenge.params["service"])] if challenge.params.get("service") else []
    )
    params += [("scope", scope) for scope in scopes]
    same_host = host.lower() == registry_host.lower()
    return TokenRequest(realm, params, parts.scheme == "https" or same_host)


def parse_token(body: bytes, display: str) -> str:
    """The token in a token endpoint's JSON answer (``token`` or ``access_token``), checked to be a short
    string of visible ASCII (it goes into a header)."""
    if len(body) > _MAX_TOKEN_BODY:
        raise NetworkError(f"{display}: the token endpoint answered {len(body):,} bytes, refused")
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise NetworkError(
            f"{display}: the token endpoint's answer is not JSON ({sanitized(body, 80)}); "
            "check the registry's auth configuration"
        ) from None
    token = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise NetworkError(f"{display}: the token endpoint's answer has no token; check the registry's auth")
    if len(token) > _MAX_TOKEN or not re.fullmatch(r"[\x21-\x7e]+", token):
        raise NetworkError(f"{display}: the token endpoint gave an unusable token (too long or not ASCII)")
    return token
