"""Discrete-event simulation: the same `Scheduler` the server uses, on a profile-backed clock.

Events: arrivals (from the trace), batch completions (start + profile latency of the plan's model
at its gamma and size, times optional log-normal noise fitted to the profile's p90/median spread,
plus any model-switch delay) and scheduler wake-ups (max queue delay). Every request ends exactly
once: served (on time or late), rejected at submission, or expired in the queue.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from otas.config import SchedulerConfig
from otas.profile.table import Profile
from otas.sched.policies import Policy
from otas.sched.scheduler import Scheduler, host_idle_ms
from otas.sim.traces import Trace
from otas.types import App, BatchPlan, Outcome, Request

_Z90 = 1.2815515655446004  # standard normal 90th percentile


@dataclass
class SimResult:
    """Per-request outcomes and per-batch decisions of one simulated run."""

    policy: str
    trace: str
    n: int
    outcome: list[Outcome | None]
    reason: list[str]
    finish_ms: np.ndarray
    utility: np.ndarray
    """Earned utility per request (0 unless served on time)."""
    accuracy: np.ndarray
    """acc(task, gamma) of the setting each served request ran at (nan if not served)."""
    on_time: np.ndarray
    app_of: list[str]
    arrival_ms: np.ndarray
    batches: list[tuple[float, int, int, str]] = field(default_factory=list)
    """(start_ms, size, gamma, model) per batch."""

    @property
    def total_utility(self) -> float:
        return float(self.utility.sum())

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcome if o is outcome)

    def summary(self, apps: Sequence[App]) -> dict[str, object]:
        served = np.array([o is Outcome.SERVED for o in self.outcome])
        names = np.array(self.app_of)
        slo = {
            a.name: float(self.on_time[names == a.name].mean()) if (names == a.name).any() else math.nan for a in apps
        }
        gammas = [g for _, _, g, _ in self.batches]
        return {
            "policy": self.policy,
            "trace": self.trace,
            "requests": self.n,
            "utility": self.total_utility,
            "slo_attainment": float(self.on_time.mean()) if self.n else math.nan,
            "slo_attainment_per_app": slo,
            "mean_accuracy_served": float(np.nanmean(self.accuracy[served])) if served.any() else math.nan,
            "served": int(served.sum()),
            "late": int((served & ~self.on_time).sum()),
            "rejected": self.count(Outcome.REJECTED),
            "expired": self.count(Outcome.EXPIRED),
            "batches": len(self.batches),
            "mean_batch": float(np.mean([b for _, b, _, _ in self.batches])) if self.batches else 0.0,
            "mean_gamma": float(np.mean(gammas)) if gammas else math.nan,
            "model_switches": sum(a[3] != b[3] for a, b in zip(self.batches, self.batches[1:], strict=False)),
            "batches_per_model": dict(Counter(m for *_, m in self.batches)),
        }


@dataclass(frozen=True)
class Gateway:
    """Arrivals that reach the server late, several to a request, as a batching gateway sends them
    (`otas.bench.replay.coalesce`). Arrival i reaches the server at `send_ms[i]`, its request's send
    time. `told`: the gateway states each request's wait (the `otas-waited-ms` header), so the server
    times the request from `first_ms[i]`, its request's first arrival; otherwise from its send time.
    Either way each arrival is scored from its own arrival, as the client scores it."""

    send_ms: np.ndarray
    """(N,) when arrival i's request is sent, ms; never before the arrival."""
    first_ms: np.ndarray
    """(N,) the first arrival of arrival i's request, ms; never after arrival i."""
    told: bool = True

    def requests(self, trace: Trace, apps: Sequence[App]) -> tuple[list[Request], np.ndarray]:
        """The requests as the server sees them, in the order it sees them (ids are arrival
        indices), and each arrival's own deadline, which scores it."""
        t = np.asarray(trace.arrival_ms, dtype=float)
        send, first = np.asarray(self.send_ms, dtype=float), np.asarray(self.first_ms, dtype=float)
        if send.shape != t.shape or first.shape != t.shape:
            raise ValueError(f"gateway times for {send.shape} and {first.shape} arrivals; the trace has {t.shape}")
        if not (np.all(send >= t) and np.all(first <= t)):
            raise ValueError("a gateway sends each arrival at or after it, in a request whose first arrival is earlier")
        slo = {a.name: a.slo_ms for a in apps}
        timed = first if self.told else send
        order = sorted(range(len(t)), key=lambda i: (send[i], timed[i], i))
        reqs = [Request(i, trace.apps[i], float(timed[i]), float(timed[i]) + slo[trace.apps[i]]) for i in order]
        own = t + np.array([slo[a] for a in trace.apps], dtype=float)
        return reqs, own


