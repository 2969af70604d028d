import math

import pytest

from otas.config import SchedulerConfig
from otas.sched import Scheduler, make_policy
from otas.types import App, Reason, Request
from tests.factories import make_apps, make_profile, make_request, make_small_profile

APPS = make_apps()
NOVEL = APPS[0]


def test_early_rejection_with_reason():
    s = Scheduler(APPS, make_profile(), "otas")
    rej = s.submit(Request(1, "novel", 0.0, 10.0), now_ms=0.0)  # 10 ms < 20 ms at gamma -20
    assert rej is not None and rej.reason is Reason.INFEASIBLE and "fastest" in rej.detail
    assert s.submit(make_request(2, NOVEL, 0.0), 0.0) is None


def test_best_effort_keeps_infeasible_queries():
    s = Scheduler(APPS, make_profile(), "otas", SchedulerConfig(reject_infeasible=False))
    assert s.submit(Request(1, "novel", 0.0, 10.0), 0.0) is None
    plan = s.next_batch(0.0)
    assert plan is not None and plan.size == 1 and s.expired(0.0) == []


def test_expiry_while_queued_and_queue_full():
    s = Scheduler(APPS, make_profile(), "fixed:0", SchedulerConfig(max_queue=2))
    assert s.submit(make_request(1, NOVEL, 0.0), 0.0) is None
    assert s.submit(make_request(2, NOVEL, 1.0), 1.0) is None
    full = s.submit(make_request(3, NOVEL, 2.0), 2.0)
    assert full is not None and full.reason is Reason.QUEUE_FULL
    gone = s.expired(460.0)  # 40 ms left < 60 ms at gamma 0, batch 1
    assert [r.id for r, _ in gone] == [1, 2] and gone[0][1] == Reason.DEADLINE_UNREACHABLE.value
    assert s.next_batch(460.0) is None and s.next_wakeup(460.0) is None


def test_unknown_app_and_bad_policy_names():
    s = Scheduler(APPS, make_profile(), "otas")
    with pytest.raises(ValueError, match="unknown application"):
        s.submit(Request(1, "nope", 0.0, 100.0), 0.0)
    with pytest.raises(ValueError, match="valid names: otas"):
        make_policy("fastest")
    with pytest.raises(ValueError, match="fixed:<integer gamma>"):
        make_policy("fixed:x")
    with pytest.raises(ValueError, match="not in the profile's set"):
        Scheduler(APPS, make_profile(), "fixed:3")
    with pytest.raises(ValueError, match="offline bound"):
        Scheduler(APPS, make_profile(), "oracle")


def test_max_queue_delay_holds_then_releases():
    s = Scheduler(APPS, make_profile(), "fixed:0", SchedulerConfig(max_queue_delay_ms=5.0))
    s.submit(make_request(1, NOVEL, 0.0), 0.0)
    assert s.next_batch(1.0) is None and s.next_wakeup(1.0) == 5.0
    plan = s.next_batch(5.0)
    assert plan is not None and plan.size == 1 and plan.start_ms == 5.0


@pytest.mark.parametrize("policy", ["fixed:0", "otas"])
def test_max_queue_delay_never_holds_a_batch_past_its_deadline(policy):
    """A hold longer than the SLO ends when the most urgent member could only just make it at the
    fastest setting: the batch then runs and is on time, instead of expiring while held."""
    s = Scheduler(APPS, make_profile(), policy, SchedulerConfig(max_queue_delay_ms=1e9))
    req = make_request(1, NOVEL, 0.0)
    s.submit(req, 0.0)
    latest = req.deadline_ms - s.fastest_ms(1)
    assert s.next_batch(1.0) is None and s.next_wakeup(1.0) == pytest.approx(latest)
    plan = s.next_batch(latest)
    assert plan is not None and [r.id for r in plan.requests] == [1]
    assert plan.start_ms + plan.predicted_ms <= req.deadline_ms + 1e-9
    assert not s.expired(latest)


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_max_queue_delay_must_be_finite(bad):
    with pytest.raises(ValueError, match="max_queue_delay_ms"):
        SchedulerConfig(max_queue_delay_ms=bad)
    with pytest.raises(ValueError, match="max_batch"):
        SchedulerConfig(max_batch=10**8)


def test_online_latency_correction():
    s = Scheduler(APPS, make_profile(), "fixed:0", SchedulerConfig(latency_ewma=0.5))
    s.submit(make_request(1, APPS[2], 0.0), 0.0)
    plan = s.next_batch(0.0)
    assert plan.predicted_ms == pytest.approx(60.0)
    s.complete(plan, 120.0, measured_ms=120.0)  # twice as slow as profiled: part of the way at once ...
    assert 80.0 < s.predict(s.model, 0, 1) < 110.0
    for _ in range(20):
        plan = s.next_batch(0.0) or (s.submit(make_request(2, APPS[2], 0.0), 0.0), s.next_batch(0.0))[1]
        s.complete(plan, 120.0, measured_ms=120.0)
    assert s.predict(s.model, 0, 1) == pytest.approx(120.0, rel=0.01)  # ... and all of it as it goes on
    f = Scheduler(APPS, make_profile(), "fixed:0", SchedulerConfig(latency_ewma=0.5, latency_model="factor"))
    f.submit(make_request(1, APPS[2], 0.0), 0.0)
    f.complete(f.next_batch(0.0), 120.0, measured_ms=120.0)
    assert f.predict(f.model, 0, 1) == pytest.approx(90.0)  # the factor alone: an EWMA of measured / profiled


