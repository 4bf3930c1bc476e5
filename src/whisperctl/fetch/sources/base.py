"""The interface every source of model files offers: where a model is in it, and how to fetch it."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

import httpx

from whisperctl.fetch.transfer import TransferOptions, TransferProgress
from whisperctl.models.registry import ModelSpec

__all__ = ["Fetched", "Network", "Request", "Source"]


@dataclass(frozen=True)
class Request:
    """What a source is asked for: one model, into its partial file (``part``, resume record ``state``)."""

    spec: ModelSpec
    part: Path
    state: Path
    progress: TransferProgress
    resume: bool  # a partial file of an earlier run is there, to be continued if it can be


@dataclass(frozen=True)
class Network:
    """The run's HTTP client (None offline) and engine options."""

    client: httpx.AsyncClient | None
    options: TransferOptions


@dataclass(frozen=True)
class Fetched:
    """A source's answer: the partial file complete and fsynced, open as ``fd`` for the caller to move."""

    digest: str
    size: int
    resumed_from: int
    fd: int


class Source(abc.ABC):
    """A place model files come from (a directory mirror, an HTTP(S) base URL, the official CDN).

    A new kind of source is a subclass in its own module and one line in :func:`.choose_source`."""

    offline: bool = False  # usable without the network

    def __init__(self, location: str) -> None:
        self.location = location  # as the user gave it

    @abc.abstractmethod
    def locate(self, spec: ModelSpec) -> str:
        """Where ``spec``'s file is in this source, as a record or a message names it."""

    @abc.abstractmethod
    async def fetch(self, request: Request, network: Network) -> Fetched:
        """The file into ``request.part``; :class:`~whisperctl.errors.NetworkError` when the source does not
        have it or cannot give it, :class:`~whisperctl.errors.IntegrityError` when what it gives is wrong."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.location == self.location

    def __hash__(self) -> int:
        return hash((type(self), self.location))
