"""The engine's HTTP client: one :class:`httpx.AsyncClient` per run, with the environment's TLS and proxy
settings, and the lean pool (:mod:`.wire`) that serves direct connections.

The environment is checked when the client is made, before any request: a ``SSL_CERT_FILE`` or
``SSL_CERT_DIR`` that gives no certificates, or a proxy variable that cannot be used, is one
:class:`~whisperctl.errors.UsageError` line naming the variable and the fix (exit 2), not a traceback at the
first request or a silent fallback. :func:`describe_transport_error` names a proxy that fails as the proxy.
"""

from __future__ import annotations

import functools
import os
import re
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import httpcore
import httpx

from whisperctl._version import __version__
from whisperctl.errors import NetworkError, UsageError, quoted, sanitized
from whisperctl.fetch.http.wire import EngineClient, WirePool

__all__ = ["check_environment", "describe_transport_error", "make_client"]

_PROXY_SCHEMES = ("http", "https")  # what httpx (without the socks extra) can talk to
_PEM_CERT = re.compile(rb"-----BEGIN (?:TRUSTED |X509 )?CERTIFICATE-----")
_PEM_SCAN = 16 * 1024 * 1024  # a CA bundle is a few hundred KiB: the first certificate comes early
_HASHED_CERT = re.compile(r"[0-9a-f]{8}\.\d+")  # OpenSSL's c_rehash names in a CA directory

_READ_SIZE = 1024 * 1024