def test_memory_limit_caps_batch():
    p = make_profile(memory_mb=(100.0, 400.0, 3000.0))
    cfg = SchedulerConfig(memory_limit_mb=400.0 * 0.34 + 1)  # batch 8 fits only at gamma -20
    s = Scheduler(APPS, p, "otas", cfg)
    for i in range(30):
        s.submit(make_request(i, APPS[2], 0.0), 0.0)
    plan = s.next_batch(0.0)
    assert plan.size == 8 and plan.gamma == -20
    s = Scheduler(APPS, p, "fixed:0", cfg)  # at gamma 0 only batch 1 fits
    s.submit(make_request(0, APPS[2], 0.0), 0.0)
    s.submit(make_request(1, APPS[2], 0.0), 0.0)
    assert s.next_batch(0.0).size == 1


def test_model_switch_pays_load_delay():
    s = Scheduler(APPS, [make_small_profile(), make_profile()], "model-switch")
    for i in range(300):  # 100 queries/s: far above the small model's throughput
        s.submit(make_request(i, APPS[2], i * 10.0), i * 10.0)
    plan = s.next_batch(3000.0)
    assert plan.model == "vit_tiny_handmade" and plan.switch_ms == 80.0
    assert plan.predicted_ms == pytest.approx(80.0 + make_profile().lat(0, plan.size))


def test_resident_model_switch_swaps_for_free():
    """With every model in device memory, the same swap as above costs nothing; the choice is the same."""
    s = Scheduler(APPS, [make_small_profile(), make_profile()], "model-switch:resident")
    assert s.policy.name == "model-switch:resident"
    for i in range(300):
        s.submit(make_request(i, APPS[2], i * 10.0), i * 10.0)
    plan = s.next_batch(3000.0)
    assert plan.model == "vit_tiny_handmade" and plan.switch_ms == 0.0
    assert plan.predicted_ms == pytest.approx(make_profile().lat(0, plan.size))


@pytest.mark.parametrize("first", [1, 20, 199])
def test_model_switch_stays_without_history(first):
    """With fewer arrivals than its window the load is unknown: no swap (a swap on the first query
    of a trace cost every query of a sub-second GPU trace its deadline)."""
    better = make_profile("vit_better_handmade", (9.0, 40.0, 300.0), acc_shift=0.05, model_load_ms=1500.0)
    s = Scheduler(APPS, [make_profile(), better], "model-switch")
    for i in range(first):
        s.submit(make_request(i, APPS[2], i * 1000.0), i * 1000.0)
    plan = s.next_batch(first * 1000.0)
    assert plan.model == "vit_tiny_handmade" and plan.switch_ms == 0.0


def test_model_switch_takes_the_fastest_model_when_none_keeps_up():
    """A slower and less accurate model is never the fallback under overload, whatever the ranking."""
    worse_slower = make_profile("vit_slow_handmade", (200.0, 1200.0, 8500.0), acc_shift=-0.04, model_load_ms=250.0)
    s = Scheduler(APPS, [make_profile(), worse_slower], "model-switch")
    for i in range(600):  # 1,000 queries/s: above both models' throughput
        s.submit(make_request(i, APPS[2], i * 1.0), i * 1.0)
    assert s.next_batch(600.0).model == "vit_tiny_handmade"


def test_config_errors_show_value_and_fix():
    with pytest.raises(ValueError, match=r"lookahead=0: use an integer >= 1"):
        SchedulerConfig(lookahead=0)
    with pytest.raises(ValueError, match="slo_class_tolerance=-1"):
        SchedulerConfig(slo_class_tolerance=-1)


@pytest.mark.parametrize("policy", ["fixed:4", "fixed:16", "otas", "otas-fifo", "otas-greedy"])
def test_unservable_pairs_are_never_planned(policy):
    """The source task has no prompts: no batch holding a source query runs at γ > 0, whatever the
    policy, and other applications still get γ > 0 where it pays (light load, loose SLOs)."""
    from otas.types import App

    apps = [App("src", 3000.0, 1.0, "source"), App("nov", 3000.0, 1.0, "novel")]
    prof = make_profile()
    assert prof.servable("source") == [g for g in prof.gammas if g <= 0]
    s = Scheduler(apps, prof, policy, SchedulerConfig(max_batch=4, slo_class_tolerance=0.5))
    t, i, gammas = 0.0, 0, {"src": set(), "nov": set()}
    for i in range(40):
        s.submit(make_request(i, apps[i % 2], t), t)
        if i % 3 == 2:
            while (plan := s.next_batch(t)) is not None:
                for r in plan.requests:
                    gammas[r.app].add(plan.gamma)
                t += plan.predicted_ms
                s.complete(plan, t, plan.predicted_ms)
        t += 20.0
    assert gammas["src"] and max(gammas["src"]) <= 0
    if policy.startswith("fixed:"):
        assert gammas["nov"] == {int(policy[6:])} or max(gammas["nov"]) <= 0  # mixed batches fall back


