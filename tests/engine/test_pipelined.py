"""A pipelined runner (`Runner.launch`: CUDA graphs with host I/O): the device thread queues a batch on the
device and is free to queue the next behind it, then reads each in launch order once it is done. Every
image still ends exactly once, whatever fails, and answers keep their order. The device is gated: nothing
depends on timing but the next batch coming within the running one's predicted time."""

import asyncio
import threading
from collections import Counter

import numpy as np
import pytest

from otas.adapt.fast import Launch
from otas.config import SchedulerConfig
from otas.engine.engine import Engine, NotServed, RunResult
from otas.sched.scheduler import Scheduler
from tests.engine.test_ledger import POISON, Ends, K, img
from tests.server.helpers import APPS, GAMMAS, SIZE, paced_profile

WAIT_POISON = POISON - 1
"""An image whose batch launches but fails when waited for."""


class PipeGate:
    """A device that queues batches at launch and finishes one per `finish()`; a batch holding a POISON
    image fails at launch, one holding a WAIT_POISON image when waited for."""

    pipelined = True

    def __init__(self, max_batch: int):
        self.image_size, self.max_batch, self.gammas = SIZE, max_batch, list(GAMMAS)
        self.classes = {a.task: [f"c{i}" for i in range(K)] for a in APPS}
        self.launched: list[list[int]] = []
        self.waited: list[list[int]] = []
        self.in_flight = 0  # launched, not yet waited for
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self.started, self._go = threading.Semaphore(0), threading.Semaphore(0)

    def run(self, images, tasks, gamma):  # as `Runner.run` of a pipelined runner: launched, waited for here
        return self.launch(images, tasks, gamma)()

    def launch(self, images, tasks, gamma):
        ids = [int(x[0, 0, 0]) for x in images]
        if POISON in ids:
            raise RuntimeError("poisoned launch")
        with self._lock:
            self.launched.append(ids)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.started.release()

        went = False  # the test let it finish (`finish`), seen by `ready` or the wait

        def ready():
            nonlocal went
            went = went or self._go.acquire(blocking=False)
            return went

        def wait():
            nonlocal went
            went = went or self._go.acquire(timeout=10)
            assert went, "the test never let the batch finish"
            with self._lock:
                self.waited.append(ids)
                self.in_flight -= 1
            if WAIT_POISON in ids:
                raise RuntimeError("poisoned wait")
            return RunResult(np.full((len(ids), K), 1 / K, np.float32), 1.0)

        return Launch(ready, wait)

    async def launches(self, n: int) -> None:
        """Wait until `n` more batches have been launched."""
        for _ in range(n):
            assert await asyncio.to_thread(self.started.acquire, True, 10), "no batch launched"

    def finish(self, n: int = 1) -> None:
        for _ in range(n):
            self._go.release()


def pipe_engine(max_batch: int) -> tuple[Engine, PipeGate, Ends]:
    gate, obs = PipeGate(max_batch), Ends()
    # (batches predicted at 120 ms: the next is handed over well before the running one's end, when the
    # device thread stops taking new ones and waits for it)
    sched = Scheduler(APPS, paced_profile(base_ms=100.0), "fixed:0", SchedulerConfig(max_batch=max_batch))
    return Engine(sched, gate, obs, plan_ahead=True), gate, obs


def test_the_next_batch_is_on_the_device_before_the_running_one_is_waited_for():
    async def main():
        eng, gate, obs = pipe_engine(max_batch=2)
        await eng.start()
        fut = eng.submit_many("blur", [img(i + 1) for i in range(6)])
        await gate.launches(2)  # batch 2 queued on the device behind batch 1, neither finished
        both = [list(x) for x in gate.launched]
        gate.finish()
        await gate.launches(1)
        gate.finish(2)
        res = await fut
        await eng.stop()
        return both, res, gate, obs

    both, res, gate, obs = asyncio.run(main())
    assert both == [[1, 2], [3, 4]]
    assert gate.launched == gate.waited == [[1, 2], [3, 4], [5, 6]]  # waited for in launch order
    assert gate.most_in_flight == 2
    assert [s.id for s in res] == sorted(s.id for s in res)
    assert obs.ends == Counter({("served", ""): 6})


@pytest.mark.parametrize("poison", [POISON, WAIT_POISON])
def test_a_batch_that_fails_at_launch_or_wait_fails_its_request_only(poison):
    async def main():
        eng, gate, obs = pipe_engine(max_batch=2)
        await eng.start()
        good = eng.submit_many("blur", [img(1), img(2)])
        bad = eng.submit_many("novel", [img(3), img(poison)])
        after = eng.submit_many("blur", [img(5), img(6)])
        gate.finish(3)  # (a batch that failed at launch takes none of these)
        results = await asyncio.gather(good, bad, after, return_exceptions=True)
        await eng.stop()
        return results, obs

    (good, bad, after), obs = asyncio.run(main())
    assert len(good) == 2 and len(after) == 2
    assert isinstance(bad, NotServed) and bad.reason == "batch_failed"
    assert obs.ends[("served", "")] == 4 and sum(obs.ends.values()) == 6


def test_stopping_answers_every_batch_in_flight_once():
    async def main():
        eng, gate, obs = pipe_engine(max_batch=2)
        await eng.start()
        futs = [eng.submit_many("blur", [img(2 * i + 1), img(2 * i + 2)]) for i in range(3)]
        await gate.launches(2)
        stop = asyncio.ensure_future(eng.stop())
        gate.finish(3)
        results = await asyncio.gather(*futs, return_exceptions=True)
        await stop
        return results, obs

    results, obs = asyncio.run(main())
    assert len(results) == 3 and sum(obs.ends.values()) == 6  # each image answered once, served or not
