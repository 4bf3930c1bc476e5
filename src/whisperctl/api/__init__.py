"""The one library face: list, info, path, download, verify, load, and the fleet verbs.

Everything here returns data (dataclasses) and raises :class:`~whisperctl.errors.WhisperctlError` subclasses;
nothing prints. The CLI (``whisperctl.cli``) is a thin layer over these functions.
"""

from __future__ import annotations

from whisperctl.api.fleet import (
    cache_key,
    disk_usage,
    export_mirror,
    format_manifest,
    freeze,
    plan_prune,
    prune,
    read_manifest,
    remove_models,
)
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

__all__ = [
    "CheckpointInfo",
    "PathLike",
    "cache_key",
    "disk_usage",
    "download",
    "export_mirror",
    "format_manifest",
    "freeze",
    "inspect",
    "list_models",
    "load",
    "load_model",
    "model_info",
    "model_path",
    "open_context",
    "plan_prune",
    "prune",
    "read_manifest",
    "remove_models",
    "resolve_target",
    "verify",
]
