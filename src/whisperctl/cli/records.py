"""The one conversion of the library's records to JSON: :func:`to_json`.

A record (a dataclass) becomes an object of its fields, in order: paths become strings, enums their value,
tuples lists, nested records objects. What a record class shows beyond or instead of its plain fields
(a property such as ``bytes_freed``, a tensor map shown as a count) is declared once, in :data:`VIEWS`, by
the class's name, so that adding a field to a record adds it to ``--json`` with no other change.

The views name classes instead of importing them: ``fetch`` brings httpx and ``models.loader`` brings torch,
which ``whisperctl list`` and ``path`` must not wait for.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, TypeAlias

__all__ = ["JSON", "VIEWS", "View", "to_json"]

JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None


@dataclass(frozen=True)
class View:
    """How a record class appears in JSON, where that is not simply its fields."""

    omit: frozenset[str] = frozenset()  # fields that are internal, or shown by a computed key
    rename: Mapping[str, str] = field(default_factory=dict)  # field -> key
    # Fields holding a record whose keys join this object's; when the field is None, the keys listed are null.
    lift: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Keys computed from the record: in place of the field of the same name, else after the fields.
    computed: Mapping[str, Callable[[Any], object]] = field(default_factory=dict)


def _heads(spec: Any) -> object:
    heads = spec.alignment_heads
    if heads is None:
        return None
    return {"count": len(heads), "pairs": heads, "source": spec.source}


def _parameters(checkpoint: Any) -> object:
    from whisperctl.models.dims import count_parameters

    return count_parameters(checkpoint.dims)


def _model_heads(model: Any) -> object:
    heads = model.alignment_heads
    if heads is None:
        return None
    return {"count": len(heads), "pairs": heads, "origin": model.heads_origin}


_CHECKPOINT_KEYS = (
    "format",
    "files",
    "size_bytes",
    "dims",
    "parameters",
    "tensors",
    "dtypes",
    "tensor_bytes",
    "alignment_heads",
    "details",
)

VIEWS: dict[str, View] = {
    # models/
    "ParameterCounts": View(computed={"total": lambda p: p.total}),
    "ModelSpec": View(computed={"parameters": lambda s: s.parameters, "alignment_heads": _heads}),
    "ModelFile": View(
        omit=frozenset({"path", "heads_origin"}),
        computed={
            "parameters": _parameters,
            "tensors": lambda m: len(m.tensors),
            "dtypes": lambda m: m.dtypes,
            "tensor_bytes": lambda m: m.tensor_bytes,
            "alignment_heads": _model_heads,
            "details": lambda m: dict(m.details),
        },
    ),
    "LoadReport": View(
        omit=frozenset({"alignment_heads_source"}),
        computed={
            "alignment_heads": lambda r: {"count": r.alignment_heads, "source": r.alignment_heads_source}
        },
    ),
    # store/ and api/
    "CacheEntry": View(
        omit=frozenset({"stamp"}),
        lift={"spec": ()},
        computed={"sha256_measured": lambda e: e.stamp.sha256 if e.stamp else None},
    ),
    "CheckpointInfo": View(
        omit=frozenset({"entry"}),
        lift={"checkpoint": _CHECKPOINT_KEYS},
        computed={"readable": lambda i: i.checkpoint is not None},
    ),
    "ConvertRecord": View(computed={"size_bytes": lambda r: r.size_bytes}),
    "ExportReport": View(rename={"records": "models"}, computed={"bytes_copied": lambda r: r.bytes_copied}),
    "LayoutReport": View(rename={"records": "models"}, computed={"bytes_copied": lambda r: r.bytes_copied}),
    "PushReport": View(
        computed={"bytes_sent": lambda r: r.bytes_sent, "bytes_skipped": lambda r: r.bytes_skipped}
    ),
    "RemoveReport": View(computed={"bytes_freed": lambda r: r.bytes_freed}),
    "RemoveRecord": View(computed={"status": lambda r: r.status, "bytes_freed": lambda r: r.bytes_freed}),
    "PruneReport": View(rename={"items": "removed"}, computed={"bytes_freed": lambda r: r.bytes_freed}),
    "UsageEntry": View(computed={"total_bytes": lambda u: u.total_bytes}),
    "DiskUsage": View(
        computed={
            "unknown": lambda u: [{"path": p, "size_bytes": n} for p, n in u.unknown],
            "total_bytes": lambda u: u.total_bytes,
        }
    ),
    "CacheKey": View(computed={"models": lambda k: [{"name": n, "sha256": d} for n, d in k.models]}),
}


def to_json(value: object) -> JSON:
    """``value`` as JSON data (for :func:`json.dumps`): records through their :data:`VIEWS`."""
    if isinstance(value, enum.Enum):  # before str and int: statuses and exit codes are both
        return to_json(value.value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _record(value)
    raise TypeError(f"to_json: no JSON form for {type(value).__name__}")


def _record(record: Any) -> dict[str, JSON]:
    view = VIEWS.get(type(record).__name__, View())
    out: dict[str, JSON] = {}
    for f in dataclasses.fields(record):
        name = f.name
        if name in view.omit:
            continue
        if name in view.lift:
            inner = getattr(record, name)
            if inner is None:
                out.update(dict.fromkeys(view.lift[name]))
            else:
                lifted = to_json(inner)
                if not isinstance(lifted, dict):
                    raise TypeError(f"to_json: {type(record).__name__}.{name} is not a record")
                out.update(lifted)
            continue
        if name in view.computed:
            out[name] = to_json(view.computed[name](record))
        else:
            out[view.rename.get(name, name)] = to_json(getattr(record, name))
    for key, compute in view.computed.items():
        if key not in out:
            out[key] = to_json(compute(record))
    return out
