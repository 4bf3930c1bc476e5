"""Model registry: the official Whisper checkpoints plus the user's own (a TOML file).

A :class:`ModelSpec` is everything whisperctl knows about a model before touching the network or the disk.
Official specs come from openai-whisper 20250625 (see ``_official.py``). A user registry adds fine-tuned or
private checkpoints::

    [models.my-tiny-ft]
    url = "https://models.example.com/my-tiny-ft.pt"
    sha256 = "0123...64 hex digits..."
    size = 75572083                      # optional, bytes
    alignment_heads = [[2, 3], [3, 1]]   # optional: (layer, head) pairs of the text decoder

It is validated strictly: every problem is a :class:`~whisperctl.errors.RegistryError` naming the file, the
entry and the field.
"""

from __future__ import annotations

import base64
import difflib
import gzip
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import platformdirs

from whisperctl.errors import RegistryError, UnknownModelError, quoted
from whisperctl.models._official import ALIASES, BASE_URL, OFFICIAL, RELEASE
from whisperctl.models.dims import DIMS_FIELDS, ModelDimensions, ParameterCounts, count_parameters

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "NAME_PATTERN",
    "REGISTRY_ENV",
    "ModelSpec",
    "Registry",
    "decode_alignment_heads",
    "default_registry_path",
    "load_registry",
]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
REGISTRY_ENV = "WHISPERCTL_REGISTRY"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ENTRY_KEYS = {"url", "sha256", "size", "alignment_heads"}

AlignmentHeads = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ModelSpec:
    """A model that whisperctl can fetch: where from, what digest, and what it holds."""

    name: str
    url: str
    sha256: str
    filename: str
    size_bytes: int | None
    source: Literal["official", "registry"]
    dims: ModelDimensions | None = None
    english_only: bool | None = None
    alignment_heads: AlignmentHeads | None = None
    aliases: tuple[str, ...] = ()
    registry_file: Path | None = field(default=None, compare=False)

    @property
    def parameters(self) -> ParameterCounts | None:
        """Exact parameter counts, when the dims are known."""
        return count_parameters(self.dims) if self.dims is not None else None

    @property
    def languages(self) -> str:
        if self.english_only is None:
            return "unknown"
        return "English" if self.english_only else "multilingual"


def decode_alignment_heads(blob: str, n_text_layer: int, n_text_head: int) -> AlignmentHeads:
    """Decode openai-whisper's base85 + gzip boolean mask into sorted (layer, head) pairs."""
    try:
        mask = gzip.decompress(base64.b85decode(blob.encode("ascii")))
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"not a base85-encoded gzip blob ({exc})") from exc
    expected = n_text_layer * n_text_head
    if len(mask) != expected or any(b > 1 for b in mask):
        raise ValueError(
            f"the blob holds {len(mask)} values, expected a {n_text_layer}x{n_text_head} boolean mask"
        )
    return tuple(divmod(i, n_text_head) for i, b in enumerate(mask) if b)


def _official_specs() -> dict[str, ModelSpec]:
    specs = {}
    for name, (sha256, size, english_only, dims_tuple, blob) in OFFICIAL.items():
        dims = ModelDimensions(**dict(zip(DIMS_FIELDS, dims_tuple, strict=True)))
        specs[name] = ModelSpec(
            name=name,
            url=f"{BASE_URL}/{sha256}/{name}.pt",
            sha256=sha256,
            filename=f"{name}.pt",
            size_bytes=size,
            source="official",
            dims=dims,
            english_only=english_only,
            alignment_heads=decode_alignment_heads(blob, dims.n_text_layer, dims.n_text_head),
            aliases=tuple(sorted(a for a, target in ALIASES.items() if target == name)),
        )
    return specs


def default_registry_path() -> Path:
    """``models.toml`` in the platform's user config dir (``~/.config/whisperctl`` on Linux)."""
    return Path(platformdirs.user_config_dir("whisperctl", appauthor=False)) / "models.toml"


class Registry:
    """Official specs plus the user's, looked up by name or alias."""

    def __init__(self, user: Mapping[str, ModelSpec] | None = None, *, path: Path | None = None) -> None:
        self._official = _official_specs()
        self._user = dict(user or {})
        self.path = path
        self.release = RELEASE

    def __iter__(self) -> Iterator[ModelSpec]:
        yield from self._official.values()
        yield from self._user.values()

    def __len__(self) -> int:
        return len(self._official) + len(self._user)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._official or name in ALIASES or name in self._user)

    @property
    def names(self) -> list[str]:
        """Every name that :meth:`get` accepts, aliases included."""
        return [*self._official, *ALIASES, *self._user]

    def get(self, name: str) -> ModelSpec:
        """The spec for a name or alias; :class:`UnknownModelError` with suggestions otherwise."""
        canonical = ALIASES.get(name, name)
        spec = self._official.get(canonical) or self._user.get(canonical)
        if spec is None:
            raise UnknownModelError(name, self.suggest(name))
        return spec

    def suggest(self, name: str) -> list[str]:
        candidates = self.names
        lowered = {c.lower(): c for c in candidates}
        close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
        return [lowered[c] for c in close]

    def resolve(self, names: list[str]) -> list[ModelSpec]:
        """Specs for several names, each model once, in order (``large`` and ``large-v3`` are one model)."""
        seen: dict[str, ModelSpec] = {}
        for name in names:
            spec = self.get(name)
            seen.setdefault(spec.name, spec)
        return list(seen.values())


