"""The library's entry points: each composes the registry and the cache, and returns data, never prints."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisperctl.api.manifest import select_models
from whisperctl.errors import (
    DownloadError,
    IntegrityError,
    NotCachedError,
    TorchMissingError,
    UsageError,
    quoted,
)
from whisperctl.models.registry import ModelSpec, Registry, load_registry
from whisperctl.store.cache import Cache, CacheEntry, Status, resolve_cache_dir
from whisperctl.store.verify import VerifyRecord, verify_models

if TYPE_CHECKING:
    # httpx and the engine are imported when a download starts, so that `list` and `path` start fast.
    import httpx

    from whisperctl.fetch.download import DownloadProgress, DownloadRecord, Mirror
    from whisperctl.fetch.transfer import TransferOptions
    from whisperctl.models.formats import ModelFile
    from whisperctl.models.loader import Into, Loaded

__all__ = [
    "CheckpointInfo",
    "download",
    "inspect",
    "list_models",
    "load",
    "load_model",
    "model_info",
    "model_path",
    "open_context",
    "resolve_target",
    "verify",
]

PathLike = Path | str


def open_context(
    cache_dir: PathLike | None = None, registry: Registry | PathLike | None = None
) -> tuple[Registry, Cache]:
    """The registry (official + user file) and the cache that the other functions work on."""
    reg = registry if isinstance(registry, Registry) else load_registry(registry)
    return reg, Cache(resolve_cache_dir(cache_dir))


def list_models(
    *, cache_dir: PathLike | None = None, registry: Registry | PathLike | None = None, cached: bool = False
) -> list[CacheEntry]:
    """Every known model with its cache status; with ``cached=True`` only those with a file in the cache."""
    reg, cache = open_context(cache_dir, registry)
    entries = [cache.entry(spec) for spec in reg]
    return [e for e in entries if e.exists] if cached else entries


def model_info(
    name: str, *, cache_dir: PathLike | None = None, registry: Registry | PathLike | None = None
) -> CacheEntry:
    """The spec of one model (name or alias) and its cache status."""
    reg, cache = open_context(cache_dir, registry)
    return cache.entry(reg.get(name))


def model_path(
    name: str, *, cache_dir: PathLike | None = None, registry: Registry | PathLike | None = None
) -> Path:
    """The absolute path of a model's cached file.

    Raises :class:`NotCachedError` when the file is not there (or only partly downloaded), and
    :class:`IntegrityError` when its last verification failed.
    """
    entry = model_info(name, cache_dir=cache_dir, registry=registry)
    spec = entry.spec
    if entry.status is Status.MISSING:
        raise NotCachedError(
            f"{spec.name}: not in the cache ({entry.path}); run `whisperctl download {spec.name}`"
        )
    if entry.status is Status.PARTIAL:
        raise NotCachedError(
            f"{spec.name}: only a partial download is in the cache ({entry.partial_path}); "
            f"run `whisperctl download {spec.name}` to finish it"
        )
    if entry.status is Status.CORRUPT:
        actual = entry.stamp.sha256 if entry.stamp else "unknown"
        raise IntegrityError(
            f"{spec.name}: {entry.path} failed verification (expected SHA-256 {spec.sha256}, got {actual}); "
            f"run `whisperctl download --force {spec.name}`"
        )
    return entry.path


def _mirrors(mirrors: Sequence[str] | None) -> tuple[Mirror, ...]:
    from whisperctl.fetch.download import MIRROR_ENV, parse_mirrors

    if mirrors is None:
        env = os.environ.get(MIRROR_ENV, "")
        return parse_mirrors([env]) if env else ()
    return parse_mirrors(list(mirrors))


def download(
    names: Sequence[str] = (),
    *,
    manifest: PathLike | None = None,
    all_models: bool = False,
    cache_dir: PathLike | None = None,
    registry: Registry | PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    offline: bool | None = None,
    force: bool = False,
    jobs: int = 4,
    connections: int | None = None,
    options: TransferOptions | None = None,
    progress: DownloadProgress | None = None,
    client: httpx.AsyncClient | None = None,
    check: bool = True,
) -> list[DownloadRecord]:
    """Download models into the cache, verified; one :class:`DownloadRecord` per model.

    The models are ``names``, then those of the ``manifest`` file (every line checked before anything
    starts), or with ``all_models`` every model of the registry.
    ``mirrors`` (URLs or directories in the official ``<base>/<sha256>/<filename>`` layout) are tried in order
    before the official URL; ``None`` reads ``$WHISPERCTL_MIRROR``. ``offline=None`` reads
    ``$WHISPERCTL_OFFLINE``. ``options`` tunes the transfers (default: ``TransferOptions()``);
    ``connections``, when given, replaces its ``connections`` (parallel ranges per large file, 8 by
    default), so that it is never ignored. With
    ``check=True`` a failure raises :class:`DownloadError` (after every model was tried), which carries the
    records; with ``check=False`` failures are records with ``status="failed"``.
    """
    import asyncio

    from whisperctl.fetch.download import download_models, env_offline
    from whisperctl.fetch.transfer import TransferOptions

    reg, cache = open_context(cache_dir, registry)
    specs = select_models(reg, names, manifest=manifest, all_models=all_models)
    opts = options or TransferOptions()
    if connections is not None:
        opts = dataclasses.replace(opts, connections=connections)
    records = asyncio.run(
        download_models(
            specs,
            cache,
            mirrors=_mirrors(mirrors),
            offline=env_offline() if offline is None else offline,
            force=force,
            jobs=jobs,
            options=opts,
            progress=progress,
            client=client,
        )
    )
    failed = [r for r in records if not r.ok]
    if check and failed:
        raise DownloadError("; ".join(str(r.error) for r in failed), failed[0].exit_code, records)
    return records


def verify(
    names: Sequence[str] | None = None,
    *,
    repair: bool = False,
    cache_dir: PathLike | None = None,
    registry: Registry | PathLike | None = None,
    jobs: int = 4,
    on_start: Callable[[ModelSpec, int], None] | None = None,
    on_bytes: Callable[[ModelSpec, int], None] | None = None,
    progress: DownloadProgress | None = None,
) -> list[VerifyRecord]:
    """Re-hash cached models in full and update their stamps (with no ``names``: every model on disk).

    A corrupt file is reported, not removed. With ``repair=True`` each corrupt model is downloaded again
    (``progress`` follows those downloads) and its record is then that of the new file, ``verified`` from
    the digest measured while it streamed; a repair that fails leaves the file as it was, and its record
    ``corrupt``, with the reason in ``error``.
    """
    reg, cache = open_context(cache_dir, registry)
    if names:
        specs = reg.resolve(list(names))
    else:
        specs = [e.spec for e in (cache.entry(s) for s in reg) if e.status is not Status.MISSING]
    records = verify_models(specs, cache, jobs=jobs, on_start=on_start, on_bytes=on_bytes)
    corrupt = [r.name for r in records if r.status is Status.CORRUPT]
    if not repair or not corrupt:
        return records
    downloads = download(
        corrupt, cache_dir=cache.root, registry=reg, force=True, progress=progress, check=False
    )
    fetched = {d.name: d for d in downloads}
    return [_repaired(r, fetched[r.name]) if r.name in fetched else r for r in records]


def _repaired(record: VerifyRecord, fetched: DownloadRecord) -> VerifyRecord:
    """A corrupt file's record after ``download --force``: the new file's, or the old one's if it failed."""
    if not fetched.ok:
        return dataclasses.replace(record, error=f"not repaired: {fetched.error}")
    return dataclasses.replace(
        record,
        status=Status.VERIFIED,
        sha256_actual=fetched.sha256,
        size_bytes=fetched.size_bytes,
        error=None,
    )