def test_profile_accuracy_rows_declare_servable_pairs():
    prof = make_profile()
    with pytest.raises(ValueError, match="not served at gamma=4"):
        prof.acc("source", 4)
    assert prof.restrict([-8, 0, 4]).servable("source") == [-8, 0]


def NO_FLOOR():  # noqa: N802
    """otas without its floor, for cases set up with arrivals the policy never ran (the floor's
    shadows would have served them, and the policy, behind them, would run as a fixed γ)."""
    from otas.sched.policies import Otas

    return Otas(name="otas", floor=False)


def test_otas_runs_the_urgent_class_first_when_the_other_can_wait():
    """A big loose-SLO backlog arrived first; a tight-SLO batch arrives just after. In arrival order
    (otas-paper) the tight batch waits behind the big one and misses; otas runs it first."""
    from otas.types import App

    apps = [App("tight", 500.0, 1.0, "novel"), App("loose", 4000.0, 1.0, "blur")]
    first_app = {}
    for policy in (lambda: make_policy("otas-paper"), NO_FLOOR):
        s = Scheduler(apps, make_profile(), policy(), SchedulerConfig(max_batch=64))
        s.policy.on_submit(make_request(99, apps[1], -60_000.0), -60_000.0)  # up for a minute, all served
        for i in range(64):
            assert s.submit(make_request(i, apps[1], 0.0), 0.0) is None
        for i in range(64, 72):
            assert s.submit(make_request(i, apps[0], 10.0), 10.0) is None
        first_app[s.policy.name] = s.next_batch(10.0).requests[0].app
    assert first_app == {"otas-paper": "loose", "otas": "tight"}


def test_otas_mixes_classes_on_a_flat_device_while_it_keeps_up():
    """On a device whose batch latency is nearly flat (a GPU), two classes each one batch away
    from their deadlines are better served together than in turn; otas-paper never mixes."""
    from otas.types import App

    flat = make_profile(base_ms=(10.0, 10.5, 12.0), gammas=[0, 4, 8, 16], device="flat (hand-made)")
    apps = [App("tight", 15.0, 1.0, "novel"), App("loose", 18.0, 1.0, "blur")]  # one batch of slack each
    mixed = {}
    for policy in ("otas-paper", "otas"):
        # a long rate window: eight arrivals are light load, so the price stays 0
        s = Scheduler(apps, flat, policy, SchedulerConfig(max_batch=64, rate_window=100.0))
        for i in range(8):
            assert s.submit(make_request(i, apps[i % 2], 0.0), 0.0) is None
        plan = s.next_batch(0.0)
        mixed[policy] = len({r.app for r in plan.requests}) > 1
    assert mixed == {"otas-paper": False, "otas": True}


def test_otas_mixes_classes_when_one_class_alone_fills_a_batch():
    """A loose class with more than B_max queued, its first 12 due within one batch, and a tight,
    more valuable class due as soon: one shared batch in deadline order serves both, where in turn one
    of them misses. The shared batch is planned although the loose class's own batch is already B_max
    (it once was not: a saturated class then blocked the tight one for good, docs/scheduler.md)."""
    from otas.types import App

    flat = make_profile(base_ms=(10.0, 10.5, 12.0), gammas=[0, 4, 8, 16], device="flat (hand-made)")
    tight, loose = App("tight", 15.0, 5.0, "novel"), App("loose", 200.0, 1.0, "blur")
    s = Scheduler([tight, loose], flat, "otas", SchedulerConfig(max_batch=16, rate_window=100.0))
    for i in range(40):  # the first 12 are due at 14 ms, the others at 100 ms
        t = -186.0 if i < 12 else -100.0
        assert s.submit(make_request(i, loose, t), t) is None
    for i in range(40, 44):
        assert s.submit(make_request(i, tight, 0.0), 0.0) is None
    plan = s.next_batch(0.0)
    assert sorted(r.id for r in plan.requests) == [*range(12), *range(40, 44)]


def test_otas_shares_batches_when_classes_in_turn_cannot_keep_up():
    """Four classes with slack for a batch each: in turn, with γ = 16 for every class, the plan
    earns the most, but four batches take four times the device time of one shared batch, and
    queries arrive faster than the turns serve them. Valued at the rate each way sustains, otas
    shares the batch; at light load (the same queue, arrivals long ago) it runs them in turn."""
    from otas.types import App

    flat = make_profile(base_ms=(10.0, 10.5, 12.0), gammas=[0, 4, 8, 16], device="flat (hand-made)")
    apps = [App(f"a{k}", 60.0 + 10 * k, 1.0, "novel") for k in range(4)]
    mixed = {}
    for busy in (True, False):
        s = Scheduler(apps, flat, NO_FLOOR(), SchedulerConfig(max_batch=64, rate_window=0.2))
        t0 = 0.0 if busy else -1000.0  # the rate estimate decays over 0.2 × 90 ms
        for i in range(40):  # 2 a ms, round-robin over the classes
            t = t0 + i / 2
            assert s.submit(Request(i, apps[i % 4].name, t, 20.0 + apps[i % 4].slo_ms), t) is None
        plan = s.next_batch(20.0)
        mixed[busy] = len({r.app for r in plan.requests}) > 1
    assert mixed == {True: True, False: False}


