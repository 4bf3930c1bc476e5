"""The registry client: requests to one repository with the registry's own authorization.

Anonymous first; on a 401, the challenge says what the registry wants: HTTP basic with the credentials found
(:mod:`.auth`), or a bearer token fetched from the challenge's realm for a scope, kept for the run and renewed
on the next 401. The Authorization header goes only to the registry's own origin (scheme, host and port):
never with a redirect to blob storage on another host, which this client does not follow (its caller does).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterable, Callable
from urllib.parse import urlsplit

import httpx

from whisperctl.errors import NetworkError, quoted
from whisperctl.fetch.oci.auth import (
    Challenge,
    Credential,
    Lookup,
    find_credentials,
    parse_challenges,
    parse_token,
    token_request,
)
from whisperctl.fetch.oci.reference import RegistryRef
from whisperctl.fetch.transfer.request import Retry

__all__ = ["RegistryClient", "ScopedAuthorizer", "TokenEndpointBusy"]

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_MAX_TOKEN_ANSWER = 256 << 10
_DEFAULT_PORTS = {"https": 443, "http": 80}


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        return None
    return scheme, (parts.hostname or "").lower(), port


class TokenEndpointBusy(NetworkError):
    """The token endpoint failed in a way that may pass (a transport error, 429, 5xx): worth a retry later."""


class RegistryClient:
    """Requests to ``ref``'s repository through the run's ``http`` client, authorized as the registry asks.

    ``lookup`` finds the credentials (by default in the container tools' auth files); it runs once, on the
    first challenge, off the event loop."""

    def __init__(
        self,
        ref: RegistryRef,
        http: httpx.AsyncClient,
        *,
        lookup: Callable[[RegistryRef], Lookup] | None = None,
    ) -> None:
        self.ref = ref
        self.http = http
        self._lookup = lookup or (lambda r: find_credentials(r.netloc, r.repository))
        self._found: Lookup | None = None
        self._basic = False  # the registry asked for HTTP basic
        self._tokens: dict[str, str] = {}  # scope -> bearer token
        self._origin = _origin(ref.base_url)
        self._lock = asyncio.Lock()

    # Paths in the repository (distribution spec, /v2/...)

    def blob_path(self, digest: str) -> str:
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return f"/v2/{self.ref.repository}/blobs/{digest}"

    def manifest_path(self, reference: str) -> str:
        if not (_DIGEST.fullmatch(reference) or _TAG.fullmatch(reference)):
            raise ValueError(f"not a tag or sha256 digest: {reference!r}")
        return f"/v2/{self.ref.repository}/manifests/{reference}"

    def uploads_path(self) -> str:
        return f"/v2/{self.ref.repository}/blobs/uploads/"

    def pull_scope(self) -> str:
        return f"repository:{self.ref.repository}:pull"

    def push_scope(self) -> str:
        return f"repository:{self.ref.repository}:pull,push"

    def url(self, path_or_url: str) -> str:
        return path_or_url if "://" in path_or_url else self.ref.base_url + path_or_url

    # Authorization

    @property
    def credential_source(self) -> str:
        """Which credential source was tried, for messages (never the secret)."""
        if self._found is None:
            return "none (the registry asked for none)"
        return self._found.tried

    def auth_headers_for(self, url: str, scope: str) -> dict[str, str]:
        """The headers that authorize a request to ``url``: none for another origin, whatever it is."""
        if self._origin is None or _origin(url) != self._origin:
            return {}
        if (token := self._tokens.get(scope)) is not None:
            return {"Authorization": f"Bearer {token}"}
        credential = self._credential()
        if self._basic and credential is not None:
            return {"Authorization": credential.basic()}
        return {}

    def _credential(self) -> Credential | None:
        return self._found.credential if self._found is not None else None

    async def _find(self) -> Credential | None:
        if self._found is None:
            self._found = await asyncio.to_thread(self._lookup, self.ref)
        return self._found.credential

    async def refresh(self, response: httpx.Response, scope: str) -> bool:
        """Answer a 401's challenge: True when the next request carries new authorization worth a retry."""
        if response.status_code != 401 or _origin(str(response.url)) != self._origin:
            return False
        sent = response.request.headers.get("authorization")
        async with self._lock:
            current = self.auth_headers_for(str(response.url), scope).get("Authorization")
            if current is not None and current != sent:
                return True  # another request renewed it meanwhile
            credential = await self._find()
            for challenge in parse_challenges(response.headers.get_list("www-authenticate")):
                if challenge.scheme == "bearer":
                    self._tokens[scope] = await self._fetch_token(challenge.params, scope, credential)
                    return True
                if challenge.scheme == "basic" and credential is not None and not self._basic:
                    self._basic = True
                    return True
            return False

    async def _fetch_token(self, params: dict[str, str], scope: str, credential: Credential | None) -> str:
        scopes = [scope]
        if (asked := params.get("scope")) and asked != scope and len(asked) <= 512:
            scopes.append(asked)
        wanted = token_request(
            Challenge("bearer", params), self.ref.scheme, self.ref.host, scopes, self.ref.display
        )
        headers = {"Accept": "application/json"}
        if credential is not None and wanted.send_credentials:
            headers["Authorization"] = credential.basic()
        try:
            async with self.http.stream(
                "GET", wanted.url, params=wanted.params, headers=headers, follow_redirects=False
            ) as answer:
                body = bytearray()
                async for chunk in answer.aiter_bytes():  # decoded, and bounded as such
                    body += chunk
                    if len(body) > _MAX_TOKEN_ANSWER:
                        break
        except httpx.HTTPError as exc:
            raise TokenEndpointBusy(
                f"{self.ref.display}: the token endpoint {quoted(wanted.url, 120)} failed "
                f"({quoted(str(exc), 120)}); check the network or the registry's auth configuration"
            ) from None
        if answer.status_code in (401, 403):
            sent = "Authorization" in headers
            what = (
                "the token endpoint refused the credentials"
                if sent
                else "the token endpoint wants credentials"
            )
            raise self._denied(answer.status_code, what)
        if answer.status_code != 200:
            busy = answer.status_code in (408, 429) or answer.status_code >= 500
            raise (TokenEndpointBusy if busy else NetworkError)(
                f"{self.ref.display}: the token endpoint answered HTTP {answer.status_code}; "
                "check the registry's auth configuration"
            )
        return parse_token(bytes(body), self.ref.display)

    def _denied(self, status: int, what: str) -> NetworkError:
        hint = (
            "log in with `docker login`, `podman login` or `oras login` "
            f"{self.ref.netloc}, or point REGISTRY_AUTH_FILE at an auth file"
            if self._credential() is None
            else "check the user's password and its access to the repository"
        )
        return NetworkError(
            f"{self.ref.display}: HTTP {status}, {what} (credentials tried: {self.credential_source}); {hint}"
        )

    def denied(self, response: httpx.Response) -> NetworkError:
        """The one line for a 401 or 403 that authorization could not answer."""
        what = "access denied" if response.status_code == 403 else "authentication required"
        return self._denied(response.status_code, what)

    async def request(
        self,
        method: str,
        path_or_url: str,
        *,
        scope: str,
        headers: dict[str, str] | None = None,
        content: bytes | AsyncIterable[bytes] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """One request, authorized; a 401 answered once (then retried when ``content`` can be sent again).
        Redirects are returned, not followed; a 401 or 403 left is a :class:`NetworkError` (exit 3)."""
        url = self.url(path_or_url)
        replayable = content is None or isinstance(content, bytes)
        for attempt in range(2):
            sent = {**(headers or {}), **self.auth_headers_for(url, scope)}
            request = self.http.build_request(method, url, headers=sent, content=content)
            response = await self.http.send(request, stream=stream, follow_redirects=False)
            if response.status_code not in (401, 403):
                return response
            await response.aclose()
            if response.status_code == 403 or attempt == 1 or not await self.refresh(response, scope):
                raise self.denied(response)
            if not replayable:
                raise NetworkError(
                    f"{self.ref.display}: HTTP 401 to a streamed {method}; authorize first "
                    "(a request without a body for the same scope), then send it"
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def authorizer(self, scope: str) -> ScopedAuthorizer:
        """This client's authorization for ``scope`` as the transfer engine's hook."""
        return ScopedAuthorizer(self, scope)


class ScopedAuthorizer:
    """The engine's :class:`~whisperctl.fetch.transfer.request.Authorizer` for one scope of a registry."""

    def __init__(self, client: RegistryClient, scope: str) -> None:
        self.client, self.scope = client, scope

    def headers_for(self, url: str) -> dict[str, str]:
        return self.client.auth_headers_for(url, self.scope)

    async def refresh(self, response: httpx.Response) -> bool:
        try:
            return await self.client.refresh(response, self.scope)
        except TokenEndpointBusy as exc:
            raise Retry(str(exc)) from None  # the engine backs off and asks again

    def denied(self, response: httpx.Response) -> Exception:
        return self.client.denied(response)
