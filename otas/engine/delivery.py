"""How long answers take to reach their clients after the engine has them: the time from a
request's answer (its batch's results taken up) to its response leaving the HTTP layer (encoding,
the front end's turn, the hop from the engine process). The optimizer packs batches right up to a
deadline, so an answer on time at the engine can still reach its client late; the engine plans
against deadlines short by a high quantile of this time. Pure python."""

from __future__ import annotations

import math
from collections import deque

WINDOW = 512
"""Responses the estimate is read from: the most recent."""
QUANTILE = 0.95
"""The time planned for: most answers arrive within it."""
FRESH = 32
"""Samples between two readings of the quantile (a sort of `WINDOW` values)."""
REPORT_MAX = 256
"""Delivery times one report from another process carries at most (a front end's STATS frame, the
Ray router's probe of a replica): the latest."""


def reported(times: object) -> list[float]:
    """The delivery times another process reported (a list it sent), as this one takes them: the
    first `REPORT_MAX`, numbers only."""
    if not isinstance(times, list | tuple):
        return []
    return [float(ms) for ms in times[:REPORT_MAX] if isinstance(ms, int | float)]


class Delivery:
    """The recent delivery times of responses, and the `QUANTILE` of them."""

    def __init__(self, window: int = WINDOW, quantile: float = QUANTILE):
        """`quantile` 0: the estimate stays 0 (delivery not planned for)."""
        if window < 1 or not 0 <= quantile <= 1:
            raise ValueError(f"window {window}, quantile {quantile}: use a window >= 1 and a quantile in [0, 1]")
        self._ms: deque[float] = deque(maxlen=window)
        self.quantile = quantile
        self._estimate = 0.0
        self._new = 0

    def add(self, ms: float) -> None:
        """One response's delivery time; a negative or non-finite one (clocks of two processes, a
        bad report) counts as 0 or is dropped."""
        if math.isfinite(ms):
            self._ms.append(max(ms, 0.0))
            self._new += 1

    @property
    def ms(self) -> float:
        """The `quantile` of the recent delivery times (0 before any)."""
        if self.quantile > 0 and (self._new >= FRESH or (self._new and len(self._ms) <= FRESH)):
            s = sorted(self._ms)
            self._estimate = s[min(math.ceil(self.quantile * len(s)) - 1, len(s) - 1)]
            self._new = 0
        return self._estimate

    def __len__(self) -> int:
        return len(self._ms)
