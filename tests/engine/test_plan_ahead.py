"""Planning ahead: while a batch runs and a full batch is queued (or the running one is about to
end), the next is planned and queued on the device thread behind it, so the device does not wait
for the event loop. Every image still ends
exactly once. The device is gated (`test_ledger.Gate`): nothing depends on timing."""

import asyncio
import json
import time
from collections import Counter

import pytest

from otas.config import SchedulerConfig
from otas.engine.engine import Engine, NotServed
from otas.sched.scheduler import Scheduler
from tests.engine.test_ledger import POISON, Ends, Gate, engine, img, settle
from tests.server.helpers import APPS, paced_profile


async def planned(eng, n: int) -> None:
    """Wait until `n` images have left the queue for the device."""
    for _ in range(500):
        if eng.scheduler.queued() <= n:
            return
        await asyncio.sleep(0.002)


def test_next_batch_is_planned_while_one_runs():
    async def main():
        eng, gate, obs = engine(max_batch=2, plan_ahead=True)
        await eng.start()
        fut = eng.submit_many("blur", [img(i + 1) for i in range(6)])
        assert await asyncio.to_thread(gate.started.acquire, True, 10)  # batch 1 held on the device
        await planned(eng, 2)
        queued_while_first_runs = eng.scheduler.queued()
        for _ in range(3):
            gate._go.release()
            if _ < 2:
                assert await asyncio.to_thread(gate.started.acquire, True, 10)
        res = await fut
        await eng.stop()
        return queued_while_first_runs, res, gate, obs

    queued, res, gate, obs = asyncio.run(main())
    assert queued == 2  # batch 2 left the queue before batch 1 finished
    assert gate.ran == [[1, 2], [3, 4], [5, 6]] and [s.id for s in res] == sorted(s.id for s in res)
    assert obs.ends == Counter({("served", ""): 6})


def test_a_partial_batch_is_planned_just_before_the_running_one_is_expected_to_end():
    """Less than a full batch queued waits for more arrivals until the running batch is about to
    end (its predicted time: 90 ms here), then is planned behind it; the loop is not spun meanwhile."""

    async def main():
        eng, gate, obs = engine(max_batch=4, plan_ahead=True)
        plans: list[float] = []
        plan = eng.scheduler.next_batch
        eng.scheduler.next_batch = lambda start: plans.append(start) or plan(start)
        await eng.start()
        first = eng.submit_many("blur", [img(i + 1) for i in range(4)])
        assert await asyncio.to_thread(gate.started.acquire, True, 10)
        t0 = eng.now_ms()
        rest = eng.submit_many("blur", [img(9), img(10)])
        await settle()
        early = eng.scheduler.queued()
        await planned(eng, 0)
        late = eng.now_ms() - t0
        await asyncio.sleep(0.3)  # the running batch is held long past its expected end
        asked = len(plans)
        gate._go.release()
        await gate.step()
        await first
        await rest
        await eng.stop()
        return early, late, asked, gate, obs

    early, late, asked, gate, obs = asyncio.run(main())
    assert early == 2  # not planned at once: more may arrive before the device is free
    assert 40 < late < 200  # planned about when the running batch was expected to end (90 ms)
    assert asked <= 3  # the first batch, the one planned ahead: no busy asking while held
    assert gate.ran == [[1, 2, 3, 4], [9, 10]] and obs.ends == Counter({("served", ""): 6})


def test_a_batchs_answers_go_out_before_the_next_decision_when_the_device_has_work():
    """Planned ahead, the device already runs the next batch when one finishes: the loop lets the
    finished batch's callers have their answers before it decides again (a decision can take a
    millisecond, which the answers would otherwise wait)."""

    async def main():
        eng, gate, obs = engine(max_batch=2, plan_ahead=True)
        events: list[str] = []
        plan = eng.scheduler.next_batch
        eng.scheduler.next_batch = lambda start: events.append("decided") or plan(start)
        await eng.start()

        async def caller(images):
            out = await eng.submit_many("blur", images)
            events.append("answered")
            return out

        first = asyncio.ensure_future(caller([img(1), img(2)]))
        await settle()
        assert await asyncio.to_thread(gate.started.acquire, True, 10)  # batch 1 held on the device
        rest = asyncio.ensure_future(caller([img(i + 3) for i in range(6)]))
        await settle()  # submitted
        await planned(eng, 4)  # batch 2 planned ahead, behind batch 1
        assert eng.scheduler.queued() == 4
        events.append("released")
        gate._go.release()  # batch 1 ends; batch 2 starts at once (a full one is still queued)
        assert await asyncio.to_thread(gate.started.acquire, True, 10)
        await first
        gate._go.release()  # batch 2 ends
        await gate.step()  # batch 3
        await gate.step()  # batch 4
        await rest
        await eng.stop()
        return events

    events = asyncio.run(main())
    after = events[events.index("released") + 1 :]
    assert after[0] == "answered", events  # before deciding the batch after the next


