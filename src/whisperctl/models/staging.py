"""Host-to-GPU copies of a model's mapped tensors through a small ring of pinned buffers.

A tensor mapped from a file and copied to a CUDA device with ``tensor.to("cuda")`` goes through the driver's
own bounce buffer: one thread faults the file's pages in, one copy at a time, and the call returns only when
that tensor has arrived. :func:`copy_to_device` instead fills a few pinned buffers (16 MiB each) with
PyTorch's multi-threaded CPU copy and sends each one asynchronously, so that the next buffer is filled while
the last one crosses the bus, and it asks the kernel to read ahead (``MADV_WILLNEED``) the next quarter of a
gigabyte of the files, so that a cold file is read in large requests, not one page fault at a time. Each
tensor is allocated on the device when its turn comes and converted there (``fp16`` to ``fp32``) as soon as
it has arrived, so the device holds the model plus one tensor, never a second copy.

On a device without pinned memory (the CPU, used by the tests) the same steps run with a plain buffer.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Job", "copy_to_device"]

MiB = 1 << 20
SLOT_BYTES = 16 * MiB
SLOTS = 4
READ_AHEAD_BYTES = 256 * MiB
_MADV_WILLNEED = 3  # the same on every Linux architecture


@dataclass(frozen=True)
class Job:
    """One tensor to copy: ``source`` on the CPU (any layout), arriving on the device as ``dtype``, then
    handed to ``done`` (after its copy was queued: a later operation on the device's stream sees it)."""

    source: Tensor
    dtype: torch.dtype
    done: Callable[[Tensor], None]


def copy_to_device(
    jobs: Sequence[Job],
    device: torch.device,
    *,
    slot_bytes: int = SLOT_BYTES,
    slots: int = SLOTS,
    read_ahead: int = READ_AHEAD_BYTES,
) -> None:
    """Copy every job's source to ``device`` in order, through ``slots`` buffers of ``slot_bytes``.

    A source in a wider dtype than the job's is converted on the CPU first (one tensor at a time); its
    bytes then travel as they are. Returns when every copy is queued; on CUDA, with the device's current
    stream still working on the last ones (a later ``synchronize`` waits for them).
    """
    if not jobs:
        return
    ring = _Ring(device, slot_bytes, slots)
    advise = _ReadAhead(jobs, read_ahead)
    for index, job in enumerate(jobs):
        advise.up_to(index)
        source = job.source if job.source.dtype == job.dtype else job.source.to(job.dtype)
        flat = source.contiguous().reshape(-1)
        dest = torch.empty(job.source.shape, dtype=job.dtype, device=device)
        if flat.numel():
            src = flat.view(torch.uint8)
            dst = dest.view(-1).view(torch.uint8)
            done = 0
            while done < src.numel():
                done += ring.put(src[done:], dst[done:])
        del source, flat
        # Handed over once its last bytes are sent: what `done` queues on the device comes after them.
        ring.after_send(functools.partial(job.done, dest))
    ring.flush()


class _Ring:
    """The pinned buffers and, per buffer, the event that says its last copy has left it."""

    def __init__(self, device: torch.device, slot_bytes: int, slots: int) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.slot_bytes = slot_bytes
        self.buffer = _host_buffer(slots * slot_bytes, pinned=self.cuda)
        self.slots = [self.buffer[i * slot_bytes : (i + 1) * slot_bytes] for i in range(slots)]
        self.events: list[Any] = [None] * slots
        self.current = 0
        self.used = 0
        self.pending: list[tuple[Tensor, Tensor]] = []  # (device bytes, slot bytes) not yet sent
        self.waiting: list[Callable[[], None]] = []  # to call once the pending copies are sent

    def after_send(self, callback: Callable[[], None]) -> None:
        if self.pending:
            self.waiting.append(callback)
        else:
            callback()

    def put(self, src: Tensor, dst: Tensor) -> int:
        """Copy what fits of ``src`` into the current buffer, to be sent to ``dst``; returns how much."""
        if self.used == 0:
            event = self.events[self.current]
            if event is not None:
                event.synchronize()  # its last copy to the device has finished: the buffer may be refilled
        n: int = min(src.numel(), self.slot_bytes - self.used)
        staged = self.slots[self.current][self.used : self.used + n]
        staged.copy_(src[:n])
        self.pending.append((dst[:n], staged))
        self.used += n
        if self.used == self.slot_bytes:
            self.flush()
        return n

    def flush(self) -> None:
        """Send what the current buffer holds, move to the next one, and call those waiting."""
        if self.pending:
            for dst, staged in self.pending:
                dst.copy_(staged, non_blocking=self.cuda)
            self.pending.clear()
            if self.cuda:
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(self.device))
                self.events[self.current] = event
            self.current = (self.current + 1) % len(self.slots)
            self.used = 0
        waiting, self.waiting = self.waiting, []
        for callback in waiting:
            callback()


def _host_buffer(nbytes: int, *, pinned: bool) -> Tensor:
    """The ring's memory: pinned for CUDA (asynchronous copies), plain where pinning is refused (a low
    ``ulimit -l``; the copies are then synchronous, and still correct)."""
    if pinned:
        with contextlib.suppress(RuntimeError):
            return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    return torch.empty(nbytes, dtype=torch.uint8)


class _ReadAhead:
    """Asks the kernel to read the jobs' file pages ahead of the copies (``madvise(MADV_WILLNEED)`` on the
    mapped sources, which for a file mapping starts readahead of that part of the file); Linux only, and
    harmless on memory that is not a file mapping."""

    def __init__(self, jobs: Sequence[Job], window: int) -> None:
        self.jobs = jobs
        self.window = window
        self.starts = [0]  # the byte at which each job begins, counting every job before it
        for job in jobs:
            self.starts.append(self.starts[-1] + _nbytes(job.source))
        self.next = 0  # the first job not yet advised
        self.madvise: Any = None
        if sys.platform.startswith("linux") and window > 0:
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                self.madvise = libc.madvise
                self.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                self.madvise.restype = ctypes.c_int

    def up_to(self, index: int) -> None:
        """Advise every job that begins less than the window after job ``index`` begins (``index`` too)."""
        if self.madvise is None:
            return
        horizon = self.starts[index] + self.window
        while self.next < len(self.jobs) and (self.next <= index or self.starts[self.next] < horizon):
            source = self.jobs[self.next].source
            self.next += 1
            nbytes = _nbytes(source)
            if not nbytes:
                continue
            start = source.data_ptr()
            first = start - start % mmap.PAGESIZE
            self.madvise(first, start + nbytes - first, _MADV_WILLNEED)  # a refusal changes nothing


def _nbytes(tensor: Tensor) -> int:
    """The bytes a CPU tensor spans from its first element (contiguous ones; for others, a hint)."""
    return tensor.numel() * tensor.element_size() if tensor.device.type == "cpu" else 0
