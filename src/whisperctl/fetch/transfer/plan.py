"""Which bytes of the file go in which request: the segments, how workers take them, and the frontier.

Segments tile ``[0, total)``. They are taken in order; a worker that finds none left takes the second half of
the largest busy one, so a slow connection does not hold up the end. The *frontier* is where the contiguous
prefix of written bytes ends: the live hasher follows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from whisperctl.fetch.transfer.options import TransferOptions

__all__ = ["Plan", "Segment"]


@dataclass
class Segment:
    start: int
    end: int | None  # exclusive; None while the size is unknown (one stream, no Content-Length)
    done: int = 0
    busy: bool = False

    @property
    def pos(self) -> int:
        return self.start + self.done

    @property
    def remaining(self) -> float:
        return math.inf if self.end is None else self.end - self.pos


class Plan:
    """The segments of one transfer, kept sorted by start, and the index of the first incomplete one."""

    def __init__(self, segments: list[Segment], min_segment: int) -> None:
        self.segments = sorted(segments, key=lambda s: s.start)
        self._min_segment = min_segment
        self._front = 0  # segments before it are complete and never change again

    @classmethod
    def fresh(cls, total: int | None, ranges: bool, opt: TransferOptions) -> Plan:
        """One stream for a small file, without ranges or without a size; else pieces of ``piece_size``."""
        if not ranges or total is None or total < opt.split_threshold or opt.connections < 2:
            return cls([Segment(0, total)], opt.min_segment)
        n = max(1, min(opt.connections, total // opt.min_segment))
        n = max(n, math.ceil(total / max(opt.piece_size, opt.min_segment)))
        size = math.ceil(total / n)
        pieces = [Segment(i * size, min(total, (i + 1) * size)) for i in range(n) if i * size < total]
        return cls(pieces, opt.min_segment)

    @classmethod
    def restored(cls, spans: list[tuple[int, int, int]], total: int, min_segment: int) -> Plan | None:
        """A plan from a sidecar's ``[start, end, done]`` triples, if they tile ``[0, total)`` exactly with a
        plausible amount done in each; None otherwise."""
        segments = sorted((Segment(s, e, d) for s, e, d in spans), key=lambda s: s.start)
        pos = 0
        for seg in segments:
            if seg.end is None or seg.start != pos or seg.end <= pos or not 0 <= seg.done <= seg.end - pos:
                return None
            pos = seg.end
        return cls(segments, min_segment) if pos == total and segments else None

    def spans(self) -> list[list[int | None]]:
        return [[s.start, s.end, s.done] for s in self.segments]

    @property
    def done(self) -> int:
        return sum(s.done for s in self.segments)

    def pending(self) -> Segment | None:
        return next((s for s in self.segments if s.remaining > 0), None)

    def open_count(self) -> int:
        return len([s for s in self.segments if s.remaining > 0])

    def take(self) -> Segment | None:
        """The next segment to work on: an idle one, else the second half of the largest busy one."""
        for seg in self.segments:
            if not seg.busy and seg.remaining > 0:
                return seg
        victim = max((s for s in self.segments if s.busy), key=lambda s: s.remaining, default=None)
        if victim is None or victim.end is None or victim.remaining < 2 * self._min_segment:
            return None
        mid = victim.pos + int(victim.remaining) // 2
        new = Segment(mid, victim.end)
        victim.end = mid  # its stream stops at the new end
        self.segments.append(new)
        self.segments.sort(key=lambda s: s.start)
        return new

    def frontier(self) -> int:
        """Where the contiguous prefix of written bytes ends.

        Segments tile the file and a split only inserts after a busy (so incomplete) segment: the complete
        ones before the first incomplete one never change, and each call walks only what completed since.
        """
        segs, i = self.segments, self._front
        while i < len(segs) and segs[i].remaining <= 0:
            i += 1
        self._front = i
        if not segs:
            return 0
        return segs[i].pos if i < len(segs) else segs[-1].pos

    def is_front(self, seg: Segment) -> bool:
        """Whether ``seg`` is the first incomplete segment: only its progress moves the frontier."""
        return self._front < len(self.segments) and self.segments[self._front] is seg
