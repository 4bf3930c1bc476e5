"""whisperctl: list, download, verify, inspect and load OpenAI Whisper checkpoints.

The library is quiet (it never prints) and typed; the ``whisperctl`` command is a thin layer over it.
"""

from __future__ import annotations

from .api import (
    CheckpointInfo,
    download,
    inspect,
    list_models,
    load,
    load_model,
    model_info,
    model_path,
    verify,
)
from .cache import Cache, CacheEntry, Stamp, default_cache_dir, resolve_cache_dir
from .dims import ModelDimensions, ParameterCounts, count_parameters
from .errors import (
    CacheError,
    DeviceError,
    DownloadError,
    IntegrityError,
    NetworkError,
    NotCachedError,
    RegistryError,
    UnknownModelError,
    UsageError,
    WhisperctlError,
)
from .fleet import cache_key, disk_usage, export_mirror, freeze, prune, read_manifest, remove_models
from .registry import ModelSpec, Registry, load_registry

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "CacheEntry",
    "CacheError",
    "CheckpointInfo",
    "DeviceError",
    "DownloadError",
    "IntegrityError",
    "ModelDimensions",
    "ModelSpec",
    "NetworkError",
    "NotCachedError",
    "ParameterCounts",
    "Registry",
    "RegistryError",
    "Stamp",
    "UnknownModelError",
    "UsageError",
    "WhisperctlError",
    "__version__",
    "cache_key",
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
