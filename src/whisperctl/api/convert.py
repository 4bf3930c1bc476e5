"""Convert a model between formats: read, check, write beside the target, read back, check, rename.

:func:`convert` takes a model name (downloaded and verified first, as :func:`~.models.load` does) or any
readable path or directory, and writes ``openai`` (a ``.pt`` file), ``hf`` or ``ct2`` (directories) or
``ggml`` (a file). The output is built under a hidden temporary name beside ``out``
(``.<name>.<12 hex>.tmp``, the store's rule), read back with its format's reader and compared with the
source (dims, tensor names and shapes), given a ``SHA256SUMS`` when it is a directory, and only then
renamed into place. An existing ``out`` is never touched without ``force``, and with ``force`` it is
replaced only once the new output is complete. On any failure, Ctrl-C included, the temporary is removed:
nothing is ever left under ``out``'s name but a finished, checked model.

A writer's big file goes through an :class:`~whisperctl.models.formats.output.OutputFile`, hashed while it
is written; :func:`~whisperctl.models.formats.output.recording` collects those digests, and only the other
files are hashed once written. The record gives the seconds of each phase.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from whisperctl.api.models import PathLike, ensure_cached, open_context, resolve_target
from whisperctl.errors import CacheError, IntegrityError, UsageError
from whisperctl.models.formats import FORMATS, FormatName, ModelFile, read_model
from whisperctl.models.registry import ModelSpec, Registry
from whisperctl.store.files import fsync_path
from whisperctl.store.hashing import sha256_file
from whisperctl.store.layout import temporary_path

if TYPE_CHECKING:
    from whisperctl.fetch.download import DownloadProgress
    from whisperctl.models.formats.output import SealedFile

__all__ = ["SUMS_NAME", "ConvertRecord", "WrittenFile", "convert"]

SUMS_NAME = "SHA256SUMS"
_DTYPES = {"fp16": "float16", "float16": "float16", "fp32": "float32", "float32": "float32"}


@dataclass(frozen=True)
class WrittenFile:
    path: str  # relative to the output directory; for a file output, its name
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class ConvertRecord:
    """What :func:`convert` wrote, from what, and what it cost."""

    name: str | None  # the registry model converted, when a name was given
    source_format: FormatName
    source_path: Path
    format: FormatName  # written
    out: Path
    dtype: str  # float16 or float32
    integrity: str  # how the source was checked
    files: tuple[WrittenFile, ...]
    # Each phase: start (options checked, the writer and its libraries imported), download or verify (a NAME's
    # file, when they ran), read (the source read and checked), write (with the big file's SHA-256 and
    # fsync), check (read back), seal (SHA-256 of the other files, fsync, SHA256SUMS), place (rename);
    # and total, from the call's start.
    seconds: dict[str, float]
    peak_rss_bytes: int

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)


def convert(
    src: PathLike,
    out: PathLike,
    to: str,
    *,
    dtype: str = "fp16",
    force: bool = False,
    cache_dir: PathLike | None = None,
    registry: Registry | PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    offline: bool | None = None,
    progress: DownloadProgress | None = None,
) -> ConvertRecord:
    """Convert ``src`` (a model name or a path) to format ``to`` at ``out``; see the module docstring.

    ``dtype``: ``fp16`` (default, as the official files) or ``fp32``. Raises :class:`UsageError` (exit 2)
    for a bad format or dtype, an existing ``out`` without ``force``, or a writer whose extra is missing;
    :class:`IntegrityError` (exit 4) for a source that is no readable model or whose tensors do not match
    its dims; :class:`CacheError` (exit 6) when ``out``'s directory cannot be written.
    """
    started = time.perf_counter()
    fmt = _format(to)
    target_dtype = _DTYPES.get(dtype.lower())
    if target_dtype is None:
        raise UsageError(f"--dtype {dtype!r}: not one of fp16, fp32")
    out = Path(out).expanduser().absolute()
    _check_out(out, force)
    from whisperctl.models.formats.writers import dependency_error, load_writer

    write = load_writer(fmt)  # a missing extra is said before any download
    from whisperctl.models.checkpoint import validate
    from whisperctl.models.formats.arrays import open_arrays
    from whisperctl.models.formats.output import recording
    from whisperctl.models.usage import peak_rss

    seconds: dict[str, float] = {}
    clock = _lap(seconds, "start", started)  # mostly importing the writer and its libraries
    name, model, integrity = _source(src, cache_dir, registry, mirrors, offline, progress, seconds)
    validate(model)
    _check_not_source(out, model)
    clock = _lap(seconds, "read", clock, exclude=("download", "verify"))
    tmp = temporary_path(out)
    try:
        if _is_dir_format(fmt):
            tmp.mkdir()
        weights = open_arrays(model)
        try:
            with recording() as sealed:  # the files written through an OutputFile, hashed as written
                write(model, weights, tmp, dtype=target_dtype)
        except ImportError as exc:  # a writer that imports its libraries when it starts
            raise dependency_error(fmt, exc) from None
        del weights
        clock = _lap(seconds, "write", clock)
        _check_written(tmp, fmt, model)
        clock = _lap(seconds, "check", clock)
        files = _seal(tmp, out.name, directory=_is_dir_format(fmt), sealed=sealed)
        clock = _lap(seconds, "seal", clock)
        _place(tmp, out)
        _lap(seconds, "place", clock)
    except OSError as exc:
        _remove(tmp)
        raise CacheError(
            f"{out}: cannot be written ({exc.strerror or exc}); check the directory and free space"
        ) from None
    except BaseException:
        _remove(tmp)
        raise
    seconds["total"] = time.perf_counter() - started
    return ConvertRecord(
        name=name,
        source_format=model.format,
        source_path=model.path,
        format=fmt,
        out=out,
        dtype=target_dtype,
        integrity=integrity,
        files=files,
        seconds={phase: round(s, 4) for phase, s in seconds.items()},
        peak_rss_bytes=peak_rss(),
    )


def _lap(seconds: dict[str, float], phase: str, since: float, *, exclude: tuple[str, ...] = ()) -> float:
    """Record the time since ``since`` as ``phase`` (less the phases in ``exclude`` timed within it)."""
    now = time.perf_counter()
    seconds[phase] = now - since - sum(seconds.get(p, 0.0) for p in exclude)
    return now


def _format(to: str) -> FormatName:
    for fmt in FORMATS:
        if fmt == to:
            return fmt
    raise UsageError(f"--to {to!r}: not one of {', '.join(FORMATS)}")


def _is_dir_format(fmt: FormatName) -> bool:
    from whisperctl.models.formats.writers import WRITERS

    return WRITERS[fmt].directory


def _check_out(out: Path, force: bool) -> None:
    if (out.exists() or out.is_symlink()) and not force:
        raise UsageError(f"{out}: already exists; choose another name, or add --force to replace it")
    if not out.parent.is_dir():
        raise CacheError(f"{out.parent}: no such directory; create it first, or choose another OUT")


def _check_not_source(out: Path, model: ModelFile) -> None:
    """``out`` may not be the source, nor hold it (with ``--force`` it would be replaced while read)."""
    source = model.path.resolve()
    target = out.resolve()
    if target == source or target in source.parents:
        raise UsageError(f"{out}: is the source model itself; choose another OUT")


def _source(
    src: PathLike,
    cache_dir: PathLike | None,
    registry: Registry | PathLike | None,
    mirrors: Sequence[str] | None,
    offline: bool | None,
    progress: DownloadProgress | None,
    seconds: dict[str, float],
) -> tuple[str | None, ModelFile, str]:
    """The source model read (a name's file made present and verified first), and how it was checked."""
    reg, cache = open_context(cache_dir, registry)
    target = resolve_target(reg, src)
    if not isinstance(target, ModelSpec):
        return None, read_model(target), "not checked"
    integrity = ensure_cached(
        target,
        cache,
        reg,
        verify=False,
        offline=offline,
        mirrors=mirrors,
        progress=progress,
        seconds=seconds,
    )
    model = read_model(cache.path_for(target))
    if model.alignment_heads is None and target.alignment_heads:
        # The registry's heads (official files carry none): the written model keeps them, so that word
        # timestamps in transformers, faster-whisper or a later load use the model's own heads.
        model = dataclasses.replace(model, alignment_heads=tuple(target.alignment_heads), heads_origin=None)
    return target.name, model, integrity


def _check_written(path: Path, fmt: FormatName, source: ModelFile) -> None:
    """The output, read back by its own reader, holds the source's model: same dims, tensors, shapes."""
    try:
        written = read_model(path)
    except IntegrityError as exc:
        raise IntegrityError(
            f"the {fmt} output does not read back ({exc}); this is a whisperctl bug"
        ) from None
    problems = []
    if written.format != fmt:
        problems.append(f"it reads as {written.format}")
    if written.dims != source.dims:
        problems.append(f"dims {written.dims.as_dict()} (source {source.dims.as_dict()})")
    missing = sorted(set(source.tensors) - set(written.tensors))
    extra = sorted(set(written.tensors) - set(source.tensors))
    shapes = [
        k for k, t in written.tensors.items() if k in source.tensors and t.shape != source.tensors[k].shape
    ]
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes)):
        if items:
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}")
    if problems:
        raise IntegrityError(
            f"the {fmt} output does not match its source ({'; '.join(problems)}); this is a whisperctl bug"
        )


