"""A directory source: a local tree laid out as ``<dir>/<sha256>/<filename>`` (a USB disk, an NFS share)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from whisperctl.errors import IntegrityError, NetworkError
from whisperctl.fetch.sources.base import Fetched, Network, Request, Source
from whisperctl.models.registry import ModelSpec
from whisperctl.store.files import create_partial, write_error
from whisperctl.store.hashing import copy_hashing

__all__ = ["DirectoryMirror"]


class DirectoryMirror(Source):
    """Copied into the partial file and hashed on the way; usable offline."""

    offline = True

    def __init__(self, location: str, directory: Path) -> None:
        super().__init__(location)
        self.directory = directory

    def locate(self, spec: ModelSpec) -> str:
        return str(self.directory / spec.sha256 / spec.filename)

    async def fetch(self, request: Request, network: Network) -> Fetched:
        loop = asyncio.get_running_loop()
        progress, spec = request.progress, request.spec
        source = Path(self.locate(spec))

        def copy() -> Fetched:
            try:
                src = open(source, "rb", buffering=0)  # noqa: SIM115 - closed below
            except FileNotFoundError:
                raise NetworkError(f"{source}: not in the mirror directory") from None
            except OSError as exc:
                raise NetworkError(f"{source}: cannot read the mirror ({exc.strerror or exc})") from exc
            with src:
                size = os.fstat(src.fileno()).st_size
                if spec.size_bytes is not None and size != spec.size_bytes:
                    raise IntegrityError(
                        f"{source}: {size:,} bytes, expected {spec.size_bytes:,}; "
                        "the mirror holds another file"
                    )
                fd = create_partial(request.part, request.state, size)
                try:
                    loop.call_soon_threadsafe(progress.start, size, 0)
                    digest, copied = copy_hashing(
                        src.fileno(), fd, on_bytes=lambda n: loop.call_soon_threadsafe(progress.advance, n)
                    )
                    os.fsync(fd)
                except OSError as exc:
                    os.close(fd)
                    with contextlib.suppress(FileNotFoundError):
                        request.part.unlink()
                    raise write_error(exc, request.part) from exc
                except BaseException:
                    os.close(fd)
                    raise
            return Fetched(digest, copied, 0, fd)

        return await asyncio.to_thread(copy)
