"""The engine: an asyncio loop that drives the Scheduler and hands batches to the runner.

    submit ──> Scheduler.submit ──(rejected)──> NotServed at once
                    │ queued: one future per request
    loop: device free ──> next_batch ──> runner.run (device thread) ──> complete(measured) ──> futures

The Scheduler is the very object the simulator drives; it is touched only from the event loop, so
it needs no lock. The runner runs in one dedicated thread (it owns the device); decoding runs in a
small pool. Every accepted request stays in `_pending` until it gets exactly one answer: a result,
`NotServed("expired")` when the scheduler drops it, or `NotServed("error")` when its batch fails
(the runner or the bookkeeping after it) or the server stops. `stop()` stops admission, serves what
is queued, and fails (never forgets) whatever is left after the drain timeout, a batch still on the
device included. An observer hook (metrics, logs) that raises is logged and changes no answer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from otas.engine.images import MAX_PIXELS, Decoder
from otas.engine.serving import NotServed, Observer, Served, observe
from otas.sched.scheduler import Scheduler
from otas.types import BatchPlan, Request

log = logging.getLogger("otas.engine")


@dataclass
class RunResult:
    probs: np.ndarray
    """(B, K) float32 class probabilities; columns past a task's class count are 0."""
    ms: float
    """Wall time of collation + forward + copy back, as the runner measured it."""


class Runner(Protocol):
    image_size: int
    max_batch: int
    classes: dict[str, list[str]]

    def run(self, images: Sequence[np.ndarray], tasks: Sequence[str], gamma: int) -> RunResult: ...


@dataclass
class _Pending:
    req: Request
    image: np.ndarray
    future: asyncio.Future[Served]
    arrival_ms: float
    """The true arrival: the deadline is judged from it (the request's may be a little later; see submit)."""


