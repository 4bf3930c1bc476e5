"""Load a Whisper model of any format into a model: checked first, weights-only, memory-mapped, built without
init.

The steps, each timed in the :class:`LoadReport`:

``open``
    :func:`.formats.read_model` reads the headers only (for ``.pt``, the zip directory and the pickle, with
    an unpickler that knows only tensors and plain data), and every disagreement between ``dims`` and the
    tensors is reported in one message, before anything is allocated. Then the files are mapped: for
    ``.pt``, ``torch.load(weights_only=True, mmap=True)``; for safetensors, CTranslate2 and ggml, views of
    private mappings (:func:`.formats.weights.open_weights`). Tensors are read on first touch.
``build``
    The model is built with its parameters on ``meta`` (no memory, no random initialisation); for an
    openai-whisper model (``into="whisper"``), with its own classes and its initialisers skipped.
``attach``
    ``load_state_dict(strict=True, assign=True)`` adopts the mapped tensors as they are.
``move``
    Tensor by tensor, each is converted to the target dtype and device, and the file pages it came from are
    released from the process (``madvise(MADV_DONTNEED)`` on the private mapping), so the peak host memory
    is the converted model plus one tensor, never the whole file plus the whole converted copy. With the
    checkpoint's own dtype on the CPU (``fp16`` for official files) nothing is copied at all: the weights
    stay mapped, copy-on-write, from the file. The buffers no checkpoint holds (causal mask, alignment
    heads) are then computed on the device.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from whisperctl.errors import DeviceError, IntegrityError, UsageError
from whisperctl.models.checkpoint import validate
from whisperctl.models.dims import ModelDimensions, ParameterCounts
from whisperctl.models.formats import ModelFile, read_model
from whisperctl.models.staging import Job, copy_to_device
from whisperctl.models.usage import peak_rss

__all__ = [
    "DTYPES",
    "HeadsSource",
    "Into",
    "LoadReport",
    "Loaded",
    "PartReport",
    "available_devices",
    "heads_device",
    "load_checkpoint",
    "peak_rss",
    "resolve_device",
    "resolve_dtype",
]

Into = Literal["whisperctl", "whisper"]
# Where the alignment heads came from: the registry entry (official or the user's registry file), the default
# (every head of the last half of the decoder layers), or a file of the model itself (its reader's
# ``heads_origin``: HF's generation_config.json, CTranslate2's config.json, a ggml or .pt checkpoint).
HeadsSource = Literal[
    "official", "registry", "default", "generation_config.json", "config.json", "checkpoint"
]
_FILE_ORIGINS: tuple[HeadsSource, ...] = ("generation_config.json", "config.json", "checkpoint")

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
# Copies to CUDA through pinned buffers (:mod:`.staging`); off, each tensor goes by ``tensor.to(device)``
# (the benchmark measures both).
STAGED_COPIES = True


@dataclass(frozen=True)
class PartReport:
    """Where one part of the model (``encoder`` or ``decoder``) ended up."""

    name: str
    device: str
    dtype: str  # of the parameters; "float16+float32" when mixed
    parameters: int
    bytes: int  # parameters and buffers


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_checkpoint` did, and what it cost."""

    name: str | None
    path: Path
    into: Into
    device: str
    dtype: str
    parameters: ParameterCounts
    parts: tuple[PartReport, ...]
    alignment_heads: int
    alignment_heads_source: HeadsSource
    integrity: str
    seconds: dict[str, float]
    peak_rss_bytes: int
    peak_gpu_bytes: int | None
    checkpoint_dtype: str = ""
    mapped: bool = False  # weights still mapped from the file (same dtype on the CPU, not in_memory)
    format: str = "openai"  # of the model read: openai, hf, ct2 or ggml


@dataclass
class Loaded:
    model: Any  # whisperctl.models.transformer.Whisper, or whisper.model.Whisper with into="whisper"
    report: LoadReport


