"""The online latency correction fits measured = factor × profiled + offset: a cost per batch is not
blown up in proportion to the batch, a slower device is a factor, and a device as profiled is left
exactly as profiled."""

import pytest

from otas.config import SchedulerConfig
from otas.sched.latency_fit import AffineFit
from otas.sched.scheduler import Scheduler
from otas.types import App, Request
from tests.factories import make_profile

SIZES = [0.5, 1.7, 5.6, 0.6, 2.9]  # profiled ms of batches of several sizes, in turn


def fitted(device, n: int = 80, a: float = 0.1) -> tuple[float, float]:
    fit = AffineFit()
    for i in range(n):
        x = SIZES[i % len(SIZES)]
        fit.observe(x, device(x), a)
    return fit.solve()


def test_a_cost_per_batch_is_an_offset_and_a_slower_device_a_factor():
    f, c = fitted(lambda x: x + 0.17)  # the device thread's copies and launches, per batch
    assert f == pytest.approx(1.0, abs=0.01) and c == pytest.approx(0.17, abs=0.01)
    f, c = fitted(lambda x: 1.3 * x)
    assert f == pytest.approx(1.3, abs=0.01) and c == pytest.approx(0.0, abs=0.03)
    f, c = fitted(lambda x: 1.1 * x + 0.2)
    assert f == pytest.approx(1.1, abs=0.01) and c == pytest.approx(0.2, abs=0.02)
    f, c = fitted(lambda x: 0.8 * x)  # faster than profiled: the factor alone (no negative offset)
    assert f == pytest.approx(0.8, abs=0.01) and c == 0.0


def test_as_profiled_is_exactly_the_profile():
    assert fitted(lambda x: x) == (1.0, 0.0)  # (the noise-free simulator decides as without any correction)
    assert AffineFit().solve() == (1.0, 0.0)


def test_one_size_alone_is_predicted_at_its_measured_time():
    fit = AffineFit()
    for _ in range(40):
        fit.observe(3.0, 4.5, 0.1)
    f, c = fit.solve()
    assert 3.0 * f + c == pytest.approx(4.5, rel=0.01) and f > 1.0 and c > 0.0  # (which part is which: unknown)


def test_the_scheduler_predicts_small_and_large_batches_from_one_fit():
    """A device slower than the profile by the same time per batch, at every size: a lone factor fitted to
    batches of several sizes overstates the large ones and understates the small (measured on one H100:
    0.49 → 0.65 ms at b = 1 but 5.6 → 5.8 ms at 256); the fit predicts each."""
    apps, p = [App("a", 1e6, 1.0, "novel")], make_profile()  # γ = 0: 60 / 350 / 2500 ms at b = 1 / 8 / 64
    got = {}
    for model in ("affine", "factor"):
        s = Scheduler(apps, p, "fixed:0", SchedulerConfig(max_batch=64, latency_model=model))
        rid = 0
        for i in range(200):
            n = (1, 8, 64)[i % 3]
            s.submit_many([Request(rid + k, "a", 0.0, 1e6) for k in range(n)], 0.0)
            rid += n
            plan = s.next_batch(0.0)
            s.complete(plan, 0.0, plan.meta["profiled_ms"] + 9.0)
        got[model] = [s.predict(s.model, 0, b) / (p.lat(0, b) + 9.0) for b in (1, 8, 64)]
    assert got["affine"] == pytest.approx([1.0, 1.0, 1.0], abs=0.02)
    assert got["factor"][0] < 0.95 and got["factor"][2] > 1.03


def test_a_bounded_factor_leaves_the_offset_fitted_beside_it():
    """A batch whose profile is tiny against a fixed cost (0.05 ms profiled, 0.6 measured): the factor the
    fit asks for is past the scheduler's bound; the offset is fitted again beside the bounded factor, so the
    prediction stays the measured time (clamping the factor alone predicted 0.47 ms, 20 % short)."""
    fit = AffineFit()
    for _ in range(300):
        fit.observe(0.05, 0.6, 0.1)
    f, c = fit.solve((0.25, 4.0))
    assert f == 4.0 and 0.05 * f + c == pytest.approx(0.6, rel=0.01)
    f, c = fit.solve((0.25, 4.0), max_offset_ms=0.1)  # and an offset at its bound: the factor at its own
    assert c == 0.1 and f == 4.0
