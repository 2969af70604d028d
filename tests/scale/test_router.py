"""The pure router: wrap-around shares, routing by application, spill-over by slack, failures."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otas.scale.router import NoReplica, Router, RouterConfig, wraparound
from otas.types import App

APPS = [App("novel", 400.0, 1.0, "novel"), App("lowlight", 800.0, 2.0, "lowlight"), App("blur", 1600.0, 1.0, "blur")]
LAT = [0.0] + [20.0 + 5.0 * b for b in range(1, 17)]  # fastest setting: 20 + 5·b ms, B_max 16


@given(st.lists(st.floats(0, 100), min_size=1, max_size=8), st.integers(1, 6))
def test_wraparound_balances_and_splits_few(loads, n):
    shares = wraparound(loads, n)
    assert all(abs(sum(s.values()) - 1) < 1e-9 for s in shares)
    assert all(0 <= k < n for s in shares for k in s)
    assert sum(len(s) > 1 for s in shares) <= n - 1  # at most n - 1 items split
    if sum(loads) > 0:  # balanced, in units of the largest load (the rule is scale-free; subnormals included)
        rel = [x / max(loads) for x in loads]
        per_bin = [sum(load * s.get(k, 0) for load, s in zip(rel, shares, strict=True)) for k in range(n)]
        assert max(per_bin) - min(per_bin) <= 1e-6 * sum(rel)


def test_wraparound_examples():
    assert wraparound([1, 1, 1], 2) == [{0: 1.0}, {0: 0.5, 1: 0.5}, {1: 1.0}]
    assert wraparound([1, 1, 1], 1) == [{0: 1.0}] * 3
    assert wraparound([10, 0.5, 9.5], 2, min_share=0.1) == [{0: 1.0}, {1: 1.0}, {1: 1.0}]  # no sliver
    with pytest.raises(ValueError, match="n=0"):
        wraparound([1], 0)


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="spill_slack=1.5"):
        RouterConfig(spill_slack=1.5)
    with pytest.raises(ValueError, match="replicas=0"):
        Router(APPS, 0, LAT)
    with pytest.raises(ValueError, match="nondecreasing"):
        Router(APPS, 1, [0.0, 5.0, 4.0])


def test_routes_by_application_when_not_loaded():
    r = Router(APPS, 3, LAT)
    homes = {a.name: {r.route(a.name, 0.0).replica for _ in range(20)} for a in APPS}
    assert homes == {"novel": {0}, "lowlight": {1}, "blur": {2}}  # one class per replica, no scatter
    r2 = Router(APPS, 2, LAT)
    seen = {a.name: [r2.route(a.name, 0.0).replica for _ in range(20)] for a in APPS}
    assert set(seen["novel"]) == {0} and set(seen["blur"]) == {1}
    assert seen["lowlight"].count(0) == seen["lowlight"].count(1) == 10  # the one split class alternates


def test_shares_follow_measured_rates():
    r = Router(APPS, 2, LAT, config=RouterConfig(rebalance_ms=100, rate_halflife_ms=1))
    for t in range(0, 1000, 2):  # novel 3x busier than the others together
        for app in ("novel", "novel", "novel", "lowlight" if t % 4 else "blur"):
            k = r.route(app, float(t)).replica
            r.sent(k, app)
            r.done(k)
    shares = r.snapshot()["classes"]
    assert shares[0]["shares"] == {"0": 0.667, "1": 0.333}  # novel fills replica 0 and a third of 1
    assert shares[1]["shares"] == {"1": 1.0} and shares[2]["shares"] == {"1": 1.0}


def test_spills_when_home_slack_is_low():
    r = Router(APPS, 2, LAT, config=RouterConfig(spill_slack=0.25))
    for _ in range(16):  # 16 in flight at novel's home: a full batch running, then a full one
        r.sent(0, "novel")
    assert r.predicted_wait_ms(0) == 200.0
    route = r.route("novel", 0.0)
    assert route.replica == 0 and route.kind == "home"  # 200 ms slack >= 0.25 * 400
    route = r.route("novel", 0.0, age_ms=120.0)  # 80 ms slack: spill to the idle replica
    assert route.replica == 1 and route.kind == "spill" and route.slack_ms == 400 - 120 - 25
    for _ in range(40):
        r.sent(1, "blur")
    assert r.route("novel", 0.0, age_ms=120.0).replica == 0  # the other is worse: stay home


def test_learns_the_measured_over_profiled_factor():
    r = Router(APPS, 1, LAT, config=RouterConfig(factor_ewma=0.5))
    r.sent(0, "novel")
    r.done(0, exec_ms=60.0, batch_size=2)  # profiled 30 ms: twice as slow (a slower setting ran)
    assert r.replicas[0].factor == 1.5 and r.replicas[0].inflight == 0
    assert r.predicted_wait_ms(0) == 1.5 * LAT[1]


def test_down_replica_gets_nothing_until_up():
    r = Router(APPS, 2, LAT)
    assert r.down(1) and not r.down(1)
    assert {r.route(a.name, 0.0).replica for a in APPS for _ in range(5)} == {0}
    r.down(0)
    with pytest.raises(NoReplica, match="0 of 2 up"):
        r.route("novel", 0.0)
    assert r.up(1) and r.healthy_count() == 1
    assert r.route("novel", 0.0).replica == 1


def test_retry_excludes_the_failed_replica():
    r = Router(APPS, 2, LAT)
    route = r.route("novel", 0.0, exclude=[0])
    assert route.replica == 1 and route.kind == "retry"
    with pytest.raises(NoReplica):
        r.route("novel", 0.0, exclude=[0, 1])


def test_unknown_app():
    with pytest.raises(ValueError, match="unknown application 'x'"):
        Router(APPS, 1, LAT).route("x", 0.0)
