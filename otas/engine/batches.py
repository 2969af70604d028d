"""One batch from plan to answers: the runner contract, the hand-over to the one thread that owns the
device (`otas.engine.device`), and the rule that every request of a batch is answered exactly once,
whatever fails (the runner, the scheduler's feedback, or `Engine.stop` giving up on the device). A
batch is launched onto the device thread (`launch`), possibly behind the one running there, and
answered once its job is done (`finish`); the event loop never waits on the device."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Protocol

import numpy as np

from otas.engine.delivery import Delivery
from otas.engine.device import Device
from otas.engine.ledger import Group, Ledger
from otas.engine.serving import NotServed, Observer, Served, observe
from otas.sched.scheduler import Scheduler, host_idle_ms
from otas.types import App, BatchPlan, Request

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


@dataclass(eq=False)
class Launched:
    """A batch handed to the device thread."""

    plan: BatchPlan
    ids: list[int]
    groups: list[Group]
    """(B,): each image's request."""
    apps: dict[str, App]
    """The applications as planned."""
    job: asyncio.Future[tuple[float, float, RunResult, float]]
    """When the device took it up and when it was done with it (engine clock, ms), its result, and when the
    device thread began it (`otas.engine.device`)."""
    start_ms: float
    """When it is expected to start."""
    launched_ms: float
    """When it was handed to the device thread."""
    device_ms: float
    """Its predicted time less the host's part: what the device spends on it."""

    @property
    def end_ms(self) -> float:
        """When the device is expected to be done with it."""
        return self.start_ms + self.device_ms


