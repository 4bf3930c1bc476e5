"""An HTTP(S) source: a mirror laid out as ``<base>/<sha256>/<filename>``, or the official CDN."""

from __future__ import annotations

from whisperctl.errors import NetworkError
from whisperctl.fetch.sources.base import Fetched, Network, Request, Source
from whisperctl.fetch.transfer import fetch_url
from whisperctl.models.registry import ModelSpec

__all__ = ["HTTPMirror", "OfficialSource"]


class HTTPMirror(Source):
    """A base URL laid out like the official CDN."""

    def locate(self, spec: ModelSpec) -> str:
        return f"{self.location.rstrip('/')}/{spec.sha256}/{spec.filename}"

    async def fetch(self, request: Request, network: Network) -> Fetched:
        if network.client is None:  # pragma: no cover - offline runs use no HTTP source
            raise NetworkError(f"{self.locate(request.spec)}: no network in offline mode")
        result = await fetch_url(
            network.client,
            self.locate(request.spec),
            request.part,
            request.state,
            expected_sha256=request.spec.sha256,
            expected_size=request.spec.size_bytes,
            options=network.options,
            progress=request.progress,
            resume=request.resume,
        )
        return Fetched(result.sha256, result.size, result.resumed_from, result.fd)


class OfficialSource(HTTPMirror):
    """Each model's own URL in the registry."""

    def __init__(self) -> None:
        super().__init__("official")

    def locate(self, spec: ModelSpec) -> str:
        return spec.url