def resolve_dtype(value: str | torch.dtype | None) -> torch.dtype:
    """``None`` -> float32 (what openai-whisper returns); names ``fp32 fp16 bf16`` and their long forms."""
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        if value in DTYPES.values():
            return value
        raise UsageError(f"dtype {value}: not supported; use fp32, fp16 or bf16")
    try:
        return DTYPES[value.lower()]
    except KeyError:
        raise UsageError(f"dtype {value!r}: not one of fp32, fp16, bf16") from None


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        devices.append("mps")
    return devices


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(value: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA, else MPS, else CPU; an unavailable device raises :class:`DeviceError`."""
    if value is None or value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise UsageError(f"device {value!r}: not one of auto, cpu, cuda, cuda:N, mps") from None
    available = available_devices()
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {value}: CUDA is not available here (available: {', '.join(available)})"
            )
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {value}: no such GPU (available: {', '.join(available)})")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(
                f"device {value}: MPS is not available here (available: {', '.join(available)})"
            )
        return device
    raise UsageError(f"device {value!r}: not one of auto, cpu, cuda, cuda:N, mps")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _SkipInit(torch.overrides.TorchFunctionMode):  # type: ignore[misc]
    """Turns ``torch.nn.init`` functions into no-ops for this thread, while openai-whisper builds its model.

    Its ``__init__`` otherwise fills every weight with random numbers that the checkpoint then replaces
    (85% of ``whisper.load_model``'s time for large-v3); the parameters stay uninitialised ``torch.empty``,
    whose pages are never touched before ``load_state_dict(assign=True)`` drops them.
    """

    _INIT = frozenset(
        getattr(torch.nn.init, n)
        for n in (
            "uniform_",
            "normal_",
            "trunc_normal_",
            "constant_",
            "ones_",
            "zeros_",
            "xavier_uniform_",
            "xavier_normal_",
            "kaiming_uniform_",
            "kaiming_normal_",
        )
    )

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in self._INIT:
            return args[0] if args else (kwargs or {})["tensor"]
        return func(*args, **(kwargs or {}))


def _build(dims: ModelDimensions, into: Into) -> nn.Module:
    if into == "whisper":
        try:
            import whisper.model as wm  # type: ignore[import-untyped]
        except ImportError:
            raise UsageError(
                "into='whisper' needs openai-whisper, which is not installed: pip install openai-whisper"
            ) from None
        with _SkipInit():
            return wm.Whisper(wm.ModelDimensions(**dims.as_dict()))
    from whisperctl.models.transformer import Whisper

    return Whisper(dims, device="meta")


class _Releaser:
    """Drops already-converted file pages from this process: ``madvise(MADV_DONTNEED)`` on the mapping.

    Only for ranges inside the private mappings of the model's own files (every shard, found in
    /proc/self/maps by device and inode), where the kernel refills a dropped page from the file should
    anything read it again; never on anonymous memory, where it would zero data. Elsewhere than Linux it
    does nothing.
    """

    def __init__(self, paths: tuple[Path, ...]) -> None:
        self.ranges: list[tuple[int, int]] = []
        self._madvise: Any = None
        if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        try:
            files = set()
            for path in paths:
                st = path.stat()
                files.add((f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}", str(st.st_ino)))
            with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
                for line in maps:
                    parts = line.split()
                    if len(parts) >= 6 and (parts[3], parts[4]) in files and parts[1][3] == "p":
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        self.ranges.append((lo, hi))
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            self._madvise = libc.madvise
        except (OSError, AttributeError):
            self.ranges = []

    def __call__(self, tensor: Tensor) -> None:
        if not self.ranges or tensor.device.type != "cpu":
            return
        storage = tensor.untyped_storage()
        start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        page = mmap.PAGESIZE
        lo, hi = -(-start // page) * page, end // page * page
        if hi > lo and any(r_lo <= lo and hi <= r_hi for r_lo, r_hi in self.ranges):
            self._madvise(lo, hi - lo, mmap.MADV_DONTNEED)


def _convert(
    model: nn.Module,
    device: torch.device,
    dtype: torch.dtype,
    release: Callable[[Tensor], None],
    keep_fp32: Callable[[nn.Module], bool],
) -> None:
    """Every floating tensor to ``dtype`` on ``device``, one at a time, releasing each source as it goes.

    To CUDA the copies go through :func:`.staging.copy_to_device` (pinned buffers, asynchronous, the files
    read ahead) unless :data:`STAGED_COPIES` is off; elsewhere tensor by tensor. Sparse buffers
    (openai-whisper's ``alignment_heads``) are left alone: :func:`_set_heads` places them.
    """
    jobs: list[Job] = []
    with torch.no_grad():
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for key, tensor in list(table.items()):
                    if tensor is None or tensor.layout != torch.strided:
                        continue
                    target = dtype
                    if not tensor.is_floating_point() or (keep_fp32(module) and table is module._parameters):
                        target = torch.float32 if tensor.is_floating_point() else tensor.dtype
                    if tensor.device == device and tensor.dtype == target:
                        continue
                    # Move the smaller representation across (fp16 over PCIe), convert on the device.
                    carried = tensor.dtype if tensor.element_size() <= target.itemsize else target
                    place = functools.partial(_place, table, key, tensor, target, release)
                    if device.type == "cuda" and tensor.device.type == "cpu" and STAGED_COPIES:
                        jobs.append(Job(tensor, carried, place))
                        continue
                    place(tensor.to(carried).to(device))
                    del tensor
        copy_to_device(jobs, device)


def _place(
    table: dict[str, Any],
    key: str,
    source: Tensor,
    target: torch.dtype,
    release: Callable[[Tensor], None],
    moved: Tensor,
) -> None:
    """``moved`` (``source`` on the device) in ``target`` dtype into ``table[key]``; the source's pages go."""
    new = moved.to(target)
    if isinstance(source, nn.Parameter):
        table[key] = nn.Parameter(new, requires_grad=source.requires_grad)
    else:
        table[key] = new
    release(source)


def _part(name: str, module: nn.Module) -> PartReport:
    params = list(module.parameters())
    dtypes = sorted({_dtype_name(p.dtype) for p in params})
    devices = sorted({str(t.device) for t in [*params, *module.buffers()]})
    nbytes = sum(t.numel() * t.element_size() for t in [*params, *module.buffers()])
    return PartReport(
        name=name,
        device="+".join(devices),
        dtype="+".join(dtypes),
        parameters=sum(p.numel() for p in params),
        bytes=nbytes,
    )


@contextlib.contextmanager
def _timer(seconds: dict[str, float], phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - start


def heads_device(device: torch.device) -> torch.device:
    """Where openai-whisper's sparse ``alignment_heads`` buffer can live when the model is on ``device``.

    PyTorch's MPS backend holds no sparse tensors (moving one raises), and openai-whisper's word timestamps
    read the buffer with ``.indices()``, which needs it sparse: on MPS it stays on the CPU, where
    ``timing.find_alignment`` only uses its indices to pick heads. Elsewhere it goes with the model.
    """
    return torch.device("cpu") if device.type == "mps" else device


def _set_heads(
    model: nn.Module, into: Into, pairs: tuple[tuple[int, int], ...] | None, device: torch.device
) -> int:
    if into == "whisperctl":
        if pairs:
            model.set_alignment_heads(pairs)
        return len(model.alignment_heads_pairs())
    dims = model.dims
    mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    if pairs:
        for layer, head in pairs:
            mask[layer, head] = True
    else:
        mask[dims.n_text_layer // 2 :] = True
    model.register_buffer("alignment_heads", mask.to_sparse().to(heads_device(device)), persistent=False)
    return int(mask.sum())


def _check_heads(
    model: ModelFile, heads: tuple[tuple[int, int], ...] | None, fix: str = "fix the registry entry"
) -> None:
    """Alignment heads asked for must lie inside the model's decoder."""
    dims = model.dims
    bad = [p for p in heads or () if not (0 <= p[0] < dims.n_text_layer and 0 <= p[1] < dims.n_text_head)]
    if bad:
        raise IntegrityError(
            f"{model.path}: alignment heads {bad[:3]} lie outside its decoder "
            f"({dims.n_text_layer} layers x {dims.n_text_head} heads); {fix}"
        )


def _keeps_fp32(into: Into) -> Callable[[nn.Module], bool]:
    """Which modules keep float32 weights whatever the dtype asked for."""
    if into == "whisper":
        import whisper.model as wm

        # openai-whisper's LayerNorm runs in float32 with its own weights: they must stay float32.
        return lambda m: isinstance(m, wm.LayerNorm)
    return lambda m: False


def load_checkpoint(
    path: Path | str | ModelFile,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    in_memory: bool = False,
    into: Into = "whisperctl",
    alignment_heads: tuple[tuple[int, int], ...] | None = None,
    heads_source: HeadsSource = "default",
    name: str | None = None,
    integrity: str = "not checked",
    seconds: dict[str, float] | None = None,
) -> Loaded:
    """Load a model of any format (a path, or a :class:`ModelFile` already read) into a ready model on
    ``device``; see the module docstring for the steps.

    ``alignment_heads`` are ``(layer, head)`` pairs (``None``: the default, all heads of the last half of the
    decoder layers); heads that the model's own files carry (HF, CTranslate2) take precedence. Raises
    :class:`IntegrityError` (exit 4) for a file that is not a well-formed Whisper model or that tries to run
    code, :class:`DeviceError` (exit 7) for an unavailable device.
    """
    seconds = dict(seconds or {})
    target_dtype = resolve_dtype(dtype)
    target = resolve_device(device)
    if target.type == "cuda":
        # CUDA starts lazily, and its memory statistics do not exist before it has (in a fresh process whose
        # first CUDA call this is, resetting them would fail).
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(target)
    started = time.perf_counter()
    with _timer(seconds, "open"):
        model_file = path if isinstance(path, ModelFile) else read_model(path)
        validate(model_file)
        if model_file.alignment_heads is not None:
            alignment_heads = model_file.alignment_heads
            heads_source = _file_source(model_file.heads_origin)
            _check_heads(model_file, alignment_heads, "fix its " + heads_source)
        else:
            _check_heads(model_file, alignment_heads)
        state_dict = _open_state_dict(model_file, in_memory)
        release: Callable[[Tensor], None] = (lambda _: None) if in_memory else _Releaser(model_file.files)
    with _timer(seconds, "build"):
        model = _build(model_file.dims, into)
    with _timer(seconds, "attach"):
        model.load_state_dict(state_dict, strict=True, assign=True)
        del state_dict
    with _timer(seconds, "move"):
        _convert(model, target, target_dtype, release, _keeps_fp32(into))
        if into == "whisperctl":
            model.materialize_buffers(target)
        heads = _set_heads(model, into, alignment_heads, target)
        if target.type == "cuda":
            torch.cuda.synchronize(target)
    seconds["total"] = (
        seconds.get("verify", 0.0) + seconds.get("download", 0.0) + time.perf_counter() - started
    )
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # a bug, not a bad file: say so plainly
        raise RuntimeError(f"whisperctl left tensors on meta after loading {model_file.path}: {leftover[:3]}")
    params = ParameterCounts(
        encoder=sum(p.numel() for p in model.encoder.parameters()),
        decoder=sum(p.numel() for p in model.decoder.parameters()),
    )
    mapped = not in_memory and target.type == "cpu" and target_dtype == DTYPES.get(model_file.dtype)
    report = LoadReport(
        name=name,
        path=model_file.path,
        into=into,
        device=str(target),
        dtype=_dtype_name(target_dtype),
        parameters=params,
        parts=(_part("encoder", model.encoder), _part("decoder", model.decoder)),
        alignment_heads=heads,
        alignment_heads_source=heads_source if alignment_heads else "default",
        integrity=integrity,
        seconds={k: round(v, 4) for k, v in seconds.items()},
        peak_rss_bytes=peak_rss(),
        peak_gpu_bytes=torch.cuda.max_memory_allocated(target) if target.type == "cuda" else None,
        checkpoint_dtype=model_file.dtype,
        mapped=mapped,
        format=model_file.format,
    )
    return Loaded(model=model, report=report)


def _file_source(origin: str | None) -> HeadsSource:
    """The report's name for a file origin of alignment heads (its reader's ``heads_origin``)."""
    return next((o for o in _FILE_ORIGINS if o == origin), "checkpoint")


def _open_state_dict(model: ModelFile, in_memory: bool) -> dict[str, Tensor]:
    """The model's tensors by openai-whisper name: for ``.pt``, ``torch.load`` of the file (mapped, or read
    into memory); for the other formats, views of the mapped files (copied into memory with ``in_memory``)."""
    from whisperctl.models.formats.weights import open_weights, torch_load

    if model.format == "openai":
        state_dict: dict[str, Tensor] = torch_load(model.files[0], in_memory=in_memory)["model_state_dict"]
        return state_dict
    weights = open_weights(model)
    return {key: t.clone() if in_memory else t for key, t in weights.items()}
