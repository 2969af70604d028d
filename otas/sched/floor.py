"""The floor: what each fixed γ would have earned on the same arrivals, online.

A policy that adapts γ per batch should never do worse than the best fixed γ would at the current
load. `FixedShadows` replays every arrival, as it comes, through one virtual server per γ that
batches exactly as the `fixed:<γ>` baseline does (one FIFO queue, every waiting query up to B_max,
hopeless queries dropped, a query rejected on arrival when even a batch of one would
finish late) on the profile's latencies, and keeps each one's utility (u_a · acc(task_a, γ) per
on-time query) as an exponentially decayed sum with time constant `floor_window` × the loosest SLO.
The policy keeps its own earned utility the same way (`earned`); both credit a batch when it
completes. Where a fixed γ's shadow earned more, the policy runs no setting slower than that γ
(`cap`). Nothing here is tuned but the window: the shadows are the baselines themselves.

Who earned more is judged on settled queries (`lag_ms`, the policy `otas`: the loosest SLO): each
query's utility dated at its arrival and counted once every query that arrived by then has ended.
Judged as batches complete, a shadow with a short queue (a fast γ) led a slower one that served the
same queries later and better, while its answers were still queued, so a burst capped the policy at
the fast γ (the H200 Azure trace at load 2: 0.983 of `fixed:-32` with completions, 1.003 settled).

Cost: each arrival (a request: its queries share an arrival and a deadline) enters |Γ| queues as one
entry, and leaves each of them once (split where a batch ends inside it), so the work is O(|Γ|) per
request, amortised, on top of one small step per decision: a server taking requests of dozens of
images does not pay it per image.
Pure python and numpy; no clock of its own (times are passed in).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np

from otas.sched.baselines import fallback_gamma
from otas.sched.decayed import Decayed
from otas.sched.modes import ModeJudge
from otas.types import App


def _credit(earned: Decayed, settled: Decayed, t_ms: float, done: Sequence[tuple[float, float]]) -> None:
    """A batch completed at `t_ms` with `done` on time, (arrival, value) each: to `earned` at `t_ms`, and
    to `settled`, where it is another sum, at each query's arrival."""
    earned.add(sum(v for _, v in done), t_ms)
    if settled is not earned:
        settled.add_dated(done)


