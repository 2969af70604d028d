import gc
import math

import numpy as np
import pytest

from otas.config import SchedulerConfig
from otas.sched import Scheduler
from otas.sched.decayed import Decayed
from otas.sched.floor import FixedShadows
from otas.sched.policies import Otas
from otas.sim.simulator import run
from otas.sim.traces import at_load, capacity_per_s, synthetic
from otas.types import Request
from tests.factories import make_apps, make_profile

APPS = make_apps()


def _shadows(profile, cfg: SchedulerConfig, tau_ms: float, **kw) -> FixedShadows:
    s = Scheduler(APPS, profile, "fixed:0", cfg)  # its tables: the latencies the baselines run on
    m = profile.model
    lat = np.array([s.lat_vector(m, b) for b in range(cfg.max_batch + 1)])
    w = {a.name: s.weights(m, a.name) for a in APPS}
    ok = {a.name: s.servable(m, [a.name]) for a in APPS}
    return FixedShadows(APPS, profile.gammas, lat, w, ok, cfg.max_batch, tau_ms, **kw)


@pytest.mark.parametrize("kind", ["poisson", "mmpp", "step"])
@pytest.mark.parametrize("load", [0.5, 1.5, 4.0])
def test_each_shadow_earns_what_its_fixed_baseline_earns(kind, load):
    """A shadow is the `fixed:<γ>` baseline itself: with no decay its utility equals the simulator's
    run of that policy on the same arrivals, for every γ (prompted ones included, whose source-task
    queries fall back as the baseline's do), on light, heavy and bursty traces."""
    profile = make_profile(gammas=[-20, -8, 0, 8])
    cfg = SchedulerConfig(max_batch=64)
    trace = at_load(synthetic(kind, APPS, n=1500, seed=3), load, capacity_per_s(profile, APPS, 64))
    shadows = _shadows(profile, cfg, math.inf)
    for r in trace.requests(APPS):
        shadows.submit(r.app, r.arrival_ms, r.deadline_ms)
    shadows.cap(math.inf)  # runs every shadow to the end
    for g, shadow in zip(profile.gammas, shadows.shadows, strict=True):
        if g > 0:
            continue  # fixed:8 serves a source query's whole batch at γ 0: the shadow only the query
        sim = run(trace, APPS, profile, f"fixed:{g}", cfg).summary(APPS)["utility"]
        assert shadow.earned.value == pytest.approx(sim, rel=1e-9), g


def test_decayed_sum_weights_recent_utility():
    d = Decayed(10.0)
    d.add(1.0, 0.0)
    d.add(1.0, 10.0)
    assert d.at(10.0) == pytest.approx(1.0 + math.exp(-1))
    d.add(2.0, 0.0)  # dated before the last event: decayed to it
    assert d.at(20.0) == pytest.approx((1.0 + 3 * math.exp(-1)) * math.exp(-1))


def test_lagged_sum_counts_an_event_only_once_settled():
    """With a lag, an event dated t counts from t + lag on, and `at(t)` is the sum as of t − lag,
    whatever order the events came in."""
    d = Decayed(10.0, lag_ms=5.0)
    d.add(1.0, 3.0)  # dated at 3 ms, reported late
    d.add(1.0, 0.0)
    assert d.at(4.9) == 0.0 and d.total == 0.0
    assert d.at(5.0) == pytest.approx(1.0)  # the event at 0 ms is settled; the one at 3 ms is not yet
    assert d.at(15.0) == pytest.approx(math.exp(-1) + math.exp(-0.7))
    assert d.total == 2.0


