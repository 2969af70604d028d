"""Requests of several images are admitted and answered whole; a request that fails or is
abandoned takes its queued images out of the queue (never run) and the observer counts every image
once, `served` only when its request's caller got the answer. The device is gated (threading
events): each test decides when a batch starts and ends, so nothing depends on timing."""

import asyncio
import threading
from collections import Counter

import numpy as np
import pytest

from otas.config import SchedulerConfig
from otas.engine.engine import Engine, NotServed, Observer, RunResult
from otas.sched.scheduler import Scheduler
from tests.server.helpers import APPS, GAMMAS, SIZE, paced_profile

K = 5
POISON = 255


def img(v: int = 0) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), v, np.uint8)


class Gate:
    """A device that runs one batch per `step()`; a batch holding a POISON image raises."""

    def __init__(self, max_batch: int):
        self.image_size, self.max_batch, self.gammas = SIZE, max_batch, list(GAMMAS)
        self.classes = {a.task: [f"c{i}" for i in range(K)] for a in APPS}
        self.ran: list[list[int]] = []
        self.started, self._go = threading.Semaphore(0), threading.Semaphore(0)

    def run(self, images, tasks, gamma):
        self.started.release()
        assert self._go.acquire(timeout=10), "the test never let the batch finish"
        self.ran.append([int(x[0, 0, 0]) for x in images])
        if any(x[0, 0, 0] == POISON for x in images):
            raise RuntimeError("poisoned batch")
        return RunResult(np.full((len(images), K), 1 / K, np.float32), 1.0)

    async def step(self) -> None:
        """Wait for a batch to start on the device, then let it finish."""
        assert await asyncio.to_thread(self.started.acquire, True, 10), "no batch started"
        self._go.release()


class Ends(Observer):
    def __init__(self):
        self.ends: Counter = Counter()

    def ended(self, app, outcome, reason="", served=None):
        self.ends[(outcome, reason)] += 1