class _Shadow:
    """One virtual `fixed:<γ>` server: FIFO queues of requests [arrival, deadline, value, queries], one per class (one
    class: the `fixed:<γ>` baseline; several: a batch never mixes classes, and the class whose head
    arrived first runs next, as the OTAS policies batch), device free at `free`."""

    def __init__(self, lat: np.ndarray, max_batch: int, tau_ms: float, classes: int = 1, lag_ms: float = 0.0):
        self.lat = lat  # (B_max + 1,) ms of a batch of each size at this γ, nondecreasing; inf: does not fit
        self._lat = lat.tolist()  # OPTIMIZATION: the same as floats (read per batch; a numpy scalar is slower)
        fits = np.flatnonzero(np.isfinite(lat[1 : max_batch + 1]))
        self.max_batch = int(fits[-1]) + 1 if len(fits) else 0  # as the scheduler caps a batch by memory
        # per class, FIFO of (arrival, deadline, value, n): n queries of one request not yet run; tuples of
        # numbers, which the cyclic GC stops tracking (OPTIMIZATION: a FIFO shadow under overload holds
        # every query within the loosest SLO, |Γ| times over, and lists made each full collection scan them)
        self.queues: list[deque[tuple]] = [deque() for _ in range(classes)]
        self.free = -math.inf
        self.earned = Decayed(tau_ms)
        self.settled = Decayed(tau_ms, lag_ms) if lag_ms > 0 else self.earned
        """What it earned, each query dated at its arrival and counted `lag_ms` late (`Decayed`)."""
        # (finish, [(arrival, value)] of its on-time members) of the batch in flight
        self.running: tuple[float, list[tuple[float, float]]] | None = None
        self.scale = 1.0  # measured over profiled latency, as the scheduler corrects its own predictions
        self.extra = 0.0  # ms of host overhead per batch, as the scheduler adds to its own

    def advance(self, t_ms: float) -> None:
        """Run every batch that starts by `t_ms`; credit those that finished by then."""
        lat = self._lat
        one = lat[1] * self.scale + self.extra
        while True:
            if self.running is not None and self.running[0] <= t_ms:  # credited when done, as the policy's are
                _credit(self.earned, self.settled, *self.running)
                self.running = None
            if self.free > t_ms:
                return
            if len(self.queues) == 1:  # (one class: its only queue)
                q = self.queues[0]
                if not q:
                    return
            else:
                waiting = [q for q in self.queues if q]
                if not waiting:
                    return
                q = min(waiting, key=lambda q: q[0][0])
            start = max(self.free, q[0][0])
            if start > t_ms:
                return
            members, size = [], 0  # (arrival, deadline, value, k): k of a request's queries
            while q and size < self.max_batch and q[0][0] <= start:
                x = q[0]
                if start + one > x[1]:  # hopeless (its queries share a deadline): dropped, as the scheduler drops it
                    q.popleft()
                    continue
                k = min(x[3], self.max_batch - size)
                members.append((x[0], x[1], x[2], k))
                size += k
                if k == x[3]:
                    q.popleft()
                else:  # the rest of the request waits for the next batch
                    q[0] = (x[0], x[1], x[2], x[3] - k)
            if not members:
                continue
            finish = start + lat[size] * self.scale + self.extra
            self.running = (finish, [(a, v * k if k > 1 else v) for a, d, v, k in members if d >= finish])
            self.free = finish

    def withdraw(self, arrival_ms: float, deadline_ms: float, cls: int = 0, n: int = 1) -> None:
        """`n` queries of the request that arrived at `arrival_ms` with that deadline leave unserved (their caller
        went away), if this shadow still has them queued; ones it already ran stay counted (from the newest:
        a caller that leaves has mostly just sent)."""
        q = self.queues[cls]
        for i in range(len(q) - 1, -1, -1):
            a, d, v, k = q[i]
            if a == arrival_ms and d == deadline_ms:
                if k > n:
                    q[i] = (a, d, v, k - n)
                else:
                    del q[i]
                return
            if a < arrival_ms:  # (FIFO by arrival: past it, the request is not queued here)
                return

    def submit(self, arrival_ms: float, deadline_ms: float, value: float, cls: int = 0, n: int = 1) -> None:
        """`n` queries of one request (one arrival and deadline), each worth `value` on time."""
        self.advance(arrival_ms)
        # else rejected on arrival, as reject_infeasible does
        if self.max_batch and arrival_ms + self._lat[1] * self.scale + self.extra <= deadline_ms:
            self.queues[cls].append((arrival_ms, deadline_ms, value, n))