def test_a_partial_batch_is_not_planned_ahead_at_once():
    async def main():
        eng, gate, obs = engine(max_batch=4, plan_ahead=True)
        await eng.start()
        first = eng.submit_many("blur", [img(i + 1) for i in range(4)])
        assert await asyncio.to_thread(gate.started.acquire, True, 10)
        rest = eng.submit_many("blur", [img(9), img(10)])  # half a batch: it waits for the device
        await settle()
        queued = eng.scheduler.queued()
        gate._go.release()
        await gate.step()
        await first
        await rest
        await eng.stop()
        return queued, gate, obs

    queued, gate, obs = asyncio.run(main())
    assert queued == 2 and gate.ran == [[1, 2, 3, 4], [9, 10]]
    assert obs.ends == Counter({("served", ""): 6})


def test_request_abandoned_after_its_batch_was_planned_ahead_is_counted_once():
    async def main():
        eng, gate, obs = engine(max_batch=2, plan_ahead=True)
        await eng.start()
        first = eng.submit_many("blur", [img(1), img(2)])
        second = eng.submit_many("blur", [img(3), img(4)])
        assert await asyncio.to_thread(gate.started.acquire, True, 10)
        await planned(eng, 0)  # the second request's batch is queued behind the first
        second.cancel()  # its client went away
        await settle()
        gate._go.release()
        await gate.step()  # the planned batch still runs; its answers go to nobody
        await first
        await eng.stop()
        return gate, obs

    gate, obs = asyncio.run(main())
    assert gate.ran == [[1, 2], [3, 4]]
    assert obs.ends == Counter({("served", ""): 2, ("cancelled", "client_gone"): 2})


def test_failure_of_the_running_batch_leaves_the_planned_one_answered():
    async def main():
        eng, gate, obs = engine(max_batch=2, plan_ahead=True)
        await eng.start()
        bad = eng.submit_many("blur", [img(POISON), img(2)])
        good = eng.submit_many("blur", [img(3), img(4)])
        assert await asyncio.to_thread(gate.started.acquire, True, 10)
        await planned(eng, 0)
        gate._go.release()
        await gate.step()
        try:
            await bad
        except NotServed as e:
            reason = e.reason
        served = await good
        await eng.stop()
        return reason, served, obs

    reason, served, obs = asyncio.run(main())
    assert reason == "batch_failed" and len(served) == 2
    assert obs.ends == Counter({("error", "batch_failed"): 2, ("served", ""): 2})


def test_stop_answers_both_batches_on_the_device():
    async def main():
        eng, gate, obs = engine(max_batch=2, plan_ahead=True)
        await eng.start()
        futs = [eng.submit_many("blur", [img(1), img(2)]), eng.submit_many("blur", [img(3), img(4)])]
        assert await asyncio.to_thread(gate.started.acquire, True, 10)
        await planned(eng, 0)
        stopping = asyncio.create_task(eng.stop(timeout_s=0.2))  # gives up on the device
        errors = await asyncio.gather(*futs, return_exceptions=True)  # answered while the device still runs
        gate._go.release()
        await stopping
        return errors, gate, obs

    errors, gate, obs = asyncio.run(main())
    assert all(isinstance(e, NotServed) and e.reason == "shutting_down" for e in errors)
    assert gate.ran == [[1, 2]]  # the batch queued behind it never started
    assert obs.ends == Counter({("error", "shutting_down"): 4})


