"""The one library face: list, info, path, download, verify, load, the fleet verbs, and OCI push and layouts.

Everything here returns data (dataclasses) and raises :class:`~whisperctl.errors.WhisperctlError` subclasses;
nothing prints. The CLI (``whisperctl.cli``) is a thin layer over these functions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from whisperctl.api.convert import ConvertRecord, WrittenFile, convert
from whisperctl.api.fleet import (
    CacheKey,
    DiskUsage,
    ExportReport,
    Freeze,
    PruneReport,
    RemoveReport,
    cache_key,
    disk_usage,
    export_mirror,
    format_manifest,
    freeze,
    plan_prune,
    prune,
    remove_models,
)
from whisperctl.api.manifest import parse_manifest, read_manifest, select_models
from whisperctl.api.models import (
    CheckpointInfo,
    PathLike,
    download,
    inspect,
    list_models,
    load,
    load_model,
    model_info,
    model_path,
    open_context,
    resolve_target,
    verify,
)
from whisperctl.models.registry import REGISTRY_ENV, default_registry_path
from whisperctl.store.cache import CACHE_ENV, CacheEntry, Status, resolve_cache_dir
from whisperctl.store.verify import VerifyRecord

if TYPE_CHECKING:
    from whisperctl.api.oci import LayoutReport, PushReport, export_oci_layout, push

# The OCI verbs are imported when first used: a download, `list` or `path` never needs the registry client's
# and the layout writer's modules (PEP 562).
_LAZY = {name: "whisperctl.api.oci" for name in ("LayoutReport", "PushReport", "export_oci_layout", "push")}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CACHE_ENV",
    "REGISTRY_ENV",
    "CacheEntry",
    "CacheKey",
    "CheckpointInfo",
    "ConvertRecord",
    "DiskUsage",
    "ExportReport",
    "Freeze",
    "LayoutReport",
    "PathLike",
    "PruneReport",
    "PushReport",
    "RemoveReport",
    "Status",
    "VerifyRecord",
    "WrittenFile",
    "cache_key",
    "convert",
    "default_registry_path",
    "disk_usage",
    "download",
    "export_mirror",
    "export_oci_layout",
    "format_manifest",
    "freeze",
    "inspect",
    "list_models",
    "load",
    "load_model",
    "model_info",
    "model_path",
    "open_context",
    "parse_manifest",
    "plan_prune",
    "prune",
    "push",
    "read_manifest",
    "remove_models",
    "resolve_cache_dir",
    "resolve_target",
    "select_models",
    "verify",
]
