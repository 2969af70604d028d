"""Pixels in shared memory between a front-end process and the engine process (`workers.py`).

The engine process makes one anonymous shared segment per front end (`memfd_create`: not bounded by
a /dev/shm mount, gone once both processes close it) and hands it over when it starts the front end.
The front end writes each request's pixels into it and sends only their place (`wire.py`), so the
engine process neither reads them off a socket nor copies them: it queues views of the segment. A
request's place is freed when the engine sends its final frame (answer, refusal, or cancellation).
A served request's images have all been copied into their batches by then. A refused or cancelled
one's may still sit in a batch planned ahead, not yet copied: if the place is written again first,
only that request's rows of the batch read other pixels, and its answers go to nobody.

`Ring` is the allocator: places in ring order, freed in any order; a place freed out of order is
reused once every older one is freed too. When no place fits, the request travels in its frame.
"""

from __future__ import annotations

import mmap
import os
from collections import OrderedDict
from multiprocessing import reduction


class Ring:
    """Byte ranges of a buffer of `size` bytes, allocated in ring order and freed in any order."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"ring of {size} bytes: use a positive size")
        self.size = size
        self.head = 0
        self.live: OrderedDict[int, tuple[int, int]] = OrderedDict()
        """key -> (start, end), oldest first: the ring's used span runs from the oldest's start to `head`."""

    def alloc(self, key: int, n: int) -> int | None:
        """The start of `n` free bytes for `key`, or None when no place fits."""
        if not 0 < n <= self.size or key in self.live:
            return None
        if not self.live:
            self.head = 0
        tail = next(iter(self.live.values()))[0] if self.live else 0
        if self.live and self.head < tail:  # wrapped: free is [head, tail); the head never reaches the tail
            start = self.head if self.head + n < tail else None
        elif self.size - self.head >= n:
            start = self.head
        else:  # wrap to the front: free is [0, tail)
            start = 0 if (not self.live or n < tail) else None
        if start is None:
            return None
        self.live[key] = (start, start + n)
        self.head = start + n
        return start

    def free(self, key: int) -> None:
        self.live.pop(key, None)

    @property
    def used(self) -> int:
        return sum(e - s for s, e in self.live.values())


class Segment:
    """A shared segment of `size` bytes: made here (`Segment.new`), or opened from a handed-over fd."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    @classmethod
    def new(cls, size: int) -> Segment:
        fd = os.memfd_create("otas-pixels", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return cls(fd, size)

    def handle(self) -> SegmentHandle:
        return SegmentHandle(self.fd, self.size)

    def close(self) -> None:
        """Close the fd; the mapping lives while views of it do (the engine's queued images)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SegmentHandle:
    """A segment's fd and size, pickled to a process started with `spawn` (the fd travels the way
    `multiprocessing` sends a socket)."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size

    def __reduce__(self):
        return _rebuild, (reduction.DupFd(self.fd), self.size)

    def open(self) -> Segment:
        return Segment(self.fd, self.size)


def _rebuild(dup, size: int) -> SegmentHandle:
    return SegmentHandle(dup.detach(), size)
