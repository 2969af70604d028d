import itertools
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from otas.config import SchedulerConfig
from otas.profile.table import Profile
from otas.sched.oracle import hull_increments, upper_bound
from otas.sim.simulator import run
from otas.sim.traces import Trace
from otas.types import App, Request
from tests.factories import make_apps, make_profile


def tiny_profile(lat_fast: float, lat_slow: float) -> Profile:
    return Profile(
        model="t",
        device="cpu",
        dtype="float32",
        gammas=[-8, 8],
        batch_sizes=[1, 2],
        accuracy={"x": {-8: 0.7, 8: 0.9}, "y": {-8: 0.5, 8: 0.95}},
        latency_ms={-8: {1: lat_fast, 2: 1.5 * lat_fast}, 8: {1: lat_slow, 2: 1.8 * lat_slow}},
    )


def best_schedule(reqs: list[Request], apps: dict[str, App], p: Profile, cap: int) -> float:
    """Exhaustive: every ordered sequence of disjoint batches (size ≤ cap) and gamma per batch,
    each batch starting as soon as the device is free and its members have arrived."""

    @cache
    def go(left: frozenset[int], free: float) -> float:
        best = 0.0
        for size in range(1, min(cap, len(left)) + 1):
            for batch in itertools.combinations(sorted(left), size):
                start = max(free, max(reqs[i].arrival_ms for i in batch))
                for g in p.gammas:
                    end = start + p.lat(g, size)
                    gain = sum(
                        apps[reqs[i].app].utility * p.acc(apps[reqs[i].app].task, g)
                        for i in batch
                        if end <= reqs[i].deadline_ms
                    )
                    best = max(best, gain + go(left - set(batch), end))
        return best

    return go(frozenset(range(len(reqs))), 0.0)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 30), st.sampled_from(["a", "b"])), min_size=1, max_size=4),
    st.floats(2, 10),
    st.floats(1.2, 3.0),
)
def test_bound_is_at_least_the_best_schedule(arrivals, lat_fast, slow_factor):
    apps = {"a": App("a", 12.0, 1.0, "x"), "b": App("b", 25.0, 2.0, "y")}
    p = tiny_profile(lat_fast, lat_fast * slow_factor)
    arrivals = sorted(arrivals)
    reqs = [Request(i, a, t, t + apps[a].slo_ms) for i, (t, a) in enumerate(arrivals)]
    cfg = SchedulerConfig(max_batch=2)
    opt = best_schedule(reqs, apps, p, 2)
    bound = upper_bound(reqs, list(apps.values()), p, cfg, windows=[20.0, 40.0, 80.0]).value
    assert bound >= opt - 1e-9


def test_hull_slopes_decrease():
    incs = hull_increments([(1.0, 0.8), (2.0, 0.9), (1.5, 0.5), (3.0, 1.2), (0.5, 0.1)])
    slopes = [dv / dc for dc, dv in incs]
    assert all(a > b for a, b in zip(slopes, slopes[1:], strict=False))


def test_bound_above_every_policy_in_simulation():
    apps, p = make_apps(), make_profile()
    import numpy as np

    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, 20_000, size=600))
    tr = Trace("r", t - t[0], [apps[i].name for i in rng.integers(0, 3, size=600)])
    cfg = SchedulerConfig()
    bound = upper_bound(tr.requests(apps), apps, p, cfg).value
    for name in ["otas", "otas-fifo", "fixed:-20", "fixed:16", "edf", "clipper"]:
        assert run(tr, apps, p, name, cfg).total_utility <= bound + 1e-6


def test_the_bound_costs_a_query_at_its_batchs_bucket_up_to_the_max_batch():
    """A padded path's best cost per query is read at the buckets, the last one B_max itself: with buckets
    (1, 64) and B_max 48, a batch of 48 costs lat(48), not lat(64) (what the file's last bucket would say)."""
    from otas.sched.oracle import options
    from tests.factories import make_profile

    plain = make_profile()  # timed at 1, 8, 64; linear between
    app = App("a", slo_ms=1e9, utility=1.0, task="novel")
    cfg = SchedulerConfig(max_batch=48)
    best = {c for c, _ in options(app, [plain.with_buckets([1, 64])], cfg)}
    assert best == {min(plain.lat(g, b) / b for b in (1, 48)) for g in plain.servable("novel")}
    read_at_64 = {min(plain.lat(g, 1), plain.lat(g, 64) / 48) for g in plain.servable("novel")}
    assert best.isdisjoint(read_at_64)