class Engine:
    """The local engine: one Scheduler, one runner on one device thread (a `ServingEngine`)."""

    def __init__(
        self,
        scheduler: Scheduler,
        runner: Runner,
        observer: Observer | None = None,
        decode_workers: int = 2,
        max_pixels: int = MAX_PIXELS,
        deadline_margin: float = 0.02,
        clock=time.monotonic,
    ):
        """`deadline_margin`: the scheduler plans against deadlines this fraction of the SLO early,
        leaving time to send the answer (the optimizer packs batches right up to a deadline)."""
        if not 0 <= deadline_margin < 0.5:
            raise ValueError(f"deadline_margin={deadline_margin}: use a fraction of the SLO in [0, 0.5), e.g. 0.02")
        self.margin = deadline_margin
        self.scheduler, self.runner = scheduler, runner
        self.observer = observer or Observer()
        self.apps = scheduler.apps
        missing = sorted({a.task for a in self.apps.values()} - set(runner.classes))
        if missing:
            raise ValueError(f"the model has no head for tasks {missing}; it serves {sorted(runner.classes)}")
        self._clock, self._t0 = clock, clock()
        self._ids = itertools.count()
        self._pending: dict[int, _Pending] = {}  # accepted and not yet answered: queued or on the device
        self._last_arrival: dict[str, float] = {}
        self._device = ThreadPoolExecutor(1, thread_name_prefix="otas-device")
        self._decode = Decoder(runner.image_size, decode_workers, max_pixels)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._poll_s = min(a.slo_ms for a in self.apps.values()) / 10 / 1000  # expiry checks during a batch
        self.batches = 0

    @property
    def image_size(self) -> int:
        return self.runner.image_size

    @property
    def classes(self) -> dict[str, list[str]]:
        return self.runner.classes

    # -- lifecycle ----------------------------------------------------------------------------
    def now_ms(self) -> float:
        return (self._clock() - self._t0) * 1000.0

    @property
    def ready(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="otas-engine")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop admitting, serve what is queued, then answer whatever is left after `timeout_s`
        (a batch still on the device included) with `shutting_down`: nothing is lost."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await asyncio.wait({self._task}, timeout=timeout_s)
            self._task.cancel()  # a no-op once the loop has drained
            await asyncio.gather(self._task, return_exceptions=True)
        self._fail_all("shutting_down", "the server shut down before this request ran; retry")
        # Off the event loop: a batch still on the device finishes there (its result unread)
        # while the answers above go out.
        await asyncio.to_thread(self._device.shutdown)
        self._decode.shutdown()

    # -- requests -----------------------------------------------------------------------------
    async def decode(self, data: bytes) -> np.ndarray:
        """Encoded image -> uint8 (H, W, 3) at the model's size, off the event loop."""
        return await self._decode(data)

    def submit(self, app: str, image: np.ndarray, arrival_ms: float | None = None) -> asyncio.Future[Served]:
        """Queue one image for `app`; the future resolves to Served or raises NotServed.
        Rejections raise NotServed at once (the caller answers before awaiting anything)."""
        if app not in self.apps:
            raise ValueError(f"unknown application {app!r}; known: {sorted(self.apps)}")
        now = self.now_ms()
        if not self.ready:
            observe(self.observer.ended, app, "rejected", "shutting_down")
            raise NotServed("rejected", "shutting_down", "the server is shutting down; retry on another replica")
        arrival = now if arrival_ms is None else min(arrival_ms, now)
        # The scheduler's per-app queues need arrival order, but decoding finishes out of order:
        # queue at max(arrival, the app's last), and judge the deadline on the true arrival.
        queued_at = max(arrival, self._last_arrival.get(app, -math.inf))
        self._last_arrival[app] = queued_at
        slo = self.apps[app].slo_ms
        req = Request(next(self._ids), app, queued_at, queued_at + slo * (1 - self.margin))
        rej = self.scheduler.submit(req, now)
        if rej is not None:
            observe(self.observer.ended, app, "rejected", rej.reason.value)
            raise NotServed("rejected", rej.reason.value, rej.detail)
        fut: asyncio.Future[Served] = asyncio.get_running_loop().create_future()
        self._pending[req.id] = _Pending(req, image, fut, arrival)
        observe(self.observer.queue_depth, self.scheduler.queued())
        self._wake.set()
        return fut

    # -- the loop -----------------------------------------------------------------------------
    async def _loop(self) -> None:
        try:
            while True:
                now = self.now_ms()
                plan = self.scheduler.next_batch(now)
                self._fail_expired(now)
                if plan is not None:
                    await self._execute(plan)
                    continue
                if self._closing and not self._pending:
                    return
                wake = self.scheduler.next_wakeup(now)
                self._wake.clear()  # no await since next_batch: no submission can be missed
                timeout = None if wake is None else max(wake - now, 1.0) / 1000.0
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("engine loop crashed; failing every pending request")
            self._fail_all("engine_failed", "the engine loop crashed; see the server log")
            raise

    async def _execute(self, plan: BatchPlan) -> None:
        """Run one batch and answer each of its requests exactly once, whatever fails: the
        runner, the scheduler's feedback, or stop() giving up on the device (cancellation)."""
        items = [self._pending[r.id] for r in plan.requests]
        observe(self.observer.queue_depth, self.scheduler.queued())
        try:
            t0 = self.now_ms()
            out = await self._run(plan, items)
            t1 = self.now_ms()
            self.scheduler.complete(plan, t1, t1 - t0)
            self.batches += 1
            observe(self.observer.batch, plan, t1 - t0, out.ms, self.scheduler.queued())
            self._answer_batch(plan, items, out.probs, t0, t1)
        except asyncio.CancelledError:
            self._fail(items, "shutting_down", "the server shut down while this request's batch ran; retry")
            raise
        except Exception as e:
            detail = f"batch of {len(items)} at gamma={plan.gamma} failed: {type(e).__name__}: {e}"
            log.error("batch failed", exc_info=True, extra={"event": "batch_failed", "detail": detail})
            self._fail(items, "batch_failed", detail)

    async def _run(self, plan: BatchPlan, items: list[_Pending]) -> RunResult:
        """The batch on the device thread; queued requests that expire meanwhile are answered."""
        tasks = [self.apps[it.req.app].task for it in items]
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._device, self.runner.run, [it.image for it in items], tasks, plan.gamma)
        job.add_done_callback(lambda f: f.cancelled() or f.exception())  # read even if nobody waits any more
        while True:
            done, _ = await asyncio.wait({job}, timeout=self._poll_s)
            if done:
                break
            self._fail_expired(self.now_ms())
        out = job.result()
        if len(out.probs) != len(items):
            raise RuntimeError(f"runner returned {len(out.probs)} results for a batch of {len(items)}")
        return out

    def _answer_batch(self, plan: BatchPlan, items: list[_Pending], probs: np.ndarray, t0: float, t1: float) -> None:
        prof = self.scheduler.profiles[plan.model]
        for it, p in zip(items, probs, strict=True):
            r, app = it.req, self.apps[it.req.app]
            met = t1 <= it.arrival_ms + app.slo_ms
            classes = self.classes[app.task]
            s = Served(
                id=r.id,
                app=r.app,
                gamma=plan.gamma,
                probs=p[: len(classes)],
                classes=classes,
                queue_ms=t0 - it.arrival_ms,
                exec_ms=t1 - t0,
                total_ms=t1 - it.arrival_ms,
                deadline_met=met,
                batch_size=len(items),
                utility=app.utility * prof.acc(app.task, plan.gamma) if met else 0.0,
            )
            self._end(it, "served", "", s)

    # -- answers ------------------------------------------------------------------------------
    def _end(self, it: _Pending, outcome: str, reason: str, answer: Served | NotServed) -> None:
        """Answer one accepted request: the first answer counts, a later one is dropped."""
        if self._pending.pop(it.req.id, None) is None:
            return
        served = answer if isinstance(answer, Served) else None
        if not it.future.done():  # the caller may have gone away (cancelled)
            if served is not None:
                it.future.set_result(served)
            else:
                it.future.set_exception(answer)
        observe(self.observer.ended, it.req.app, outcome, reason, served)

    def _fail(self, items: list[_Pending], reason: str, detail: str) -> None:
        for it in items:
            self._end(it, "error", reason, NotServed("error", reason, detail))

    def _fail_expired(self, now: float) -> None:
        for req, why in self.scheduler.expired(now):
            it = self._pending.get(req.id)
            if it is not None:
                slack = req.deadline_ms - now
                detail = f"dropped from the queue: {slack:.1f} ms to its deadline is too little"
                self._end(it, "expired", why, NotServed("expired", why, detail))

    def _fail_all(self, reason: str, detail: str) -> None:
        self._fail(list(self._pending.values()), reason, detail)