def test_head_cap_protects_only_applications_worth_their_device_time():
    """A tight application worth almost nothing beside a loose valuable one. While the device is idle
    (price 0) its arrivals cap the length of a batch; once the price rises above what it earns per
    ms of device time, it is not served in the fluid solution and no longer caps anyone's batch."""
    from otas.types import App

    apps = [App("tight", 400.0, 0.001, "novel"), App("loose", 8000.0, 1.0, "blur")]
    caps = {}
    for loose_gap, tight_gap in ((400, 100), (40, 10)):  # ms between arrivals: light, then busy
        s = Scheduler(apps, make_profile(), "otas", SchedulerConfig(max_batch=64, rate_window=0.5))
        for i, t in enumerate(range(2000)):
            for app, gap in (("loose", loose_gap), ("tight", tight_gap)):
                if t % gap == 0:
                    s.submit(Request(2 * i + (app == "tight"), app, t, t + s.apps[app].slo_ms), t)
        p = s.policy
        mu = p._price.price(2000.0, s.backlog(), s.latency_factor(s.model))
        caps[loose_gap] = (mu > 0, p._price.served.tolist(), p._head_cap(2000.0, s, False))
    assert caps[400][:2] == (False, [True, True]) and caps[400][2] < 64
    assert caps[40] == (True, [False, True], 64)


@pytest.mark.parametrize("blocked", ["batched", "own", "all"])
def test_head_cap_of_a_shared_batch_counts_every_class_arrivals(blocked):
    """A device that pads to buckets (a batch of 129-256 costs 1.9 ms, of 65-128 1.0 ms) and three applications
    arriving at 30 queries/ms each, the tightest with a 3.2 ms SLO. Its query blocked by a batch of 256 waits
    1.9 ms; in a batch of its own class it then runs with the 57 of its application that arrived meanwhile
    (0.75 ms: on time), but in a batch the classes share, with the 171 of all three (1.9 ms: late). "batched"
    lets a per-class plan run 256 at once and a shared one only 128; "own" counts its own application's
    arrivals in both, "all" (the default) every application's in both."""
    apps = [App("tight", 3.2, 1.0, "novel"), App("mid", 9.0, 1.0, "novel"), App("loose", 45.0, 1.0, "novel")]
    prof = make_profile(base_ms=(0.5, 1.0, 1.9), batch_sizes=(1, 128, 256), gammas=[0], device="flat (hand-made)")
    prof = prof.with_buckets([1, 2, 4, 8, 16, 32, 64, 128, 256])
    policy = make_policy("otas", blocked=blocked)
    s = Scheduler(apps, prof, policy, SchedulerConfig(max_batch=256))
    price = policy._price
    price._t0, price._t = -1e9, 0.0  # a long history: the rates read as set
    price._rate[:] = 30.0
    caps = (policy._head_cap(0.0, s, False), policy._head_cap(0.0, s, True))
    assert caps == {"batched": (256, 128), "own": (256, 256), "all": (128, 128)}[blocked]


def test_otas_rejects_an_unknown_blocked_model():
    with pytest.raises(ValueError, match="blocked='every'"):
        make_policy("otas", blocked="every")


def _oldest_then_behind(policy: str, max_batch: int, behind: int) -> Scheduler:
    """A novel query at 0 ms, then `behind` more at 100 ms: by 400 ms the oldest can make it alone, not in a batch."""
    s = Scheduler(APPS, make_profile(), policy, SchedulerConfig(max_batch=max_batch))
    assert s.submit(make_request(0, NOVEL, 0.0), 0.0) is None
    for i in range(1, behind + 1):
        assert s.submit(make_request(i, NOVEL, 100.0), 100.0) is None
    return s


@pytest.mark.parametrize("policy", ["otas", "otas-paper"])
def test_members_a_batch_would_finish_late_expire_instead(policy):
    """The oldest query could still make it alone, but not in the batch that serves the seven
    behind it: it expires now with a reason rather than being served late."""
    s = _oldest_then_behind(policy, max_batch=64, behind=7)
    plan = s.next_batch(400.0)
    assert [r.id for r in plan.requests] == list(range(1, 8))
    assert 400.0 + plan.predicted_ms <= plan.deadline_ms
    assert [(r.id, why) for r, why in s.expired(400.0)] == [(0, Reason.DEADLINE_UNREACHABLE.value)]


@pytest.mark.parametrize("policy", ["otas", "otas-paper", "otas-fifo"])
def test_a_batch_that_drops_late_members_takes_the_queries_queued_next(policy):
    """As above, with more queued behind the batch (cap 8): the batch runs at the size the policy chose,
    the oldest query's place taken by the next one queued, on time; the rest stay queued."""
    s = _oldest_then_behind(policy, max_batch=8, behind=11)
    plan = s.next_batch(400.0)
    assert [r.id for r in plan.requests] == list(range(1, 9))
    assert 400.0 + plan.predicted_ms <= plan.deadline_ms
    assert [(r.id, why) for r, why in s.expired(400.0)] == [(0, Reason.DEADLINE_UNREACHABLE.value)]
    assert s.queued() == 3
    assert [r.id for r in s.next_batch(400.0 + plan.predicted_ms).requests] == [9, 10, 11]


