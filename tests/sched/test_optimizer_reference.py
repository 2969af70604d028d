"""plan_fronts returns exactly the choices and values of the straightforward reference DP
(tests/sched/reference_optimizer.py) on many seeded instances: realistic ones (lookahead 8,
|Γ| 8-10, up to 64 members per batch, a grid of 512 points) and small ones with many ties."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otas.sched.optimizer import BatchSpec, net_value, plan_fronts
from tests.sched.reference_optimizer import reference_fronts, reference_net_value
from tests.sched.test_optimizer import instances


def _spec(rng: np.random.Generator, n_gamma: int, small: bool) -> BatchSpec:
    groups = int(rng.integers(1, 4)) if rng.random() < 0.3 else 1
    size = int(rng.integers(1, 6 if small else 65))
    at = rng.uniform(-20, 60 if small else 2000)
    # deadlines on a coarse lattice, so members and grid points tie
    deadlines = tuple(np.sort(np.round(at + rng.uniform(0, 200, size) * 2) / 2) for _ in range(groups))
    weights = rng.choice([0.0, 0.5, 1.0, 1.25], (n_gamma, groups)) if small else rng.uniform(0, 5, (n_gamma, groups))
    lat = np.sort(rng.uniform(1, 40 if small else 600, n_gamma))
    if small:
        lat = np.round(lat / 4) * 4 + 1  # equal latencies across γ
    lat[rng.random(n_gamma) < 0.1] = math.inf  # does not fit in memory
    if not np.isfinite(lat).any():
        lat[0] = 10.0
    cost = None
    if rng.random() < 0.5:
        cost = rng.choice([0.0, 1.0, 2.0], n_gamma) if small else rng.uniform(0, 300, n_gamma)
    return BatchSpec(deadlines, weights, lat, cost)


def _split(rng: np.random.Generator, spec: BatchSpec) -> tuple[BatchSpec, BatchSpec]:
    cut = [int(rng.integers(0, len(d) + 1)) for d in spec.deadlines]
    if not any(cut):
        cut[0] = 1
    head_lat = np.where(np.isfinite(spec.latency), spec.latency * rng.uniform(0.3, 1.0), math.inf)
    head_cost = None if spec.cost is None else spec.cost * 0.5
    parts = list(zip(spec.deadlines, cut, strict=True))
    head = BatchSpec(tuple(d[:c] for d, c in parts), spec.weights, head_lat, head_cost)
    rest = BatchSpec(tuple(d[c:] for d, c in parts), spec.weights, spec.latency, spec.cost)
    return head, rest


def _instance(seed: int):
    rng = np.random.default_rng([seed, 0x0B7])
    small = seed % 2 == 1
    n_gamma = int(rng.integers(1, 5)) if small else int(rng.choice([8, 10]))
    n = int(rng.integers(1, 5 if small else 9))
    specs = [_spec(rng, n_gamma, small) for _ in range(n)]
    fronts: list = sorted({0, *rng.integers(0, n, int(rng.integers(0, 4))).tolist()})
    fronts += [(j, *_split(rng, specs[j])) for j in fronts if rng.random() < 0.7]
    delta = float(rng.choice([0.25, 1.0, 7.0]))
    max_grid = int(rng.choice([16, 64, 512]))
    price = float(rng.choice([0.0, 0.0, 0.01, 0.2]))
    return specs, fronts, delta, max_grid, price


def _same(specs, fronts, delta, max_grid, price):
    got = plan_fronts(specs, fronts, delta, max_grid, price)
    want = reference_fronts(specs, fronts, delta, max_grid, price)
    for g, w in zip(got, want, strict=True):
        assert (g.choice, g.value, g.delta_ms) == (w.choice, w.value, w.delta_ms)


@pytest.mark.parametrize("chunk", range(10))
def test_plan_fronts_equals_the_reference(chunk):
    for seed in range(chunk * 60, (chunk + 1) * 60):
        _same(*_instance(seed))


def test_net_value_equals_the_reference():
    for seed in range(600):
        specs, _, _, _, price = _instance(seed)
        for spec in specs:
            got, want = net_value(spec, price), reference_net_value(spec, price)
            assert got == want or (math.isnan(got) and math.isnan(want)), (seed, got, want)


@settings(max_examples=300, deadline=None)
@given(instances(), st.data())
def test_plan_fronts_equals_the_reference_on_hypothesis_instances(inst, data):
    specs, delta, max_grid, price = inst
    fronts = data.draw(st.lists(st.integers(0, len(specs) - 1), min_size=1, max_size=4, unique=True))
    _same(specs, fronts, delta, max_grid, price)