class Batches:
    """Runs the scheduler's batches on the device thread and answers them through the books."""

    def __init__(
        self,
        scheduler: Scheduler,
        runner: Runner,
        books: Ledger,
        observer: Callable[[], Observer],
        now_ms: Callable[[], float],
        lateness: Delivery | None = None,
    ):
        """`lateness`: where each finished batch's lateness against its plan is added (its end, as the plan
        counts it, less its planned start and predicted time; 0 if early)."""
        self.scheduler, self.runner, self._books = scheduler, runner, books
        self._observer, self._now_ms = observer, now_ms
        self._lateness = lateness
        self._device = Device(runner, now_ms)  # (a runner launching ahead: the next batch queued behind the running)
        self.count = 0
        """Batches run to completion."""
        self._free_ms: float | None = None  # when the device was done with the last batch read (None: unknown)
        self._taken_ms = -math.inf  # when the loop took that batch up
        self._waiting = False  # whether work was queued then, with no decision since to leave the device idle

    @property
    def poll_s(self) -> float:
        """Expiry checks while a batch runs: a tenth of the tightest SLO."""
        return min((a.slo_ms for a in self.scheduler.apps.values()), default=100.0) / 10 / 1000

    def shutdown(self) -> None:
        """Wait for a batch still on the device (its result unread), then end the device thread."""
        self._device.shutdown()

    def launch(self, plan: BatchPlan, start_ms: float, overhead_ms: float = 0.0) -> Launched:
        """Hand a batch to the device thread (behind the one it runs, if any); `start_ms`: when it
        is planned to start; `overhead_ms`: the host's part of its predicted time (the event loop
        taking its results up), which the device does not wait for. Its requests stay in the books
        until `finish` or `abandon` answers them."""
        ids = [r.id for r in plan.requests]
        groups = list(map(self._books.pending.__getitem__, ids))  # (B,): each image's request
        apps = self.scheduler.apps  # as planned: set_apps swaps in a new dict, so a removed app is still answered
        tasks = [apps[g.app].task for g in groups]
        images = [g.images[rid - g.first] for g, rid in zip(groups, ids, strict=True)]
        device_ms = max(plan.predicted_ms - overhead_ms, 0.0)
        job = asyncio.wrap_future(self._device.submit(images, tasks, plan.gamma, device_ms))
        job.add_done_callback(lambda f: f.cancelled() or f.exception())  # read even if nobody waits any more
        return Launched(plan, ids, groups, apps, job, start_ms, self._now_ms(), device_ms)

    def finish(self, b: Launched) -> float | None:
        """Answer a batch whose job is done, each of its requests exactly once whatever failed: the
        runner, or the scheduler's feedback. Returns when the device was done with it (None: unknown,
        the job failed)."""
        done, completed = None, False
        try:
            free, self._free_ms = self._free_ms, None
            # its work waited for the device if it was handed over before the batch before it was taken up, or
            # queued then (`declined`: the loop chose to wait since)
            waited = b.launched_ms < self._taken_ms or self._waiting
            t0, done, out, began = b.job.result()
            if len(out.probs) != len(b.ids):
                raise RuntimeError(f"runner returned {len(out.probs)} results for a batch of {len(b.ids)}")
            self._free_ms = done
            t1 = self._now_ms()
            if self._lateness is not None:  # (planning ahead, a plan counts the device's end: the loop's lag is apart)
                end = done if self.scheduler.pipelined else t1
                self._lateness.add(end - (b.plan.start_ms + b.plan.predicted_ms))
            completed = True  # (the scheduler counts it in flight no more, whatever `complete` raises)
            self._taken_ms, self._waiting = t1, self.scheduler.queued() > 0
            self.scheduler.complete(b.plan, t1, t1 - t0, out.ms, host_idle_ms(free, began, waited))
            self.count += 1
            observe(self._observer().batch, b.plan, t1 - t0, out.ms, self.scheduler.queued())
            self._answer(b.plan, b.groups, b.ids, out.probs, t0, t1, b.apps)
        except Exception as e:
            detail = f"batch of {len(b.ids)} at gamma={b.plan.gamma} failed: {type(e).__name__}: {e}"
            log.error("batch failed", exc_info=True, extra={"event": "batch_failed", "detail": detail})
            if not completed:
                self.scheduler.abandon(b.plan)
            self._books.fail(b.ids, "batch_failed", detail)
        except asyncio.CancelledError:  # the device thread's job was cancelled (the engine stopping)
            self.abandon(b)
        return done

    def declined(self) -> None:
        """The loop left the device idle by choice (nothing to run, or its policy waits): the next batch's start
        is not the host's gap."""
        self._waiting = False

    def abandon(self, b: Launched) -> None:
        """Answer a batch given up on (the engine stopping while it is on the device); one still
        queued behind the running one never starts."""
        b.job.cancel()
        self.scheduler.abandon(b.plan)
        self._books.fail(b.ids, "shutting_down", "the server shut down while this request's batch ran; retry")

    def _answer(
        self,
        plan: BatchPlan,
        groups: list[Group],
        ids: list[int],
        probs: np.ndarray,
        t0: float,
        t1: float,
        apps: dict[str, App],
    ) -> None:
        """Each run of one request's images answered at once: their app, arrival and so their
        timing and deadline are the request's; only the id and the probabilities differ."""
        prof = self.scheduler.profiles[plan.model]
        gamma, b, exec_ms = plan.gamma, len(ids), t1 - t0
        pos = 0
        for g, run in groupby(groups):
            k = sum(1 for _ in run)
            a = apps[g.app]
            classes = self.runner.classes[a.task]
            cut = len(classes) if len(classes) < probs.shape[1] else None
            arrival = g.arrival_ms
            met = t1 <= arrival + a.slo_ms
            value = a.utility * prof.acc(a.task, gamma) if met else 0.0
            queue_ms, total_ms = t0 - arrival, t1 - arrival
            rows = probs[pos : pos + k] if cut is None else probs[pos : pos + k, :cut]
            mine = ids[pos : pos + k]
            # (positional: one record per image) id, app, gamma, probs, classes, queue_ms, exec_ms,
            # total_ms, deadline_met, batch_size, utility
            answers = [
                Served(rid, g.app, gamma, p, classes, queue_ms, exec_ms, total_ms, met, b, value)
                for rid, p in zip(mine, rows, strict=True)
            ]  # fmt: skip
            self._books.served(g, mine, answers)
            pos += k

    def fail_expired(self, now: float) -> None:
        """Answer each request the scheduler dropped from its queue as expired."""
        runs: dict[tuple[int, str], tuple[Group, list[Request]]] = {}  # per request and reason, in order
        for req, why in self.scheduler.expired(now):
            g = self._books.pending.get(req.id)
            if g is not None:
                runs.setdefault((id(g), why), (g, []))[1].append(req)
        for (_, why), (g, reqs) in runs.items():
            slack = reqs[0].deadline_ms - now
            detail = f"dropped from the queue: {slack:.1f} ms to its deadline is too little"
            self._books.end_unserved(g, [r.id for r in reqs], "expired", why, NotServed("expired", why, detail))