def test_a_batch_takes_in_only_queries_that_end_on_time_with_it():
    """The query queued next would end late in the batch, as the oldest would: the batch runs smaller rather
    than with it, and it stays queued (to expire, or run alone at a faster setting)."""
    s = Scheduler(APPS, make_profile(), "otas-fifo", SchedulerConfig(max_batch=8))
    assert s.submit(make_request(0, NOVEL, 0.0), 0.0) is None
    for i in range(1, 8):
        assert s.submit(make_request(i, APPS[2], 5.0), 5.0) is None  # blur: 2 s SLO
    assert s.submit(make_request(8, NOVEL, 10.0), 10.0) is None  # due at 510, before the batch ends
    plan = s.next_batch(400.0)
    assert 0 not in [r.id for r in plan.requests] and 8 not in [r.id for r in plan.requests]
    assert plan.size == 7 and s.queued() == 1


def test_a_batch_takes_in_no_query_that_would_make_its_members_late_where_latency_dips():
    """A profile whose latency dips as the batch grows (4 profiled faster than 3, as measured profiles may): the
    batch of two members due at 29.5 ms takes the two queries queued next (a batch of 4: 29 ms), not one (a
    batch of 3: 30 ms, which would end both members late). `Scheduler._refill` directly: the batch as
    `_drop_late` left it, popped, and the queue behind it."""
    apps = [App("a", 1000.0, 1.0, "novel")]
    prof = make_profile(base_ms=(10.0, 20.0, 30.0, 29.0, 400.0), batch_sizes=(1, 2, 3, 4, 64), gammas=[0])
    s = Scheduler(apps, prof, "otas", SchedulerConfig(max_batch=8))
    assert [s.predict(prof.model, 0, b) for b in (2, 3, 4)] == [20.0, 30.0, 29.0]
    s.queues.push_many([Request(2, "a", 0.0, 1000.0), Request(3, "a", 0.0, 1000.0)])
    kept = [Request(0, "a", 0.0, 29.5), Request(1, "a", 0.0, 29.5)]
    assert [r.id for r in s._refill(kept, 4, s.queues, 0, prof.model, 0, 0.0)] == [0, 1, 2, 3]
    assert s.queued() == 0
    s.queues.push_many([Request(4, "a", 0.0, 1000.0)])  # one alone would make a batch of 3: none is taken
    assert [r.id for r in s._refill(kept, 3, s.queues, 0, prof.model, 0, 0.0)] == [0, 1] and s.queued() == 1


def test_plain_batching_serves_late_members_as_triton_would():
    s = Scheduler(APPS, make_profile(), "fixed:-20", SchedulerConfig(max_batch=64))
    assert s.submit(make_request(0, NOVEL, 0.0), 0.0) is None
    for i in range(1, 8):
        assert s.submit(make_request(i, NOVEL, 100.0), 100.0) is None
    assert s.next_batch(400.0).size == 8 and s.expired(400.0) == []


@pytest.mark.parametrize("policy", ["otas", "fixed:0", "edf", "otas-fifo"])
def test_applications_change_at_run_time(policy):
    """Added, changed and removed between decisions; queued requests keep their place."""
    from dataclasses import replace

    s = Scheduler(APPS[:1], make_profile(), policy)
    assert s.submit(make_request(1, NOVEL, 0.0), 0.0) is None
    s.set_apps(APPS)  # the others join
    other = APPS[1]
    assert s.submit(make_request(2, other, 1.0), 1.0) is None and s.queued() == 2
    s.set_apps([replace(NOVEL, slo_ms=NOVEL.slo_ms * 2), *APPS[1:]])  # a new SLO: new classes, same queue
    assert s.apps["novel"].slo_ms == NOVEL.slo_ms * 2 and s.queued() == 2
    with pytest.raises(ValueError, match="still have queued requests"):
        s.set_apps(APPS[1:])
    with pytest.raises(ValueError, match="nosuch"):
        s.set_apps([*APPS, replace(NOVEL, name="x", task="nosuch")])
    assert sorted(s.apps) == sorted(a.name for a in APPS)  # a refused change changes nothing
    served = []
    while (plan := s.next_batch(2.0)) is not None:
        served += [r.id for r in plan.requests]
    assert sorted(served) == [1, 2]
    s.set_apps(APPS[1:])
    assert "novel" not in s.apps and s.next_batch(3.0) is None


def test_no_applications_yet():
    s = Scheduler([], make_profile(), "otas")
    assert s.next_batch(0.0) is None and s.queued() == 0
    s.set_apps(APPS[:1])
    assert s.submit(make_request(1, NOVEL, 0.0), 0.0) is None and s.next_batch(0.0).size == 1


def test_otas_runs_part_of_a_long_batch_while_tight_queries_keep_arriving():
    """A loose application's backlog of 64 would take 2.5 s in one batch; a tight application's
    queries keep arriving, and each one still makes its 600 ms SLO only if it waits less than about
    half a second. otas runs only the first part of the loose batch (the rest next); otas-paper,
    which does not price blocked arrivals, runs it whole. (Tight arrivals every 10 ms instead would
    need 1.4 ms of device per ms even at the fastest γ: an overload, where no class is protected.)"""
    from otas.types import App

    apps = [App("tight", 600.0, 5.0, "novel"), App("loose", 60_000.0, 1.0, "blur")]
    size = {}
    for policy in ("otas-paper", "otas"):
        s = Scheduler(apps, make_profile(), policy, SchedulerConfig(max_batch=64))
        for i in range(64):
            assert s.submit(make_request(i, apps[1], 0.0), 0.0) is None
        for i in range(64, 104):  # 40 tight arrivals over the last 2 s, every one already served
            t = -2000.0 + 50.0 * (i - 64)
            s.policy.on_submit(make_request(i, apps[0], t), t)
        size[policy] = len(s.next_batch(0.0).requests)
    assert size["otas-paper"] == 64 and 0 < size["otas"] < 64


