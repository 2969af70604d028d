"""The policy interface: what a policy may read from the scheduler (`View`), what it returns
(`Choice`), and the base class every policy extends. Pure; no torch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from otas.config import SchedulerConfig
from otas.profile.table import Profile
from otas.sched.batching import Candidate
from otas.types import App, BatchPlan, Request


class View(Protocol):
    """What a policy may read from the scheduler."""

    apps: dict[str, App]
    profiles: dict[str, Profile]
    config: SchedulerConfig
    model: str

    def lat_vector(self, model: str, batch: int) -> np.ndarray: ...
    def weights(self, model: str, app: str) -> np.ndarray: ...
    def servable(self, model: str, apps: list[str]) -> np.ndarray: ...
    def backlog(self) -> list[int]: ...
    def mixed_candidates(self, now_ms: float, n: int | None = None) -> list[Candidate]: ...
    def fifo_candidate(self, now_ms: float) -> Candidate: ...
    def latency_factor(self, model: str) -> float: ...
    def latency_offset_ms(self, model: str) -> float: ...
    @property
    def overhead_ms(self) -> float: ...
    def fast_latency(self) -> np.ndarray: ...


def batch_apps(c: Candidate) -> list[str]:
    """The distinct applications of a candidate batch (usually one, under selective batching), in
    order of first appearance. OPTIMIZATION: a comprehension (slot reads) costs less than
    `dict.fromkeys(map(app_of, ...))` (an attribute getter call per query)."""
    return list({r.app: None for r in c.requests})


Choice = tuple[str, int, dict[str, float]]
"""(model, gamma, diagnostics): the setting for the batch that runs now, which is the first
candidate unless diagnostics["batch"] names another one's index."""


class Policy:
    """Base: one FIFO queue, gamma 0 on the loaded model."""

    name = "base"
    selective = False
    """Queues per SLO class (True) or one global queue (False)."""
    order = "arrival"
    """Queue order: 'deadline' or 'arrival'."""
    deadline_aware = False
    """Cut batches so the earliest member can still make its deadline at the fastest setting."""
    lookahead = 1
    offline = False
    resident_models = False
    """Every profiled model stays in device memory, so changing model costs no `model_load_ms`."""

    def bind(self, view: View) -> None:
        """Check the policy fits the scheduler's profiles; called once by the Scheduler."""

    def options(self, view: View) -> list[tuple[str, int]]:
        """The (model, gamma) settings this policy may run: the fastest bounds early rejection."""
        return [(view.model, 0)]

    def batch_cap(self, view: View) -> int:
        return view.config.max_batch

    def choose(self, cands: list[Candidate], now_ms: float, view: View) -> Choice:
        return view.model, 0, {}  # γ = 0 serves every task

    def on_submit(self, req: Request, now_ms: float) -> None:
        pass

    def on_submit_many(self, reqs: Sequence[Request], now_ms: float) -> None:
        """The queries of one request (one application, arrival and deadline) arrived together."""
        for r in reqs:
            self.on_submit(r, now_ms)

    def on_complete(self, plan: BatchPlan, now_ms: float, measured_ms: float, view: View) -> None:
        pass

    def on_cancel(self, reqs: Sequence[Request]) -> None:
        """Queued queries taken out before they ran (their callers went away, `Scheduler.cancel`)."""