def engine(max_batch: int, max_queue: int = 1000, plan_ahead: bool = False) -> tuple[Engine, Gate, Ends]:
    """An engine on the gated device; by default one batch at a time (`test_plan_ahead.py` tests the
    batch planned behind the running one)."""
    gate, obs = Gate(max_batch), Ends()
    sched = Scheduler(APPS, paced_profile(), "fixed:0", SchedulerConfig(max_batch=max_batch, max_queue=max_queue))
    return Engine(sched, gate, obs, plan_ahead=plan_ahead), gate, obs


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.mark.parametrize("n,poison", [(6, 2), (6, 0), (7, 5), (4, 3)])
def test_a_failed_image_fails_its_request_and_drops_the_rest(n, poison):
    async def main():
        eng, gate, obs = engine(max_batch=2)
        await eng.start()
        fut = eng.submit_many("blur", [img(POISON if i == poison else i + 1) for i in range(n)])
        for _ in range(poison // 2 + 1):  # batches up to and including the poisoned one
            await gate.step()
        with pytest.raises(NotServed) as e:
            await fut
        await settle()
        assert e.value.reason == "batch_failed" and eng.scheduler.queued() == 0
        await eng.stop()
        return gate, obs

    gate, obs = asyncio.run(main())
    assert not any(v == POISON for b in gate.ran[:-1] for v in b) and len(gate.ran) == poison // 2 + 1
    failed = len(gate.ran[-1])
    assert obs.ends == Counter({("error", "batch_failed"): failed, ("cancelled", "request_failed"): n - failed})
    assert sum(obs.ends.values()) == n and ("served", "") not in obs.ends  # the caller got no answer


def test_abandoned_request_leaves_the_queue():
    async def main():
        eng, gate, obs = engine(max_batch=2)
        await eng.start()
        other = eng.submit("lowlight", img(9))  # someone else's request, on the device first
        assert await asyncio.to_thread(gate.started.acquire, True, 10)
        fut = eng.submit_many("blur", [img(i + 1) for i in range(5)])
        await settle()
        fut.cancel()  # the client went away: its 5 images are all still queued
        await settle()
        queued_after = eng.scheduler.queued()
        gate._go.release()
        assert (await other).app == "lowlight"
        await eng.stop()
        return gate, obs, queued_after

    gate, obs, queued_after = asyncio.run(main())
    assert queued_after == 0 and gate.ran == [[9]]  # never planned
    assert obs.ends == Counter({("served", ""): 1, ("cancelled", "client_gone"): 5})


def test_abandoned_on_the_device_is_counted_cancelled():
    async def main():
        eng, gate, obs = engine(max_batch=2)
        await eng.start()
        fut = eng.submit_many("blur", [img(i + 1) for i in range(3)])
        assert await asyncio.to_thread(gate.started.acquire, True, 10)  # images 1 and 2 on the device
        fut.cancel()
        await settle()
        gate._go.release()
        await eng.stop()
        return gate, obs

    gate, obs = asyncio.run(main())
    assert gate.ran == [[1, 2]] and obs.ends == Counter({("cancelled", "client_gone"): 3})


def test_whole_request_answered_and_counted_once_delivered():
    async def main():
        eng, gate, obs = engine(max_batch=2)
        await eng.start()
        fut = eng.submit_many("blur", [img(i + 1) for i in range(5)])
        for _ in range(3):
            assert obs.ends[("served", "")] == 0  # deferred until the request is answered
            await gate.step()
        res = await fut
        await eng.stop()
        return res, obs

    res, obs = asyncio.run(main())
    assert len(res) == 5 and len({s.id for s in res}) == 5
    assert obs.ends == Counter({("served", ""): 5})


@pytest.mark.parametrize("n,room", [(5, 4), (16, 15), (2, 1)])
def test_request_without_room_for_all_is_refused_whole(n, room):
    async def main():
        eng, gate, obs = engine(max_batch=16, max_queue=room)
        await eng.start()
        with pytest.raises(NotServed) as e:
            eng.submit_many("blur", [img()] * n)
        queued = eng.scheduler.queued()
        fits = eng.submit_many("blur", [img()] * room)
        await gate.step()
        await fits
        await eng.stop()
        return e.value, queued, obs

    e, queued, obs = asyncio.run(main())
    assert e.reason == "queue_full" and queued == 0
    assert obs.ends == Counter({("rejected", "queue_full"): n, ("served", ""): room})


@pytest.mark.parametrize("n", [40, 100, 256])
def test_request_too_large_for_its_deadline_is_refused_before_anything_runs(n):
    async def main():
        eng, gate, obs = engine(max_batch=16)
        await eng.start()
        with pytest.raises(NotServed) as e:
            eng.submit_many("novel", [img()] * n)  # 400 ms SLO; 16 images take >= 156 ms at the fastest
        with pytest.raises(NotServed) as d:
            await eng.decode("novel", [b"not decoded"] * n)  # refused before decoding, too
        await eng.stop()
        return e.value, d.value, gate, obs

    e, d, gate, obs = asyncio.run(main())
    assert e.reason == d.reason == "infeasible" and "send fewer images" in e.detail and gate.ran == []
    assert obs.ends == Counter({("rejected", "infeasible"): 2 * n})


def test_client_gone_while_decoding_is_counted_cancelled():
    """Admitted, then abandoned before its images are decoded: counted once as `cancelled`
    (`client_gone`), like an abandoned request in the queue, and never queued."""

    async def main():
        eng, gate, obs = engine(max_batch=2)
        await eng.start()
        started = asyncio.Event()

        async def slow_decode(payloads, deadline=None, on_large=None):
            started.set()
            await asyncio.Event().wait()  # a decode that has not finished when the client leaves

        eng._decode.many = slow_decode
        task = asyncio.create_task(eng.decode("blur", [b"x"] * 3))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        queued = eng.scheduler.queued()
        await eng.stop()
        return obs, queued

    obs, queued = asyncio.run(main())
    assert queued == 0 and obs.ends == Counter({("cancelled", "client_gone"): 3})


def test_too_late_on_arrival_says_where_the_time_went():
    """A request whose upload took most of its SLO (a slow client, an `Expect: 100-continue` that
    waited) is refused `infeasible`, naming the time since its first byte, not blaming the host."""

    async def main():
        eng, gate, obs = engine(max_batch=2)
        await eng.start()
        slo = eng.apps["novel"].slo_ms
        with pytest.raises(NotServed) as e:
            await eng.decode("novel", [b"x"], arrival_ms=eng.now_ms() - slo + 1)
        await eng.stop()
        return e.value, slo

    err, slo = asyncio.run(main())
    assert err.reason == "infeasible" and "passed from its arrival" in err.detail
    assert f"{slo - 1:.0f} ms passed" in err.detail or f"{slo:.0f} ms passed" in err.detail


def test_slo_lowered_while_requests_are_queued():
    """An application's SLO lowered at run time while its requests wait (as PUT /v1/apps does): new
    requests are accepted and answered (planned no earlier than those queued before), not refused
    with an internal error because their deadlines come before the queued ones'."""
    from dataclasses import replace

    async def main():
        eng, gate, obs = engine(max_batch=2)
        await eng.start()
        first = eng.submit("lowlight", img(1))  # on the device
        assert await asyncio.to_thread(gate.started.acquire, True, 10)
        queued = [eng.submit("blur", img(2 + i)) for i in range(3)]  # blur's SLO: 1600 ms
        await settle()
        eng.set_apps([replace(a, slo_ms=a.slo_ms / 4) if a.name == "blur" else a for a in eng.apps.values()])
        late = [eng.submit("blur", img(10 + i)) for i in range(3)]  # deadlines before the queued ones'
        gate._go.release()
        for _ in range(3):  # six blur requests, two per batch
            await gate.step()
        res = await asyncio.gather(first, *queued, *late)
        await eng.stop()
        return res, obs

    res, obs = asyncio.run(main())
    assert len(res) == 7 and obs.ends[("served", "")] == 7


def test_slo_lowered_applies_once_the_queue_under_the_old_one_is_gone():
    """After the old-SLO requests are answered, a new request is planned on the new SLO alone (its
    deadline was held at the last old one's, up to the old SLO later, and a lowered SLO was ignored)."""
    from dataclasses import replace

    async def main():
        eng, gate, obs = engine(max_batch=2)
        await eng.start()
        gate._go.release()
        old = eng.submit("blur", img(1))
        await gate.step()
        await old
        slo = eng.apps["blur"].slo_ms / 4
        eng.set_apps([replace(a, slo_ms=slo) if a.name == "blur" else a for a in eng.apps.values()])
        t0 = eng.now_ms()
        new = eng.submit("blur", img(2))
        (queued,) = list(eng.scheduler.queues.iter_app("blur"))
        await gate.step()
        await new
        await eng.stop()
        return queued.deadline_ms - t0, slo

    planned, slo = asyncio.run(main())
    assert planned <= slo + 1  # the new SLO (less the engine's margin), not the old one
