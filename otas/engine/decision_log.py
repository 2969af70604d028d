"""`otas serve --decision-log PATH`: one JSON line per batch the engine hands the device, as decided.

Each line: when it was decided and when it is planned to start (the engine's clock, ms since it
started), the model, γ, size, predicted latency, the images still queued after it, its images per
application, and the policy's own notes (`BatchPlan.meta`: e.g. `otas`'s price of device time
`price`, the floor's `cap` or `follow`). What the metrics sum up, per decision: to see why a live
server chose what it did, and to lay its decisions beside the simulator's.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import TextIO

from otas.types import BatchPlan

log = logging.getLogger("otas.engine")


def check_path(path: str | Path) -> None:
    """ValueError, with the fix, unless a decision log can be appended to at `path`."""
    p = Path(path)
    folder = next((d for d in (p.parent, *p.parent.parents) if d.exists()), Path("."))
    if p.is_dir():
        raise ValueError(f"--decision-log {str(p)[:200]!r} is a folder; name a file in it")
    if (p.exists() and not os.access(p, os.W_OK)) or not os.access(folder, os.W_OK):
        raise ValueError(f"--decision-log {str(p)[:200]!r}: not writable here; name a file in a writable folder")


class DecisionLog:
    """Appends to `path` (created with its folder); written as batches are decided, closed by `close`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: TextIO | None = self.path.open("a", encoding="utf-8")

    def write(self, decided_ms: float, start_ms: float, plan: BatchPlan, queued: int, host_gap_ms: float) -> None:
        """One decision: when, for when, what, how many queries were left queued, and the scheduler's
        measured host gap then (`Scheduler.host_gap_ms`)."""
        if self._f is None:  # stopped (`close`, or a failed write)
            return
        meta = {k: v for k, v in plan.meta.items() if isinstance(v, int | float | str | bool)}
        record = {
            "decided_ms": round(decided_ms, 4), "start_ms": round(start_ms, 4), "model": plan.model,
            "gamma": plan.gamma, "size": plan.size, "predicted_ms": round(plan.predicted_ms, 4), "queued": queued,
            "apps": dict(Counter(r.app for r in plan.requests)), "meta": meta,
            "host_gap_ms": round(host_gap_ms, 4),
        }  # fmt: skip
        try:
            self._f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk, say: the log stops, serving goes on
            log.warning("decision log stopped: %s", e, extra={"event": "decision_log_failed", "detail": str(e)})
            f, self._f = self._f, None
            try:
                f.close()
            except OSError:
                pass

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