def test_after_a_backlog_planned_ahead_an_urgent_request_is_served_not_expired_early():
    """Batches planned ahead are planned for when the one on the device is expected to end: that
    expectation is re-anchored to when the device really finished the one before (and leaves out the
    host's part of a batch's predicted time, which the device does not wait for), so the scheduler's
    time does not run ahead of the clock over a long backlog with a busy event loop. Once the backlog
    is gone, a request of a tight SLO arriving at an idle device is planned now and served."""
    import time

    import numpy as np

    from otas.config import SchedulerConfig
    from otas.engine.engine import Engine, RunResult
    from otas.sched.scheduler import Scheduler
    from otas.types import App
    from tests.server.helpers import GAMMAS, SIZE, paced_profile

    apps = [App("blur", 3000.0, 1.0, "blur"), App("novel", 100.0, 1.0, "novel")]
    prof = paced_profile(base_ms=10.0, per_image_ms=2.0, max_batch=4)

    class Paced:
        image_size, max_batch, gammas = SIZE, 4, list(GAMMAS)
        classes = {"blur": ["a", "b"], "novel": ["a", "b"]}

        def run(self, images, tasks, gamma):
            t0 = time.perf_counter()
            time.sleep(prof.lat(gamma, len(images)) / 1e3)
            return RunResult(np.full((len(images), 2), 0.5, np.float32), (time.perf_counter() - t0) * 1e3)

    async def busy_loop(stop: asyncio.Event) -> None:  # HTTP work holding the event loop half the time
        while not stop.is_set():
            time.sleep(0.004)
            await asyncio.sleep(0.004)

    async def main():
        sched = Scheduler(apps, prof, "fixed:0", SchedulerConfig(max_batch=4, max_queue=10_000))
        eng = Engine(sched, Paced(), plan_ahead=True)
        ahead: list[float] = []  # how far past the clock each batch was planned for
        plan = sched.next_batch
        sched.next_batch = lambda start: ahead.append(start - eng.now_ms()) or plan(start)
        await eng.start()
        stop = asyncio.Event()
        hog = asyncio.create_task(busy_loop(stop))
        backlog = await asyncio.gather(*(eng.submit("blur", img()) for _ in range(320)), return_exceptions=True)
        stop.set()
        await hog
        urgent = await asyncio.gather(eng.submit("novel", img()), return_exceptions=True)
        await eng.stop()
        return backlog, urgent[0], ahead

    backlog, urgent, ahead = asyncio.run(main())
    assert not any(isinstance(r, Exception) for r in backlog)
    assert not isinstance(urgent, Exception), urgent
    assert urgent.deadline_met
    one = prof.lat(0, 4)  # a full batch's time: planning ahead looks at most about that far
    assert max(ahead) <= 1.5 * one, (max(ahead), one)


def test_planning_ahead_is_on_for_a_device_apart_from_the_host_by_default():
    from types import SimpleNamespace

    from otas.server.main import plans_ahead

    assert plans_ahead(SimpleNamespace(device="cuda:0"), None)
    assert plans_ahead(SimpleNamespace(device="paced no-op (NVIDIA H100 80GB HBM3)"), None)
    assert not plans_ahead(SimpleNamespace(device="cpu"), None) and not plans_ahead(SimpleNamespace(), None)
    assert plans_ahead(SimpleNamespace(device="cpu"), True) and not plans_ahead(SimpleNamespace(device="cuda"), False)


def test_the_decision_log_has_one_line_per_batch_as_decided(tmp_path):
    """`decision_log`: one JSON line per batch handed to the device, with its γ, size, images per
    application and the policy's notes; the file is closed when the engine stops."""

    async def main():
        gate = Gate(2)
        sched = Scheduler(APPS, paced_profile(), "fixed:0", SchedulerConfig(max_batch=2))
        eng = Engine(sched, gate, Ends(), decision_log=str(tmp_path / "log" / "decisions.jsonl"))
        await eng.start()
        fut = eng.submit_many("blur", [img(i + 1) for i in range(5)])
        for _ in range(3):
            await gate.step()
        await fut
        await eng.stop()

    asyncio.run(main())
    lines = [json.loads(x) for x in (tmp_path / "log" / "decisions.jsonl").read_text().splitlines()]
    assert [x["size"] for x in lines] == [2, 2, 1]
    assert all(x["gamma"] == 0 and x["apps"] == {"blur": x["size"]} and x["start_ms"] >= 0 for x in lines)
    assert [x["queued"] for x in lines] == [3, 1, 0]


