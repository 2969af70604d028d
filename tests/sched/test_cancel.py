"""Scheduler.cancel: a request whose caller went away leaves the queue and is never planned; the
rest keep their order, so a fixed policy plans exactly what it would have without the cancelled ones."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otas.config import SchedulerConfig
from otas.sched import Scheduler
from otas.types import Request
from tests.factories import make_apps, make_profile

APPS = make_apps()


def _requests(n: int, seed: int) -> list[Request]:
    rng = np.random.default_rng(seed)
    apps = rng.integers(0, len(APPS), n)
    return [Request(i, APPS[a].name, i * 0.5, i * 0.5 + APPS[a].slo_ms) for i, a in enumerate(apps)]


def _plans(s: Scheduler, t: float = 30.0) -> list[list[int]]:
    out = []
    while (plan := s.next_batch(t)) is not None:
        out.append([r.id for r in plan.requests])
        s.complete(plan, t + 1, plan.predicted_ms)
    return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 10**6), data=st.data())
def test_cancelled_requests_are_never_planned(n, seed, data):
    reqs = _requests(n, seed)
    gone = set(data.draw(st.lists(st.integers(0, n + 5), max_size=n + 5)))  # some ids were never queued
    cfg = SchedulerConfig(max_batch=8, slo_class_tolerance=float(seed % 2))
    s, ref = Scheduler(APPS, make_profile(), "fixed:0", cfg), Scheduler(APPS, make_profile(), "fixed:0", cfg)
    for r in reqs:
        assert s.submit(r, 30.0) is None
        if r.id not in gone:
            ref.submit(r, 30.0)
    removed = s.cancel(gone)
    assert sorted(r.id for r in removed) == sorted(gone & set(range(n)))
    assert s.queued() == ref.queued() == n - len(removed)
    assert s.backlog() == ref.backlog()
    assert _plans(s) == _plans(ref)  # same batches, in the same order, as if never submitted


def test_cancel_after_planning_finds_nothing():
    s = Scheduler(APPS, make_profile(), "otas", SchedulerConfig(max_batch=4))
    for r in _requests(6, 0):
        s.submit(r, 0.0)
    plan = s.next_batch(1.0)
    planned = [r.id for r in plan.requests]
    assert s.cancel(planned) == [] and s.cancel([]) == []
    left = s.queued()
    assert len(s.cancel(range(100))) == left and s.queued() == 0 and s.next_batch(2.0) is None


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 65, 256])
def test_fastest_ms_covers_every_batch(n):
    s = Scheduler(APPS, make_profile(), "otas", SchedulerConfig(max_batch=8))
    one, full = s.fastest_ms(1), s.fastest_ms(8)
    assert s.fastest_ms(0) == 0.0 and one > 0
    assert s.fastest_ms(n) == pytest.approx((n // 8) * full + (s.fastest_ms(n % 8) if n % 8 else 0.0))
    assert s.fastest_ms(n) >= s.fastest_ms(n - 1)
