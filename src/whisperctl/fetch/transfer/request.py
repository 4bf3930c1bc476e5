"""One ranged GET: redirects followed by hand (bounded, never https -> http), the head within a deadline, and
each outcome sorted into what the engine does next: use the answer, retry, start over, or give up.

A source that needs authorization (an OCI registry) passes an :class:`Authorizer`: its headers go with each
request to the transfer's own origin, never with a redirect to another host (presigned blob storage), a
401 from the origin is answered once per request by its ``refresh``, and a presigned URL that expired
(401 or 403 from the remembered redirect target) sends the request back to the origin once."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import httpx

from whisperctl.errors import NetworkError, quoted
from whisperctl.fetch.http.client import describe_transport_error
from whisperctl.fetch.http.wire import EngineClient, WirePool
from whisperctl.fetch.transfer.answers import Validators, parse_retry_after
from whisperctl.fetch.transfer.options import TransferOptions

__all__ = ["Authorizer", "Restart", "Retry", "Route", "shown", "transport_error"]

_REDIRECTS = {301, 302, 303, 307, 308}
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_MAX_URL = 8192


class Retry(Exception):
    """A transient failure: back off and resume from the bytes already on disk."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Restart(Exception):
    """The partial data cannot be continued (no Range support any more, the file changed): start over."""


def shown(url: str) -> str:
    """A URL for a message: as it is when short and printable, else quoted and cut (a server chose it)."""
    return url if len(url) <= 200 and url.isprintable() else quoted(url, 200)


def _tls_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def transport_error(
    url: str, exc: httpx.TransportError, client: httpx.AsyncClient | None = None
) -> Exception:
    """A failed connection or read as the engine sees it: most are retried, a few are final. Given the
    client, a proxy from the environment that failed is named as the proxy, not as the origin server."""
    tls = _tls_failure(exc)
    if tls is not None:
        return NetworkError(
            f"{shown(url)}: TLS certificate verification failed ({tls.verify_message or tls}); "
            "if you use a private CA, point SSL_CERT_FILE at its bundle"
        )
    final = isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.ProxyError)
    if client is not None:
        described = describe_transport_error(client, url, exc)
        return described if final else Retry(str(described))
    if final:
        return NetworkError(f"{shown(url)}: {quoted(str(exc))}; check the URL and your proxy settings")
    detail = quoted(str(exc)) if str(exc) else "no detail"
    return Retry(f"{type(exc).__name__} from {shown(url)}: {detail}")


class Authorizer(Protocol):
    """Per-request authorization for a transfer (a registry's basic credentials or bearer token)."""

    def headers_for(self, url: str) -> dict[str, str]:
        """Headers for a request to ``url``; none for a host other than the one they belong to."""
        ...

    async def refresh(self, response: httpx.Response) -> bool:
        """Answer a 401 (its challenge): True when a retry would carry new authorization."""
        ...

    def denied(self, response: httpx.Response) -> Exception:
        """The one-line error for a 401 or 403 that refreshing could not answer."""
        ...


def _host_of(url: str) -> tuple[str, int | None]:
    try:
        parts = urlsplit(url)
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return "", None


