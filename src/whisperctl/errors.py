"""The whisperctl error tree: one class per exit code, and the exit codes themselves (:class:`ExitCode`).

Every failure a user can act on is a :class:`WhisperctlError` whose message is one line saying what happened,
where, and what to do next. The CLI maps each class to its documented exit code; anything else is a bug and
stays a traceback (exit 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import Any

__all__ = [
    "CacheError",
    "DeviceError",
    "DownloadError",
    "ExitCode",
    "IntegrityError",
    "ManifestError",
    "NetworkError",
    "NotCachedError",
    "RegistryError",
    "TorchMissingError",
    "UnknownModelError",
    "UsageError",
    "WhisperctlError",
    "quoted",
    "sanitized",
]


class ExitCode(IntEnum):
    """whisperctl's exit codes, named once: the README's table, the errors' ``exit_code`` and the CLI."""

    OK = 0
    BUG = 1  # an unexpected exception: a traceback to report
    USAGE = 2  # bad arguments, an unknown model name, a bad registry file or manifest, PyTorch missing
    NETWORK = 3  # the network failed after every retry, an HTTP error, a refused redirect
    INTEGRITY = 4  # a digest mismatch, a wrong size, a corrupt file, an invalid checkpoint
    NOT_CACHED = 5  # not in the cache, and may not (or need not) be fetched
    CACHE = 6  # the cache or a destination cannot be used: permissions, not a directory, no space, in use
    DEVICE = 7  # the requested device is not available
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); a partial download is kept


def quoted(value: str, limit: int = 80) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters: a hostile 100,000-character name
    must not become a 100,000-character error line (repr also keeps NUL and newlines on one line)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 4]}...{text[0]} ({len(value):,} characters)"


def sanitized(value: str | bytes, limit: int = 200) -> str:
    """Text that a server or a file chose (a reason phrase, a redirect target, a header value, an error
    body, a parser's complaint quoting them), made fit for a terminal, a log or a JSON record.

    Bytes are read as UTF-8 (invalid bytes escaped); every character that is not printable (CR, LF, TAB,
    NUL, ESC and the other controls, bidirectional overrides, line separators) is written as its escape
    (``\\x1b``), so it can neither move the cursor, colour a terminal, start a log line nor hide text; the
    result is cut to about ``limit`` characters, saying how long the original was.
    """
    # Each character gives one or more: what is past the limit is never looked at (a body may be huge).
    head = value[: limit + 1]
    text = head.decode("utf-8", "backslashreplace") if isinstance(head, bytes) else head
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if len(text) <= limit and len(head) == len(value):
        return text
    unit = "bytes" if isinstance(value, bytes) else "characters"
    return f"{text[: max(0, limit - 3)]}... ({len(value):,} {unit})"


class WhisperctlError(Exception):
    """Base class of every error whisperctl reports to a user."""

    exit_code: ExitCode = ExitCode.BUG


class UsageError(WhisperctlError):
    """Bad arguments or input (exit 2)."""

    exit_code = ExitCode.USAGE


class UnknownModelError(UsageError):
    """A model name that is neither official nor in the user registry (exit 2)."""

    def __init__(self, name: str, suggestions: list[str]) -> None:
        self.name = name
        self.suggestions = suggestions
        hint = f"did you mean {', '.join(repr(s) for s in suggestions)}? " if suggestions else ""
        super().__init__(
            f"unknown model {quoted(name)}: {hint}run `whisperctl list` for the official names, "
            "or add it to your registry file"
        )


class RegistryError(UsageError):
    """A malformed user registry file (exit 2)."""


class ManifestError(UsageError):
    """A manifest file (``download -r``) that cannot be read or names unknown models (exit 2)."""


class NetworkError(WhisperctlError):
    """The network failed after every retry (exit 3)."""

    exit_code = ExitCode.NETWORK


class IntegrityError(WhisperctlError):
    """A digest mismatch, a corrupt file or an invalid checkpoint (exit 4)."""

    exit_code = ExitCode.INTEGRITY


class NotCachedError(WhisperctlError):
    """The model is not in the cache and may not be fetched (exit 5)."""

    exit_code = ExitCode.NOT_CACHED


class CacheError(WhisperctlError):
    """The cache cannot be used: permissions, not a directory, no space (exit 6)."""

    exit_code = ExitCode.CACHE


class DeviceError(WhisperctlError):
    """The requested device is not available (exit 7)."""

    exit_code = ExitCode.DEVICE


class TorchMissingError(UsageError):
    """PyTorch is needed but not installed (exit 2)."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} needs PyTorch, which is not installed: run `pip install 'whisperctl[torch]'` "
            "(or `pip install torch`)"
        )


class DownloadError(WhisperctlError):
    """Raised by :func:`whisperctl.download` when a model failed, after every model was tried.

    ``records`` holds one ``DownloadRecord`` per model; ``exit_code`` is that of the first failure.
    """

    def __init__(self, message: str, exit_code: ExitCode, records: Sequence[Any]) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.records = list(records)
