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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from otas.engine.serving import NotServed, Observer, Served, observe
from otas.sched.scheduler import Scheduler
from otas.types import Request


@dataclass(eq=False)
class Group:
    """One request: its images (ids `first` .. `first + n - 1`, in order), the future its caller
    awaits, the answers so far."""

    app: str
    future: asyncio.Future
    single: bool
    """The future resolves to one Served (`Engine.submit`), not a list."""
    first: int
    images: Sequence[np.ndarray]
    arrival_ms: float
    """The true arrival: the deadline is judged from it (the queued one may be a little later; see
    `Engine.submit_many`)."""
    results: list[Served | None]
    left: int
    closed: str = ""
    """Why the request ended without its answer (request_failed, client_gone); "" while open or answered."""

    @property
    def ids(self) -> range:
        return range(self.first, self.first + len(self.results))


class Ledger:
    """Accepted images not yet ended (queued or on the device): image id -> its request.

    OPTIMIZATION: no record per image; an image's request holds its pixels and answer slot, found
    from the id (a request's ids are consecutive)."""

    def __init__(self, scheduler: Scheduler, observer: Callable[[], Observer]):
        self.scheduler, self._observer = scheduler, observer
        self.pending: dict[int, Group] = {}

    def __len__(self) -> int:
        return len(self.pending)

    def open(
        self, app: str, reqs: Sequence[Request], images: Sequence[np.ndarray], arrival_ms: float, single: bool
    ) -> Group:
        """The request of `images`, queued as `reqs` (one each, in order, consecutive ids)."""
        n, first = len(reqs), reqs[0].id
        if len(images) != n or reqs[-1].id - first != n - 1:
            raise ValueError(f"{n} queued images with ids {first}..{reqs[-1].id} for {len(images)} images")
        g = Group(app, asyncio.get_running_loop().create_future(), single, first, images, arrival_ms, [None] * n, n)
        self.pending.update(zip(g.ids, repeat(g)))
        g.future.add_done_callback(lambda f: f.cancelled() and self._close(g, "client_gone"))
        return g

    def served(self, g: Group, ids: Sequence[int], answers: Sequence[Served]) -> None:
        """Images `ids` of request `g` served, with `answers`: the first end of an image counts, a
        later one is dropped. The request is answered with its last image; a request already failed
        or abandoned counts the answers as cancelled."""
        pop = self.pending.pop
        live = [(rid, s) for rid, s in zip(ids, answers, strict=True) if pop(rid, None) is not None]
        if not live:
            return
        if g.future.cancelled():  # its caller left; the future's callback may not have run yet
            self._close(g, "client_gone")
        if g.closed:  # its request already failed or was abandoned
            observe(self._observer().ended_many, g.app, "cancelled", g.closed, len(live))
            return
        results, first = g.results, g.first
        for rid, s in live:
            results[rid - first] = s
        g.left -= len(live)
        if g.left == 0:
            g.future.set_result(results[0] if g.single else list(results))
            observe(self._observer().served_many, g.app, results)

    def end_unserved(self, g: Group, ids: Iterable[int], outcome: str, reason: str, answer: NotServed) -> None:
        """Images `ids` of request `g`, ended unserved at once (counted at once); an image already
        ended is skipped. The request fails with `answer` unless it already failed or was abandoned."""
        pop = self.pending.pop
        n = sum(1 for rid in ids if pop(rid, None) is not None)
        if not n:
            return
        if g.future.cancelled():  # its caller left; the future's callback may not have run yet
            self._close(g, "client_gone")
        observe(self._observer().ended_many, g.app, outcome, reason, n)
        if not g.closed:
            g.future.set_exception(answer)  # before closing: the future is not seen as cancelled
            self._close(g, "request_failed")

    def fail(self, ids: Iterable[int], reason: str, detail: str) -> None:
        """End images `ids` (of any requests; those already ended are skipped) with an error: one
        answer per request."""
        groups: dict[int, tuple[Group, list[int]]] = {}
        for rid in ids:
            if (g := self.pending.get(rid)) is not None:
                groups.setdefault(id(g), (g, []))[1].append(rid)
        for g, run in groups.values():
            self.end_unserved(g, run, "error", reason, NotServed("error", reason, detail))

    def fail_all(self, reason: str, detail: str) -> None:
        self.fail(list(self.pending), reason, detail)

    def of_app(self, app: str) -> list[int]:
        """Ids of `app`'s images not yet ended."""
        return [rid for rid, g in self.pending.items() if g.app == app]

    def _close(self, g: Group, why: str) -> None:
        """The request ends without its answer: drop the answers it has, and its queued images."""
        if g.closed or g.left == 0:
            return
        g.closed = why
        gone = self.scheduler.cancel([rid for rid in g.ids if rid in self.pending], g.app)
        for req in gone:
            del self.pending[req.id]
        answered = sum(s is not None for s in g.results)  # answers it had, and images still queued: to nobody
        if answered + len(gone):
            observe(self._observer().ended_many, g.app, "cancelled", why, answered + len(gone))
        if gone:  # the queue shrank with no batch run: the gauge must say so now, not at the next batch
            observe(self._observer().queue_depth, self.scheduler.queued())
