"""An exponentially decayed sum of dated events, optionally counted only once they are settled:
what the floor and the mode judges keep of utility earned. Pure python."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable


class Decayed:
    """Σ value · exp(−(t − t_k)/τ) over events at times t_k: utility earned recently.

    With `lag_ms` > 0 an event counts only once `lag_ms` has passed since its time, and `at(t)` is the
    sum as of t − lag: events dated at a query's arrival, with the lag the loosest SLO, then sum only
    queries whose fate is settled (every query that arrived by then has been served or lost), whoever
    served them, so a server with a longer queue is not behind merely for having its answers later."""

    def __init__(self, tau_ms: float, lag_ms: float = 0.0):
        self.tau = float(tau_ms)
        self.lag = float(lag_ms)
        self.value = 0.0
        self.t = -math.inf
        self.total = 0.0
        """Σ value, undecayed (of the events that count so far)."""
        self._pending: list[tuple[float, float]] = []  # (t, value) not yet `lag` old, a heap

    def add(self, x: float, t_ms: float) -> None:
        if self.lag > 0:
            heapq.heappush(self._pending, (t_ms, x))
            return
        self._fold(x, t_ms)

    def add_dated(self, events: Iterable[tuple[float, float]]) -> None:
        """`add` of each (t_ms, x), in order."""
        if self.lag > 0:  # OPTIMIZATION: one call for a batch's queries (the floor credits every shadow's)
            for e in events:
                heapq.heappush(self._pending, e)
            return
        for t, x in events:
            self._fold(x, t)

    def _fold(self, x: float, t_ms: float) -> None:
        self.total += x
        if t_ms >= self.t:
            self.value = self.value * self._decay(t_ms - self.t) + x
            self.t = t_ms
        else:  # an event dated before the last one: decayed to it
            self.value += x * self._decay(self.t - t_ms)

    def at(self, t_ms: float) -> float:
        t_ms -= self.lag
        while self._pending and self._pending[0][0] <= t_ms:
            t, x = heapq.heappop(self._pending)
            self._fold(x, t)
        return self.value * self._decay(t_ms - self.t) if t_ms > self.t else self.value

    def _decay(self, dt: float) -> float:
        return math.exp(-dt / self.tau) if dt < math.inf else 0.0
