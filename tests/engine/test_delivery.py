"""Delivery times: the engine plans deadlines short by the time answers take to reach their clients
(a high quantile of recent responses), never by more than half an SLO."""

import asyncio
import math

import pytest

from otas.engine.delivery import FRESH, Delivery
from tests.engine.test_ledger import engine, img


def test_the_estimate_is_a_high_quantile_of_the_recent_times():
    d = Delivery(window=100, quantile=0.95)
    assert d.ms == 0.0 and len(d) == 0
    d.add(4.0)
    assert d.ms == 4.0  # the first samples count at once
    for ms in range(1, 101):  # 1..100 ms: the window keeps these 100
        d.add(float(ms))
    assert len(d) == 100 and d.ms == 95.0
    for _ in range(100):  # deliveries got faster: the old times leave the window
        d.add(1.0)
    assert d.ms == 1.0


def test_bad_times_do_not_move_the_estimate():
    d = Delivery()
    for ms in (math.nan, math.inf, -math.inf):
        d.add(ms)
    d.add(-3.0)  # two processes' clocks a little apart: 0
    assert len(d) == 1 and d.ms == 0.0
    with pytest.raises(ValueError):
        Delivery(window=0)
    with pytest.raises(ValueError):
        Delivery(quantile=1.5)
    none = Delivery(quantile=0.0)  # not planned for
    none.add(40.0)
    assert none.ms == 0.0 and len(none) == 1


def test_the_estimate_is_read_again_only_after_enough_new_times():
    d = Delivery(window=1000)
    for _ in range(2 * FRESH):
        d.add(2.0)
    assert d.ms == 2.0
    for _ in range(FRESH - 1):
        d.add(50.0)
    assert d.ms == 2.0  # (read again after FRESH new times)
    d.add(50.0)
    assert d.ms == 50.0


@pytest.mark.parametrize("delivered_ms,planned_ms", [(0.0, 784.0), (30.0, 754.0), (500.0, 400.0)])
def test_deadlines_are_planned_short_by_the_delivery_time_up_to_half_the_slo(delivered_ms, planned_ms):
    """lowlight: SLO 800 ms, margin 2 % (16 ms), then the delivery time; at most half the SLO in all."""

    async def main():
        eng, gate, _ = engine(max_batch=4)
        for _ in range(FRESH):
            eng.delivered(delivered_ms)
        await eng.start()
        first = eng.submit("blur", img(1))  # holds the device, so the next stays queued
        assert await asyncio.to_thread(gate.started.acquire, True, 10)
        arrival = eng.now_ms()
        fut = eng.submit("lowlight", img(2), arrival)
        (req,) = eng.scheduler.queues.iter_app("lowlight")
        gate._go.release()
        await gate.step()
        await first
        await fut
        await eng.stop()
        return req.deadline_ms - arrival

    assert asyncio.run(main()) == pytest.approx(planned_ms)


@pytest.mark.parametrize("plan_ahead,planned_ms", [(False, 774.0), (True, 754.0)])
def test_planning_ahead_the_loops_lag_is_planned_for_as_answers_delay(plan_ahead, planned_ms):
    """lowlight (SLO 800 ms, margin 16 ms), 10 ms delivery and a 20 ms host lag: planning ahead, the
    lag delays the answers (in the deadline) and not the batches after (out of the latencies)."""
    eng, _, _ = engine(max_batch=4, plan_ahead=plan_ahead)
    for _ in range(FRESH):
        eng.delivered(10.0)
    eng.scheduler._overhead = 20.0
    eng.scheduler.pipelined = plan_ahead  # (refreshes the predictions)
    assert eng.scheduler.pipelined == plan_ahead
    assert eng._plannable_ms("lowlight") == pytest.approx(planned_ms)
    assert eng.scheduler.overhead_ms == (0.0 if plan_ahead else 20.0)


def test_reported_times_are_taken_as_numbers_and_at_most_the_cap():
    from otas.engine.delivery import REPORT_MAX, reported

    assert reported(None) == [] and reported("1,2") == [] and reported({"a": 1}) == []
    assert reported([1, 2.5, "3", None]) == [1.0, 2.5]
    assert len(reported([1.0] * (REPORT_MAX + 10))) == REPORT_MAX


def test_a_batch_that_ends_later_than_planned_shortens_the_deadlines_planned_after_it():
    """The engine plans deadlines short by the lateness of batches against their plans too (its
    `delivery_quantile`): the latency correction follows the device's mean, and a plan packed to a
    deadline loses it to any batch longer than predicted. Here the device is held 300 ms past the
    profile's time: the next request's deadline is planned about that much shorter."""

    async def main():
        eng, gate, _ = engine(max_batch=4)
        await eng.start()
        first = eng.submit("blur", img(1))
        assert await asyncio.to_thread(gate.started.acquire, True, 10)
        await asyncio.sleep(0.3)  # the device takes 300 ms (the profile: 60 ms for a batch of one)
        gate._go.release()
        await first
        late = eng.lateness.ms
        arrival = eng.now_ms()
        nxt = eng.submit("lowlight", img(2), arrival)
        (req,) = eng.scheduler.queues.iter_app("lowlight")
        await gate.step()
        await nxt
        await eng.stop()
        return late, req.deadline_ms - arrival

    late, planned_ms = asyncio.run(main())
    assert 230.0 < late < 1000.0
    assert planned_ms == pytest.approx(800.0 - 16.0 - late)  # lowlight: SLO 800 ms, margin 16 ms