def test_otas_pulls_forward_only_a_more_urgent_class():
    """Reordering rescues tight classes: the batch otas runs instead of the head's (the class whose
    head came first) always has an earlier deadline than the head's batch. Random queues of 2-4
    applications on a CPU-like and a flat (GPU-like) profile; the rule before this one pulled a looser,
    more valuable class ahead in a few of them."""
    import random

    from otas.types import App

    rng = random.Random(0)
    profiles = [make_profile(), make_profile(base_ms=(10.0, 10.5, 12.0), device="flat (hand-made)")]
    reordered = 0
    for trial in range(400):
        k = rng.randint(2, 4)
        slos = rng.sample([30.0, 60.0, 120.0, 400.0, 1500.0, 3000.0], k)
        tasks = ["novel", "blur", "lowlight"]
        apps = [App(f"a{i}", slos[i], rng.choice([0.5, 1, 3, 5]), rng.choice(tasks)) for i in range(k)]
        s = Scheduler(apps, profiles[trial % 2], "otas", SchedulerConfig(max_batch=16))
        t, seen, choose = 0.0, {}, s.policy.choose

        def spy(cands, now, view, choose=choose, seen=seen, policy=s.policy):
            out = choose(cands, now, view)
            seen["cands"], seen["meta"] = cands[: policy.lookahead], out[2]
            return out

        s.policy.choose = spy
        for i in range(rng.randint(3, 40)):
            a = rng.choice(apps)
            t += rng.expovariate(rng.choice([0.05, 0.5, 2.0]))
            s.submit(Request(i, a.name, t, t + a.slo_ms), t)
        if s.next_batch(t) is None or seen["meta"].get("mixed"):
            continue
        j, cands = int(seen["meta"]["batch"]), seen["cands"]
        if j:
            reordered += 1
            assert cands[j].deadline_ms < cands[0].deadline_ms, (trial, j)
    assert reordered > 50  # the rule was exercised


def test_submit_many_queues_a_request_whole_or_not_at_all_and_the_policy_hears_one_arrival():
    s = Scheduler(APPS, make_profile(), "otas", SchedulerConfig(max_queue=6))
    heard = []
    s.policy.on_submit_many = lambda reqs, now: heard.append((len(reqs), now))
    group = [Request(i, "novel", 0.0, 500.0) for i in range(4)]
    assert s.submit_many(group, 0.0) is None and s.queued() == 4 and heard == [(4, 0.0)]
    full = s.submit_many([Request(10 + i, "novel", 1.0, 501.0) for i in range(3)], 1.0)  # 4 + 3 > 6: none queued
    assert full is not None and full.reason is Reason.QUEUE_FULL and s.queued() == 4
    late = s.submit_many([Request(20, "novel", 2.0, 10.0), Request(21, "novel", 2.0, 10.0)], 2.0)
    assert late is not None and late.reason is Reason.INFEASIBLE and s.queued() == 4
    plan = s.next_batch(2.0)
    assert plan is not None and [r.id for r in plan.requests] == [0, 1, 2, 3]
    for bad in ([Request(30, "novel", 0.0, 500.0), Request(31, "blur", 0.0, 500.0)],
                [Request(32, "novel", 0.0, 500.0), Request(33, "novel", 0.0, 501.0)]):  # fmt: skip
        with pytest.raises(ValueError, match="one request"):
            s.submit_many(bad, 3.0)
    with pytest.raises(ValueError, match="unknown application"):
        s.submit_many([Request(40, "nope", 0.0, 500.0)], 3.0)


def test_host_overhead_is_added_per_batch_not_scaled_into_the_device_factor():
    """A live turn that took the device's profiled time plus a fixed host wait: the factor stays at
    1 (the device is as profiled) and the wait is added to every predicted batch, whatever its size."""
    apps = [App("a", 1000.0, 1.0, "novel")]
    s = Scheduler(apps, make_profile(), "fixed:0", SchedulerConfig(latency_ewma=1.0))
    base = s.predict(s.model, 0, 8), s.predict(s.model, 0, 64)
    s.submit_many([Request(i, "a", 0.0, 1000.0) for i in range(8)], 0.0)
    plan = s.next_batch(0.0)
    device = plan.meta["profiled_ms"]
    s.complete(plan, device + 30.0, device + 30.0, device_ms=device)
    assert s.latency_factor(s.model) == pytest.approx(1.0)
    assert s.overhead_ms == pytest.approx(30.0)
    assert s.predict(s.model, 0, 8) == pytest.approx(base[0] + 30.0)
    assert s.predict(s.model, 0, 64) == pytest.approx(base[1] + 30.0)
    # without the device's time, the whole turn corrects the device's, as in the simulator
    s2 = Scheduler(apps, make_profile(), "fixed:0", SchedulerConfig(latency_ewma=1.0))
    s2.submit_many([Request(i, "a", 0.0, 1000.0) for i in range(8)], 0.0)
    plan = s2.next_batch(0.0)
    s2.complete(plan, 2 * device, 2 * device)
    assert s2.predict(s2.model, 0, 8) == pytest.approx(2 * device, rel=0.01) and s2.overhead_ms == 0.0
    assert s2.latency_factor(s2.model) > 1.0 and s2.latency_offset_ms(s2.model) > 0.0  # one size: shared
    # a pipelined caller (planning ahead): the lag delays answers, not the next batch; not predicted
    s.pipelined = True
    assert s.host_lag_ms == pytest.approx(30.0) and s.overhead_ms == 0.0
    assert s.predict(s.model, 0, 8) == pytest.approx(base[0]) and s.fastest_ms(8) <= base[0]
    s.pipelined = False
    assert s.predict(s.model, 0, 8) == pytest.approx(base[0] + 30.0)


