"""Every exit path of a batch answers each of its requests exactly once: stop() giving up on the
device, the scheduler's feedback raising, an observer raising. The device is a gated stand-in
(threading events), so each test decides when a batch finishes; no model, no sleeps to tune."""

import asyncio
import threading

import numpy as np

from otas.config import SchedulerConfig
from otas.engine.engine import Engine, NotServed, Observer, RunResult, Served
from otas.sched.scheduler import Scheduler
from tests.server.helpers import APPS, GAMMAS, SIZE, paced_profile

IMG = np.zeros((SIZE, SIZE, 3), np.uint8)
K = 5


class GatedRunner:
    """Each batch sets `started`, then holds the device until `release` is set."""

    def __init__(self):
        self.image_size, self.max_batch, self.gammas = SIZE, 16, list(GAMMAS)
        self.classes = {a.task: [f"c{i}" for i in range(K)] for a in APPS}
        self.started, self.release = threading.Event(), threading.Event()
        self.sizes: list[int] = []

    def run(self, images, tasks, gamma):
        self.sizes.append(len(images))
        self.started.set()
        assert self.release.wait(10), "the test never released the device"
        return RunResult(np.full((len(images), K), 1 / K, np.float32), 1.0)


class Ends(Observer):
    def __init__(self):
        self.ends: list[tuple[str, str]] = []

    def ended(self, app, outcome, reason="", served=None):
        self.ends.append((outcome, reason))


class Broken(Ends):
    """Records the outcome, then raises from every hook."""

    def ended(self, app, outcome, reason="", served=None):
        super().ended(app, outcome, reason, served)
        raise RuntimeError("metrics backend down")

    def batch(self, plan, measured_ms, runner_ms, queued):
        raise RuntimeError("metrics backend down")

    def queue_depth(self, n):
        raise RuntimeError("metrics backend down")


def _engine(runner, observer):
    # fixed:0 batches whatever is queued: requests submitted before the loop runs share one batch
    sched = Scheduler(APPS, paced_profile(), "fixed:0", SchedulerConfig(max_batch=16))
    return Engine(sched, runner, observer)


def _outcomes(futs):
    return [f.exception().reason if f.exception() else "served" for f in futs]


def test_stop_answers_a_batch_still_on_the_device_exactly_once():
    runner, obs = GatedRunner(), Ends()

    async def main():
        eng = _engine(runner, obs)
        await eng.start()
        futs = [eng.submit("blur", IMG) for _ in range(6)]
        assert await asyncio.to_thread(runner.started.wait, 5)
        stop = asyncio.create_task(eng.stop(timeout_s=0.05))  # shorter than the batch
        await asyncio.wait(futs, timeout=5)
        answered_while_busy = all(f.done() for f in futs) and not stop.done()
        runner.release.set()  # the device finishes after the answers went out
        await asyncio.wait_for(stop, 5)
        return futs, answered_while_busy

    futs, answered_while_busy = asyncio.run(main())
    assert answered_while_busy  # stop() answered without waiting for the device
    assert runner.sizes == [6]
    errs = [f.exception() for f in futs]
    assert all(isinstance(e, NotServed) and (e.outcome, e.reason) == ("error", "shutting_down") for e in errs)
    assert all("while this request's batch ran" in e.detail for e in errs)
    assert obs.ends == [("error", "shutting_down")] * 6  # the late runner result answered nothing again


def test_failing_scheduler_feedback_fails_its_batch_and_the_loop_serves_on():
    runner, obs = GatedRunner(), Ends()
    runner.release.set()

    async def main():
        eng = _engine(runner, obs)
        complete, calls = eng.scheduler.complete, []

        def flaky(plan, now_ms, measured_ms, device_ms=None, idle_ms=None):
            calls.append(plan.size)
            if len(calls) == 1:
                raise RuntimeError("feedback broke")
            complete(plan, now_ms, measured_ms, device_ms, idle_ms)

        eng.scheduler.complete = flaky
        await eng.start()
        first = [eng.submit("novel", IMG) for _ in range(4)]
        await asyncio.wait_for(asyncio.wait(first), 5)
        later = [eng.submit("lowlight", IMG) for _ in range(3)]
        await asyncio.wait_for(asyncio.wait(later), 5)
        ready = eng.ready
        await eng.stop()
        return first, later, ready

    first, later, ready = asyncio.run(main())
    assert runner.sizes == [4, 3] and ready
    assert _outcomes(first) == ["batch_failed"] * 4
    assert all("RuntimeError: feedback broke" in f.exception().detail for f in first)
    assert all(isinstance(f.result(), Served) for f in later)
    assert obs.ends == [("error", "batch_failed")] * 4 + [("served", "")] * 3


def test_a_raising_observer_costs_no_request_its_answer():
    runner, obs = GatedRunner(), Broken()
    runner.release.set()

    async def main():
        eng = _engine(runner, obs)
        await eng.start()
        first = [eng.submit("novel", IMG) for _ in range(4)]
        await asyncio.wait_for(asyncio.wait(first), 5)
        later = [eng.submit("blur", IMG) for _ in range(2)]
        await asyncio.wait_for(asyncio.wait(later), 5)
        batches, ready = eng.batches, eng.ready
        await eng.stop()
        try:
            eng.submit("blur", IMG)
        except NotServed as e:
            refusal = e
        return first + later, batches, ready, refusal

    futs, batches, ready, refusal = asyncio.run(main())
    assert runner.sizes == [4, 2] and batches == 2 and ready
    assert all(isinstance(f.result(), Served) for f in futs)
    assert refusal.reason == "shutting_down"  # still a refusal, not the observer's error
    assert obs.ends == [("served", "")] * 6 + [("rejected", "shutting_down")]


class Depth(Ends):
    def __init__(self):
        super().__init__()
        self.depths: list[int] = []

    def queue_depth(self, n):
        self.depths.append(n)


def test_the_queue_depth_gauge_returns_to_zero_when_queued_requests_leave_without_a_batch():
    """Requests that expire in the queue, or whose callers leave, leave it with no batch run: the gauge
    said they were still queued until the next request came (37 after a burst, on a live server)."""
    runner, obs = GatedRunner(), Depth()

    async def main():
        eng = _engine(runner, obs)
        await eng.start()
        first = [eng.submit("novel", IMG) for _ in range(2)]
        assert await asyncio.to_thread(runner.started.wait, 5)  # the device is held
        expiring = [eng.submit("novel", IMG) for _ in range(3)]  # 400 ms SLO: gone while the device is held
        leaving = [eng.submit("blur", IMG) for _ in range(2)]
        await asyncio.sleep(0.05)
        for f in leaving:
            f.cancel()  # their callers go away while they are queued
        await asyncio.sleep(0.05)
        after_leaving = obs.depths[-1]
        await asyncio.sleep(0.5)
        runner.release.set()
        await asyncio.wait(first + expiring, timeout=5)
        await asyncio.sleep(0.2)
        await eng.stop()
        return first, expiring, after_leaving

    first, expiring, after_leaving = asyncio.run(main())
    assert after_leaving == 3  # the two that left are no longer counted
    assert all(f.exception() is None for f in first)
    assert _outcomes(expiring) == ["deadline_unreachable"] * 3
    assert obs.depths[-1] == 0
