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
import threading
from dataclasses import dataclass

import numpy as np


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


_NONE = np.empty(0)


class _Batch:
    """What the DP reads of one spec on one grid, built once per `plan_fronts` call (`_batches`)."""

    __slots__ = ("spec", "s", "steps", "lat", "valid", "invalid", "cost", "costs", "cheapest", "rows", "counts", "wins")

    def __init__(self, spec: BatchSpec, s: np.ndarray, steps: list[int], lat: list[float], valid: list[bool]) -> None:
        self.spec = spec
        self.s = s  # (|Γ|,) latency in whole grid steps per γ, clipped to the pad index G
        self.steps = steps  # the same as a list
        self.lat = lat  # spec.latency as a list
        self.valid = valid  # fits in memory, per γ
        self.invalid: np.ndarray | None = None  # ~valid where some setting does not fit
        self.cost: np.ndarray | None = None  # (|Γ|,) what each setting costs
        self.costs: list[float] | None = None  # the same as a list
        self.cheapest = 0  # the valid setting of least cost, the fastest among equals
        self.rows: list[int] = []  # per group: its row of `counts`
        self.counts: np.ndarray = _NONE  # (rows, 2G + 1): #{d ≥ τ_k} for k < G, 0 from G on (all batches')
        self.wins: np.ndarray = _NONE  # (rows, G + 1, G): their `_windows`

    def level(self, ws: _Workspace, v: int, slot: int, G: int) -> None:
        """One backward DP level, in workspace slots: given V (ws.V[v], (2G + 1,): the value from the
        next batch on, padded past G with V[G]), ws.vals[slot] (|Γ|, G) receives the value of each
        γ, val[γ, k] = V[k'] + Σ_g w[γ, g] · count_g[k'] − cost[γ] with k' = min(k + s_γ, G), and
        ws.V[slot + 1] the value of this batch on."""
        # OPTIMIZATION: V and the counts are padded past G, so the row of γ is the window from s_γ
        # (rows of `_windows` views made once); counts are floats (a float × int product is
        # several times slower in numpy)
        s, w, val, V = self.s, self.spec.weights, ws.vals[slot], ws.V[v]
        np.add(ws.wins[v][s], self.wins[self.rows[0], s] * w[:, 0, None], out=val)  # a batch has ≥ 1 group
        for g in range(1, len(self.rows)):
            val += self.wins[self.rows[g], s] * w[:, g, None]
        if self.cost is not None:
            val -= self.cost[:, None]
        if self.invalid is not None:
            val[self.invalid] = -np.inf
        out = ws.V[slot + 1]
        # only the max per column here; the argmax is taken on the one column the optimal path
        # visits, when the path is read back
        val.max(axis=0, out=out[:G])
        # past the horizon every later batch earns nothing and runs at its cheapest setting
        out[G:] = V[G] - self.costs[self.cheapest] if self.cost is not None else V[G]

    def first(self, V: np.ndarray) -> list[float]:
        """The value of each γ run first (from grid point 0), `V` the value after it: column 0 of
        what `level` computes, by the same operations in the same order (so the same floats)."""
        s, w = self.s, self.spec.weights
        val = V[s] + self.counts[self.rows[0], s] * w[:, 0]
        for g in range(1, len(self.rows)):
            val += self.counts[self.rows[g], s] * w[:, g]
        if self.cost is not None:
            val -= self.cost
        if self.invalid is not None:
            val[self.invalid] = -np.inf
        return val.tolist()