def load_registry(path: Path | str | None = None) -> Registry:
    """The official registry plus the user registry file.

    ``path`` (``--registry``) wins over ``$WHISPERCTL_REGISTRY``, which wins over
    :func:`default_registry_path`.
    A file named explicitly must exist; the default one is optional.
    """
    explicit = path is not None or bool(os.environ.get(REGISTRY_ENV))
    chosen = Path(path if path is not None else os.environ.get(REGISTRY_ENV) or default_registry_path())
    chosen = chosen.expanduser()
    if not chosen.exists():
        if explicit:
            raise RegistryError(
                f"{chosen}: registry file not found; create it, "
                f"or point --registry/{REGISTRY_ENV} at an existing file"
            )
        return Registry()
    return Registry(_parse_registry_file(chosen), path=chosen)


def _parse_registry_file(path: Path) -> dict[str, ModelSpec]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RegistryError(
            f"{path}: cannot read the registry file ({exc.strerror or exc}); check its permissions"
        ) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RegistryError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{path}: not valid TOML ({exc}); fix the syntax") from exc

    unknown_tables = sorted(set(data) - {"models"})
    if unknown_tables:
        raise RegistryError(
            f"{path}: unknown top-level key {quoted(unknown_tables[0])}; entries go under [models.NAME]"
        )
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise RegistryError(f"{path}: 'models' must be a table of [models.NAME] entries")

    official = _official_specs()
    taken = {n.lower(): n for n in [*official, *ALIASES]}
    specs: dict[str, ModelSpec] = {}
    for name, entry in models.items():
        specs[name] = _parse_entry(path, name, entry, taken)
        taken[name.lower()] = name
    return specs


def _parse_entry(path: Path, name: str, entry: Any, taken: dict[str, str]) -> ModelSpec:
    def fail(fieldname: str | None, problem: str, fix: str) -> RegistryError:
        where = f"[models.{quoted(name)}]" if fieldname is None else f"[models.{quoted(name)}] {fieldname}"
        return RegistryError(f"{path}: {where}: {problem}; {fix}")

    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise fail(
            None,
            "invalid model name",
            "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, no '..'",
        )
    if name.lower() in taken:
        other = taken[name.lower()]
        kind = "an official model" if other in _official_specs() or other in ALIASES else "another entry"
        raise fail(None, f"shadows {kind} ({other!r})", "give the entry a name of its own")
    if not isinstance(entry, dict):
        raise fail(None, "must be a table", "write it as [models.NAME] with url and sha256 keys")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise fail(unknown[0], "unknown field", f"allowed fields are {', '.join(sorted(_ENTRY_KEYS))}")

    url = entry.get("url")
    if url is None:
        raise fail("url", "missing", 'add url = "https://..."')
    if not isinstance(url, str):
        raise fail("url", "must be a string", "quote it")
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[::1/x": an unclosed IPv6 bracket
        raise fail(
            "url", f"{quoted(url)} is not an http(s) URL", "use an http:// or https:// address"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c in url for c in "\x00\r\n\t "):
        raise fail("url", f"{quoted(url)} is not an http(s) URL", "use an http:// or https:// address")

    digest = entry.get("sha256")
    if digest is None:
        raise fail("sha256", "missing", "add the file's SHA-256 (`sha256sum FILE`)")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
        raise fail(
            "sha256",
            f"{quoted(str(digest))} is not 64 hexadecimal digits",
            "paste the full SHA-256 of the file",
        )

    size = entry.get("size")
    if size is not None and (type(size) is not int or size <= 0):
        raise fail("size", f"{size!r} is not a positive integer", "give the size in bytes, or leave it out")

    heads = entry.get("alignment_heads")
    alignment: AlignmentHeads | None = None
    if heads is not None:
        alignment = _parse_heads(heads, lambda problem: fail("alignment_heads", problem, _HEADS_FIX))

    return ModelSpec(
        name=name,
        url=url,
        sha256=digest.lower(),
        filename=f"{name}.pt",
        size_bytes=size,
        source="registry",
        alignment_heads=alignment,
        registry_file=path,
    )


_HEADS_FIX = "give a list of [layer, head] pairs of non-negative integers"


def _parse_heads(heads: Any, fail: Any) -> AlignmentHeads:
    if not isinstance(heads, list) or not heads:
        raise fail("must be a non-empty list")
    pairs = []
    for item in heads:
        if not isinstance(item, list) or len(item) != 2 or any(type(v) is not int or v < 0 for v in item):
            raise fail(f"{item!r} is not a [layer, head] pair")
        pairs.append((item[0], item[1]))
    return tuple(sorted(set(pairs)))
