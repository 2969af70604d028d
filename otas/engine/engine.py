"""The engine: an asyncio loop that drives the Scheduler and hands batches to the runner.

    submit_many ──> admission (whole request) ──(refused)──> NotServed at once
                    │ Scheduler.submit each image; one future per request
    loop: device free ──> next_batch ──> runner.run (device thread) ──> complete(measured) ──> futures
          (a full batch queued while one runs: the next is planned then, queued on the device behind it)

The Scheduler is the very object the simulator drives; it is touched only from the event loop, so
it needs no lock. The runner runs in one dedicated thread (it owns the device); decoding runs in a
small pool with a bounded queue. A request of several images is admitted whole or not at all (room
in the queue for all, and time to run all of them at the fastest setting before its deadline), and
answered whole (`ledger.py`: a request fails at once when one of its images does, and a request
whose caller goes away leaves the queue). `stop()` stops admission, serves what is queued, and
fails (never forgets) whatever is left after the drain timeout, a batch still on the device
included (`batches.py` runs and answers each batch). An observer hook (metrics, logs) that raises
is logged and changes no answer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice

import numpy as np

from otas.engine.batches import Batches, Launched, Runner, RunResult  # noqa: F401 (RunResult: imported from here too)
from otas.engine.decision_log import DecisionLog
from otas.engine.delivery import Delivery
from otas.engine.images import DecodeBusy, DecodeExpired, DecodeLimits, Decoder, DecodeRestarted
from otas.engine.ledger import Ledger
from otas.engine.serving import NotServed, Observer, Served, observe
from otas.sched.scheduler import Scheduler
from otas.types import App, Request

log = logging.getLogger("otas.engine")

SWITCH_INTERVAL_S = 0.001
"""The interpreter's GIL switch interval while an engine runs, unless configured (Python's default is
5 ms). The device thread gives the GIL back at each call into torch (collation, the forward's launch,
the copy of the result); while the event loop, decoding or the scheduler run Python, it waits up to
the interval to take it back, several times a batch. 1 ms keeps those waits short (bench/gil.py)."""


class Engine:
    """The local engine: one Scheduler, one runner on one device thread (a `ServingEngine`)."""

    def __init__(
        self,
        scheduler: Scheduler,
        runner: Runner,
        observer: Observer | None = None,
        decode_workers: int = 2,
        decode_limits: DecodeLimits | None = None,
        decode_queue: int = 256,
        deadline_margin: float = 0.02,
        clock=time.monotonic,
        decode_processes: bool = False,
        switch_interval_s: float = SWITCH_INTERVAL_S,
        plan_ahead: bool = False,
        delivery_quantile: float = 0.95,
        decision_log: str | None = None,
    ):
        """`deadline_margin`: the scheduler plans against deadlines this fraction of the SLO early,
        and the `delivery_quantile` of the measured delivery times early besides (`delivered`; 0:
        not), up to half the SLO in all,
        leaving time to send the answer (the optimizer packs batches right up to a deadline).
        `switch_interval_s`: the GIL switch interval set at `start` (0: Python's own is left).
        `plan_ahead`: while a batch runs, plan the next and queue it on the device thread behind the
        running one: at once for a full batch queued, else just before the running one is expected
        to end (`_may_plan`). `decision_log`: a file to append one JSON line per batch to, as decided
        (`otas.engine.decision_log`)."""
        if not 0 <= deadline_margin < 0.5:
            raise ValueError(f"deadline_margin={deadline_margin}: use a fraction of the SLO in [0, 0.5), e.g. 0.02")
        self.margin = deadline_margin
        self.delivery = Delivery(quantile=delivery_quantile)
        """How long answers take to leave the HTTP layer once ready here (`delivered`)."""
        self.lateness = Delivery(quantile=delivery_quantile)
        """How much later than planned batches end (`Batches.finish`): the device, or the host around it, slower
        or less steady than the scheduler predicts (its correction follows the mean, not the spread)."""
        self.switch_interval_s = switch_interval_s
        self.plan_ahead = plan_ahead
        self._decision_log = decision_log
        self._log: DecisionLog | None = None
        scheduler.pipelined = plan_ahead  # the loop's lag then delays answers only (`_plannable_ms`)
        self._full = min(scheduler.config.max_batch, runner.max_batch)
        self.scheduler, self.runner = scheduler, runner
        self.observer = observer or Observer()
        self._check_tasks(scheduler.apps.values())
        self._clock, self._t0 = clock, clock()
        self._ids = itertools.count()
        self._books = Ledger(scheduler, lambda: self.observer)  # accepted and not yet ended
        self._batches = Batches(scheduler, runner, self._books, lambda: self.observer, self.now_ms, self.lateness)
        self._last_arrival: dict[str, float] = {}
        self._last_deadline: dict[str, float] = {}
        pre = getattr(runner, "preprocess", None) or runner.image_size  # a stand-in runner: a plain resize
        self._decode = Decoder(
            pre, decode_workers, decode_limits, decode_queue, clock=clock, processes=decode_processes
        )
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._draining: set[str] = set()  # applications being removed: no new requests

    @property
    def apps(self) -> dict[str, App]:
        """The applications served now (the scheduler's; they change at run time through `set_apps`)."""
        return self.scheduler.apps

    @property
    def batches(self) -> int:
        """Batches run to completion."""
        return self._batches.count

    def _check_tasks(self, apps) -> None:
        missing = sorted({a.task for a in apps} - set(self.runner.classes))
        if missing:
            raise ValueError(f"the model has no head for tasks {missing}; it serves {sorted(self.runner.classes)}")

    # -- applications at run time ------------------------------------------------------------------
    def set_apps(self, apps: Sequence[App]) -> None:
        """Serve `apps` from the next decision on (added or changed; see `remove_app` to remove one).
        Raises ValueError, changing nothing, for a task the model or the profile lacks."""
        self._check_tasks(apps)
        self.scheduler.set_apps(apps)
        if self._wake is not None:
            self._wake.set()

    async def remove_app(self, name: str, timeout_s: float = 30.0) -> int:
        """Stop admitting requests for `name`, wait until each accepted one is answered (served, or
        expired at its deadline), then stop serving it. Returns how many were drained."""
        if name not in self.apps:
            raise KeyError(name)
        self._draining.add(name)
        try:
            drained = self.open_requests(name)
            deadline = time.monotonic() + timeout_s
            while self.open_requests(name) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            left = self.open_requests(name)
            if left:  # never forgotten: answered now
                ids = self._books.of_app(name)
                self._books.fail(ids, "unknown_app", f"application {name!r} was removed before this request ran")
                self.scheduler.cancel(ids, name)
            self.scheduler.set_apps([a for a in self.apps.values() if a.name != name])
            self._last_arrival.pop(name, None)
            self._last_deadline.pop(name, None)
            return drained
        finally:
            self._draining.discard(name)

    def open_requests(self, name: str) -> int:
        """Requests of application `name` accepted and not yet answered (queued or on the device)."""
        return len(self._books.of_app(name))

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
        if self.switch_interval_s > 0:  # process-wide: the device thread shares one GIL with every other
            sys.setswitchinterval(self.switch_interval_s)
        self._wake = asyncio.Event()
        if self._decision_log:
            self._log = DecisionLog(self._decision_log)
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
        self._books.fail_all("shutting_down", "the server shut down before this request ran; retry")
        # Off the event loop: a batch still on the device finishes there (its result unread)
        # while the answers above go out.
        await asyncio.to_thread(self._batches.shutdown)
        self._decode.shutdown()
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- requests -----------------------------------------------------------------------------
    async def decode(
        self,
        app: str,
        payloads: Sequence[bytes],
        arrival_ms: float | None = None,
        on_large: Callable[[], None] | None = None,
    ) -> list[np.ndarray]:
        """Encoded images -> uint8 (H, W, 3) at the model's size, off the event loop. A request that
        could not be admitted anyway is refused first, before any decoding; a full decode queue
        refuses it (`decode_busy`); images still waiting when its deadline passes are not decoded."""
        now = self.now_ms()
        arrival = now if arrival_ms is None else min(arrival_ms, now)
        self._check_app(app, len(payloads))
        self._admit(app, len(payloads), now, arrival + self.apps[app].slo_ms, arrival)
        deadline = self._t0 + (arrival + self.apps[app].slo_ms) / 1000.0  # on the clock
        try:
            return await self._decode.many(payloads, deadline, on_large)
        except DecodeBusy as e:
            raise self._refuse(app, len(payloads), "rejected", "decode_busy", str(e)) from None
        except DecodeExpired as e:
            raise self._refuse(app, len(payloads), "expired", "deadline_unreachable", str(e)) from None
        except DecodeRestarted as e:
            raise self._refuse(app, len(payloads), "rejected", "decode_restarted", str(e)) from None
        except asyncio.CancelledError:  # the client left while its images were decoding: counted, as in the queue
            self._refuse(app, len(payloads), "cancelled", "client_gone", "")
            raise

    def submit(self, app: str, image: np.ndarray, arrival_ms: float | None = None) -> asyncio.Future[Served]:
        """Queue one image for `app`; the future resolves to Served or raises NotServed.
        Rejections raise NotServed at once (the caller answers before awaiting anything)."""
        return self._submit(app, [image], arrival_ms, single=True)

    def submit_many(
        self, app: str, images: Sequence[np.ndarray], arrival_ms: float | None = None
    ) -> asyncio.Future[list[Served]]:
        """Queue a request of several images, admitted and answered whole (see the module docstring)."""
        return self._submit(app, images, arrival_ms, single=False)

    def _check_app(self, app: str, n: int) -> None:
        if app not in self.apps or app in self._draining:  # unknown, or removed (being removed) since the caller looked
            why = "is being removed" if app in self._draining else f"is unknown; known: {sorted(self.apps)}"
            raise self._refuse(app, n, "rejected", "unknown_app", f"application {app!r} {why}")

    def _submit(self, app: str, images: Sequence[np.ndarray], arrival_ms: float | None, single: bool):
        self._check_app(app, len(images))
        now, n = self.now_ms(), len(images)
        arrival = now if arrival_ms is None else min(arrival_ms, now)
        # The scheduler's per-app queues need arrival order, but decoding finishes out of order:
        # queue at max(arrival, the app's last), and judge the deadline on the true arrival.
        queued_at = max(arrival, self._last_arrival.get(app, -math.inf))
        # ... and after an SLO was lowered at run time, plan no earlier than the app's requests still
        # queued under the old one (the answer's deadline_met is judged on the true arrival and SLO);
        # once none is queued, the new SLO is the only one
        before = self._last_deadline.get(app, -math.inf) if self.scheduler.queued(app) else -math.inf
        self._age_if_refused(now, arrival + self._plannable_ms(app), n)  # (the host lag shortens the plannable part)
        plannable = self._plannable_ms(app)
        deadline = max(queued_at + plannable, before)
        # admitted by its own deadline, arrival + plannable: that of a request that waited before it came
        # (a stated wait, or decoding that finished out of order) is earlier than the queue's order lets it
        # be planned at, and it is refused rather than served late
        self._admit(app, n, now, arrival + plannable, arrival)
        self._last_arrival[app], self._last_deadline[app] = queued_at, deadline
        reqs = [Request(i, app, queued_at, deadline) for i in islice(self._ids, n)]  # consecutive ids
        rej = self.scheduler.submit_many(reqs, now)  # all or none
        if rej is not None:  # not expected after admission
            raise self._refuse(app, n, "rejected", rej.reason.value, rej.detail)
        g = self._books.open(app, reqs, images, arrival, single)
        observe(self.observer.queue_depth, self.scheduler.queued())
        self._wake.set()
        return g.future

    def _plannable_ms(self, app: str) -> float:
        """The part of `app`'s SLO the scheduler plans in: less the margin, the time answers
        take to reach their clients once the device is done (the delivery time and, planning
        ahead, the loop's lag in taking the results up: `Scheduler.pipelined`) and the lateness of
        batches against their plans (both at `delivery_quantile`); at least half."""
        slo = self.apps[app].slo_ms
        after = self.delivery.ms + self.lateness.ms + (self.scheduler.host_lag_ms if self.plan_ahead else 0.0)
        return slo - min(slo * self.margin + after, slo / 2)

    def delivered(self, ms: float) -> None:
        """A response left the HTTP layer `ms` after its answer was ready here (`ServingEngine`)."""
        self.delivery.add(ms)

    def _admit(self, app: str, n: int, now: float, deadline: float, arrival: float) -> None:
        """Refuse (NotServed, observed for each image) a request that cannot be accepted whole;
        `arrival`: its first byte, on this engine's clock."""
        if not self.ready:
            raise self._refuse(
                app, n, "rejected", "shutting_down", "the server is shutting down; retry on another replica"
            )
        queued, cap = self.scheduler.queued(), self.scheduler.config.max_queue
        if queued + n > cap:
            raise self._refuse(app, n, "rejected", "queue_full", f"{queued} queued + {n} > {cap} (max_queue)")
        self._age_if_refused(now, deadline, n)
        if n > 1:  # a lone image is the scheduler's to judge (alone, at the fastest setting)
            ahead = self.scheduler.queues.count(app)
            need = self.scheduler.fastest_ms(ahead + n)
            if now + need > deadline:
                raise self._refuse(
                    app, n, "rejected", "infeasible",
                    f"{n} images (and {ahead} queued ahead) need {need:.0f} ms at the fastest setting but "
                    f"{_left(deadline, now)}; send fewer images per request",
                )  # fmt: skip
        elif self.scheduler.config.reject_infeasible and now + self.scheduler.fastest_ms(1) > deadline:
            raise self._refuse(
                app, n, "rejected", "infeasible",
                f"it needs {self.scheduler.fastest_ms(1):.1f} ms at the fastest setting but {_left(deadline, now)}: "
                f"{now - arrival:.0f} ms passed from its arrival (any wait its "
                "client stated, the upload, then parsing and decoding here); send it whole at once, or retry",
            )  # fmt: skip

    def _age_if_refused(self, now: float, deadline: float, n: int) -> None:
        """Where an idle scheduler would refuse a request of `n` images as infeasible by `deadline`, its online
        corrections age first (`Scheduler.infeasible`): a lone image only where infeasible ones are refused."""
        if n > 1 or self.scheduler.config.reject_infeasible:
            self.scheduler.infeasible(now, deadline, n)

    def _refuse(self, app: str, n: int, outcome: str, reason: str, detail: str) -> NotServed:
        observe(self.observer.ended_many, app, outcome, reason, n)
        return NotServed(outcome, reason, detail)

    # -- the loop -----------------------------------------------------------------------------
    def _may_plan(self, inflight: deque[Launched], now: float, declined: bool) -> bool:
        """A batch may be planned now: the device has none, or (planning ahead) it has one and a
        full batch is queued, or the running one is about to end (`_plan_at`), so the next is
        planned while this one runs and handed to the device behind it: the device then does not
        wait for the event loop (its decision, its answers, or HTTP work ahead of them). A batch
        planned ahead leaves out the requests that arrive while the running one finishes, so with
        less than a full batch queued it is planned as late as still hides the loop's lag.
        `declined`: the last plan ahead found nothing to run yet (the policy waits for more); not
        asked again until work arrives or the batch ends."""
        if not inflight:
            return True
        at = self._plan_at(inflight)  # None unless planning ahead behind one batch, with work queued
        if at is None:
            return False
        return self.scheduler.queued() >= self._full or (not declined and now >= at)

    def _plan_at(self, inflight: deque[Launched]) -> float | None:
        """When to plan the batch to follow the one running with less than a full batch queued:
        the loop's lag in taking a batch's results up (the scheduler's `host_lag_ms`)
        before the device is expected to be done with it. None: nothing to plan ahead."""
        if not self.plan_ahead or len(inflight) != 1 or not self.scheduler.queued():
            return None
        return inflight[0].end_ms - self.scheduler.host_lag_ms

    async def _loop(self) -> None:
        inflight: deque[Launched] = deque()  # on the device thread, oldest first (at most two)
        declined = False  # planning ahead found nothing to run yet (`_may_plan`)
        try:
            while True:
                now = self.now_ms()
                if inflight and inflight[0].job.done():
                    done = self._batches.finish(inflight.popleft())
                    declined = False
                    if inflight:  # the device has the next batch: this one's answers go out before the next decision
                        if done is not None:  # the next one started then, not when expected
                            inflight[0].start_ms = max(done, inflight[0].launched_ms)
                        await asyncio.sleep(0)
                    continue
                plan = None
                if self._may_plan(inflight, now, declined):
                    # planned for now, or (ahead) for when the batch on the device is expected to end
                    start = max(now, inflight[-1].end_ms) if inflight else now
                    t = time.perf_counter()
                    plan = self.scheduler.next_batch(start)
                    observe(self.observer.decided, (time.perf_counter() - t) * 1e3, plan is not None)
                    if plan is None and not inflight:  # the device left idle by choice: no host gap
                        self._batches.declined()
                    if plan is not None:
                        overhead = self.scheduler.overhead_ms  # the device does not wait for the loop
                        inflight.append(self._batches.launch(plan, start, overhead))
                        observe(self.observer.queue_depth, self.scheduler.queued())
                        if self._log is not None:
                            self._log.write(now, start, plan, self.scheduler.queued(), self.scheduler.host_gap_ms)
                    declined = plan is None and bool(inflight)
                # expired by now, and any the planning dropped (no later pass may come: an idle loop sleeps)
                self._batches.fail_expired(now)
                if plan is not None:
                    continue
                if inflight:  # until it finishes, new work arrives, expiry is due, or it is time to plan ahead
                    timeout = self._batches.poll_s
                    if not declined and (at := self._plan_at(inflight)) is not None:
                        timeout = min(timeout, max(at - now, 0.0) / 1000.0)
                    self._wake.clear()
                    woken = asyncio.ensure_future(self._wake.wait())
                    try:
                        await asyncio.wait({inflight[0].job, woken}, timeout=timeout,
                                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                    finally:
                        declined = declined and not woken.done()  # new work: ask again
                        woken.cancel()
                    continue
                # nothing to run: requests may have left the queue without a batch (expired, cancelled)
                observe(self.observer.queue_depth, self.scheduler.queued())
                if self._closing and not len(self._books):
                    return
                wake = self.scheduler.next_wakeup(now)
                self._wake.clear()  # no await since next_batch: no submission can be missed
                timeout = None if wake is None else max(wake - now, 1.0) / 1000.0
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
        except asyncio.CancelledError:
            for b in inflight:  # stop() gave up on the device
                self._batches.abandon(b)
            raise
        except Exception:
            log.exception("engine loop crashed; failing every pending request")
            self._books.fail_all("engine_failed", "the engine loop crashed; see the server log")
            raise


def _left(deadline: float, now: float) -> str:
    """The time left to a deadline, in words (a request that waited before it came may be past it)."""
    if deadline >= now:
        return f"{deadline - now:.0f} ms are left"
    return f"its deadline passed {now - deadline:.0f} ms ago"