def test_a_longer_queue_is_not_behind_for_answering_later():
    """Two fixed γ serve a burst fully on time, the accurate one with batches that take 5× longer. Judged
    as batches complete, the fast one leads while the accurate one's answers are still queued; judged
    on settled queries (each dated at its arrival and counted one loosest SLO later), the accurate one
    leads as soon as any query is settled, as it does over the whole run."""
    from otas.types import App

    apps = [App("a", 400.0, 1.0, "t")]
    lat = np.array([[0.0, 0.0]] + [[5.0 * b, 25.0 * b] for b in range(1, 5)])  # (B_max + 1, |Γ|): γ fast, slow
    w = {"a": np.array([0.8, 1.0])}  # the slow γ is the accurate one
    ok = {"a": np.array([True, True])}
    by_completion = FixedShadows(apps, [-20, 0], lat, w, ok, 4, 1e6)
    settled = FixedShadows(apps, [-20, 0], lat, w, ok, 4, 1e6, lag_ms=400.0)
    for shadows in (by_completion, settled):
        for i in range(12):
            shadows.submit("a", 10.0 * i, 10.0 * i + 400.0)
    now = 150.0  # the fast shadow has answered all 12; the accurate one 3 of them
    assert by_completion.cap(now) == 0
    assert [s.earned.total for s in by_completion.shadows] == pytest.approx([12 * 0.8, 3 * 1.0])
    settled.cap(now + 400.0)
    assert settled.cap(now + 400.0) == 1  # every query that arrived by `now` has its answer
    assert [s.settled.at(now + 400.0) > 0 for s in settled.shadows] == [True, True]
    settled.cap(math.inf)  # over the whole burst the accurate one earned more
    assert [s.earned.total for s in settled.shadows] == pytest.approx([12 * 0.8, 12 * 1.0])


def test_cap_only_when_a_fixed_gamma_earned_more():
    """No cap while the policy earns at least as much as every shadow; else the best shadow's γ."""
    profile = make_profile(gammas=[-20, 0])
    cfg = SchedulerConfig(max_batch=8)
    shadows = _shadows(profile, cfg, 1e6)
    assert shadows.cap(0.0) is None  # nothing earned by anyone
    for i in range(40):  # a burst only γ = -20 keeps up with
        shadows.submit("novel", float(i), float(i) + 500.0)
    assert shadows.cap(2_000.0) == 0
    earned = [s.earned.at(2_000.0) for s in shadows.shadows]
    assert earned[0] > earned[1] > 0
    shadows.credit(2_000.0, [(0.0, earned[0])])  # the policy earned as much as the best shadow
    assert shadows.cap(2_000.0) is None


def test_floor_keeps_the_policy_within_the_best_fixed_speed():
    """Under a cap no batch runs at a γ slower than the capped one (at that batch size)."""
    profile = make_profile()
    s = Scheduler(APPS, profile, Otas(), SchedulerConfig(max_batch=64))
    pol = s.policy
    assert pol._floor is not None
    trace = at_load(synthetic("poisson", APPS, n=600, seed=1), 3.0, capacity_per_s(profile, APPS, 64))
    reqs, i, now, capped = trace.requests(APPS), 0, 0.0, 0
    while i < len(reqs) or len(s.queues):
        while i < len(reqs) and reqs[i].arrival_ms <= now:
            s.submit(reqs[i], reqs[i].arrival_ms)
            i += 1
        plan = s.next_batch(now)
        if plan is None:
            now = reqs[i].arrival_ms if i < len(reqs) else now + 1.0
            continue
        if pol._cap is not None:
            capped += 1
            lat = s.lat_vector(s.model, plan.size)
            assert lat[profile.gammas.index(plan.gamma)] <= lat[pol._cap] or not np.isfinite(lat[pol._cap])
        s.complete(plan, now + plan.predicted_ms, plan.predicted_ms)
        now += plan.predicted_ms
    assert capped > 0


def test_paper_policy_has_no_floor():
    s = Scheduler(APPS, make_profile(), "otas-paper")
    assert s.policy._floor is None


def test_shadow_batches_within_memory_like_the_scheduler():
    """With a memory limit a shadow's batches stop where the profile's memory does, as the
    scheduler's do, and it still earns what its baseline earns."""
    profile = make_profile(gammas=[-20, 0], memory_mb=(100.0, 400.0, 3000.0))
    cfg = SchedulerConfig(max_batch=64, memory_limit_mb=500.0)
    trace = at_load(synthetic("mmpp", APPS, n=800, seed=5), 3.0, capacity_per_s(profile, APPS, 64))
    shadows = _shadows(profile, cfg, math.inf)
    assert [s.max_batch for s in shadows.shadows] == [
        max(b for b in range(1, 65) if profile.mem(g, b) <= 500.0) for g in profile.gammas
    ]
    for r in trace.requests(APPS):
        shadows.submit(r.app, r.arrival_ms, r.deadline_ms)
    shadows.cap(math.inf)
    for g, shadow in zip(profile.gammas, shadows.shadows, strict=True):
        sim = run(trace, APPS, profile, f"fixed:{g}", cfg).summary(APPS)["utility"]
        assert shadow.earned.value == pytest.approx(sim, rel=1e-9), g


