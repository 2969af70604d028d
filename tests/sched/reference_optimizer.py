"""A straightforward reference of `otas.sched.optimizer.plan_fronts`: each front's order planned on
its own by the plain backward DP (no shared suffix, no lazy levels, no caches), with the same
grid, the same rounding, the same tie rules and the same floating-point operations in the same
order, so the optimised planner must return the very same choices and values."""

from __future__ import annotations

import math

import numpy as np

from otas.sched.optimizer import BatchSpec, Plan, grid_step


def reference_fronts(specs: list[BatchSpec], fronts: list, delta_ms: float, max_grid: int, price: float) -> list[Plan]:
    if not specs:
        return [Plan([], 0.0, delta_ms) for _ in fronts]
    delta, G = grid_step(specs, delta_ms, max_grid)  # the grid of `specs`, whatever the front
    out = []
    for f in fronts:
        if isinstance(f, int):
            order = [specs[f], *specs[:f], *specs[f + 1 :]]
        else:
            j, head, rest = f
            order = [head, rest, *specs[:j], *specs[j + 1 :]]
        out.append(_plan_order(order, delta, G, price))
    return out


def _plan_order(order: list[BatchSpec], delta: float, G: int, price: float) -> Plan:
    taus = np.arange(G + 1) * delta
    k = np.arange(G)
    vals: list[np.ndarray | None] = [None] * len(order)
    V = np.zeros(G + 1)
    for i in range(len(order) - 1, 0, -1):
        spec = order[i]
        s, valid = _steps(spec, delta, G)
        idx = np.minimum(k[None, :] + s[:, None], G)  # (|Γ|, G)
        val = V[idx]
        for g, d in enumerate(spec.deadlines):
            cnt = len(d) - np.searchsorted(d, taus, side="left")
            cnt[G] = 0
            val += spec.weights[:, g, None] * cnt[idx]
        cost = _cost(spec, price)
        if cost is not None:
            val -= cost[:, None]
        val[~valid] = -np.inf
        new = np.empty(G + 1)
        new[:G] = val.max(axis=0)
        new[G] = V[G] - float(cost[_cheapest(spec, cost)]) if cost is not None else V[G]
        vals[i], V = val, new
    spec = order[0]
    s, valid = _steps(spec, delta, G)
    val0 = V[s].copy()
    for g, d in enumerate(spec.deadlines):
        cnt = np.where(s < G, len(d) - np.searchsorted(d, taus[s], side="left"), 0)
        val0 += spec.weights[:, g] * cnt
    cost = _cost(spec, price)
    if cost is not None:
        val0 -= cost
    val0[~valid] = -np.inf
    g0 = _fastest_best(val0, spec.latency)
    choice, at = [g0], int(s[g0])
    for i in range(1, len(order)):
        spec = order[i]
        s, _ = _steps(spec, delta, G)
        if at >= G:
            g = _cheapest(spec, _cost(spec, price))
        else:
            g = _fastest_best(vals[i][:, at], spec.latency)
        choice.append(g)
        at = min(at + int(s[g]), G)
    return Plan(choice, float(val0[g0]), delta)


def _steps(spec: BatchSpec, delta: float, G: int) -> tuple[np.ndarray, np.ndarray]:
    valid = np.isfinite(spec.latency)
    s = np.ceil(np.where(valid, spec.latency, 0.0) / delta - 1e-9).astype(np.int64)
    return np.minimum(s, G), valid


def _cost(spec: BatchSpec, price: float) -> np.ndarray | None:
    valid = np.isfinite(spec.latency)
    if spec.cost is not None:
        return np.where(valid, spec.cost, 0.0)
    return price * np.where(valid, spec.latency, 0.0) if price > 0 else None


def _cheapest(spec: BatchSpec, cost: np.ndarray | None) -> int:
    if cost is None:
        return int(np.argmin(spec.latency))
    return _fastest_best(-np.where(np.isfinite(spec.latency), cost, np.inf), spec.latency)


def _fastest_best(val: np.ndarray, latency: np.ndarray) -> int:
    top = val.max()
    best = np.flatnonzero(val >= top - 1e-12 * max(1.0, abs(top)))
    return int(best[np.argmin(latency[best])])


def reference_net_value(spec: BatchSpec, price: float) -> float:
    """`otas.sched.optimizer.net_value` as numpy over γ."""
    lat = np.where(np.isfinite(spec.latency), spec.latency, np.nan)  # (|Γ|,)
    c = _cost(spec, price)
    val = np.where(np.isnan(lat), np.nan, -c if c is not None else 0.0)  # NaN where it does not fit
    for g, d in enumerate(spec.deadlines):
        val = val + spec.weights[:, g] * (len(d) - np.searchsorted(d, lat, side="left"))
    return float(np.nanmax(val)) if not np.isnan(val).all() else math.nan
