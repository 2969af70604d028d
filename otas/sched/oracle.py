"""Offline upper bound on the utility any schedule can earn on a trace ("oracle").

Setting. One device runs batches one at a time. A batch B at setting (model m, γ) may start only
once all its members have arrived, runs lat_m(γ, |B|) ms (|B| ≤ B_max and fitting in memory),
and earns u_q · acc_m(task_q, γ) for each member that finishes by its deadline. Model-switch
delays only add time, so ignoring them (below) keeps this an upper bound for every policy here.

Per-query cost. For application a and option o = (m, γ) let
    c_a(o) = min { lat_m(γ, b) / b : 1 ≤ b ≤ B_max, fits in memory, lat_m(γ, b) ≤ D_a }
(undefined, so the option is unusable, if no b qualifies: a batch holding a query of a starts at or
after its arrival and must end by arrival + D_a, so its latency is at most D_a), and
v_a(o) = u_a · acc_m(task_a, o). A batch of b members at o takes lat = b · (lat / b) ≥
Σ_{q∈B} c_{a_q}(o) ms.

Window constraint. Fix a window W = [s, e). Let Q_W be the queries with arrival ≥ s and deadline
≤ e. Any batch that serves a member of Q_W on time starts ≥ s and ends ≤ e, so lies inside W;
batches are disjoint in time, hence Σ over on-time q ∈ Q_W of c_{a_q}(o_q) ≤ e − s.

Bound. For any partition of time into windows, the optimum of
    max Σ_q Σ_o v_a(o) x_qo   s.t.  Σ_o x_qo ≤ 1,  x ≥ 0,
                               Σ_{q∈Q_W} Σ_o c_a(o) x_qo ≤ |W|   for every window W,
is ≥ the utility of every feasible schedule (set x_qo = 1 for the option q was served on time
with: every constraint holds by the argument above). The windows are disjoint, so the LP splits:
a query in no Q_W contributes at most max_o v_a(o); inside a window it is a fractional
multiple-choice knapsack whose optimum is the greedy fill of each application's upper concave
hull of {(0, 0)} ∪ {(c_a(o), v_a(o))}, increments taken by decreasing slope (n_a identical
queries scale an application's increments by n_a) — the classical LP solution of the
multiple-choice knapsack. The minimum over several partitions (window lengths and offsets) is
still an upper bound. The tests check it against exhaustive search on small instances.
Latencies are the profile's (the bound holds for noise-free simulation).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from otas.config import SchedulerConfig
from otas.profile.table import Profile
from otas.types import App, Request


@dataclass(frozen=True)
class Bound:
    value: float
    window_ms: float
    """Length of the window partition that gave the minimum."""
    offset_ms: float


def options(app: App, profiles: Sequence[Profile], cfg: SchedulerConfig) -> list[tuple[float, float]]:
    """(c_a(o), v_a(o)) for every usable option o = (model, γ) of this application."""
    out = []
    for p in (p.for_max_batch(cfg.max_batch) for p in profiles):
        for gamma in p.servable(app.task):
            costs = [
                p.lat(gamma, b) / b
                for b in range(1, cfg.max_batch + 1)
                if p.lat(gamma, b) <= app.slo_ms
                and (cfg.memory_limit_mb is None or p.mem(gamma, b) <= cfg.memory_limit_mb)
            ]
            if costs:
                out.append((min(costs), app.utility * p.acc(app.task, gamma)))
    return out


def hull_increments(opts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Increments (dc, dv) along the upper concave hull of {(0,0)} ∪ opts, slopes decreasing."""
    pts = sorted(set(opts), key=lambda p: (p[0], -p[1]))
    hull: list[tuple[float, float]] = [(0.0, 0.0)]
    for c, v in pts:
        if v <= hull[-1][1]:
            continue  # dominated: costs at least as much, earns no more
        while len(hull) >= 2:
            (c1, v1), (c2, v2) = hull[-2], hull[-1]
            if (v2 - v1) * (c - c1) <= (v - v1) * (c2 - c1):  # hull[-1] under the chord
                hull.pop()
            else:
                break
        hull.append((c, v))
    return [(c2 - c1, v2 - v1) for (c1, v1), (c2, v2) in zip(hull, hull[1:], strict=False)]


def _window_lp(counts: dict[str, int], incs: dict[str, list[tuple[float, float]]], capacity: float) -> float:
    steps = sorted(
        ((dv / dc, dc * counts[a], dv * counts[a]) for a in counts for dc, dv in incs[a]),
        key=lambda x: -x[0],
    )
    total = 0.0
    for _, dc, dv in steps:
        if capacity <= 0:
            break
        take = min(1.0, capacity / dc) if dc > 0 else 1.0
        total += take * dv
        capacity -= take * dc
    return total


def upper_bound(
    requests: Sequence[Request],
    apps: Sequence[App],
    profiles: Profile | Sequence[Profile],
    cfg: SchedulerConfig,
    windows: Sequence[float] | None = None,
) -> Bound:
    """Min over window partitions of the LP bound (module docstring). `windows`: lengths in ms,
    default 2, 4, ..., 64 × the largest SLO, each at offsets 0 and half a window."""
    profs = [profiles] if isinstance(profiles, Profile) else list(profiles)
    opts = {a.name: options(a, profs, cfg) for a in apps}
    incs = {a: hull_increments(o) for a, o in opts.items()}
    vmax = {a: max((v for _, v in o), default=0.0) for a, o in opts.items()}
    if not requests:
        return Bound(0.0, math.nan, 0.0)
    t0 = min(r.arrival_ms for r in requests)
    max_slo = max(a.slo_ms for a in apps)
    lengths = windows or [max_slo * 2**i for i in range(1, 7)]
    best = Bound(math.inf, math.nan, 0.0)
    for L in lengths:
        for off in (0.0, L / 2):
            inside: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            total = 0.0
            for r in requests:
                w = math.floor((r.arrival_ms - t0 - off) / L)
                if r.deadline_ms <= t0 + off + (w + 1) * L:
                    inside[w][r.app] += 1
                else:
                    total += vmax[r.app]
            for counts in inside.values():
                total += _window_lp(counts, incs, L)
            if total < best.value:
                best = Bound(total, L, off)
    return best
