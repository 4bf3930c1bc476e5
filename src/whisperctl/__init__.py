"""whisperctl: list, download, verify, inspect, load and convert OpenAI Whisper checkpoints.

The library is quiet (it never prints) and typed; the ``whisperctl`` command is a thin layer over it.
"""

from __future__ import annotations

from whisperctl._version import __version__
from whisperctl.api import (
    CheckpointInfo,
    ConvertRecord,
    cache_key,
    convert,
    disk_usage,
    download,
    export_mirror,
    freeze,
    inspect,
    list_models,
    load,
    load_model,
    model_info,
    model_path,
    prune,
    read_manifest,
    remove_models,
    verify,
)
from whisperctl.errors import (
    CacheError,
    DeviceError,
    DownloadError,
    ExitCode,
    IntegrityError,
    NetworkError,
    NotCachedError,
    RegistryError,
    UnknownModelError,
    UsageError,
    WhisperctlError,
)
from whisperctl.models.dims import ModelDimensions, ParameterCounts, count_parameters
from whisperctl.models.registry import ModelSpec, Registry, load_registry
from whisperctl.store.cache import Cache, CacheEntry, Stamp, Status, default_cache_dir, resolve_cache_dir

__all__ = [
    "Cache",
    "CacheEntry",
    "CacheError",
    "CheckpointInfo",
    "ConvertRecord",
    "DeviceError",
    "DownloadError",
    "ExitCode",
    "IntegrityError",
    "ModelDimensions",
    "ModelSpec",
    "NetworkError",
    "NotCachedError",
    "ParameterCounts",
    "Registry",
    "RegistryError",
    "Stamp",
    "Status",
    "UnknownModelError",
    "UsageError",
    "WhisperctlError",
    "__version__",
    "cache_key",
    "convert",
    "count_parameters",
    "default_cache_dir",
    "disk_usage",
    "download",
    "export_mirror",
    "freeze",
    "inspect",
    "list_models",
    "load",
    "load_model",
    "load_registry",
    "model_info",
    "model_path",
    "prune",
    "read_manifest",
    "remove_models",
    "resolve_cache_dir",
    "verify",
]