def resolve_target(registry: Registry, name_or_path: PathLike) -> ModelSpec | Path:
    """A registry name (or alias) first, as openai-whisper does, else an existing model file or directory
    (a Hugging Face or CTranslate2 model is a directory)."""
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in registry:
        return registry.get(name_or_path)
    path = Path(text).expanduser()
    shown = text if text.isprintable() and len(text) <= 200 else quoted(text)
    try:
        if path.is_file() or path.is_dir():
            return path.resolve()
        exists = path.exists()
    except OSError as exc:  # a name too long for a path, a directory that cannot be searched
        raise UsageError(
            f"{shown}: not a model name, nor a usable path ({exc.strerror or exc}); give a model name "
            "or the path of a checkpoint file or directory"
        ) from None
    if exists:
        raise UsageError(
            f"{shown}: not a file nor a directory; give a model name or the path of a checkpoint file "
            "or directory"
        )
    if isinstance(name_or_path, Path) or os.sep in text or "/" in text or text.endswith(".pt"):
        raise UsageError(
            f"{shown}: no such checkpoint file or directory; check the path, or give a model name"
        )
    return registry.get(text)  # UnknownModelError, with suggestions


@dataclass
class CheckpointInfo:
    """What ``whisperctl info`` knows of a model name or a model's path (see :func:`inspect`)."""

    path: Path
    entry: CacheEntry | None  # for a registry name
    checkpoint: ModelFile | None  # the model as read from its files; None when missing or unreadable
    error: str | None = None  # why the model could not be read
    problems: list[str] = field(default_factory=list)  # tensors vs dims, and file dims vs registry dims
    sha256: str | None = None  # measured, with hash=True
    matches: list[str] = field(default_factory=list)  # registry names with that digest

    @property
    def ok(self) -> bool:
        return self.error is None and not self.problems


