"""The engine without HTTP: every accepted request ends exactly once, failures reach every caller."""

import asyncio

import numpy as np
import pytest

from otas.config import SchedulerConfig
from otas.engine.engine import Engine, NotServed, Observer
from otas.sched.scheduler import Scheduler
from tests.server.helpers import APPS, SIZE, PacedRunner, paced_profile


class Count(Observer):
    def __init__(self):
        self.ends: list[tuple[str, str]] = []
        self.batches = 0

    def ended(self, app, outcome, reason="", served=None):
        self.ends.append((outcome, reason))

    def batch(self, plan, measured_ms, runner_ms, queued):
        self.batches += 1


def _engine(runner, policy="otas", **cfg):
    sched = Scheduler(APPS, paced_profile(), policy, SchedulerConfig(max_batch=16, **cfg))
    obs = Count()
    return Engine(sched, runner, obs), obs


IMG = np.zeros((SIZE, SIZE, 3), np.uint8)


def test_serves_each_request_once_in_batches(paced):
    async def main():
        eng, obs = _engine(paced)
        await eng.start()
        futs = [eng.submit(APPS[i % 3].name, IMG) for i in range(30)]
        res = await asyncio.gather(*futs)
        await eng.stop()
        return res, obs

    res, obs = asyncio.run(main())
    assert sorted(s.id for s in res) == list(range(30))
    assert all(s.deadline_met and s.total_ms >= s.exec_ms > 0 and len(s.probs) == 5 for s in res)
    assert max(paced.sizes) > 1  # requests queued behind a busy device were batched
    assert [o for o, _ in obs.ends] == ["served"] * 30 and obs.batches == len(paced.sizes)
    assert sum(s.utility for s in res) > 0


def test_failed_batch_fails_every_caller(runner):
    async def main():
        eng, obs = _engine(PacedRunner(runner, paced_profile(), fail=True))
        await eng.start()
        res = await asyncio.gather(*[eng.submit("novel", IMG) for _ in range(5)], return_exceptions=True)
        await eng.stop()
        return res, obs

    res, obs = asyncio.run(main())
    assert all(isinstance(e, NotServed) and e.reason == "batch_failed" and "device on fire" in e.detail for e in res)
    assert [o for o, _ in obs.ends] == ["error"] * 5


def test_stop_serves_everything_queued_then_refuses(paced):
    async def main():
        eng, obs = _engine(paced)
        await eng.start()
        futs = [eng.submit("blur", IMG) for _ in range(40)]
        await asyncio.sleep(0.01)
        await eng.stop()  # graceful: the queue drains first
        assert all(f.done() for f in futs)
        with pytest.raises(NotServed, match="shutting down"):
            eng.submit("blur", IMG)
        return [f.result() for f in futs]

    assert len(asyncio.run(main())) == 40


def test_unknown_app_and_missing_task(paced):
    async def main():
        eng, _ = _engine(paced)
        await eng.start()
        with pytest.raises(NotServed, match="application 'x' is unknown"):
            eng.submit("x", IMG)
        await eng.stop()

    asyncio.run(main())
    paced.classes = {"novel": ["a", "b"]}
    with pytest.raises(ValueError, match="no head for tasks"):
        _engine(paced)


def test_expired_requests_are_answered_before_their_deadline(paced):
    """A burst the device cannot finish in time: the hopeless ones end as expired, none hang."""

    async def main():
        eng, obs = _engine(paced, "fixed:4")
        await eng.start()
        res = await asyncio.gather(*[eng.submit("novel", IMG) for _ in range(80)], return_exceptions=True)
        await eng.stop()
        return res

    res = asyncio.run(main())
    expired = [e for e in res if isinstance(e, NotServed)]
    assert expired and all(e.outcome == "expired" and e.reason == "deadline_unreachable" for e in expired)
    assert len(res) == 80
