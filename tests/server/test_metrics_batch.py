"""The metrics of a request's images counted at once equal those counted one by one."""

import numpy as np
from prometheus_client import generate_latest

from otas.engine.serving import Observer, Served
from otas.server.metrics import Metrics


def _served(i: int, met: bool) -> Served:
    return Served(i, "blur", -4, np.ones(2) / 2, ["a", "b"], 1.5 * i, 2.0, 3.5 * i + 1, met, 8, 0.25 * i)


def test_served_many_counts_as_ended_one_by_one():
    batch = [_served(i, met=i % 3 != 0) for i in range(8)]
    one, many = Metrics([-4, 0]), Metrics([-4, 0])
    one.ended("blur", "expired", "deadline_unreachable")
    many.ended("blur", "expired", "deadline_unreachable")
    for s in batch:
        one.ended("blur", "served", "", s)
    many.served_many("blur", batch)
    a, b = _samples(one), _samples(many)
    assert [k for k, _ in a] == [k for k, _ in b]  # a sum may differ in its last bits (the order of its terms)
    assert all(x == y or np.isclose(float(x), float(y), rtol=1e-12) for (_, x), (_, y) in zip(a, b, strict=True))
    sa, sb = one.model_stats("m"), many.model_stats("m")
    sa.pop("last_inference"), sb.pop("last_inference")
    assert sa == sb


def _samples(m: Metrics) -> list[tuple[str, str]]:
    """The exposition as (series, value), less the `_created` timestamps (when each series was first touched)."""
    lines = [ln for ln in generate_latest(m.registry).decode().splitlines() if "_created" not in ln]
    return [tuple(ln.rsplit(" ", 1)) if not ln.startswith("#") else (ln, "") for ln in lines]


def test_an_observer_without_served_many_sees_every_image():
    seen = []

    class Plain(Observer):
        def ended(self, app, outcome, reason="", served=None):
            seen.append((app, outcome, served.id))
            if served.id == 1:
                raise RuntimeError("one hook failing costs no other image its count")

    Plain().served_many("blur", [_served(i, True) for i in range(3)])
    assert seen == [("blur", "served", 0), ("blur", "served", 1), ("blur", "served", 2)]


def test_observe_many_fills_the_buckets_observe_would_values_on_a_bound_included():
    from prometheus_client import CollectorRegistry, Histogram

    from otas.server.metrics import observe_many

    bounds = (0.005, 0.01, 0.05, 0.1)
    values = np.array([0.0, 0.005, 0.0050001, 0.01, 0.2, 0.05, 0.07, 1e-9, 0.1, 0.1000001])
    one, many = (Histogram("h", "h", ["app"], buckets=bounds, registry=CollectorRegistry()) for _ in range(2))
    for v in values:
        one.labels("a").observe(float(v))
    observe_many(many.labels("a"), values)
    a, b = (next(iter(h.collect())).samples for h in (one, many))

    def counts(x):
        return [(s.name, s.labels, s.value) for s in x if s.name.endswith(("_bucket", "_count"))]

    assert counts(a) == counts(b) and len(counts(a)) == len(bounds) + 2
    assert np.isclose(*(next(s.value for s in x if s.name.endswith("_sum")) for x in (a, b)))


def test_ended_many_counts_as_ended_one_by_one_and_forget_drops_the_cached_series():
    one, many = Metrics([-4, 0]), Metrics([-4, 0])
    for m in (one, many):
        m.served_many("blur", [_served(1, met=True)])
    for _ in range(5):
        one.ended("blur", "rejected", "infeasible")
    many.ended_many("blur", "rejected", "infeasible", 5)
    assert _samples(one) == _samples(many)
    assert one.model_stats("m")["inference_stats"] == many.model_stats("m")["inference_stats"]
    many.forget("blur")
    assert not any('app="blur"' in k for k, _ in _samples(many))
    many.ended_many("blur", "rejected", "queue_full", 2)  # series made again after forget
    assert any('app="blur",outcome="rejected",reason="queue_full"} 2.0' in f"{k} {v}" for k, v in _samples(many))


def test_batches_are_counted_by_how_the_floor_held_them():
    """`otas_floor_batches_total{mode}`: free, capped (the plan names the cap's γ) or following."""
    from otas.types import BatchPlan, Request

    m = Metrics([-20, 0])
    reqs = [Request(0, "blur", 0.0, 50.0)]
    for meta in ({}, {"cap": -20}, {"cap": -20}, {"follow": 1}):
        m.batch(BatchPlan(reqs, 0, 1.0, 0.0, "m", meta=dict(meta)), 1.0, 1.0, 0)
    got = dict(_samples(m))
    assert [float(got[f'otas_floor_batches_total{{mode="{k}"}}']) for k in ("free", "capped", "following")] == [1, 2, 1]
