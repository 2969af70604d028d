import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from otas.sched.optimizer import BatchSpec, brute_force, evaluate, plan, plan_fronts


@st.composite
def instances(draw):
    n_gamma = draw(st.integers(1, 4))
    n = draw(st.integers(1, 4))
    specs = []
    for _i in range(n):
        groups = draw(st.integers(1, 2))
        deadlines = tuple(
            np.sort(np.array(draw(st.lists(st.floats(-50, 400), min_size=1, max_size=5)))) for _ in range(groups)
        )
        weights = np.array(
            draw(
                st.lists(
                    st.lists(st.floats(0, 3), min_size=groups, max_size=groups),
                    min_size=n_gamma,
                    max_size=n_gamma,
                )
            )
        )
        lat = draw(st.lists(st.one_of(st.floats(0.5, 200), st.just(math.inf)), min_size=n_gamma, max_size=n_gamma))
        if not any(math.isfinite(x) for x in lat):  # the batcher sizes every batch to fit
            lat[0] = 10.0
        cost = None
        if draw(st.booleans()):  # a cost of its own per setting (price and blocked arrivals)
            cost = np.array(draw(st.lists(st.floats(0, 2), min_size=n_gamma, max_size=n_gamma)))
        specs.append(BatchSpec(deadlines, weights, np.array(lat), cost))
    delta = draw(st.sampled_from([0.25, 1.0, 7.0]))
    max_grid = draw(st.sampled_from([16, 512]))
    price = draw(st.sampled_from([0.0, 0.0, 0.01, 0.2]))
    return specs, delta, max_grid, price


@settings(max_examples=400, deadline=None)
@given(instances())
def test_dp_equals_brute_force(inst):
    specs, delta, max_grid, price = inst
    got = plan(specs, delta, max_grid, price)
    want = brute_force(specs, delta, max_grid, price)
    assert math.isclose(got.value, want.value, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(evaluate(specs, got.choice, got.delta_ms, price), got.value, rel_tol=1e-9, abs_tol=1e-9)


def test_a_price_on_device_time_buys_speed_when_time_is_scarce():
    """Same slack, same batch: free time buys accuracy; priced time buys the faster setting
    once the accuracy gain is worth less than the time it costs."""
    acc, lat = [0.80, 0.90], [20.0, 60.0]
    spec = [_spec([1000.0] * 4, acc, lat)]
    assert plan(spec).choice == [1]
    assert plan(spec, price=4 * 0.10 / 40.0 * 0.9).choice == [1]  # below break-even: accuracy
    assert plan(spec, price=4 * 0.10 / 40.0 * 1.1).choice == [0]  # above: speed


def _spec(deadlines, acc, lat):
    return BatchSpec((np.array(deadlines, float),), np.array(acc, float)[:, None], np.array(lat, float))


def test_slack_buys_accuracy_and_pressure_buys_speed():
    acc, lat = [0.80, 0.86, 0.90], [20.0, 60.0, 65.0]
    light = [_spec([1000.0], acc, lat)]
    assert plan(light).choice == [2]
    tight = [_spec([70.0] * 4, acc, lat), _spec([95.0] * 4, acc, lat)]
    p = plan(tight)
    assert p.choice == [0, 2] and math.isclose(p.value, 4 * 0.80 + 4 * 0.90)


def test_rounding_is_conservative():
    # 10.2 ms rounds up to 11 steps of 1 ms: a deadline at 10.5 ms is counted as missed.
    p = plan([_spec([10.5], [1.0], [10.2])], delta_ms=1.0)
    assert p.value == 0.0


@settings(max_examples=200, deadline=None)
@given(instances())
def test_fronts_share_the_suffix_and_equal_planning_each_order(inst):
    specs, delta, max_grid, price = inst
    fronts = list(range(len(specs)))
    for j, got in zip(fronts, plan_fronts(specs, fronts, delta, max_grid, price), strict=True):
        order = [specs[j], *specs[:j], *specs[j + 1 :]]
        want = plan(order, delta, max_grid, price)
        assert got.choice == want.choice and math.isclose(got.value, want.value, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=200, deadline=None)
@given(instances(), st.data())
def test_a_split_front_equals_planning_head_then_rest_first(inst, data):
    specs, delta, max_grid, price = inst
    j = data.draw(st.integers(0, len(specs) - 1))
    whole = specs[j]
    # the head takes a prefix of each group's members (at least one somewhere), the rest the others
    cut = [data.draw(st.integers(0, len(d))) for d in whole.deadlines]
    if not any(cut):
        cut[0] = 1
    lat_head = np.array(
        data.draw(st.lists(st.floats(0.5, 200), min_size=len(whole.latency), max_size=len(whole.latency)))
    )
    head = BatchSpec(tuple(d[:c] for d, c in zip(whole.deadlines, cut, strict=True)), whole.weights, lat_head)
    rest = BatchSpec(tuple(d[c:] for d, c in zip(whole.deadlines, cut, strict=True)), whole.weights, whole.latency)
    got = plan_fronts(specs, [j, (j, head, rest)], delta, max_grid, price)
    order = [head, rest, *specs[:j], *specs[j + 1 :]]
    want = plan(order, delta, max_grid, price)
    assert math.isclose(got[1].value, want.value, rel_tol=1e-9, abs_tol=1e-9)
    assert got[1].choice == want.choice
    alone = plan([specs[j], *specs[:j], *specs[j + 1 :]], delta, max_grid, price)
    assert got[0].choice == alone.choice