def inspect(
    name_or_path: PathLike,
    *,
    cache_dir: PathLike | None = None,
    registry: Registry | PathLike | None = None,
    hash: bool = False,
) -> CheckpointInfo:
    """Read a model's dims and tensor list in any format (headers, configs and pickles only, no weights, no
    PyTorch) and check them.

    For a name, the cached file is read when there is one, and its dims compared with the registry's. A
    path that is not a readable model raises :class:`IntegrityError`; for a name the reason is
    returned in ``error`` with the registry's facts. ``hash=True`` measures the file's SHA-256 (for a name,
    as :func:`verify` does, updating its stamp) and names the registry models that have it; a directory
    cannot be hashed so (:class:`UsageError`).
    """
    from whisperctl.models.checkpoint import check_tensors
    from whisperctl.models.formats import read_model
    from whisperctl.store.hashing import sha256_file

    reg, cache = open_context(cache_dir, registry)
    target = resolve_target(reg, name_or_path)
    entry = cache.entry(target) if isinstance(target, ModelSpec) else None
    path = entry.path if entry is not None else Path(target)  # type: ignore[arg-type]
    info = CheckpointInfo(path=path, entry=entry, checkpoint=None)
    if entry is not None and not entry.exists:
        return info
    if hash and path.is_dir():
        raise UsageError(
            f"{path}: --verify hashes a file, and this is a directory; check its files with "
            "`sha256sum -c SHA256SUMS` where it has one"
        )
    try:
        ckpt = read_model(path)
    except IntegrityError as exc:
        if entry is None:
            raise
        info.error = str(exc)
        return info
    info.checkpoint = ckpt
    info.problems = check_tensors(ckpt)
    spec_dims = entry.spec.dims if entry is not None else None
    if spec_dims is not None and spec_dims != ckpt.dims:
        diff = [
            f"{k}={v} (registry {spec_dims.as_dict()[k]})"
            for k, v in ckpt.dims.as_dict().items()
            if spec_dims.as_dict()[k] != v
        ]
        info.problems.append(f"dims differ from the registry's: {', '.join(diff)}")
    if hash:
        if entry is not None:  # as `whisperctl verify` does: the stamp records the result
            (record,) = verify_models([entry.spec], cache, jobs=1)
            info.sha256, info.entry = record.sha256_actual, cache.entry(entry.spec)
        else:
            info.sha256 = sha256_file(path)
        info.matches = [spec.name for spec in reg if spec.sha256 == info.sha256]
    return info


def ensure_cached(
    spec: ModelSpec,
    cache: Cache,
    reg: Registry,
    *,
    verify: bool,
    offline: bool | None,
    mirrors: Sequence[str] | None,
    progress: DownloadProgress | None,
    seconds: dict[str, float],
) -> str:
    """Make the model's file present and verified; say how it was checked. ``offline=None``: as the
    environment says (``WHISPERCTL_OFFLINE``)."""
    entry = cache.entry(spec)
    if entry.status in (Status.MISSING, Status.PARTIAL):
        if offline is None:
            from whisperctl.fetch.download import env_offline

            offline = env_offline()
        if offline:
            raise NotCachedError(
                f"{spec.name}: not in the cache ({entry.path}) and offline; "
                f"run `whisperctl download {spec.name}` where there is a network"
            )
        start = time.perf_counter()
        download(
            [spec.name], cache_dir=cache.root, registry=reg, mirrors=mirrors, offline=False, progress=progress
        )
        seconds["download"] = time.perf_counter() - start
        return "downloaded, SHA-256 verified"
    if entry.status is Status.VERIFIED and not verify:
        return "SHA-256 verified (stamp)"
    actual = entry.stamp.sha256 if entry.status is Status.CORRUPT and entry.stamp else None
    if actual is None or verify:  # a stamp that still matches the file and says corrupt is not re-read
        start = time.perf_counter()
        (record,) = verify_models([spec], cache, jobs=1)
        seconds["verify"] = time.perf_counter() - start
        if record.ok:
            return "SHA-256 verified (hashed now)"
        actual = record.sha256_actual
    raise IntegrityError(
        f"{spec.name}: {entry.path} does not match its digest (expected SHA-256 {spec.sha256}, "
        f"got {actual}); run `whisperctl download --force {spec.name}`"
    )