@pytest.mark.parametrize("slo_b,fifo,per_class", [(200.0, 4.0, 2.0), (300.0, 4.0, 4.0)])
def test_class_shadows_batch_each_class_apart(slo_b, fifo, per_class):
    """With the policy's classes, a shadow never mixes them. Batches take 100 ms whatever their size;
    a query of `a` holds the device from 0 to 100 ms, while one of `a` (at 10 ms) and one of `b` (at
    20 ms) wait. The FIFO shadow then runs them as one batch (done at 200 ms); the class shadow runs
    `a`'s first (its head arrived first), then `b`'s (done at 300 ms), which makes b's deadline only
    with an SLO of 280 ms or more."""
    from otas.types import App

    apps = [App("a", 250.0, 1.0, "t"), App("b", slo_b, 2.0, "t")]
    lat = np.array([[0.0]] + [[100.0]] * 4)  # (B_max + 1, |Γ|): flat in the batch
    w = {"a": np.array([1.0]), "b": np.array([2.0])}
    ok = {"a": np.array([True]), "b": np.array([True])}
    for classes, want in ((None, fifo), ([["a"], ["b"]], per_class)):
        shadows = FixedShadows(apps, [0], lat, w, ok, 4, math.inf, classes)
        for app, t in (("a", 0.0), ("a", 10.0), ("b", 20.0)):
            shadows.submit(app, t, t + (250.0 if app == "a" else slo_b))
        shadows.cap(math.inf)
        assert shadows.shadows[0].earned.value == want, classes


