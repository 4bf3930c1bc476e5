"""The engine's HTTP client: one :class:`httpx.AsyncClient` per run, with the environment's TLS and proxy
settings, and the lean pool (:mod:`.wire`) that serves direct connections."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from whisperctl._version import __version__
from whisperctl.fetch.http.wire import EngineClient, WirePool

if TYPE_CHECKING:
    from whisperctl.fetch.transfer import TransferOptions

__all__ = ["make_client"]

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


def make_client(options: TransferOptions, *, max_connections: int) -> httpx.AsyncClient:
    """The one HTTP client of a run: TLS verified, environment honoured (SSL_CERT_FILE, proxies), no
    automatic redirects (the engine follows them itself, bounded and never from https to http).

    With ``options.lean_http`` it carries a :class:`.wire.WirePool` with the same TLS context,
    which the engine uses for the URLs that no proxy applies to."""
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
        pattern: None if proxy is None else _LazyTransport(functools.partial(transport, proxy))
        for pattern, proxy in _environment_proxies().items()
    }
    return EngineClient(
        wire=WirePool.from_environment(ssl_context) if options.lean_http else None,
        transport=_LazyTransport(transport),
        mounts=mounts,
        timeout=options.timeout(),
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


def _tls_context() -> ssl.SSLContext:
    context = httpx.create_ssl_context(trust_env=True)  # certifi, or SSL_CERT_FILE / SSL_CERT_DIR
    context.set_alpn_protocols(["http/1.1"])
    return context


class _LazyTransport(httpx.AsyncBaseTransport):
    """httpx's transport, made on its first request: a run whose requests all take the wire path never pays
    for it (its TLS context: about 60 ms of loading certificates; closing it: importing anyio)."""

    def __init__(self, make: Callable[[], httpx.AsyncBaseTransport]) -> None:
        self._make = make
        self._inner: httpx.AsyncBaseTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._inner is None:
            self._inner = self._make()
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()