def _batches(specs: list[BatchSpec], delta: float, G: int, taus: np.ndarray, price: float) -> list[_Batch]:
    """The `_Batch` of each spec: steps, validity, costs and counts of all specs in one vector pass."""
    # OPTIMIZATION: np.array of a list of rows (np.stack costs several times more per call)
    lat = np.array([s.latency for s in specs])  # (specs, |Γ|)
    valid = np.isfinite(lat)
    steps = np.minimum(np.ceil(np.where(valid, lat, 0.0) / delta - 1e-9).astype(np.int64), G)
    out = [_Batch(*x) for x in zip(specs, steps, steps.tolist(), lat.tolist(), valid.tolist(), strict=True)]
    for b, ok, v in zip(out, valid.all(axis=1).tolist(), valid, strict=True):
        if not ok:
            b.invalid = ~v
    own = [s.cost is not None for s in specs]
    if all(own) or (price > 0 and not any(own)):
        cost = np.where(valid, np.array([s.cost for s in specs]) if own[0] else price * lat, 0.0)  # (specs, |Γ|)
        # the cheapest setting of each (`_fastest_best` of −cost, as one vector pass)
        neg = -np.where(valid, cost, np.inf)
        top = neg.max(axis=1)
        best = neg >= (top - 1e-12 * np.maximum(1.0, np.abs(top)))[:, None]
        cheapest = np.where(best, lat, np.inf).argmin(axis=1)
        for b, c, cl, k in zip(out, cost, cost.tolist(), cheapest.tolist(), strict=True):
            b.cost, b.costs, b.cheapest = c, cl, k
    else:
        for b, spec in zip(out, specs, strict=True):
            c = _cost(spec, price)
            if c is None:  # the fastest (the first of the fastest)
                b.cheapest = b.lat.index(min(b.lat))
            else:
                b.cost, b.costs = c, c.tolist()
                neg = [-x if ok else -math.inf for x, ok in zip(b.costs, b.valid, strict=True)]
                b.cheapest = _fastest_best(neg, b.lat)
    # counts of every group: #{d ≥ τ_k} = m − #{d : q_d ≤ k}, q_d = #{k' < G : τ_k' ≤ d}
    groups = [d for spec in specs for d in spec.deadlines]
    sizes = np.array([len(d) for d in groups])
    q = taus[:G].searchsorted(np.concatenate(groups), side="right")  # (Σ sizes,)
    row = np.repeat(np.arange(len(groups)) * (G + 1), sizes)
    hist = np.bincount(row + q, minlength=len(groups) * (G + 1)).reshape(len(groups), G + 1)
    hist.cumsum(axis=1, out=hist)
    counts = np.zeros((len(groups), 2 * G + 1))  # (groups, 2G + 1)
    counts[:, :G] = (sizes[:, None] - hist)[:, :G]
    wins = _windows(counts, G)
    rows = iter(range(len(groups)))
    for b in out:
        b.counts, b.wins = counts, wins
        b.rows = [next(rows) for _ in b.spec.deadlines]
    return out


def _windows(a: np.ndarray, G: int) -> np.ndarray:
    """(..., G + 1, G) view of `a` (..., 2G + 1), C-contiguous: [..., s, :] is a[..., s : s + G]."""
    return np.ndarray((*a.shape[:-1], G + 1, G), a.dtype, a, 0, (*a.strides[:-1], a.itemsize, a.itemsize))


class _Workspace:
    """One buffer per thread, reused by every `plan_fronts` call (fresh arrays of this size cost
    page faults), carved into the levels of one call by `levels`."""

    def __init__(self) -> None:
        self.buf = np.empty(0)

    def levels(self, n: int, n_gamma: int, G: int) -> None:
        """Room for n DP levels: vals[l] (|Γ|, G) the value of each γ at level l, V[l + 1] (2G + 1,)
        the value from its batch on (V[0] = 0: after the last batch), wins[l] V[l]'s `_windows`."""
        size = n * n_gamma * G
        need = size + (n + 1) * (2 * G + 1)
        if len(self.buf) < need:
            self.buf = np.empty(max(need, 2 * len(self.buf)))
        self.vals = self.buf[:size].reshape(n, n_gamma, G)
        self.V = self.buf[size:need].reshape(n + 1, 2 * G + 1)
        self.V[0] = 0.0
        self.wins = _windows(self.V, G)


_scratch = threading.local()


def _workspace() -> _Workspace:
    ws = getattr(_scratch, "ws", None)
    if ws is None:
        ws = _scratch.ws = _Workspace()
    return ws


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
    if n == 1 and fronts == [0]:
        return [_alone(specs[0], delta, G, taus, price)]
    splits = [f for f in fronts if not isinstance(f, int)]
    batches = _batches(specs + [x for _, head, rest in splits for x in (head, rest)], delta, G, taus, price)
    ws = _workspace()
    ws.levels(n - 1 + sum((f if isinstance(f, int) else f[0] + 1) for f in fronts), len(specs[0].latency), G)
    # base order: batch i (≥ 1) is level i - 1, and V[i] the value of batches i..n-1 (V[0] = 0: the
    # value after the last batch, as V[n] would be)
    Vs = [*range(n), 0]
    for i in range(n - 1, 0, -1):
        batches[i].level(ws, Vs[i + 1], i - 1, G)
    out, m, free = [], n, n - 1
    for f in fronts:
        j = f if isinstance(f, int) else f[0]
        path = [(batches[i], ws.vals[i - 1]) for i in range(j + 1, n)]  # after the front, in execution order
        v = Vs[j + 1]
        for i in range(j - 1, -1, -1):  # batches 0..j-1 run after batch j: fresh levels
            batches[i].level(ws, v, free, G)
            path.insert(0, (batches[i], ws.vals[free]))
            v, free = free + 1, free + 1
        front = batches[j]
        if not isinstance(f, int):  # the head first, then the rest where batch j was
            front, rest = batches[m], batches[m + 1]
            m += 2
            rest.level(ws, v, free, G)
            path.insert(0, (rest, ws.vals[free]))
            v, free = free + 1, free + 1
        out.append(_read_back(front, front.first(ws.V[v]), path, G, delta))
    return out


