"""The engine's books: every accepted image ends exactly once, and its request is answered whole.

A request (one or several images) is a `Group` with one future. It is answered when all of its
images are served; when one fails (expired, its batch failed, shutdown) the request fails at once
with that error, and when its caller goes away (the future cancelled: a client disconnect) it is
abandoned. A failed or abandoned request's images still queued leave the scheduler's queue
(`Scheduler.cancel`), never planned; those on the device finish there and their answers are dropped.

The observer hears of each image once, when its fate is known: `served` when its request's caller
got the answer (so /metrics counts what clients received), `cancelled` (`request_failed`,
`client_gone`) when its answer, or its place in the queue, went to nobody, else its own outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from otas.engine.serving import NotServed, Observer, Served, observe
from otas.sched.scheduler import Scheduler
from otas.types import Request


@dataclass(eq=False)
class Group:
    """One request: its images' ids, the future its caller awaits, the answers so far."""

    app: str
    future: asyncio.Future
    single: bool
    """The future resolves to one Served (`Engine.submit`), not a list."""
    ids: list[int] = field(default_factory=list)
    results: list[Served | None] = field(default_factory=list)
    left: int = 0
    closed: str = ""
    """Why the request ended without its answer (request_failed, client_gone); "" while open or answered."""


@dataclass(eq=False, slots=True)
class Pending:
    req: Request
    image: np.ndarray
    group: Group
    index: int
    arrival_ms: float
    """The true arrival: the deadline is judged from it (the request's may be a little later; see submit)."""


class Ledger:
    """Accepted images not yet ended (queued or on the device), by request id."""

    def __init__(self, scheduler: Scheduler, observer: Callable[[], Observer]):
        self.scheduler, self._observer = scheduler, observer
        self.pending: dict[int, Pending] = {}

    def __len__(self) -> int:
        return len(self.pending)

    def open(self, app: str, n: int, single: bool) -> Group:
        fut = asyncio.get_running_loop().create_future()
        g = Group(app, fut, single, results=[None] * n, left=n)
        fut.add_done_callback(lambda f: f.cancelled() and self._close(g, "client_gone"))
        return g

    def add_many(self, g: Group, reqs: Sequence[Request], images: Sequence[np.ndarray], arrival_ms: float) -> None:
        """The images of request `g`, queued as `reqs` (one each, in order)."""
        pairs = enumerate(zip(reqs, images, strict=True), len(g.ids))
        self.pending.update((r.id, Pending(r, image, g, i, arrival_ms)) for i, (r, image) in pairs)
        g.ids.extend(r.id for r in reqs)

    def withdraw(self, g: Group) -> None:
        """Take back a request whose admission failed midway: its images leave the queue unobserved
        (the caller observes the refusal for all of them)."""
        self.scheduler.cancel(g.ids, g.app)
        for rid in g.ids:
            self.pending.pop(rid, None)
        g.closed = "withdrawn"
        g.future.cancel()

    def served(self, it: Pending, answer: Served) -> None:
        """One image served: the first end counts, a later one is dropped. Its request is answered
        with its last image; a request already failed or abandoned counts the answer as cancelled."""
        if self.pending.pop(it.req.id, None) is None:
            return
        g = it.group
        if g.future.cancelled():  # its caller left; the future's callback may not have run yet
            self._close(g, "client_gone")
        if g.closed:  # its request already failed or was abandoned
            observe(self._observer().ended_many, g.app, "cancelled", g.closed, 1)
            return
        g.results[it.index], g.left = answer, g.left - 1
        if g.left == 0:
            g.future.set_result(answer if g.single else list(g.results))
            observe(self._observer().served_many, g.app, g.results)

    def end_unserved(self, items: Sequence[Pending], outcome: str, reason: str, answer: NotServed) -> None:
        """Images of one request, ended unserved at once (counted at once); an image already ended is
        skipped. The request fails with `answer` unless it already failed or was abandoned."""
        items = [it for it in items if self.pending.pop(it.req.id, None) is not None]
        if not items:
            return
        g = items[0].group
        if g.future.cancelled():  # its caller left; the future's callback may not have run yet
            self._close(g, "client_gone")
        observe(self._observer().ended_many, g.app, outcome, reason, len(items))
        if not g.closed:
            g.future.set_exception(answer)  # before closing: the future is not seen as cancelled
            self._close(g, "request_failed")

    def fail(self, items: Sequence[Pending], reason: str, detail: str) -> None:
        """End `items` (of any requests) with an error: one answer per request."""
        groups: dict[int, list[Pending]] = {}
        for it in items:
            groups.setdefault(id(it.group), []).append(it)
        for run in groups.values():
            self.end_unserved(run, "error", reason, NotServed("error", reason, detail))

    def fail_all(self, reason: str, detail: str) -> None:
        self.fail(list(self.pending.values()), reason, detail)

    def _close(self, g: Group, why: str) -> None:
        """The request ends without its answer: drop the answers it has, and its queued images."""
        if g.closed or g.left == 0:
            return
        g.closed = why
        gone = self.scheduler.cancel((rid for rid in g.ids if rid in self.pending), g.app)
        for req in gone:
            del self.pending[req.id]
        answered = sum(s is not None for s in g.results)  # answers it had, and images still queued: to nobody
        if answered + len(gone):
            observe(self._observer().ended_many, g.app, "cancelled", why, answered + len(gone))
        if gone:  # the queue shrank with no batch run: the gauge must say so now, not at the next batch
            observe(self._observer().queue_depth, self.scheduler.queued())