def test_a_padded_path_is_planned_at_its_buckets_up_to_the_max_batch():
    """A profile whose path pads batches to buckets is planned at the bucket's latency, and batches
    past the last bucket below B_max at B_max's (the served path's largest bucket), as it runs them."""
    plain = make_profile()
    padded = plain.with_buckets([1, 2, 4, 8, 16, 32, 64])
    s = Scheduler(APPS, padded, "otas", SchedulerConfig(max_batch=48))
    gammas = padded.gammas
    assert list(s.lat_vector(padded.model, 5)) == [plain.lat(g, 8) for g in gammas]
    assert list(s.lat_vector(padded.model, 33)) == [plain.lat(g, 48) for g in gammas]
    assert list(s.lat_vector(padded.model, 48)) == [plain.lat(g, 48) for g in gammas]
    assert s.profiles[padded.model].buckets == [1, 2, 4, 8, 16, 32, 48]
    s = Scheduler(APPS, plain, "otas", SchedulerConfig(max_batch=48))
    assert list(s.lat_vector(plain.model, 5)) == [plain.lat(g, 5) for g in gammas]


def test_otas_prices_device_time_for_the_batching_it_runs():
    """`price_batching`: "apps" asks the per-application price, "shared" the one-setting-for-all price, and
    "blend" weighs them by the share of recent decisions that ran a shared batch: the per-application price
    until a batch is shared, the shared price once every recent decision was."""
    from otas.sched.policies import Otas

    apps = [App("tight", 15.0, 1.0, "novel"), App("loose", 18.0, 3.0, "blur")]
    flat = make_profile(base_ms=(10.0, 10.5, 12.0), gammas=[0, 4, 8, 16], device="flat (hand-made)")
    with pytest.raises(ValueError, match="price_batching='joint'"):
        Otas(price_batching="joint")
    got = {}
    for mode in ("apps", "shared", "blend"):
        s = Scheduler(apps, flat, Otas(price_batching=mode), SchedulerConfig(max_batch=64))
        p = s.policy
        for t in range(0, 400, 2):  # 1 query/ms, above what this device serves at any γ
            for a in apps:
                p.on_submit(make_request(t, a, float(t)), float(t))
        got[mode] = p._mu(400.0, s)
        if mode == "blend":
            assert got[mode] == pytest.approx(got["apps"])  # no decision yet: none shared
            p._decided.add(1.0, 400.0)
            p._shared.add(1.0, 400.0)
            assert p._mu(400.0, s) == pytest.approx(got["shared"])
            p._decided.add(1.0, 400.0)  # one of two recent decisions shared: halfway
            assert p._mu(400.0, s) == pytest.approx((got["apps"] + got["shared"]) / 2)
    assert got["apps"] > 0 and got["shared"] > 0 and got["apps"] != pytest.approx(got["shared"])


@pytest.mark.parametrize("model", ["affine", "factor"])
def test_corrections_age_back_to_the_profile_over_idle_time(model):
    """After batches whose answers the host took up far later than the device gave them (an event loop saturated
    by a burst: 480 ms of host lag a batch, the device at twice the profile's 60 ms), a lone novel query is refused
    as infeasible at the corrected prediction; no batch then runs to correct it, so where a request would be refused
    on an idle scheduler the corrections age over the time since the last batch ended (τ = rate_window × the loosest
    SLO, 4 s here), and the same query is taken again. Nothing ages while a batch is out."""
    s = Scheduler(APPS, make_profile(), "fixed:0", SchedulerConfig(latency_ewma=0.5, latency_model=model))
    t, rej = 0.0, None
    for i in range(20):  # until the corrected prediction leaves no room in novel's 500 ms
        rej = s.submit(make_request(i, NOVEL, t), t)
        if rej is not None:
            break
        plan = s.next_batch(t)
        t += 600.0
        s.complete(plan, t, measured_ms=600.0, device_ms=120.0)
    assert rej is not None and rej.reason is Reason.INFEASIBLE
    slow = s.predict(s.model, 0, 1)
    assert slow > 500.0 and s.idle
    assert s.infeasible(t + 150.0, t + 150.0 + NOVEL.slo_ms)  # under τ / 20 since the last batch: not yet aged
    assert s.predict(s.model, 0, 1) == slow
    later = t + 2_000.0
    assert s.submit(make_request(101, NOVEL, later), later) is None  # aged by half τ: taken
    taken = s.predict(s.model, 0, 1)
    assert 60.0 < taken < min(slow, NOVEL.slo_ms)
    assert s.submit(make_request(102, NOVEL, later + 9e3), later + 9e3) is None  # one queued: not idle, no ageing
    assert s.predict(s.model, 0, 1) == taken
    busy = Scheduler(APPS, make_profile(), "fixed:0", SchedulerConfig(latency_ewma=0.5, latency_model=model))
    busy.submit(make_request(0, NOVEL, 0.0), 0.0)
    first = busy.next_batch(0.0)
    busy.complete(first, 600.0, measured_ms=600.0, device_ms=120.0)
    busy.submit(make_request(1, NOVEL, 600.0), 600.0)
    busy.next_batch(600.0)  # out, never completed: not idle
    held = busy.predict(busy.model, 0, 1)
    assert busy.infeasible(60_000.0, 60_000.0 + held / 2) and busy.predict(busy.model, 0, 1) == held


