"""Plain records shared by the scheduler, the simulator and the server. No torch, no behaviour.

Times are milliseconds on the caller's clock (the scheduler never reads a clock itself).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
"""A name users give (an application, a folder task): 1-64 letters, digits, '_', '.', '-'."""


@dataclass(frozen=True)
class App:
    """One application served by the shared model."""

    name: str
    slo_ms: float
    """Latency SLO D_a: a query arriving at t must be answered by t + slo_ms."""
    utility: float
    """u_a: value of one correct answer; a query earns utility * acc(task, gamma) if on time."""
    task: str
    """The downstream task whose head and prompts answer this application (a profile task)."""


@dataclass(slots=True, unsafe_hash=True)
class Request:
    """One query. `deadline_ms` is absolute: arrival_ms + the application's SLO. Made once per image
    (the simulator's and the live engine's), so a slotted record compared and hashed by value (a
    frozen one costs 3-4× as much to make); treat it as read-only."""

    id: int
    app: str
    arrival_ms: float
    deadline_ms: float


class Outcome(StrEnum):
    """How a query ends; every query ends exactly once."""

    SERVED = "served"
    REJECTED = "rejected"
    EXPIRED = "expired"


class Reason(StrEnum):
    """Why a query was not served."""

    INFEASIBLE = "infeasible"
    """At submission it could not meet its deadline even alone at the fastest setting."""
    QUEUE_FULL = "queue_full"
    """Backpressure: the queue already held `max_queue` queries."""
    DEADLINE_UNREACHABLE = "deadline_unreachable"
    """While queued it became unable to meet its deadline even alone at the fastest setting."""


@dataclass(frozen=True)
class Rejection:
    """Early rejection returned by `Scheduler.submit`, with a human-readable detail."""

    request: Request
    reason: Reason
    detail: str = ""


@dataclass
class BatchPlan:
    """A batch the device should run now: these requests, at this gamma, on this model."""

    requests: list[Request]
    gamma: int
    predicted_ms: float
    """Predicted wall time of the batch, including `switch_ms` (corrected online)."""
    start_ms: float
    model: str
    switch_ms: float = 0.0
    """Model-load delay paid before the batch (model-switch policy only)."""
    deadline_ms: float = float("inf")
    """Earliest member deadline: the batch is on time iff it finishes by then."""
    meta: dict[str, float] = field(default_factory=dict)
    """Policy diagnostics (e.g. the optimizer's planned value); not needed to run the batch."""

    @property
    def size(self) -> int:
        return len(self.requests)
