"""`otas serve --decision-log PATH`: one JSON line per batch the engine hands the device, as decided.

Each line: when it was decided and when it is planned to start (the engine's clock, ms since it
started), the model, γ, size, predicted latency, the images still queued after it, its images per
application, and the policy's own notes (`BatchPlan.meta`: e.g. `otas`'s price of device time
`price`, the floor's `cap` or `follow`). What the metrics sum up, per decision: to see why a live
server chose what it did, and to lay its decisions beside the simulator's.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from otas.types import BatchPlan


class DecisionLog:
    """Appends to `path` (created with its folder); written as batches are decided, closed by `close`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, decided_ms: float, start_ms: float, plan: BatchPlan, queued: int) -> None:
        meta = {k: v for k, v in plan.meta.items() if isinstance(v, int | float | str | bool)}
        record = {
            "decided_ms": round(decided_ms, 4), "start_ms": round(start_ms, 4), "model": plan.model,
            "gamma": plan.gamma, "size": plan.size, "predicted_ms": round(plan.predicted_ms, 4), "queued": queued,
            "apps": dict(Counter(r.app for r in plan.requests)), "meta": meta,
        }  # fmt: skip
        self._f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._f.close()
