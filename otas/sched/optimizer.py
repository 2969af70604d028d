"""The token-adaptation optimizer (method §5): choose gamma for each of n pending batches.

    maximize   Σ_i Σ_{q∈B_i} u_q · acc(γ_i) · 1[ Σ_{j≤i} lat(γ_j, |B_j|) ≤ d_q − now ]
    subject to mem(γ_i, |B_i|) ≤ M                      (as lat = inf for settings that do not fit)

Dynamic programme over (batch index i, elapsed time τ on a grid of step δ), solved backwards:

    V(i, k) = max_γ [ gain_i(γ, k + s_iγ) + V(i+1, k + s_iγ) ],   s_iγ = ceil(lat_iγ / δ)

Time discretisation (documented choice): each batch latency is rounded *up* to a whole number of
steps, so elapsed times are over-estimated by less than n·δ in total and a query the optimizer
counts as on time is on time under the profile. δ = max(delta_ms, horizon / (max_grid − 2)) where
the horizon is the latest deadline, so the grid never exceeds `max_grid` points: cost is
O(n · |Γ| · max_grid) vector work, independent of the number of queued queries. `brute_force`
evaluates the same rounded objective by enumeration; the tests check the two agree.

gain_i(γ, k) = Σ_groups w[γ, g] · #{q in group g : d_q ≥ k·δ}: a batch's members are grouped by
application (same utility and task), so a gain is a few counts from sorted deadlines.

With a `price` μ > 0 (utility per ms of device time, `otas.sched.price`), every batch also pays
μ · lat_iγ: device time spent now is time the work still to come cannot have. μ = 0 is the
paper's objective.
Pure functions of numpy arrays; no clock, no state.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@dataclass(frozen=True)
class BatchSpec:
    """One pending batch as the optimizer sees it."""

    deadlines: tuple[np.ndarray, ...]
    """Per group (application): member deadlines in ms relative to now, ascending."""
    weights: np.ndarray
    """(|Γ|, groups): u_a · acc(task_a, γ), the value of one on-time member of each group."""
    latency: np.ndarray
    """(|Γ|,): predicted batch latency in ms at each γ; inf where it does not fit in memory."""
    cost: np.ndarray | None = None
    """(|Γ|,): what running the batch at each γ costs the work still to come, in utility (e.g.
    μ · latency plus the arrivals it blocks); None = `price` · latency."""


@dataclass(frozen=True)
class Plan:
    choice: list[int]
    """Index into Γ for each batch, in order."""
    value: float
    """Objective of the plan under the rounded latencies."""
    delta_ms: float
    """The grid step actually used."""


def grid_step(specs: list[BatchSpec], delta_ms: float, max_grid: int) -> tuple[float, int]:
    """(δ, G): the step and the number of grid points k = 0..G-1 (index G is the 'too late' pad)."""
    horizon = max((float(d[-1]) for s in specs for d in s.deadlines if len(d)), default=0.0)
    horizon = max(horizon, 0.0)
    delta = max(delta_ms, horizon / (max_grid - 2))
    return delta, int(horizon // delta) + 2


def _steps(spec: BatchSpec, delta: float, G: int) -> tuple[np.ndarray, np.ndarray]:
    """Rounded-up latency in grid steps (clipped to the pad index G) and the validity mask."""
    valid = np.isfinite(spec.latency)
    lat = np.where(valid, spec.latency, 0.0)
    s = np.ceil(lat / delta - 1e-9).astype(np.int64)
    return np.minimum(s, G), valid


def _counts(deadlines: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """#{d ≥ τ} for each τ (deadlines ascending)."""
    return len(deadlines) - np.searchsorted(deadlines, taus, side="left")


def plan(specs: list[BatchSpec], delta_ms: float = 0.25, max_grid: int = 512, price: float = 0.0) -> Plan:
    """Best gamma per batch for `specs` (executed in the given order). See the module docstring."""
    return plan_fronts(specs, [0], delta_ms, max_grid, price)[0]


Front = int | tuple[int, BatchSpec, BatchSpec]
"""A front: batch j, or batch j split into a head that runs first and the rest that runs second."""


