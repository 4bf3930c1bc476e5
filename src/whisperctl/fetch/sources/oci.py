"""An OCI registry as a source: ``oci://HOST[:PORT]/REPOSITORY`` holds each model as the blob
``sha256:<its digest>`` (a pull by digest needs no tag), fetched by the same engine as an HTTP mirror, with
the registry's authorization (:mod:`whisperctl.fetch.oci.client`)."""

from __future__ import annotations

import httpx

from whisperctl.errors import NetworkError
from whisperctl.fetch.oci.client import RegistryClient
from whisperctl.fetch.oci.reference import RegistryRef, parse_oci_url
from whisperctl.fetch.sources.base import Fetched, Network, Request, Source
from whisperctl.fetch.transfer import fetch_url
from whisperctl.models.registry import ModelSpec

__all__ = ["OCIRegistry"]


class OCIRegistry(Source):
    """A repository in a registry; not usable offline. Its client (and so its tokens) lasts for the run."""

    def __init__(self, location: str, ref: RegistryRef | None = None) -> None:
        super().__init__(location)
        self.ref = ref if ref is not None else parse_oci_url(location)
        self._client: RegistryClient | None = None

    def locate(self, spec: ModelSpec) -> str:
        return f"{self.ref.display}@sha256:{spec.sha256}"

    def registry(self, http: httpx.AsyncClient) -> RegistryClient:
        """The registry client for the run's HTTP client (made once, so a token is fetched once)."""
        if self._client is None or self._client.http is not http:
            self._client = RegistryClient(self.ref, http)
        return self._client

    async def fetch(self, request: Request, network: Network) -> Fetched:
        if network.client is None:  # pragma: no cover - offline runs use no network source
            raise NetworkError(f"{self.locate(request.spec)}: no network in offline mode")
        registry = self.registry(network.client)
        url = self.ref.base_url + registry.blob_path(f"sha256:{request.spec.sha256}")
        result = await fetch_url(
            network.client,
            url,
            request.part,
            request.state,
            expected_sha256=request.spec.sha256,
            expected_size=request.spec.size_bytes,
            options=network.options,
            progress=request.progress,
            resume=request.resume,
            authorizer=registry.authorizer(registry.pull_scope()),
        )
        return Fetched(result.sha256, result.size, result.resumed_from, result.fd)
