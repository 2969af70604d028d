"""Application-aware routing over engine replicas. Pure: no ray, no asyncio, no torch; the clock
is injected (`now_ms` arguments), as in `otas.sched`.

Selective batching only pays when requests that may share a batch meet in one replica's queue: a
batch is a prefix of one *SLO class* queue (`otas.sched.batching`). So the router keeps each SLO
class on as few replicas as possible while balancing load:

1. **Home shares (McNaughton's wrap-around rule).** Lay the classes' arrival rates end to end (in
   SLO order) on a line and cut it into one equal segment per healthy replica. A replica serves the
   classes its segment covers; at most (replicas − 1) classes are split, each over two neighbouring
   replicas, and every replica gets the same load. Rates are EWMAs of arrivals, re-cut every
   `rebalance_ms`; a split class alternates by smooth weighted round-robin (deterministic).
2. **Spill-over by predicted slack.** With n requests in flight at a replica, a new one waits for
   the batch running there and then for a batch holding all n + 1: predicted wait =
   f · (lat(min(n, B)) · ⌈n/B⌉ + lat(min(n + 1, B))), lat the profile at the fastest setting (what
   the scheduler itself falls back to under load) and f the replica's measured / profiled batch
   time (EWMA). When the home's slack (SLO − age − predicted wait) falls below `spill_slack` × SLO,
   the request goes to the healthy replica with the most slack instead, if that one has more.
3. **Failures.** A replica that fails a call is out of every choice until it is `up` again; shares are
   re-cut over the healthy ones at once. With none healthy, `route` raises `NoReplica`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from otas.sched.batching import slo_classes
from otas.types import App


@dataclass
class RouterConfig:
    """Knobs of the router; validated at construction."""

    spill_slack: float = 0.25
    """Spill a request off its home replica when the home's predicted slack is below this fraction
    of the SLO and another healthy replica has more. 0 = spill only when the home predicts a miss."""
    rebalance_ms: float = 2000.0
    """How often the home shares are re-cut from the measured arrival rates."""
    rate_halflife_ms: float = 10_000.0
    """Half-life of the per-class arrival-rate EWMA behind the shares."""
    factor_ewma: float = 0.2
    """Weight of each answer in a replica's measured / profiled batch-time factor."""
    min_share: float = 0.1
    """A class's share on a replica below this is folded into its largest share (a sliver of a
    class on another replica costs a batch there and buys almost no balance)."""
    slo_class_tolerance: float = 0.0
    """As `SchedulerConfig.slo_class_tolerance`: classes must match the replicas' queues."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.spill_slack < 1.0:
            raise ValueError(f"spill_slack={self.spill_slack!r}: use a fraction of the SLO in [0, 1), e.g. 0.25")
        if not (self.rebalance_ms > 0 and math.isfinite(self.rebalance_ms)):
            raise ValueError(f"rebalance_ms={self.rebalance_ms!r}: use a positive period in ms, e.g. 2000")
        if not self.rate_halflife_ms > 0:
            raise ValueError(f"rate_halflife_ms={self.rate_halflife_ms!r}: use a positive half-life in ms")
        if not 0.0 < self.factor_ewma <= 1.0:
            raise ValueError(f"factor_ewma={self.factor_ewma!r}: use a weight in (0, 1], e.g. 0.2")
        if not 0.0 <= self.min_share < 0.5:
            raise ValueError(f"min_share={self.min_share!r}: use a fraction in [0, 0.5), e.g. 0.1")
        if self.slo_class_tolerance < 0:
            raise ValueError(f"slo_class_tolerance={self.slo_class_tolerance!r}: use >= 0, as the scheduler's")


class NoReplica(Exception):
    """No healthy replica to send a request to."""


@dataclass(frozen=True)
class Route:
    replica: int
    kind: str
    """`home` (the class's share), `spill` (home too slow) or `retry` (a re-send after a failure)."""
    slack_ms: float
    """Predicted slack at the chosen replica when routed."""


def wraparound(loads: Sequence[float], n: int, min_share: float = 0.0) -> list[dict[int, float]]:
    """McNaughton's wrap-around rule: per item (in order), {bin: share} over `n` equal bins.

    Items are laid end to end on [0, Σ loads) and bin k takes [k·T/n, (k+1)·T/n); at most n − 1
    items are split, each over adjacent bins. A zero-load item goes whole to the bin at its position.
    Shares below `min_share` are folded into the item's largest share.
    """
    if n < 1:
        raise ValueError(f"n={n}: need at least one bin")
    if any(x < 0 or not math.isfinite(x) for x in loads):
        raise ValueError(f"loads {list(loads)} must be finite and >= 0")
    peak = max(loads, default=0.0)
    if peak <= 0:
        return [{i % n: 1.0} for i in range(len(loads))]  # no information: spread items round-robin
    loads = [x / peak for x in loads]  # the rule is scale-free: subnormal loads would divide by 0
    total = float(sum(loads))
    width, eps = total / n, 1e-9 * total
    out, pos = [], 0.0
    for load in loads:
        lo, hi = pos, pos + load
        pos = hi
        shares: dict[int, float] = {}
        k = min(int(lo / width), n - 1)
        while load > eps and k < n and k * width < hi - eps:
            overlap = min(hi, (k + 1) * width) - max(lo, k * width)
            if overlap > eps:
                shares[k] = overlap / load
            k += 1
        if not shares:  # a (near-)zero load: whole, to the bin at its position
            out.append({min(int(lo / width), n - 1): 1.0})
            continue
        norm = sum(shares.values())
        shares = {k: s / norm for k, s in shares.items()}
        small = [k for k, s in shares.items() if s < min_share]
        if small and len(small) < len(shares):
            keep = max(shares, key=shares.__getitem__)
            for k in small:
                shares[keep] += shares.pop(k)
        out.append(shares)
    return out


@dataclass
class _Replica:
    up: bool = True
    inflight: int = 0
    factor: float = 1.0
    """Measured / profiled (fastest setting) batch time, EWMA: above 1 when slower settings run."""
    routed: dict[str, int] = field(default_factory=dict)
    """Requests sent here, per `kind:app`."""


class Router:
    """Chooses a replica per request; the caller reports `sent`, `done` and `failed`."""

    def __init__(
        self, apps: Sequence[App], replicas: int, lat_fast: Sequence[float], config: RouterConfig | None = None
    ) -> None:
        """`lat_fast[b]`: profiled ms of a batch of b (b = 0..B_max) at the fastest setting, nondecreasing."""
        if replicas < 1:
            raise ValueError(f"replicas={replicas}: use at least 1")
        if len(lat_fast) < 2 or lat_fast[0] != 0 or any(lat_fast[b] < lat_fast[b - 1] for b in range(1, len(lat_fast))):
            raise ValueError(f"lat_fast={list(lat_fast)[:5]}...: give [0, lat(1), ..., lat(B_max)], nondecreasing")
        self.lat = [float(x) for x in lat_fast]
        self.max_batch = len(self.lat) - 1
        self.config = config or RouterConfig()
        self.apps = {a.name: a for a in apps}
        self.classes = slo_classes(list(apps), self.config.slo_class_tolerance)
        self.class_of = {name: i for i, names in enumerate(self.classes) for name in names}
        self.replicas = [_Replica() for _ in range(replicas)]
        self._rate = [float(len(c)) for c in self.classes]  # prior: every application equally busy
        self._count = [0] * len(self.classes)
        self._window_start: float | None = None
        self._credit: list[dict[int, float]] = [{} for _ in self.classes]
        self.shares: list[dict[int, float]] = []
        self._recut()

    # -- choosing -------------------------------------------------------------------------------
    def route(self, app: str, now_ms: float, age_ms: float = 0.0, exclude: Sequence[int] = ()) -> Route:
        """The replica for one request of `app` that has waited `age_ms` already; raises NoReplica."""
        if app not in self.apps:
            raise ValueError(f"unknown application {app!r}; known: {sorted(self.apps)}")
        c = self.class_of[app]
        self._tick(now_ms)
        if not exclude:  # a retry is not a new arrival
            self._count[c] += 1
        ok = [k for k, r in enumerate(self.replicas) if r.up and k not in exclude]
        if not ok:
            raise NoReplica(f"no healthy replica ({self.healthy_count()} of {len(self.replicas)} up)")
        slo = self.apps[app].slo_ms
        slack = {k: slo - age_ms - self.predicted_wait_ms(k) for k in ok}
        best = max(ok, key=lambda k: (slack[k], -k))
        home = self._home(c, ok)
        if home is None:  # its share replicas are all excluded (they failed this request)
            home = best
        kind = "retry" if exclude else "home"
        if slack[home] < self.config.spill_slack * slo and slack[best] > slack[home]:
            home, kind = best, "spill"
        return Route(home, kind, slack[home])

    def predicted_wait_ms(self, k: int) -> float:
        r, b = self.replicas[k], self.max_batch
        n = r.inflight
        ahead = self.lat[min(n, b)] * -(-n // b)  # what is in flight, in full batches
        return r.factor * (ahead + self.lat[min(n + 1, b)])

    def _home(self, c: int, ok: list[int]) -> int | None:
        """Smooth weighted round-robin over the class's shares (healthy, not excluded replicas)."""
        shares = {k: s for k, s in self.shares[c].items() if k in ok}
        if not shares:
            return None
        credit = self._credit[c]
        for k, s in shares.items():
            credit[k] = credit.get(k, 0.0) + s
        pick = max(shares, key=lambda k: (credit[k], -k))
        credit[pick] -= sum(shares.values())
        return pick

    # -- feedback -------------------------------------------------------------------------------
    def sent(self, k: int, app: str, kind: str = "home") -> None:
        r = self.replicas[k]
        r.inflight += 1
        key = f"{kind}:{app}"
        r.routed[key] = r.routed.get(key, 0) + 1

    def done(self, k: int, exec_ms: float | None = None, batch_size: int = 0) -> None:
        """An answer (or a refusal) came back from replica k; a served one reports its batch's
        execution time and size, which correct the replica's factor."""
        r = self.replicas[k]
        r.inflight = max(r.inflight - 1, 0)
        if exec_ms is not None and 1 <= batch_size <= self.max_batch and exec_ms > 0:
            a = self.config.factor_ewma
            r.factor = (1 - a) * r.factor + a * exec_ms / self.lat[batch_size]

    def down(self, k: int) -> bool:
        """Replica k failed: out of every choice until `up`; shares re-cut now. True if it was up."""
        r = self.replicas[k]
        was = r.up
        r.up = False
        if was:
            self._recut()
        return was

    def up(self, k: int) -> bool:
        """Replica k answers again (Ray restarted it). True if it was down."""
        r = self.replicas[k]
        was = not r.up
        r.up = True
        if was:
            r.inflight = 0  # calls to the dead process have all ended by now (failed or timed out)
            self._recut()
        return was

    def healthy_count(self) -> int:
        return sum(r.up for r in self.replicas)

    # -- shares -----------------------------------------------------------------------------------
    def _tick(self, now_ms: float) -> None:
        """Fold the arrivals of a finished window into the rate EWMA and re-cut the shares."""
        if self._window_start is None:
            self._window_start = now_ms
            return
        span = now_ms - self._window_start
        if span < self.config.rebalance_ms:
            return
        keep = 0.5 ** (span / self.config.rate_halflife_ms)
        for c, n in enumerate(self._count):
            self._rate[c] = keep * self._rate[c] + (1 - keep) * n * 1000.0 / span  # per second
        self._count = [0] * len(self.classes)
        self._window_start = now_ms
        self._recut()

    def _recut(self) -> None:
        up = [k for k, r in enumerate(self.replicas) if r.up]
        if not up:
            self.shares = [{} for _ in self.classes]
            return
        floor = 0.02 * sum(self._rate) / len(self._rate)  # an idle class still has a home
        cut = wraparound([max(x, floor) for x in self._rate], len(up), self.config.min_share)
        self.shares = [{up[b]: s for b, s in sh.items()} for sh in cut]

    def snapshot(self) -> dict:
        """For `/v1/replicas` and logs: per replica health, load and routing counts; per class shares."""
        return {
            "replicas": [
                {"index": k, "up": r.up, "inflight": r.inflight, "factor": round(r.factor, 3),
                 "routed": dict(sorted(r.routed.items()))}
                for k, r in enumerate(self.replicas)
            ],
            "classes": [
                {"apps": names, "rate_per_s": round(self._rate[c], 3),
                 "shares": {str(k): round(s, 3) for k, s in sorted(self.shares[c].items())}}
                for c, names in enumerate(self.classes)
            ],
        }  # fmt: skip