def plan_fronts(
    specs: list[BatchSpec], fronts: list[Front], delta_ms: float = 0.25, max_grid: int = 512, price: float = 0.0
) -> list[Plan]:
    """For each j in `fronts`, the best plan with batch j moved to the front (the others keep their
    order). The value functions of the common suffix are shared, so front j costs j extra levels.

    A front (j, head, rest) plans batch j split in two: `head` first, then `rest`, then the others
    in order (one level more than front j). The split's members must lie within batch j's (the
    grid's horizon is that of `specs`); its plan lists a setting for head and rest."""
    if not specs:
        return [Plan([], 0.0, delta_ms) for _ in fronts]
    n = len(specs)
    delta, G = grid_step(specs, delta_ms, max_grid)
    taus = np.arange(G + 1) * delta  # τ of each grid index; index G stands for 'after the horizon'
    splits = [f for f in fronts if not isinstance(f, int)]
    all_specs = specs + [x for _, head, rest in splits for x in (head, rest)]  # a split's at n + 2m, n + 2m + 1
    steps = [_steps(spec, delta, G) for spec in all_specs]
    # OPTIMIZATION: rows of min(k + s, G) are windows of one ramp, and a batch's counts and grid
    # indices are built only when it gets a level (the first batch of a plan needs neither)
    after = sliding_window_view(np.minimum(np.arange(2 * G + 1), G), G)  # after[s][k] = min(k + s, G)

    built: dict[int, tuple[list[np.ndarray], np.ndarray]] = {}

    def level(i: int, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if i not in built:
            cnt = [_with_pad(_counts(d, taus), G) for d in all_specs[i].deadlines]
            built[i] = cnt, after[steps[i][0]]  # idx (|Γ|, G): grid point after batch i
        cnt, idx = built[i]
        return _level(all_specs[i], steps[i], cnt, idx, V, G, price)

    # base order: Vs[i] is the value of batches i..n-1 from each grid point (Vs[n] = 0)
    Vs: list[np.ndarray] = [np.empty(0)] * (n + 1)
    vals: list[np.ndarray] = [np.empty(0)] * n  # vals[i][γ, k]: value of γ at batch i from grid point k
    Vs[n] = np.zeros(G + 1)  # V[G] = 0 is the pad (every deadline has passed there)
    for i in range(n - 1, 0, -1):
        vals[i], Vs[i] = level(i, Vs[i + 1])
    out, m = [], 0
    for f in fronts:
        j = f if isinstance(f, int) else f[0]
        V, alt = Vs[j + 1] if j > 0 else Vs[1], dict(enumerate(vals))
        for i in range(j - 1, -1, -1):  # batches 0..j-1 run after batch j: fresh levels
            alt[i], V = level(i, V)
        order = [j, *range(j), *range(j + 1, n)]
        if not isinstance(f, int):  # head (index n + 2m) first, then rest (n + 2m + 1) where batch j was
            head, rest = n + 2 * m, n + 2 * m + 1
            m += 1
            alt[rest], V = level(rest, V)
            order = [head, rest, *order[1:]]
        val0 = _first(all_specs[order[0]], steps[order[0]], taus, V, G, price)
        out.append(_read_back(all_specs, steps, order, alt, val0, G, delta, price))
    return out


def net_value(spec: BatchSpec, price: float = 0.0) -> float:
    """The most one batch earns run now and alone, less its cost (device time at `price`)."""
    lat = np.where(np.isfinite(spec.latency), spec.latency, np.nan)  # (|Γ|,)
    c = _cost(spec, price)
    val = np.where(np.isnan(lat), np.nan, -c if c is not None else 0.0)  # NaN where it does not fit
    for g, d in enumerate(spec.deadlines):
        val = val + spec.weights[:, g] * (len(d) - np.searchsorted(d, lat, side="left"))
    return float(np.nanmax(val))


def _cost(spec: BatchSpec, price: float) -> np.ndarray | None:
    """(|Γ|,) cost of each setting (0 where it does not fit), or None when nothing is charged."""
    valid = np.isfinite(spec.latency)
    if spec.cost is not None:
        return np.where(valid, spec.cost, 0.0)
    return price * np.where(valid, spec.latency, 0.0) if price > 0 else None


def _with_pad(cnt: np.ndarray, G: int) -> np.ndarray:
    cnt[G] = 0
    return cnt


def _level(spec: BatchSpec, step, counts, idx: np.ndarray, V: np.ndarray, G: int, price: float):
    """One backward DP level: (val (|Γ|, G), the value function V for this level on)."""
    _, valid = step
    val = V[idx]
    for g, cnt in enumerate(counts):
        val += spec.weights[:, g, None] * cnt[idx]
    cost = _cost(spec, price)
    if cost is not None:
        val -= cost[:, None]
    if not valid.all():
        val[~valid] = -np.inf
    out = np.empty(G + 1)
    # OPTIMIZATION: only the max per column here; argmax is taken on the one column the optimal
    # path visits, when the path is read back.
    val.max(axis=0, out=out[:G])
    # past the horizon every later batch earns nothing and runs at its fastest setting
    out[G] = V[G] - float(cost[_cheapest(spec, cost)]) if cost is not None else V[G]
    return val, out


def _first(spec: BatchSpec, step, taus: np.ndarray, V: np.ndarray, G: int, price: float) -> np.ndarray:
    """The first batch's value per γ, at grid point 0 only."""
    s, valid = step
    val0 = V[s].copy()
    for g, d in enumerate(spec.deadlines):
        cnt = np.where(s < G, _counts(d, taus[s]), 0)
        val0 += spec.weights[:, g] * cnt
    cost = _cost(spec, price)
    if cost is not None:
        val0 -= cost
    val0[~valid] = -np.inf
    if not np.isfinite(val0).any():
        raise ValueError("no gamma fits the first batch in memory; lower max_batch or raise the limit")
    return val0


def _cheapest(spec: BatchSpec, cost: np.ndarray | None) -> int:
    """The valid setting of least cost, the fastest among equals (the fastest when nothing is charged)."""
    lat = spec.latency
    if cost is None:
        return int(np.argmin(lat))
    c = np.where(np.isfinite(lat), cost, np.inf)
    return _fastest_best(-c, lat)


def _fastest_best(val: np.ndarray, latency: np.ndarray) -> int:
    """The best γ; among equally good ones the fastest (on a GPU a merged γ can be slower than 0)."""
    top = val.max()
    best = np.flatnonzero(val >= top - 1e-12 * max(1.0, abs(top)))
    return int(best[np.argmin(latency[best])]) if len(best) > 1 else int(best[0])


def _read_back(
    specs, steps, order: list[int], vals: dict[int, np.ndarray], val0: np.ndarray, G: int, delta: float, price: float
):
    """The optimal path through the levels of `order` (batch indices in execution order)."""
    g0 = _fastest_best(val0, specs[order[0]].latency)
    choice, at = [g0], int(steps[order[0]][0][g0])
    for i in order[1:]:
        if at >= G:  # past the horizon every setting gains nothing: the cheapest valid one (then fastest)
            g = _cheapest(specs[i], _cost(specs[i], price))
        else:
            g = _fastest_best(vals[i][:, at], specs[i].latency)
        choice.append(g)
        at = min(at + int(steps[i][0][g]), G)
    return Plan(choice, float(val0[g0]), delta)


def evaluate(specs: list[BatchSpec], choice: list[int], delta: float, price: float = 0.0) -> float:
    """Objective of one plan with latencies rounded up to whole steps of `delta` (as in `plan`)."""
    K, total = 0, 0.0
    for spec, g in zip(specs, choice, strict=True):
        lat = float(spec.latency[g])
        if not math.isfinite(lat):
            return -math.inf
        cost = _cost(spec, price)
        total -= float(cost[g]) if cost is not None else 0.0
        K += math.ceil(lat / delta - 1e-9)
        tau = K * delta
        for j, d in enumerate(spec.deadlines):
            total += float(spec.weights[g, j]) * int(_counts(d, np.array([tau]))[0])
    return total


def brute_force(specs: list[BatchSpec], delta_ms: float = 0.25, max_grid: int = 512, price: float = 0.0) -> Plan:
    """Exhaustive search over Γ^n (for tests and tiny instances only)."""
    delta, _ = grid_step(specs, delta_ms, max_grid)
    n_gamma = len(specs[0].latency) if specs else 0
    best: tuple[float, list[int]] = (-math.inf, [])
    for choice in itertools.product(range(n_gamma), repeat=len(specs)):
        v = evaluate(specs, list(choice), delta, price)
        if v > best[0] + 1e-12 * max(1.0, abs(v)):
            best = (v, list(choice))
    return Plan(best[1], best[0], delta)
