"""Where a registry repository is: ``oci://HOST[:PORT]/REPOSITORY`` (https) or, only when the user says so,
``oci+http://HOST[:PORT]/REPOSITORY`` (plain http)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from whisperctl.errors import UsageError, quoted

__all__ = ["RegistryRef", "parse_oci_url"]

# The distribution spec's grammar for a repository name: path components of lowercase letters and digits,
# joined inside by ".", "_", "__" or runs of "-"; components joined by "/".
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_MAX_REPOSITORY = 255
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_SCHEMES = {"oci": "https", "oci+https": "https", "oci+http": "http"}
_FORM = "oci://HOST[:PORT]/REPOSITORY (or oci+http:// for a plain-http registry)"


@dataclass(frozen=True)
class RegistryRef:
    """A repository in a registry."""

    scheme: str  # "https" | "http"
    host: str  # a name, an IPv4 address, or an IPv6 address without brackets
    port: int | None
    repository: str

    @property
    def netloc(self) -> str:
        """``host[:port]``, an IPv6 address in brackets: the registry's name in URLs and auth files."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    @property
    def display(self) -> str:
        prefix = "oci" if self.scheme == "https" else "oci+http"
        return f"{prefix}://{self.netloc}/{self.repository}"


def _bad(text: str, cause: str) -> UsageError:
    return UsageError(f"registry {quoted(text)}: {cause}; write it as {_FORM}")


def _host(text: str, host: str) -> str:
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise _bad(text, f"{quoted(host)} is not an IPv6 address") from None
    if not _HOSTNAME.fullmatch(host):
        raise _bad(text, f"{quoted(host)} is not a host name")
    return host.lower()


def parse_oci_url(text: str) -> RegistryRef:
    """The repository ``text`` names; a :class:`~whisperctl.errors.UsageError` (exit 2) naming the value and
    the fix for anything else (credentials in the URL, a tag, a query, a name outside the grammar)."""
    if not text.isprintable() or any(c.isspace() for c in text):
        raise _bad(text, "spaces or control characters in it")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise _bad(text, str(exc)) from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise _bad(text, f"unsupported scheme {parts.scheme!r}")
    if "@" in parts.netloc:
        raise UsageError(
            f"registry {quoted(text.split('@')[-1])}: credentials do not go in the URL (they would show in "
            "process lists and logs); log in with `docker login`, `podman login` or `oras login`, or set "
            "REGISTRY_AUTH_FILE"
        )
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise _bad(text, "a query or fragment in it")
    if not parts.hostname:
        raise _bad(text, "no host")
    if port == 0:
        raise _bad(text, "port 0")
    repository = parts.path.strip("/")
    if not repository:
        raise _bad(text, "no repository")
    if "@" in repository or ":" in repository:
        raise _bad(text, "a tag or digest in it (models are pulled by their own digest)")
    if len(repository) > _MAX_REPOSITORY or not _REPOSITORY.fullmatch(repository):
        raise _bad(
            text,
            f"repository {quoted(repository)} is not a valid name (lowercase letters and digits, separated "
            "by '.', '_', '__', '-' or '/')",
        )
    return RegistryRef(scheme, _host(text, parts.hostname), port, repository)
