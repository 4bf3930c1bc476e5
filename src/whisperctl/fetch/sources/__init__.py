"""Where model files come from: sources behind one small interface (:class:`.base.Source`), chosen from the
form of a mirror by :func:`choose_source`, as pooch chooses its downloaders from a URL.

A mirror is an ``http(s)://`` base URL (:mod:`.http`), a directory, given as a path or a ``file://`` URL
(:mod:`.directory`; one with an ``oci-layout`` file is an OCI image layout, :mod:`.oci_layout`), or an OCI
registry repository, ``oci://HOST[:PORT]/REPOSITORY`` (``oci+http://`` for a plain-http one, :mod:`.oci`);
the official URL of each model is a source of its own, tried last. Adding a source is one new module and
one line in :func:`choose_source`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from whisperctl.errors import UsageError, quoted
from whisperctl.fetch.sources.base import Fetched, Network, Request, Source
from whisperctl.fetch.sources.directory import DirectoryMirror
from whisperctl.fetch.sources.http import HTTPMirror, OfficialSource

__all__ = [
    "MIRROR_ENV",
    "DirectoryMirror",
    "Fetched",
    "HTTPMirror",
    "Mirror",
    "Network",
    "OfficialSource",
    "Request",
    "Source",
    "choose_source",
    "parse_mirrors",
]

MIRROR_ENV = "WHISPERCTL_MIRROR"

Mirror = Source  # what --mirror and $WHISPERCTL_MIRROR name


def choose_source(item: str) -> Source:
    """The source a mirror names, from its form: an http(s) URL, an ``oci://`` (``oci+http://``) registry
    repository, a ``file://`` URL or a directory path."""
    try:
        scheme = urlsplit(item).scheme.lower()
    except ValueError as exc:  # "http://[::1": an unclosed IPv6 bracket
        raise UsageError(
            f"mirror {quoted(item)}: not a URL ({exc}); give an http(s) URL or a directory"
        ) from None
    if scheme in ("http", "https"):
        return HTTPMirror(item)
    if scheme in ("oci", "oci+http", "oci+https"):
        # Imported only for an oci:// mirror: the registry client (auth, helpers) costs start-up time.
        from whisperctl.fetch.sources.oci import OCIRegistry

        return OCIRegistry(item)
    if scheme == "file":
        return _directory(item, Path(unquote(urlsplit(item).path)))
    if scheme and len(scheme) > 1:  # "c:" is a Windows drive, not a scheme
        raise UsageError(
            f"mirror {quoted(item)}: unsupported scheme {scheme!r}; use http(s)://, oci://, file:// or a path"
        )
    path = Path(item).expanduser()
    if not path.is_dir():
        raise UsageError(
            f"mirror {quoted(item)}: not a directory; give an http(s) URL or the path of a mirror tree"
        )
    return _directory(item, path.absolute())


def _directory(item: str, path: Path) -> Source:
    """An OCI image layout when ``path`` has an ``oci-layout`` file, else a mirror tree."""
    from whisperctl.store.oci_layout import is_layout

    if is_layout(path):
        from whisperctl.fetch.sources.oci_layout import OCILayoutMirror

        return OCILayoutMirror(item, path)
    return DirectoryMirror(item, path)


def parse_mirrors(values: Sequence[str]) -> tuple[Source, ...]:
    """Mirrors from ``--mirror`` values or ``$WHISPERCTL_MIRROR`` (each may hold a comma-separated list)."""
    return tuple(
        choose_source(item) for value in values for item in (v.strip() for v in value.split(",")) if item
    )