def test_a_device_slower_than_its_profile_is_not_forgotten_between_sparse_requests():
    """Nothing is refused, so nothing ages: a device 1.3 × its profile, one query every 3 s (τ = 4 s), keeps its
    learned prediction (ageing every idle gap took it back towards the profile's 60 ms and planned batches that
    finished late)."""
    s = Scheduler(APPS, make_profile(), "fixed:0", SchedulerConfig(latency_ewma=0.5))
    for i in range(30):
        t = 3000.0 * i
        assert s.submit(make_request(i, NOVEL, t), t) is None
        plan = s.next_batch(t)
        s.complete(plan, t + 78.0, measured_ms=78.0)
    assert s.predict(s.model, 0, 1) == pytest.approx(78.0, rel=0.02)


def test_host_idle_is_the_device_waiting_for_a_batch_whose_work_was_queued():
    """`host_idle_ms`: the gap between the device's last end and a batch's start, counted only where the batch's
    work waited for the device (otherwise the device waited for work, or by the loop's choice: not the host)."""
    from otas.sched.scheduler import host_idle_ms

    assert host_idle_ms(2.0, 3.5, True) == pytest.approx(1.5)
    assert host_idle_ms(2.0, 1.0, True) == 0.0  # launched behind the batch before: no gap
    assert host_idle_ms(2.0, 3.5, False) is None  # nothing waited for the device
    assert host_idle_ms(None, 3.5, True) is None  # no batch before it (or it failed)


def test_host_gap_is_measured_always_and_planned_with_only_when_asked():
    """A pipelined caller reporting the device idle before batches whose work waited: `host_gap_ms` follows it
    whatever the config; with `host_gap` it is added to every predicted batch (a host-bound server plans with
    the batches' true spacing), without it the predictions stay the device's; not pipelined, the host's lag
    is added as before."""
    apps = [App("a", 1000.0, 1.0, "novel")]
    for on in (False, True):
        s = Scheduler(apps, make_profile(), "fixed:0", SchedulerConfig(latency_ewma=1.0, host_gap=on))
        s.pipelined = True
        base, fast = s.predict(s.model, 0, 8), s.fastest_ms(1)
        s.submit_many([Request(i, "a", 0.0, 1000.0) for i in range(8)], 0.0)
        plan = s.next_batch(0.0)
        device = plan.meta["profiled_ms"]
        s.complete(plan, device + 5.0, device + 1.0, device_ms=device, idle_ms=4.0)
        assert s.host_gap_ms == pytest.approx(4.0) and s.host_lag_ms == pytest.approx(1.0)
        assert s.latency_factor(s.model) == pytest.approx(1.0)
        assert s.predict(s.model, 0, 8) == pytest.approx(base + (4.0 if on else 0.0))
        assert s.fastest_ms(1) == pytest.approx(fast + (4.0 if on else 0.0))
        s.pipelined = False  # one batch at a time: the host's lag, as without the gap
        assert s.predict(s.model, 0, 8) == pytest.approx(base + 1.0)
    with pytest.raises(ValueError, match="host_gap"):
        SchedulerConfig(host_gap=1)


def test_the_simulated_host_is_measured_as_the_gap_between_batches(monkeypatch):
    """The simulator's host turn per batch (in series, planning ahead) is the device's idle time before each
    batch whose work waited: the scheduler's `host_gap_ms` follows it (the EWMA's last sample at weight 1), with
    the gap planned with or not; without a host it stays 0."""
    import numpy as np

    import otas.sim.simulator as simulator
    from otas.sim.simulator import run
    from otas.sim.traces import Trace

    apps, seen = [App("a", 200.0, 1.0, "novel")], {}

    class Spy(Scheduler):
        def complete(self, *a, **k):
            super().complete(*a, **k)
            seen.setdefault(self.config.host_gap, []).append(self.host_gap_ms)

    monkeypatch.setattr(simulator, "Scheduler", Spy)
    trace = Trace("burst", np.linspace(0.0, 400.0, 2000), ["a"] * 2000)
    for gap in (False, True):
        cfg = SchedulerConfig(max_batch=8, latency_ewma=1.0, host_gap=gap)
        run(trace, apps, make_profile(), "fixed:0", cfg, plan_ahead=True, host_ms=3.0)
        assert seen.pop(gap)[-1] == pytest.approx(3.0)
        run(trace, apps, make_profile(), "fixed:0", cfg, plan_ahead=True)
        assert set(seen.pop(gap)) == {0.0}
