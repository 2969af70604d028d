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
    assert _samples(one) == _samples(many)
    sa, sb = one.model_stats("m"), many.model_stats("m")
    sa.pop("last_inference"), sb.pop("last_inference")
    assert sa == sb


def _samples(m: Metrics) -> list[str]:
    """The exposition, less the `_created` timestamps (when each series was first touched)."""
    return [ln for ln in generate_latest(m.registry).decode().splitlines() if "_created" not in ln]


def test_an_observer_without_served_many_sees_every_image():
    seen = []

    class Plain(Observer):
        def ended(self, app, outcome, reason="", served=None):
            seen.append((app, outcome, served.id))
            if served.id == 1:
                raise RuntimeError("one hook failing costs no other image its count")

    Plain().served_many("blur", [_served(i, True) for i in range(3)])
    assert seen == [("blur", "served", 0), ("blur", "served", 1), ("blur", "served", 2)]