class Route:
    """Where a transfer's requests go: the URL it was given and, once redirects were followed, the final
    location, which later requests go to directly."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        options: TransferOptions,
        authorizer: Authorizer | None = None,
    ) -> None:
        self.client = client
        self.origin_url = url
        self.url = url
        self.options = options
        self.authorizer = authorizer
        self.wire: WirePool | None = client.wire if isinstance(client, EngineClient) else None

    async def open(self, start: int, end: int | None, validators: Validators) -> httpx.Response:
        """GET ``bytes=start-(end-1)``; the answer (200 or 206, body unread) once its head arrived within
        ``head_deadline``. ``If-Range`` goes only to the origin that gave the validators."""
        limit = self.options.head_deadline
        try:
            return await asyncio.wait_for(self._follow(start, end, validators), limit)
        except asyncio.TimeoutError:
            raise Retry(f"{shown(self.url)}: no response head within {limit:g} s") from None

    def _at_origin(self, url: str) -> bool:
        return _host_of(url) == _host_of(self.origin_url)

    def _expired(self, response: httpx.Response, url: str, began: str) -> bool:
        """A refusal from the redirect target that an authorized origin gave earlier (a registry's presigned
        blob URL, which lives minutes): the origin is asked again rather than the transfer failed."""
        return (
            response.status_code in (401, 403)
            and self.authorizer is not None
            and began != self.origin_url
            and not self._at_origin(url)
        )

    async def _follow(self, start: int, end: int | None, validators: Validators) -> httpx.Response:
        began = self.url  # other requests of the transfer may change it meanwhile
        response, url = await self._hops(began, start, end, validators)
        if self._expired(response, url, began):
            await response.aclose()
            began = self.origin_url  # which redirects again, to a fresh URL
            response, url = await self._hops(began, start, end, validators)
        if response.status_code == 401 and self.authorizer is not None and self._at_origin(url):
            await response.aclose()
            if await self.authorizer.refresh(response):
                response, url = await self._hops(began, start, end, validators)
        self.url = url
        status = response.status_code
        if status in (200, 206):
            return response
        await response.aclose()
        if status in _RETRY_STATUS or status >= 500:
            wait = parse_retry_after(response.headers.get("retry-after"), time.time())
            raise Retry(f"HTTP {status} from {shown(url)}", wait)
        if status == 416:
            raise Restart(f"HTTP 416 from {shown(url)}: the server's file is not the one being resumed")
        if status in (401, 403) and self.authorizer is not None and self._at_origin(url):
            raise self.authorizer.denied(response)
        raise NetworkError(
            f"{shown(url)}: HTTP {status} {quoted(response.reason_phrase, 60)}; "
            "check the URL, the mirror, or your access to it"
        )

    async def _hops(
        self, url: str, start: int, end: int | None, validators: Validators
    ) -> tuple[httpx.Response, str]:
        """The answer at the end of the redirects from ``url``, and where it came from."""
        opt, first = self.options, url
        for _ in range(opt.max_redirects + 1):
            response = await self._send(url, start, end, validators)
            if response.status_code not in _REDIRECTS:
                break
            location = response.headers.get("location")
            await response.aclose()
            url = self._redirect_target(url, location)
        else:
            raise NetworkError(
                f"{shown(first)}: more than {opt.max_redirects} redirects; check the URL or the mirror"
            )
        return response, url

    async def _send(self, url: str, start: int, end: int | None, validators: Validators) -> httpx.Response:
        headers = {"Range": f"bytes={start}-{'' if end is None else end - 1}", "Accept-Encoding": "identity"}
        if (value := validators.if_range(url)) is not None:
            headers["If-Range"] = value
        if self.authorizer is not None and self._at_origin(url):
            # Checked here too: whatever the authorizer says, its headers never go to another host.
            headers.update(self.authorizer.headers_for(url))
        opt = self.options
        try:
            request = self.client.build_request("GET", url, headers=headers)
            if self.wire is not None and self.wire.handles(request.url):
                return await self.wire.send(
                    request, connect_timeout=opt.connect_timeout, read_timeout=opt.stall_timeout
                )
            return await self.client.send(request, stream=True, follow_redirects=False)
        except httpx.TransportError as exc:
            raise transport_error(url, exc, self.client) from exc
        except httpx.InvalidURL as exc:
            # httpx parses a redirect's Location even when it does not follow it (`data:...`, `https:x`).
            raise NetworkError(
                f"{shown(url)}: refused a redirect to an unusable address ({quoted(str(exc))}); "
                "check the URL or the mirror"
            ) from exc

    @staticmethod
    def _redirect_target(url: str, location: str | None) -> str:
        if not location:
            raise NetworkError(f"{shown(url)}: redirect without a Location; check the URL or the mirror")
        if len(location) > _MAX_URL or not location.isprintable():
            raise NetworkError(f"{shown(url)}: refused a redirect to {quoted(location)} (not a usable URL)")
        try:
            target = urljoin(url, location)
            scheme = urlsplit(target).scheme
        except ValueError as exc:  # "http://[::1" and the like
            raise NetworkError(f"{shown(url)}: refused a redirect to {quoted(location)} ({exc})") from None
        if scheme not in ("http", "https"):
            raise NetworkError(f"{shown(url)}: refused a redirect to {quoted(target)} (not http or https)")
        if urlsplit(url).scheme == "https" and scheme == "http":
            raise NetworkError(
                f"{shown(url)}: refused a redirect from https to plain http ({shown(target)}); "
                "use a mirror that stays on https"
            )
        return target
