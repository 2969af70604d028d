"""Admission at the front door: the host's own queue kept within a time budget.

Before a request reaches the scheduler, the host works on it: HTTP parsing, JSON, decoding, a
future per image. That work runs on one event loop and a few decode threads, in arrival order, and
nothing bounded it in *time*: when requests arrive faster than the host finishes them, every one
waits behind all the others, and past a point every one misses its deadline (the host, not the
model, was the bottleneck: goodput collapsed to ~0 at 2× the host's capacity). A server under
overload must keep serving about its capacity on time and refuse the excess early and cheaply.

By Little's law a request arriving behind `n` others waits about n / μ, μ being the rate the host
finishes them. So `FrontDoor` admits a request while fewer than μ × budget are in the front end
(counted from when a request's body is complete, `start`: an upload still arriving costs the host
nothing, and counting it would let a few dozen stalled sockets shut the door on everyone),
and refuses it otherwise (503 `overloaded`, written by the connection layer before its body is
parsed: a refusal costs a small fraction of a request served). The budget is a share of the
tightest application's SLO, so that what is admitted can still make its deadline.

μ is measured online, not configured: requests finished (handed to the scheduler, or answered)
per second of *busy* time, the time the front end held at least one request, over windows of
`window` requests, smoothed. Only a window in which the front end was saturated (it held, on
average over its busy time, at least `floor` requests) measures the host's throughput; at light
load a window measures one request's latency instead, which says only that the host can do *at
least* that much. So such a window can raise μ, never lower it, and until a saturated window has
been seen there is no limit at all: a light, bursty load is never refused. Pure: no asyncio, the
clock injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable

OVERLOADED_MESSAGE = (
    "overloaded: the host is already working on all it can finish within the tightest SLO; retry shortly or elsewhere"
)
"""What a refused request is told, over HTTP (`connections.py`) and gRPC alike."""


class FrontDoor:
    """Requests in the front end (admitted, not yet handed on), the host's measured rate, the limit."""

    def __init__(
        self,
        budget_ms: Callable[[], float],
        floor: int = 8,
        window: int = 32,
        smoothing: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`budget_ms`: how long a request may wait in the front end (read at each decision: the
        applications change at run time)."""
        if not isinstance(floor, int) or floor < 1:
            raise ValueError(f"floor={floor!r}: use a positive number of requests, e.g. 8")
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window={window!r}: use a positive number of requests, e.g. 32")
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing={smoothing!r}: use a weight in (0, 1], e.g. 0.3")
        self.budget_ms, self.floor, self.window, self.smoothing = budget_ms, floor, window, smoothing
        self._clock = clock
        self.in_flight = 0
        self.rate: float | None = None
        """Requests per second the front end finishes, measured while saturated (light windows can only
        raise it: the host does at least that much); None until a saturated window."""
        self.admitted = self.refused = 0
        self._busy_s = 0.0
        self._held_s = 0.0  # ∫ in_flight dt over the window: held / busy = mean requests held while busy
        self._done = 0
        self._last = clock()

    @property
    def limit(self) -> int | None:
        """Requests the front end may hold now (None: not yet measured, no limit)."""
        if self.rate is None:
            return None
        return max(self.floor, int(self.rate * self.budget_ms() / 1e3))

    def admit(self) -> bool:
        """A request's headers are in: True (admitted; it counts from `start`) or False (refuse it)."""
        self._tick()
        limit = self.limit
        if limit is not None and self.in_flight >= limit:
            self.refused += 1
            return False
        self.admitted += 1
        return True

    def start(self) -> None:
        """An admitted request's body is complete: the host works on it until `done`."""
        self._tick()
        self.in_flight += 1

    def done(self) -> None:
        """A started request leaves the front end (handed to the scheduler, answered, or failed)."""
        assert self.in_flight > 0, "FrontDoor.done without a matching admit"
        self._tick()
        self.in_flight -= 1
        self._done += 1
        if self._done >= self.window and self._busy_s > 0:
            r = self._done / self._busy_s
            if self._held_s / self._busy_s >= self.floor:  # saturated: r is the host's throughput
                self.rate = r if self.rate is None else (1 - self.smoothing) * self.rate + self.smoothing * r
            elif self.rate is not None:  # light: r is a lower bound on it
                self.rate = max(self.rate, r)
            self._done, self._busy_s, self._held_s = 0, 0.0, 0.0

    def _tick(self) -> None:
        now = self._clock()
        if self.in_flight:
            self._busy_s += now - self._last
            self._held_s += self.in_flight * (now - self._last)
        self._last = now


class Ticket:
    """One admitted request's place in the front door, held from its body's end (`start`) and
    released once, whichever path ends it (a request that never started holds none)."""

    __slots__ = ("_door", "_started")

    def __init__(self, door: FrontDoor):
        self._door: FrontDoor | None = door
        self._started = False

    def start(self) -> None:
        if self._door is not None and not self._started:
            self._started = True
            self._door.start()

    def release(self) -> None:
        if self._door is not None:
            if self._started:
                self._door.done()
            self._door = None