def _alone(spec: BatchSpec, delta: float, G: int, taus: np.ndarray, price: float) -> Plan:
    """`plan_fronts` of one batch, run now (front 0): no DP level, only its value per γ run first.
    OPTIMIZATION: the counts at its own steps alone (a decision often sees one batch), then the
    same operations as `_Batch.first` with V = 0 after it (so the same floats)."""
    lat = spec.latency.tolist()
    valid = [math.isfinite(x) for x in lat]
    steps = [min(math.ceil(x / delta - 1e-9), G) if ok else 0 for x, ok in zip(lat, valid, strict=True)]
    c = _cost(spec, price)
    costs = None if c is None else c.tolist()
    # #{d ≥ τ_k} = m − #{d < τ_k} (deadlines ascending) for k < G, 0 from G on (as `_batches` counts)
    tau, counts = taus[steps], []
    for d in spec.deadlines:
        n = (len(d) - d.searchsorted(tau)).tolist()
        counts.append([0 if k >= G else x for x, k in zip(n, steps, strict=True)])
    w = spec.weights.tolist()
    val0 = []
    for r in range(len(lat)):
        if not valid[r]:
            val0.append(-math.inf)
            continue
        v = 0.0
        for g, cnt in enumerate(counts):
            v += w[r][g] * cnt[r]
        if costs is not None:
            v -= costs[r]
        val0.append(v)
    if not any(math.isfinite(v) for v in val0):
        raise ValueError("no gamma fits the first batch in memory; lower max_batch or raise the limit")
    g0 = _fastest_best(val0, lat)
    return Plan([g0], val0[g0], delta)


def _read_back(front: _Batch, val0: list[float], path: list[tuple[_Batch, np.ndarray]], G: int, delta: float):
    """The optimal path: `front` from grid point 0 (`val0` its value per γ), then each batch of
    `path` from the grid point the path reached (with its level's values)."""
    if not any(math.isfinite(v) for v in val0):
        raise ValueError("no gamma fits the first batch in memory; lower max_batch or raise the limit")
    g0 = _fastest_best(val0, front.lat)
    choice, at = [g0], front.steps[g0]
    for b, val in path:
        if at >= G:  # past the horizon every setting gains nothing: the cheapest valid one (then fastest)
            g = b.cheapest
        else:
            g = _fastest_best(val[:, at].tolist(), b.lat)
        choice.append(g)
        at = min(at + b.steps[g], G)
    return Plan(choice, val0[g0], delta)


def net_value(spec: BatchSpec, price: float = 0.0) -> float:
    """The most one batch earns run now and alone, less its cost (device time at `price`); NaN
    if no setting fits. OPTIMIZATION: plain Python over γ (a handful of values)."""
    c = _cost(spec, price)
    cost = None if c is None else c.tolist()
    counts = [(len(d) - d.searchsorted(spec.latency, side="left")).tolist() for d in spec.deadlines]
    best = math.nan
    for r, (lat, w) in enumerate(zip(spec.latency.tolist(), spec.weights.tolist(), strict=True)):
        if not math.isfinite(lat):  # does not fit
            continue
        v = -cost[r] if cost is not None else 0.0
        for g, cnt in enumerate(counts):
            v = v + w[g] * cnt[r]
        if not v <= best:  # the first, or a larger one
            best = v
    return best


def _cost(spec: BatchSpec, price: float) -> np.ndarray | None:
    """(|Γ|,) cost of each setting (0 where it does not fit), or None when nothing is charged."""
    valid = np.isfinite(spec.latency)
    if spec.cost is not None:
        return np.where(valid, spec.cost, 0.0)
    return price * np.where(valid, spec.latency, 0.0) if price > 0 else None


def _fastest_best(val: list[float], latency: list[float]) -> int:
    """The best γ; among equally good ones the fastest (on a GPU a merged γ can be slower than 0),
    the first among equally fast. OPTIMIZATION: plain Python on lists (|Γ| ≤ a few dozen)."""
    top = max(val)
    floor = top - 1e-12 * max(1.0, abs(top))
    best = -1
    for i, v in enumerate(val):
        if v >= floor and (best < 0 or latency[i] < latency[best]):
            best = i
    return best


def _counts(deadlines: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """#{d ≥ τ} for each τ (deadlines ascending)."""
    return len(deadlines) - np.searchsorted(deadlines, taus, side="left")


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