class _WideReads(httpcore.AsyncNetworkStream):
    """A socket stream that reads up to 1 MiB at a time instead of httpcore's 64 KiB.

    Each read passes through several layers of Python (anyio, httpcore, h11, httpx); sixteen times fewer
    reads nearly halve the CPU a fast local download costs, which is what bounds it on a small machine.
    """

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max(max_bytes, _READ_SIZE), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _WideReads(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _WideReadBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _WideReads(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        return _WideReads(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def make_client(*, timeout: httpx.Timeout, max_connections: int, lean_http: bool = True) -> httpx.AsyncClient:
    """The one HTTP client of a run: TLS verified, environment honoured (SSL_CERT_FILE, proxies), no
    automatic redirects (the engine follows them itself, bounded and never from https to http).

    With ``lean_http`` it carries a :class:`.wire.WirePool` with the same TLS context,
    which the engine uses for the URLs that no proxy applies to."""
    check_environment()
    ssl_context = functools.cache(_tls_context)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)

    def transport(proxy: str | None = None) -> httpx.AsyncBaseTransport:
        made = httpx.AsyncHTTPTransport(verify=ssl_context(), limits=limits, trust_env=True, proxy=proxy)
        pool = getattr(made, "_pool", None)
        # httpx does not expose httpcore's network_backend; when its pool is where it has been since 0.18,
        # wrap the backend, else keep httpcore's default reads (correct, only slower).
        if isinstance(getattr(pool, "_network_backend", None), httpcore.AsyncNetworkBackend):
            pool._network_backend = _WideReadBackend(pool._network_backend)  # type: ignore[union-attr]
        return made

    # Given a transport, httpx ignores the proxy variables (its trust_env then only covers the TLS
    # settings): mount a proxy transport for each, as httpx would have.
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {
        pattern: None
        if proxy is None
        else _LazyTransport(functools.partial(transport, proxy), proxy=(_variable_for(pattern), proxy))
        for pattern, proxy in _environment_proxies().items()
    }
    return EngineClient(
        wire=WirePool.from_environment(ssl_context) if lean_http else None,
        transport=_LazyTransport(transport),
        mounts=mounts,
        timeout=timeout,
        headers={"User-Agent": f"whisperctl/{__version__}"},
        trust_env=True,
        follow_redirects=False,
    )


def _environment_proxies() -> dict[str, str | None]:
    """URL patterns and their proxy (None: no proxy, from NO_PROXY), read from the environment by httpx."""
    try:
        from httpx._utils import get_environment_proxies  # what httpx's trust_env itself uses
    except ImportError:  # pragma: no cover - a future httpx: the scheme-wide variables, without NO_PROXY
        import urllib.request

        found = urllib.request.getproxies()
        return {f"{s}://": found[s] for s in ("http", "https", "all") if found.get(s)}
    return get_environment_proxies()


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse, as one :class:`UsageError` line naming the variable and the fix, a ``SSL_CERT_FILE`` that is
    not a file, a ``SSL_CERT_DIR`` without certificates, or a proxy variable (``HTTP_PROXY``,
    ``HTTPS_PROXY``, ``ALL_PROXY``, lower-case forms too) that httpx would use and cannot: unparsable, or
    a scheme other than http:// and https:// (socks5://, ftp://)."""
    env = os.environ if environ is None else environ
    cert_file, cert_dir = env.get("SSL_CERT_FILE"), env.get("SSL_CERT_DIR")
    if cert_file:  # httpx reads SSL_CERT_DIR only without it
        _check_cert_file(cert_file)
    elif cert_dir:
        _check_cert_dir(cert_dir)
    used = _environment_proxies() if environ is None else None
    for scheme in ("http", "https", "all"):
        found = _proxy_variable(scheme, env)
        if found is not None and (used is None or f"{scheme}://" in used):
            _check_proxy(*found)


def _check_cert_dir(value: str) -> None:
    folders = [p for p in value.split(os.pathsep) if p]
    missing = [p for p in folders if not os.path.isdir(p)]
    if missing:
        raise UsageError(
            f"SSL_CERT_DIR={quoted(value)}: no such directory {quoted(missing[0])}; point it at a "
            "directory of CA certificates, or unset it"
        )
    for folder in folders:
        try:
            if any(_HASHED_CERT.fullmatch(name) for name in os.listdir(folder)):
                return
        except OSError as exc:
            raise UsageError(
                f"SSL_CERT_DIR={quoted(value)}: cannot read {quoted(folder)} ({exc.strerror}); "
                "fix its permissions, or unset SSL_CERT_DIR"
            ) from None
    raise UsageError(
        f"SSL_CERT_DIR={quoted(value)}: no usable certificate in it (OpenSSL looks up names like "
        "1a2b3c4d.0); run `openssl rehash` on it, point SSL_CERT_FILE at a PEM bundle instead, or unset it"
    )


def _check_cert_file(value: str) -> None:
    """A file with at least one PEM certificate in it (loading it is left to the first https request: it
    takes a tenth of a second or more, which a plain-http run should not pay)."""
    try:
        with open(value, "rb") as f:
            head = f.read(_PEM_SCAN)
    except OSError as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else sanitized(exc.strerror or str(exc))
        raise UsageError(_bad_bundle("SSL_CERT_FILE", value, reason)) from None
    if not _PEM_CERT.search(head):
        raise UsageError(_bad_bundle("SSL_CERT_FILE", value, "no PEM certificate in it"))


def _bad_bundle(name: str, value: str, reason: str) -> str:
    return (
        f"{name}={quoted(value)}: {reason}; point it at a PEM bundle of CA certificates "
        "(-----BEGIN CERTIFICATE-----), or unset it"
    )


def _proxy_variable(scheme: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """The variable that gives ``scheme``'s proxy, as urllib (and so httpx) picks it: the lower-case name
    wins, even empty; then any other spelling."""
    lower = f"{scheme}_proxy"
    if lower in env:
        return (lower, env[lower]) if env[lower] else None
    for name, value in env.items():
        if name.lower() == lower and value:
            return name, value
    return None


def _variable_for(pattern: str) -> str:
    scheme = pattern.partition("://")[0]
    found = _proxy_variable(scheme, os.environ)
    return found[0] if found else f"{scheme.upper()}_PROXY"


def _check_proxy(name: str, value: str) -> None:
    text = value if "://" in value else f"http://{value}"  # as httpx reads it
    fix = f"use an http:// or https:// proxy URL such as http://proxy.example:3128, or unset {name}"
    try:
        url = httpx.URL(text)
        url.port  # noqa: B018 - parsed lazily by some httpx versions
    except (httpx.InvalidURL, ValueError) as exc:
        raise UsageError(f"{name}={quoted(value)}: not a URL ({sanitized(str(exc), 100)}); {fix}") from None
    if url.scheme not in _PROXY_SCHEMES:
        raise UsageError(f"{name}={quoted(value)}: {quoted(url.scheme)} proxies are not supported; {fix}")
    if not url.host:
        raise UsageError(f"{name}={quoted(value)}: no proxy host in it; {fix}")
    if url.port is not None and not 0 < url.port < 65536:
        raise UsageError(f"{name}={quoted(value)}: port {url.port} is out of range; {fix}")


def describe_transport_error(client: httpx.AsyncClient, url: str, exc: httpx.TransportError) -> NetworkError:
    """One line for a transport failure while fetching ``url``, with the cause (sanitised: it may quote
    the server). When a proxy from the environment applied to ``url``, the proxy is named, with its
    variable: a proxy that cannot be reached is not the origin server's fault.

    The engine raises the result for a failure that no retry mends (``UnsupportedProtocol``,
    ``LocalProtocolError``, ``ProxyError``) and retries the others with its message."""
    kind = type(exc).__name__
    # Both bounded, so that the line stays short (a redirect target is the server's choice, and a parser's
    # complaint may quote the bytes it refused).
    detail = sanitized(str(exc) or "no detail", 120)
    proxy = _proxy_of(client, url)
    url = sanitized(url, 120)
    if proxy is not None:
        name, value = proxy
        where = f"the proxy {sanitized(value, 100)} (from {name})"
        fix = f"check that the proxy is up and allows it, or fix or unset {name}"
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return NetworkError(f"{kind}: cannot reach {where} to fetch {url}: {detail}; {fix}")
        if isinstance(exc, httpx.ProxyError):
            return NetworkError(f"{where} refused to fetch {url}: {detail}; {fix}")
        return NetworkError(f"{kind} from {url} through {where}: {detail}")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.ProxyError):
        return NetworkError(f"{url}: {detail}; check the URL and your proxy settings")
    return NetworkError(f"{kind} from {url}: {detail}")


def _proxy_of(client: httpx.AsyncClient, url: str) -> tuple[str, str] | None:
    """The (variable, proxy URL) that the client sends ``url`` through, if any."""
    find = getattr(client, "_transport_for_url", None)  # httpx's own choice among its mounts
    if find is None:  # pragma: no cover - a future httpx
        return None
    try:
        transport = find(httpx.URL(url))
    except httpx.InvalidURL:
        return None
    return transport.proxy if isinstance(transport, _LazyTransport) else None


def _tls_context() -> ssl.SSLContext:
    try:
        context = httpx.create_ssl_context(trust_env=True)  # certifi, or SSL_CERT_FILE / SSL_CERT_DIR
    except (OSError, ssl.SSLError) as exc:  # a bundle that passed check_environment, yet is broken
        name = "SSL_CERT_FILE" if os.environ.get("SSL_CERT_FILE") else "SSL_CERT_DIR"
        reason = sanitized(getattr(exc, "reason", None) or exc.strerror or str(exc), 100)
        raise UsageError(_bad_bundle(name, os.environ.get(name, ""), f"unreadable ({reason})")) from None
    context.set_alpn_protocols(["http/1.1"])
    return context


class _LazyTransport(httpx.AsyncBaseTransport):
    """httpx's transport, made on its first request: a run whose requests all take the wire path never pays
    for it (its TLS context: about 60 ms of loading certificates; closing it: importing anyio)."""

    def __init__(
        self, make: Callable[[], httpx.AsyncBaseTransport], *, proxy: tuple[str, str] | None = None
    ) -> None:
        self._make = make
        self.proxy = proxy  # (variable, proxy URL) when it is a proxy's transport
        self._inner: httpx.AsyncBaseTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._inner is None:
            self._inner = self._make()
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()