class _Recorder:
    def __init__(self, n: int, trace: Trace, policy: str) -> None:
        self.r = SimResult(
            policy=policy,
            trace=trace.name,
            n=n,
            outcome=[None] * n,
            reason=[""] * n,
            finish_ms=np.full(n, np.nan),
            utility=np.zeros(n),
            accuracy=np.full(n, np.nan),
            on_time=np.zeros(n, dtype=bool),
            app_of=list(trace.apps),
            arrival_ms=np.asarray(trace.arrival_ms),
        )

    def end(self, rid: int, outcome: Outcome, reason: str = "") -> None:
        if self.r.outcome[rid] is not None:
            raise AssertionError(f"request {rid} ended twice ({self.r.outcome[rid]} then {outcome})")
        self.r.outcome[rid] = outcome
        self.r.reason[rid] = reason


def _latency(plan: BatchPlan, profiles: dict[str, Profile], noise: bool, rng: random.Random) -> float:
    p = profiles[plan.model]
    med = p.lat(plan.gamma, plan.size)
    if noise:
        p90 = p.lat_p90(plan.gamma, plan.size)
        sigma = math.log(max(p90, med) / med) / _Z90 if med > 0 else 0.0
        med *= math.exp(rng.gauss(0.0, sigma))
    return med + plan.switch_ms


def _same_request(a: Request, b: Request) -> bool:
    return a.app == b.app and a.arrival_ms == b.arrival_ms and a.deadline_ms == b.deadline_ms