def test_a_decision_log_that_cannot_be_written_is_refused_up_front(tmp_path):
    from otas.config import EngineConfig

    with pytest.raises(ValueError, match="is a folder"):
        EngineConfig(decision_log=str(tmp_path))
    EngineConfig(decision_log=str(tmp_path / "new" / "decisions.jsonl"))  # its folder is made when it opens


def test_a_decision_log_that_fails_stops_and_serving_goes_on(tmp_path):
    from otas.engine.decision_log import DecisionLog
    from otas.types import BatchPlan, Request

    dl = DecisionLog(tmp_path / "d.jsonl")
    plan = BatchPlan([Request(0, "blur", 0.0, 10.0)], 0, 1.0, 0.0, "m")

    def full(_):
        raise OSError(28, "No space left on device")

    dl._f.write = full
    dl.write(0.0, 0.0, plan, 0, 0.0)  # logged as a warning, not raised
    dl.write(1.0, 1.0, plan, 0, 0.0)  # and no more tries
    dl.close()


def slow_decisions(eng: Engine, s: float = 0.02) -> None:
    """Every decision of `eng`'s scheduler takes `s` more (the event loop blocked, as by a slow host)."""
    decide = eng.scheduler.next_batch
    eng.scheduler.next_batch = lambda start: time.sleep(s) or decide(start)


def idles_reported(eng: Engine) -> list[float | None]:
    """The `idle_ms` each batch reports to `eng`'s scheduler, in order (appended as they complete)."""
    complete, idles = eng.scheduler.complete, []
    eng.scheduler.complete = lambda plan, now, ms, dev=None, idle=None: (
        idles.append(idle) or complete(plan, now, ms, dev, idle)
    )
    return idles


def test_the_device_waiting_for_the_host_is_measured_as_the_host_gap():
    """One batch at a time, the device waits for the event loop between batches; a loop that takes 20 ms to
    decide keeps it idle that long before each batch whose images were queued all along: the scheduler's
    `host_gap_ms` measures it (two such batches at the EWMA's weight 0.1: at least 3.8 ms; a lower bound, not
    a timing)."""

    async def main():
        eng, gate, _ = engine(max_batch=2)
        slow_decisions(eng)
        await eng.start()
        fut = eng.submit_many("blur", [img(i + 1) for i in range(6)])
        for _ in range(3):
            await gate.step()
        await fut
        await eng.stop()
        return eng.scheduler.host_gap_ms

    assert asyncio.run(main()) >= 3.8


def test_no_host_gap_is_measured_across_a_failed_batch():
    """A failed batch has no end on the device to count from: the batch after it reports no idle time (without
    the reset it would count the failed batch's whole turn, and the one before it, as the host's)."""

    async def main():
        eng, gate, _ = engine(max_batch=2)
        slow_decisions(eng)
        idles = idles_reported(eng)
        await eng.start()
        futs = [eng.submit_many("blur", [img(POISON if k == 1 else 2 * k + 1), img(2 * k + 2)]) for k in range(3)]
        for _ in range(3):
            await gate.step()
        await asyncio.wait(futs)
        await eng.stop()
        return idles, [f.exception() is None for f in futs]

    idles, ok = asyncio.run(main())
    assert ok == [True, False, True] and idles == [None, None]


def test_a_batch_held_back_by_choice_is_not_the_hosts_gap():
    """Work queued when a batch is taken up, then held by the policy (`max_queue_delay_ms`: a partial batch waits
    for its oldest query to have waited 60 ms): the idle device is the scheduler's choice, not the host late
    (`Batches.declined`), so the held batch reports no idle time, where it would count the whole hold."""

    async def main():
        gate = Gate(4)
        cfg = SchedulerConfig(max_batch=4, max_queue_delay_ms=60.0)
        eng = Engine(Scheduler(APPS, paced_profile(), "fixed:0", cfg), gate, Ends())
        idles = idles_reported(eng)
        await eng.start()
        futs = [eng.submit_many("blur", [img(1), img(2), img(3), img(4)]), eng.submit_many("blur", [img(5), img(6)])]
        await gate.step()  # the full batch; the two queued behind it are held, then run
        await gate.step()
        await asyncio.wait(futs)
        await eng.stop()
        return idles, gate.ran

    idles, ran = asyncio.run(main())
    assert ran == [[1, 2, 3, 4], [5, 6]] and idles == [None, None]