def _check_path_digest(
    reg: Registry, path: Path, sha256: str, seconds: dict[str, float]
) -> tuple[ModelSpec | None, str]:
    """Hash a checkpoint path against ``--sha256``; the registry entry of that digest (its alignment heads
    then apply), and what the report says of the file's integrity."""
    from whisperctl.store.hashing import sha256_file

    expected = sha256.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise UsageError(f"--sha256 {sha256!r}: not a SHA-256 digest (64 hex digits)")
    start = time.perf_counter()
    actual = sha256_file(path)
    seconds["verify"] = time.perf_counter() - start
    if actual != expected:
        raise IntegrityError(f"{path}: SHA-256 {actual} does not match the expected {expected}")
    return next((s for s in reg if s.sha256 == expected), None), "SHA-256 matches --sha256"


def load(
    name_or_path: PathLike,
    *,
    device: Any = None,
    dtype: Any = None,
    in_memory: bool = False,
    into: Into = "whisperctl",
    verify: bool = False,
    sha256: str | None = None,
    cache_dir: PathLike | None = None,
    registry: Registry | PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    offline: bool | None = None,
    progress: DownloadProgress | None = None,
) -> Loaded:
    """Load a model by name (downloaded first if needed, digest checked) or by path (a ``.pt`` or ggml file,
    a Hugging Face or CTranslate2 directory); returns model and report.

    A name's file is checked against its digest through its stamp when the stamp still matches the file,
    by hashing it in full otherwise or with ``verify=True``. A path is loaded as it is unless ``sha256`` is
    given. ``device``: ``None``/``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``,
    ``"cuda:N"``, ``"mps"``. ``dtype``: ``None``/``"fp32"`` (as openai-whisper), ``"fp16"`` (the
    checkpoint's own), ``"bf16"``.
    ``into="whisper"`` returns an openai-whisper ``Whisper`` (it must be installed).
    """
    reg, cache = open_context(cache_dir, registry)
    target = resolve_target(reg, name_or_path)  # a misspelt name is said at once, before torch is imported
    if isinstance(target, ModelSpec) and sha256 is not None:
        raise UsageError(
            f"--sha256 is for a checkpoint path; {target.name} is checked against the registry's digest "
            "(add --verify to hash it now)"
        )
    if not isinstance(target, ModelSpec) and verify:
        raise UsageError(f"--verify is for a model name; to check {target}, give --sha256 HEX")
    try:
        from whisperctl.models import loader
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "torch":
            raise TorchMissingError("loading a model") from None
        raise
    loader.resolve_device(device)  # fail before any download
    loader.resolve_dtype(dtype)
    seconds: dict[str, float] = {}
    heads = None
    source: loader.HeadsSource = "default"
    if isinstance(target, ModelSpec):
        integrity = ensure_cached(
            target,
            cache,
            reg,
            verify=verify,
            offline=offline,
            mirrors=mirrors,
            progress=progress,
            seconds=seconds,
        )
        path, name, spec = cache.path_for(target), target.name, target
    else:
        path, name, spec, integrity = target, None, None, "not checked"
        if sha256 is not None and path.is_dir():
            raise UsageError(f"--sha256 is for a file; {path} is a directory")
        if sha256 is not None:
            spec, integrity = _check_path_digest(reg, path, sha256, seconds)
    if spec is not None and spec.alignment_heads:
        heads, source = spec.alignment_heads, spec.source
    return loader.load_checkpoint(
        path,
        device=device,
        dtype=dtype,
        in_memory=in_memory,
        into=into,
        alignment_heads=heads,
        heads_source=source,
        name=name,
        integrity=integrity,
        seconds=seconds,
    )


def load_model(
    name: str,
    device: Any = None,
    download_root: str | None = None,
    in_memory: bool = False,
    *,
    dtype: Any = None,
    into: Into = "whisperctl",
) -> Any:
    """openai-whisper's ``load_model``, with its signature: the model, on ``device``, weights checked.

    ``name`` is a model name, or the path of a model in any format (a ``.pt`` or ggml file, a Hugging Face
    or CTranslate2 directory); ``download_root`` the cache directory (default: the one
    openai-whisper uses). Faster and leaner than openai-whisper's (no random initialisation, no full copy
    of the file in memory). With ``into="whisper"`` the result is a ``whisper.model.Whisper``, so that
    ``model.transcribe(...)`` works unchanged.
    """
    return load(
        name, device=device, dtype=dtype, in_memory=in_memory, into=into, cache_dir=download_root
    ).model