def run(
    trace: Trace,
    apps: Sequence[App],
    profiles: Profile | Sequence[Profile],
    policy: str | Policy,
    config: SchedulerConfig | None = None,
    seed: int = 0,
    noise: bool = False,
    plan_ahead: bool = False,
    gateway: Gateway | None = None,
    host_ms: float = 0.0,
    device_scale: float = 1.0,
    device_add_ms: float = 0.0,
    device_profiles: Profile | Sequence[Profile] | None = None,
) -> SimResult:
    """Simulate one policy on one trace; deterministic for a given seed.

    `plan_ahead`: as the live engine does (`Engine._may_plan`), when a batch starts and a full batch
    (`max_batch`) is queued, the next is planned at once, for when this one is predicted to end, and
    starts when it ends, without the requests that arrive meanwhile. `gateway`: the arrivals reach
    the server as that gateway sends them (a request's images at once, late, submitted together).
    `host_ms` ≥ 0: a host that takes this long per batch beyond the device's time, in series (its
    answers and the next batch wait for it, a batch planned ahead too, which the engine would hand the
    device before the turn ends), reported to the scheduler apart from the device's time as a live
    engine reports it (`Scheduler.complete`'s `device_ms`), and so the device idle that long before each batch
    whose work waited for it (`idle_ms`: the host's gap, planned with under `SchedulerConfig.host_gap`); 0: the
    host takes no time. `device_scale`: the
    device takes this × the profile's latency (a device slower or faster than profiled, as a live one may be:
    the scheduler corrects its predictions online, as it does live); 1: as profiled. `device_add_ms` ≥ 0: and
    this much more per batch, whatever its size (a serving path's copies and launches, which a profile of the
    forward alone leaves out); 0: none. `device_profiles`: the device's latencies are these profiles' (one per
    model of `profiles`, by name) where the scheduler plans with `profiles` (e.g. a device that pads batches
    to buckets its profile does not name); None: `profiles`'."""
    if not 0.0 < device_scale < math.inf:
        raise ValueError(f"device_scale {device_scale}: use a finite factor > 0 (1: the device runs as profiled)")
    if not 0.0 <= device_add_ms < math.inf:
        raise ValueError(f"device_add_ms {device_add_ms}: use a finite number of ms >= 0")
    if not 0.0 <= host_ms < math.inf:
        raise ValueError(f"host_ms {host_ms}: use a finite number of ms >= 0")
    profs = [profiles] if isinstance(profiles, Profile) else list(profiles)
    sched = Scheduler(apps, profs, policy, config)
    by_model = sched.profiles  # (as served at its B_max: `Profile.for_max_batch`)
    device = by_model
    if device_profiles is not None:
        devs = [device_profiles] if isinstance(device_profiles, Profile) else list(device_profiles)
        device = {p.model: p.for_max_batch(sched.config.max_batch) for p in devs}
        if missing := sorted(set(by_model) - set(device)):
            raise ValueError(f"device_profiles lack the models {missing} that the scheduler plans with")
    app_by = {a.name: a for a in apps}
    sched.pipelined = plan_ahead  # (as the engine sets it; the simulator's host takes `host_ms` per batch)
    if gateway is None:
        reqs = trace.requests(apps)
        seen = [r.arrival_ms for r in reqs]  # when the server sees each (in order)
        own = np.array([r.deadline_ms for r in reqs])  # (N,) by id: each arrival's deadline, as scored
    else:
        reqs, own = gateway.requests(trace, apps)
        seen = [float(gateway.send_ms[r.id]) for r in reqs]
    rec = _Recorder(len(reqs), trace, sched.policy.name)
    rng = random.Random(seed)
    i, n = 0, len(reqs)
    busy: tuple[BatchPlan, float, float, float | None] | None = None  # plan, end time, actual latency, idle before
    free: float | None = None  # when the device was last done with a batch (the host's turn follows)
    waiting = False  # whether work waited for the device then, with no decision since to leave it idle
    ahead: BatchPlan | None = None  # planned while `busy` runs, to start when it ends
    ahead_over = 0.0  # the host's part of its predicted time when it was planned
    full, ends = sched.config.max_batch, -math.inf
    wake: float | None = None
    while True:
        t_arr = seen[i] if i < n else math.inf
        t_done = busy[1] if busy else math.inf
        t_wake = wake if (wake is not None and busy is None) else math.inf
        now = min(t_arr, t_done, t_wake)
        if now == math.inf:
            break
        wake = None
        if t_done <= now and busy is not None:
            plan, end, actual, idle = busy
            busy = None
            for r in plan.requests:
                rec.end(r.id, Outcome.SERVED)
                acc = by_model[plan.model].acc(app_by[r.app].task, plan.gamma)
                rec.r.finish_ms[r.id], rec.r.accuracy[r.id] = end, acc
                if end <= own[r.id]:
                    rec.r.on_time[r.id] = True
                    rec.r.utility[r.id] = app_by[r.app].utility * acc
            sched.complete(plan, now, actual + host_ms, actual if host_ms > 0 else None, idle)
            waiting = ahead is not None or sched.queued() > 0  # (as the engine judges it when it takes a batch up)
        while i < n and seen[i] <= now:
            j = i + 1
            if gateway is not None:  # one request's arrivals at once, as the server takes them
                while j < n and seen[j] == seen[i] and _same_request(reqs[j], reqs[i]):
                    j += 1
            rej = sched.submit_many(reqs[i:j], now)
            if rej is not None:
                for r in reqs[i:j]:
                    rec.end(r.id, Outcome.REJECTED, rej.reason.value)
            i = j
        if busy is None:
            over = ahead_over if ahead is not None else sched.overhead_ms  # (the host's part, as it was planned)
            plan, ahead = (ahead, None) if ahead is not None else (sched.next_batch(now), None)
            if plan is not None:
                actual = _latency(plan, device, noise, rng) * device_scale + device_add_ms
                busy = (plan, now + actual + host_ms, actual, host_idle_ms(free, now, waiting))
                free = now + actual
                ends = now + plan.predicted_ms - over  # when the engine expects the device to be done with it
                rec.r.batches.append((now, plan.size, plan.gamma, plan.model))
            else:
                wake, waiting = sched.next_wakeup(now), False
        if plan_ahead and busy is not None and ahead is None and sched.queued() >= full:
            # planned for then, started when it ends
            ahead, ahead_over = sched.next_batch(max(now, ends)), sched.overhead_ms
        for r, why in sched.expired(now):
            rec.end(r.id, Outcome.EXPIRED, why)
    missing = [k for k, o in enumerate(rec.r.outcome) if o is None]
    if missing:
        raise AssertionError(f"{len(missing)} requests never ended, e.g. {missing[:5]}")
    return rec.r