@pytest.mark.parametrize("free_share,follow_share,mostly_following", [(0.8, 0.2, False), (0.3, 0.9, True)])
def test_following_the_shadow_is_tried_and_kept_only_while_it_pays(free_share, follow_share, mostly_following):
    """Behind the best shadow, the policy may run as that shadow does (`follow`). Each mode is judged by
    what the policy earned in it against the leading shadow; the better one is kept, and the other
    is tried again once its evidence is about a window old. Here the policy earns a fixed share of
    the leader's utility in each mode, always less than it (so the floor stays on)."""
    profile = make_profile(gammas=[-20, 0])
    cfg = SchedulerConfig(max_batch=8)
    shadows = _shadows(profile, cfg, 2_000.0, follow=True)
    rng = np.random.default_rng(0)
    arrivals = np.cumsum(rng.exponential(30.0, 2_000))  # ms
    modes, i, lead_total = [], 0, 0.0
    for now in np.arange(0.0, arrivals[-1], 20.0):
        while i < len(arrivals) and arrivals[i] <= now:
            shadows.submit("novel", arrivals[i], arrivals[i] + 500.0)
            i += 1
        if shadows.cap(now) is not None:  # (None until a shadow's first batch completes)
            modes.append(shadows.following)
        best = max(sh.earned.total for sh in shadows.shadows)
        shadows.credit(now, [(now, (follow_share if shadows.following else free_share) * (best - lead_total))])
        lead_total = best
    share = np.mean(modes[len(modes) // 4 :])  # after the first comparisons
    assert 0.0 < share < 1.0  # both modes are tried again, now and then
    assert (share > 0.7) if mostly_following else (share < 0.3)


def test_shadows_run_at_the_measured_speed():
    """Shadows take the scheduler's latency correction: on a host twice as slow as the profile, a
    fixed γ finishes its batches twice as late, and earns what it would there, not on the profile."""
    profile = make_profile(gammas=[-20, 0])
    cfg = SchedulerConfig(max_batch=8)
    earned = {}
    for scale in (1.0, 2.0):
        shadows = _shadows(profile, cfg, math.inf)
        shadows.cap(0.0, scale)
        for i in range(200):  # one every 20 ms, 200 ms to spare: slack for γ = -20 at 1×, not at 2×
            shadows.submit("novel", 20.0 * i, 20.0 * i + 200.0)
        shadows.cap(math.inf, scale)
        earned[scale] = [s.earned.value for s in shadows.shadows]
        assert all(s.scale == scale for s in shadows.shadows)
    assert all(slow <= fast for slow, fast in zip(earned[2.0], earned[1.0], strict=True))
    assert sum(earned[2.0]) < sum(earned[1.0])


def test_a_request_of_many_queries_is_batched_as_queries_that_arrived_together():
    """A shadow takes a request's n queries as one entry and splits it where a batch is full: batches of
    4, 4 and 2 back to back (16, 16 and 12 ms); with a deadline at 20 ms, the rest of the request is
    hopeless after the first batch and dropped whole, as the scheduler drops it."""
    from otas.sched.floor import _Shadow

    lat = np.array([0.0, 10.0, 12.0, 14.0, 16.0])  # ms at batch sizes 0..4
    shadow = _Shadow(lat, max_batch=4, tau_ms=math.inf)
    shadow.submit(0.0, 1000.0, 0.5, n=10)
    shadow.advance(math.inf)
    assert shadow.free == 44.0 and shadow.earned.total == pytest.approx(5.0)
    shadow = _Shadow(lat, max_batch=4, tau_ms=math.inf)
    shadow.submit(0.0, 20.0, 0.5, n=10)
    shadow.advance(math.inf)
    assert shadow.free == 16.0 and shadow.earned.total == pytest.approx(2.0) and not shadow.queues[0]


@pytest.mark.parametrize("planned", [False, True])
def test_the_floor_judges_the_policys_batch_when_its_results_came_back(planned):
    """A batch whose results came back after its deadline earns the policy nothing in the floor's
    comparison, though it was on time as planned; `floor_planned=True` judges it as planned instead,
    as the shadows' batches are judged (an ablation, docs/scheduler.md)."""
    s = Scheduler(APPS, make_profile(gammas=[-20, 0]), Otas(floor_planned=planned), SchedulerConfig(max_batch=8))
    app = APPS[0].name
    s.submit_many([Request(i, app, 0.0, 50.0) for i in range(4)], 0.0)
    plan = s.next_batch(0.0)
    assert plan.start_ms + plan.predicted_ms <= 50.0  # on time as planned
    back = 60.0  # the results came back after the deadline
    s.complete(plan, back, back - plan.start_ms, plan.predicted_ms)
    assert (s.policy._floor.earned.at(back) > 0) is planned


def test_an_overloaded_shadow_leaves_the_cyclic_gc_nothing_to_scan():
    """Under overload a FIFO shadow holds every query within the loosest SLO, |Γ| times over; its entries are
    plain numbers, which the cyclic GC stops tracking, so a full collection (a pause of the server's event
    loop) does not grow with the backlog (as lists they made each one scan millions of objects)."""
    profile = make_profile(gammas=[-20, -8, 0, 8])
    shadows = _shadows(profile, SchedulerConfig(max_batch=64), 1000.0)
    for i in range(20_000):  # 20 queries per ms: far beyond any γ's capacity
        a = APPS[i % len(APPS)]
        shadows.submit(a.name, i / 20, i / 20 + a.slo_ms * 100)
    shadows.cap(1000.0)
    held = sum(len(q) for s in shadows.shadows for q in s.queues)
    assert held > 40_000  # the backlog is there
    gc.collect()
    tracked = {id(o) for o in gc.get_objects()}
    assert not any(id(e) in tracked for s in shadows.shadows for q in s.queues for e in q)


def test_requests_whose_callers_left_are_withdrawn_from_the_shadows():
    """Clients that send and hang up: their queries leave the policy's queue unserved (`Scheduler.cancel`), and
    every shadow gives them up too, so the shadows earn no more than the policy could and the floor stays off (the
    shadows kept and credited them, and the floor capped every tenant at a fast γ)."""
    s = Scheduler(APPS, make_profile(), Otas(), SchedulerConfig(max_batch=64))
    fl, novel, blur = s.policy._floor, APPS[0], APPS[2]
    assert s.submit(Request(10_000, blur.name, 0.0, blur.slo_ms), 0.0) is None  # one request: the device busy
    plan = s.next_batch(0.0)
    for i in range(40):  # then 40 requests of 8 images, 1 ms apart, each abandoned before any device was free
        t = 1.0 + i
        assert s.submit_many([Request(8 * i + k, novel.name, t, t + novel.slo_ms) for k in range(8)], t) is None
    assert len(s.cancel(range(320), novel.name)) == 320 and s.queued() == 0
    assert all(not q for sh in fl.shadows for q in sh.queues)  # every shadow gave them up
    s.complete(plan, plan.predicted_ms, plan.predicted_ms)
    assert fl.cap(2_000.0) is None  # the shadows earned the first request, as the policy did