def _seal(
    tmp: Path, name: str, *, directory: bool, sealed: Mapping[Path, SealedFile]
) -> tuple[WrittenFile, ...]:
    """Hash every file written (but those ``sealed`` hashed as they were written, when still the same
    file), write ``SHA256SUMS`` in a directory, and make it all durable. A file output is recorded under
    ``name``, the one it is about to take."""
    if not directory:
        return (WrittenFile(name, *_digest(tmp, sealed)),)
    files = [
        WrittenFile(path.relative_to(tmp).as_posix(), *_digest(path, sealed))
        for path in sorted(p for p in tmp.rglob("*") if p.is_file())
    ]
    sums = tmp / SUMS_NAME
    sums.write_text("".join(f"{f.sha256}  {f.path}\n" for f in files), encoding="utf-8")
    fsync_path(sums)
    for folder in {tmp, *(p for p in tmp.rglob("*") if p.is_dir())}:
        fsync_path(folder)
    return (*files, WrittenFile(SUMS_NAME, sums.stat().st_size, sha256_file(sums)))


def _digest(path: Path, sealed: Mapping[Path, SealedFile]) -> tuple[int, str]:
    """The size and SHA-256 of ``path``, made durable: from its :class:`SealedFile` when it is still
    that file, else hashed now."""
    fsync_path(path)
    st = path.stat()
    known = sealed.get(Path(os.path.abspath(path)))
    if known is not None and known.holds_for(st):
        return st.st_size, known.sha256
    return st.st_size, sha256_file(path)


def _place(tmp: Path, out: Path) -> None:
    """Rename the finished output into place; an old ``out`` (with ``force``) goes only once it is there."""
    if out.is_file() and not out.is_symlink() and tmp.is_file():
        os.replace(tmp, out)  # one atomic step
    elif not (out.exists() or out.is_symlink()):
        os.rename(tmp, out)
    else:
        aside = temporary_path(out)
        os.rename(out, aside)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(aside, out)
            raise
        _remove(aside)
    with contextlib.suppress(OSError):
        fsync_path(out.parent)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