class FixedShadows:
    """Every fixed γ of one model, shadowing the live arrivals; `cap` names the one to stay within."""

    def __init__(
        self,
        apps: Sequence[App],
        gammas: Sequence[int],
        lat: np.ndarray,
        weights: dict[str, np.ndarray],
        servable: dict[str, np.ndarray],
        max_batch: int,
        tau_ms: float,
        classes: Sequence[Sequence[str]] | None = None,
        follow: bool = False,
        settle_ms: float = 0.0,
        lag_ms: float = 0.0,
    ):
        """lat (B_max + 1, |Γ|) ms; weights / servable per application (|Γ|,): u_a · acc and whether
        the γ serves a's task (where not, a shadow serves it as `fixed:<γ>` does: at the servable γ
        nearest to it, towards 0). `classes`: groups of application names batched apart (the policy's
        SLO classes); None: one FIFO queue, as `fixed:<γ>`."""
        gammas = list(gammas)
        lat = np.maximum.accumulate(lat, axis=0)
        groups = classes or [[a.name for a in apps]]
        self.cls = {name: i for i, g in enumerate(groups) for name in g}
        self.lag = float(lag_ms)
        """> 0: whether the policy is behind a shadow, and which leads, is judged on utility dated at
        each query's arrival, `lag_ms` late (`Decayed`); `credit` then takes the queries' arrivals."""
        self.shadows = [_Shadow(lat[:, i], max_batch, tau_ms, len(groups), self.lag) for i in range(len(gammas))]
        self.value = {
            a.name: [float(weights[a.name][gammas.index(fallback_gamma(gammas, servable[a.name], g))]) for g in gammas]
            for a in apps
        }
        self.earned = Decayed(tau_ms)
        """What the policy itself earned, fed by `credit`."""
        self.settled = Decayed(tau_ms, self.lag) if self.lag > 0 else self.earned
        self.follow = follow
        self.following = False
        """Whether the policy should now run as the capping shadow does (`follow`): see `cap`."""
        # per mode (False: free under the cap, True: following), what the policy and the best shadow
        # earned while in it: their ratio judges the mode against the same yardstick
        self.modes = ModeJudge(tau_ms)
        self.delta: tuple[float, float] | None = None
        """What the policy and the shadow that led earned between the last two decisions (`_judge`):
        a yardstick for other choices of the policy's (its price, `Otas`)."""
        self._last: tuple[float, list[float], int] | None = None  # totals and best shadow at the last decision
        self._t0 = math.inf  # the first arrival
        self.settle = float(settle_ms)
        """No following before this long after the first arrival."""

    def submit(self, app: str, arrival_ms: float, deadline_ms: float, n: int = 1) -> None:
        """`n` queries of `app` arrived at once (one request: one deadline)."""
        self._t0 = min(self._t0, arrival_ms)
        cls = self.cls.get(app, 0)
        for s, v in zip(self.shadows, self.value[app], strict=True):
            s.submit(arrival_ms, deadline_ms, v, cls, n)

    def withdraw(self, app: str, arrival_ms: float, deadline_ms: float, n: int = 1) -> None:
        """`n` queries of `app` (one request) were taken out of the policy's queue unserved: every shadow that
        still queues them gives them up (`_Shadow.withdraw`), so a client that sends and leaves does not earn the
        shadows what the policy could not (the floor then capped every tenant at a fast γ for its window)."""
        cls = self.cls.get(app, 0)
        for s in self.shadows:
            s.withdraw(arrival_ms, deadline_ms, cls, n)

    def credit(self, t_ms: float, done: Sequence[tuple[float, float]]) -> None:
        """The policy's batch completed at `t_ms`: (arrival, value) of each query it served on time."""
        _credit(self.earned, self.settled, t_ms, done)

    def cap(self, now_ms: float, scale: float = 1.0, extra_ms: float = 0.0) -> int | None:
        """Index into Γ of the fixed γ that earned the most recently, if it earned more than the policy;
        else None (no cap). Ties go to the slowest of them: the cap that restricts least. `scale`:
        measured over profiled latency (the scheduler's online correction), which the shadows' batches
        from now on take too: on a host slower than its profile, shadows on the profile's latencies
        would out-earn any policy that runs there. `extra_ms`: the host's overhead per batch (the
        scheduler's `overhead_ms`), likewise."""
        for s in self.shadows:
            s.scale, s.extra = scale, extra_ms
            s.advance(now_ms)
        earned = [s.settled.at(now_ms) for s in self.shadows]
        best = max(earned)
        tied = [i for i, e in enumerate(earned) if e >= best]
        lead = max(tied, key=lambda i: self.shadows[i].lat[1])
        if self.follow:
            self._judge(now_ms, lead)
        if not best > self.settled.at(now_ms):
            self.following = False
            return None
        if self.follow:
            self.following = self._follow_pays(now_ms)
        return lead

    def _judge(self, now_ms: float, lead: int) -> None:
        """Credit what the policy and the shadow that led earned since the last decision to the mode
        the policy was in."""
        totals = [s.earned.total for s in self.shadows]
        if self._last is not None:
            p0, s0, i = self._last
            self.delta = (self.earned.total - p0, totals[i] - s0[i])
            self.modes.credit(self.following, *self.delta, now_ms)
        self._last = (self.earned.total, totals, lead)

    def _follow_pays(self, now_ms: float) -> bool:
        """Behind the best shadow: follow it unless following earned less, against the leading shadow,
        than running free did (`ModeJudge`); never in the first `settle_ms` of the run (the policy
        `otas`: the price's rate window, 2 × the loosest SLO; a comparison that finds the policy
        behind then has seen little of its decisions)."""
        if self.settling(now_ms):  # the run has only begun: the cap alone
            return False
        return self.modes.choose(self.following, now_ms)

    def settling(self, now_ms: float) -> bool:
        """Within `settle_ms` of the first arrival: too early to judge a mode by what it earned."""
        return now_ms - self._t0 < self.settle
