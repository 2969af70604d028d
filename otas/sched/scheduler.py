"""The Scheduler: one object, driven by the simulator and by the live server alike.

The clock is injected: every method takes `now_ms`. The caller owns the device; it calls
`next_batch` when the device is free, runs the plan, then reports the measured time through
`complete`, which corrects the latency profile online: per model, the device's measured time as a
factor × the profiled one + an offset per batch (`latency_fit.AffineFit`; `latency_model="factor"`:
the factor alone, an EWMA of measured / profiled), and, where the caller measures the device's time
apart from the batch's whole turn (a live server: the device thread's time, and the wait for the
event loop to take the result up), one additive per-batch host overhead (an EWMA of the rest),
left out of the predictions for a caller that is `pipelined`. For such a caller, where it reports the
device's idle time before a batch whose work waited for it (`complete`'s `idle_ms`: the host late with the
batch), an EWMA of that gap, added to the predictions with `SchedulerConfig.host_gap` (the default).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from otas.config import SchedulerConfig
from otas.profile.table import Profile
from otas.sched.batching import Candidate, Queues, candidates, slo_classes
from otas.sched.latency_fit import AffineFit
from otas.sched.policies import Policy, batch_apps, make_policy
from otas.types import App, BatchPlan, Reason, Rejection, Request

_FACTOR_RANGE = (0.25, 4.0)


class _Table:
    """Per-model precomputed profile rows: latency (B_max+1, |Γ|) with inf where memory does not
    fit, per-application weights u_a · acc(task_a, γ), and per-application servable masks (a γ the
    profile does not serve for an application's task is unavailable: infinite latency)."""

    def __init__(self, profile: Profile, apps: Sequence[App], cfg: SchedulerConfig) -> None:
        g = profile.gammas
        self.gammas = list(g)
        self.index = {gamma: i for i, gamma in enumerate(g)}
        lat = np.full((cfg.max_batch + 1, len(g)), np.inf)
        lat[0] = 0.0  # a batch of nothing; keeps running maxima over batch sizes finite
        for b in range(1, cfg.max_batch + 1):
            for i, gamma in enumerate(g):
                fits = cfg.memory_limit_mb is None or profile.mem(gamma, b) <= cfg.memory_limit_mb
                if fits:
                    lat[b, i] = profile.lat(gamma, b)
        self.lat = lat
        self.servable = {a.name: np.isin(g, profile.servable(a.task)) for a in apps}  # (|Γ|,) bool
        self.weights = {
            a.name: np.array([a.utility * profile.acc(a.task, x) if x in profile.servable(a.task) else 0.0 for x in g])
            for a in apps
        }
        self.load_ms = float(profile.model_load_ms or 0.0)
        self._fastest: dict[tuple[int, ...], np.ndarray] = {}

    def fastest(self, cols: tuple[int, ...]) -> np.ndarray:
        """(B_max + 1,) the least profiled latency over the settings `cols` (indices into Γ) at each
        batch size, computed once per set of settings (the table never changes); read-only."""
        if cols not in self._fastest:
            row = self.lat[:, list(cols)].min(axis=1)
            row.flags.writeable = False
            self._fastest[cols] = row
        return self._fastest[cols]


def host_idle_ms(free_ms: float | None, began_ms: float, waited: bool) -> float | None:
    """How long the device stood idle before a batch its caller began at `began_ms`, the device free since
    `free_ms` (the batch before it done), where the batch's work `waited` for it (planned before the device was
    free, or queued then, with no decision since to leave the device idle): the host late with the batch
    (`Scheduler.complete`'s `idle_ms`). None where the device was free for want of work, or by choice, or its
    last end is unknown."""
    return max(began_ms - free_ms, 0.0) if free_ms is not None and waited else None


class Scheduler:
    """Queues requests, expires hopeless ones, and hands out batch plans chosen by a policy."""

    def __init__(
        self,
        apps: Sequence[App],
        profile: Profile | Sequence[Profile],
        policy: str | Policy,
        config: SchedulerConfig | None = None,
    ) -> None:
        self.config = config or SchedulerConfig()
        self.apps = {a.name: a for a in apps}
        if len(self.apps) != len(apps):
            raise ValueError(f"application names must be unique, got {[a.name for a in apps]}")
        profiles = [profile] if isinstance(profile, Profile) else list(profile)
        if not profiles:
            raise ValueError("give at least one profile")
        # a path that pads to buckets pads batches of up to B_max to B_max itself
        profiles = [p.for_max_batch(self.config.max_batch) for p in profiles]
        self.profiles = {p.model: p for p in profiles}
        self.model = profiles[0].model
        self._tab = {p.model: _Table(p, apps, self.config) for p in profiles}  # checks tasks exist
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        if self.policy.offline:
            raise ValueError(f"policy {self.policy.name!r} is an offline bound; compute it with otas.sim")
        self._factor = {m: 1.0 for m in self.profiles}
        self._offset = {m: 0.0 for m in self.profiles}  # ms the device adds per batch (`latency_model="affine"`)
        self._fit = {m: AffineFit() for m in self.profiles}
        self._slowest = {m: float(np.max(t.lat[np.isfinite(t.lat)])) for m, t in self._tab.items()}
        self._overhead = 0.0  # ms a batch's turn takes beyond the device's time (host side), EWMA
        self._gap = 0.0  # ms the device idles before a batch whose work was waiting (the host late), EWMA
        self._aged_ms: float | None = None  # the corrections are aged to this time (the last batch's end, or later)
        self._inflight = 0  # batches handed out by `next_batch` and not yet completed (or `abandon`ed)
        self._pipelined = False
        self._refresh_lat()  # a policy may read the latencies when it binds
        self.policy.bind(self)
        groups = (
            slo_classes(apps, self.config.slo_class_tolerance) if self.policy.selective else [[a.name for a in apps]]
        )
        self.queues = Queues(groups, self.policy.order)
        self._expired: list[tuple[Request, str]] = []
        self._mixed: list[Candidate] = []
        self._mixed_order = "deadline"  # the order of the shared queue `_mixed` was cut from
        self._hold_until: float | None = None
        self._refresh_fast()

    # -- profile queries, corrected online ----------------------------------------------------
    def lat_vector(self, model: str, batch: int) -> np.ndarray:
        """(|Γ|,) predicted latency of a batch of `batch` at each gamma; inf where it won't fit."""
        return self._lat[model][batch]

    def weights(self, model: str, app: str) -> np.ndarray:
        return self._tab[model].weights[app]

    def backlog(self) -> list[int]:
        """Queued queries per application, in `apps` order."""
        return [self.queues.count(a) for a in self.apps]

    def mixed_candidates(self, now_ms: float, n: int | None = None) -> list[Candidate]:
        """The first `n` (default: the lookahead) pending batches if every class shared one
        deadline-ordered queue (cut as the current decision cuts), for a policy weighing a batch
        that mixes SLO classes."""
        cap, fast = self._cut
        self._mixed = candidates(self.queues.merged(), now_ms, cap, n or max(self.policy.lookahead, 1), fast)
        self._mixed_order = "deadline"
        return self._mixed

    def fifo_candidate(self, now_ms: float) -> Candidate:
        """The next batch if every class shared one FIFO queue, as `fixed:<γ>` batches: the oldest
        waiting queries, up to the batch cap (for a policy that runs as a fixed γ would)."""
        cap, _ = self._cut
        self._mixed = candidates(self.queues.merged("arrival"), now_ms, cap, 1, None)
        self._mixed_order = "arrival"
        return self._mixed[0]

    def fast_latency(self) -> np.ndarray:
        """(B_max + 1,) predicted latency of a batch of each size at the policy's fastest setting,
        nondecreasing (inf past what fits in memory)."""
        return self._fast

    def latency_factor(self, model: str) -> float:
        """The online correction's factor: a batch is predicted at factor × its profiled time + `latency_offset_ms`."""
        return self._factor[model]

    def latency_offset_ms(self, model: str) -> float:
        """The online correction's offset: the device's time per batch beyond factor × the profile's (≥ 0)."""
        return self._offset[model]

    @property
    def overhead_ms(self) -> float:
        """What is added to every predicted batch latency for the host: its lag (`host_lag_ms`), unless the
        caller is `pipelined`; then the gap before each batch (`host_gap_ms`) with `SchedulerConfig.host_gap`."""
        if self._pipelined:
            return self._gap if self.config.host_gap else 0.0
        return self._overhead

    @property
    def host_gap_ms(self) -> float:
        """The device's idle time before a batch whose work waited for it (`host_idle_ms`): the host handing
        batches over later than the device could take them (EWMA of `complete`'s `idle_ms`, learnt as the
        latency correction is, with `latency_ewma` > 0 and a profiled batch; 0 where none is reported).
        Planning ahead on a host-bound server, batches follow each other this much slower than their
        device time."""
        return self._gap

    @property
    def host_lag_ms(self) -> float:
        """The host's part of a batch's turn beyond the device's time: from the device done to the
        caller taking the results up (EWMA; 0 unless `complete` is given the device's time)."""
        return self._overhead

    @property
    def pipelined(self) -> bool:
        """The caller hands the device its next batch before the running one ends (a live engine
        that plans ahead): the host's lag then delays each batch's answers, not the batches after
        it, so it is not added to predicted batch latencies (which the plan sums over batches); the
        caller plans its deadlines short by it instead (`Engine._plannable_ms`)."""
        return self._pipelined

    @pipelined.setter
    def pipelined(self, on: bool) -> None:
        self._pipelined = bool(on)
        self._refresh_fast()

    def servable(self, model: str, apps: Sequence[str]) -> np.ndarray:
        """(|Γ|,) bool: the γ at which every one of `apps` can be served on `model`."""
        tab = self._tab[model]
        mask = tab.servable[apps[0]]
        for a in apps[1:]:
            mask = mask & tab.servable[a]
        return mask

    def predict(self, model: str, gamma: int, batch: int) -> float:
        return float(self._lat[model][batch, self._tab[model].index[gamma]])

    def _refresh_lat(self) -> None:
        # OPTIMIZATION: the corrected latency table, once per correction (rows are read-only)
        self._lat = {m: self._corrected(m, t.lat) for m, t in self._tab.items()}
        for lat in self._lat.values():
            lat.flags.writeable = False

    def _corrected(self, m: str, lat: np.ndarray) -> np.ndarray:
        """A new array of profiled latencies `lat` (indexed by batch size, from 0) of model `m` as predicted
        now: × its factor, + its offset and the host's overhead per batch (a batch of nothing takes nothing)."""
        out = lat * self._factor[m]
        if (add := self._offset[m] + self.overhead_ms) > 0:
            out[1:] += add
        return out

    def _refresh_fast(self) -> None:
        """The corrected latencies; latency per batch size at the policy's fastest setting, made
        nondecreasing, and the largest batch that fits in memory."""
        self._refresh_lat()
        cols: dict[str, list[int]] = {}
        for m, g in self.policy.options(self):
            cols.setdefault(m, []).append(self._tab[m].index[g])
        # OPTIMIZATION: the correction (× factor, + overhead) is monotone, so the least corrected
        # latency over a model's settings is its least profiled one corrected (the same float)
        rows = [self._corrected(m, self._tab[m].fastest(tuple(c))) for m, c in cols.items()]
        fast = rows[0] if len(rows) == 1 else np.min(rows, axis=0)
        fast = np.maximum.accumulate(fast)
        fast[0] = 0.0
        self._fast = fast  # (B_max + 1,) ndarray: sliced, never converted, on the hot path
        fits = np.flatnonzero(np.isfinite(fast))
        self._mem_cap = int(fits[-1]) if len(fits) > 1 else 0
        if self._mem_cap < 1:
            raise ValueError("no setting fits a batch of 1 in memory_limit_mb; raise the limit")

    # -- the interface ------------------------------------------------------------------------
    def submit(self, req: Request, now_ms: float) -> Rejection | None:
        """Queue a request, or reject it early with a reason."""
        return self.submit_many((req,), now_ms)

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch handed out that has not completed (`complete`, `abandon`)."""
        return self._inflight == 0 and not len(self.queues)

    def age(self, now_ms: float) -> None:
        """Age the online corrections (the latency fit, the host's lag and gap) by the time since the last batch ended:
        evidence no batch has confirmed for τ = `rate_window` × the loosest SLO weighs e⁻¹ of what it did, the
        rest goes back to the profile's prediction. Called only where a request would be refused as infeasible
        on an `idle` scheduler (`submit_many`, and the engine's admission): after a burst that left the
        corrections high (an event loop saturated by parsing slows the device thread and delays the answers),
        refused requests run no batch that could correct them, and a tight application was refused for good.
        A server that refuses nothing never ages (on a device slower than its profile, ageing between sparse
        requests would forget what it learned). Steps under τ/20 are left for later (each rebuilds the tables)."""
        if self._aged_ms is None or now_ms <= self._aged_ms:
            return
        tau = self.config.rate_window * max((a.slo_ms for a in self.apps.values()), default=math.inf)
        dt = now_ms - self._aged_ms
        if not dt * 20 >= tau:  # (no applications: τ = inf, nothing ages)
            return
        keep = math.exp(-dt / tau)
        self._aged_ms = now_ms
        for m, fit in self._fit.items():
            if self.config.latency_model == "affine":
                fit.relax(keep)
                f, self._offset[m] = fit.solve(_FACTOR_RANGE, self._slowest[m])
            else:
                f = 1.0 + keep * (self._factor[m] - 1.0)
            self._factor[m] = min(max(f, _FACTOR_RANGE[0]), _FACTOR_RANGE[1])
        self._overhead *= keep
        self._gap *= keep
        self._refresh_fast()

    def infeasible(self, now_ms: float, deadline_ms: float, n: int = 1) -> bool:
        """Whether `n` queries (one request) cannot end by `deadline_ms` even alone at the fastest setting, the
        corrections aged first where that would refuse them on an `idle` scheduler (`age`)."""
        if now_ms + self.fastest_ms(n) <= deadline_ms:
            return False
        if self.idle:
            self.age(now_ms)
        return now_ms + self.fastest_ms(n) > deadline_ms

    def submit_many(self, reqs: Sequence[Request], now_ms: float) -> Rejection | None:
        """Queue the queries of one request (one application, arrival and deadline: the images of one
        call) all or none, or reject them early with a reason (for the first). The policy hears of
        them as one arrival (`on_submit_many`), so per-arrival bookkeeping runs once a request."""
        if not reqs:
            return None
        first = reqs[0]
        if first.app not in self.apps:
            raise ValueError(f"request {first.id}: unknown application {first.app!r}; known: {sorted(self.apps)}")
        if len(reqs) > 1 and any(
            r.app != first.app or r.arrival_ms != first.arrival_ms or r.deadline_ms != first.deadline_ms for r in reqs
        ):
            raise ValueError("submit_many takes the queries of one request: one application, arrival and deadline")
        self.policy.on_submit_many(reqs, now_ms)
        if len(self.queues) + len(reqs) > self.config.max_queue:
            more = f" + {len(reqs)}" if len(reqs) > 1 else ""
            return Rejection(first, Reason.QUEUE_FULL, f"{len(self.queues)} queued{more} (max_queue)")
        if self.config.reject_infeasible and self.infeasible(now_ms, first.deadline_ms):
            slack = first.deadline_ms - now_ms
            return Rejection(
                first,
                Reason.INFEASIBLE,
                f"{slack:.1f} ms to deadline < {self._fast[1]:.1f} ms at the fastest setting",
            )
        self.queues.push_many(reqs)
        return None

    def next_batch(self, now_ms: float) -> BatchPlan | None:
        """The device is free: the batch to run now (removed from the queues), or None."""
        self._drain(now_ms)
        self._hold_until = None
        if not len(self.queues):
            return None
        cap = min(self.policy.batch_cap(self), self._mem_cap)
        fast = self._fast if self.policy.deadline_aware else None
        cands = candidates(self.queues, now_ms, cap, max(self.policy.lookahead, 1), fast)
        self._cut = (cap, fast)
        first = cands[0]
        delay = self.config.max_queue_delay_ms
        if delay > 0 and len(first.requests) < cap:
            oldest = min(r.arrival_ms for r in first.requests)
            # never held past the moment its most urgent member could still finish at the fastest setting
            latest = min(r.deadline_ms for r in first.requests) - self._fast[len(first.requests)]
            until = min(oldest + delay, latest)
            if now_ms < until:
                self._hold_until = until
                return None
        model, gamma, meta = self.policy.choose(cands, now_ms, self)
        first = self._mixed[0] if meta.get("mixed") else cands[int(meta.get("batch", 0))]
        if meta.get("head"):  # the policy runs only the first members of that batch (a prefix still)
            first = Candidate(first.requests[: int(meta["head"])], first.queue, first.deadline_ms)
        if not self.servable(model, batch_apps(first))[self._tab[model].index[gamma]]:
            raise RuntimeError(
                f"policy {self.policy.name!r} chose gamma={gamma}, which a member's task is not served at"
            )
        self.queues.pop(first.requests)
        switch = self._tab[model].load_ms if model != self.model and not self.policy.resident_models else 0.0
        reqs = first.requests
        if self.policy.deadline_aware and self.config.reject_infeasible:
            reqs = self._drop_late(reqs, model, gamma, now_ms + switch, first.deadline_ms)
            if len(reqs) < len(first.requests):  # room its late members left: the queries queued next, on time
                source = self.queues.merged(self._mixed_order) if meta.get("mixed") else self.queues
                reqs = self._refill(reqs, len(first.requests), source, first.queue, model, gamma, now_ms + switch)
        self.model = model
        b, i = len(reqs), self._tab[model].index[gamma]
        profiled = float(self._tab[model].lat[b, i])
        meta = {**meta, "profiled_ms": profiled}
        self._inflight += 1
        return BatchPlan(
            requests=reqs,
            gamma=gamma,
            predicted_ms=float(self._lat[model][b, i]) + switch,
            start_ms=now_ms,
            model=model,
            switch_ms=switch,
            deadline_ms=min(r.deadline_ms for r in reqs),
            meta=meta,
        )

    def _drop_late(
        self, reqs: list[Request], model: str, gamma: int, start_ms: float, earliest_ms: float = -math.inf
    ) -> list[Request]:
        """The batch without the members it would finish late (they expire now, with a reason,
        rather than be served late for nothing while their device time delays the others). A
        smaller batch finishes sooner, so this repeats until every member is on time; a batch that
        would lose every member runs whole (its members then end late, as planned). `earliest_ms`:
        at most the earliest member's deadline (its candidate's deadline)."""
        i = self._tab[model].index[gamma]
        if earliest_ms >= start_ms + self._lat[model][len(reqs), i]:
            return reqs  # OPTIMIZATION: every member on time (the usual case), seen without a pass
        while True:
            finish = start_ms + self._lat[model][len(reqs), i]
            keep = [r for r in reqs if r.deadline_ms >= finish]
            if not keep or len(keep) == len(reqs):
                return reqs
            self._expired.extend((r, Reason.DEADLINE_UNREACHABLE.value) for r in reqs if r.deadline_ms < finish)
            reqs = keep

    def _refill(
        self, reqs: list[Request], size: int, source: Queues, queue: int, model: str, gamma: int, start_ms: float
    ) -> list[Request]:
        """The batch `reqs` (what `_drop_late` kept of one of `size`) with up to `size - len(reqs)` more: the
        queries next in its queue (`queue` of `source`, the queues it was cut from), as many as end on time at
        `gamma` with the batch they make, leave its members on time, and are served at `gamma` (a batch of the
        policy's size runs rather than a smaller one while queries wait). They leave the queue."""
        more, d = source.head_deadlines(queue, size - len(reqs))  # (m,)
        if not more:
            return reqs
        i = self._tab[model].index[gamma]
        finish = start_ms + self._lat[model][len(reqs) + 1 : len(reqs) + len(more) + 1, i]  # (m,): with k = 1..m more
        earliest = min(r.deadline_ms for r in reqs)
        # ok[k - 1]: the batch with the first k of them ends every member on time (each k judged at its own
        # latency: a profile's latency may dip as the batch grows, so a larger k can pass where a smaller fails)
        ok = (np.minimum.accumulate(d) >= finish) & (earliest >= finish)  # (m,)
        served = {a: bool(self.servable(model, [a])[i]) for a in {r.app for r in more}}
        if not all(served.values()):  # (and up to the first whose task is not served at γ)
            ok &= np.logical_and.accumulate([served[r.app] for r in more])
        k = int(np.flatnonzero(ok)[-1]) + 1 if ok.any() else 0  # the most that end on time
        if not k:
            return reqs
        self.queues.pop(more[:k])
        return reqs + more[:k]

    def next_wakeup(self, now_ms: float) -> float | None:
        """After next_batch gave None: when to ask again; None = only when new work arrives."""
        if not len(self.queues):
            return None
        return self._hold_until if self._hold_until is not None else now_ms

    def complete(
        self,
        plan: BatchPlan,
        now_ms: float,
        measured_ms: float,
        device_ms: float | None = None,
        idle_ms: float | None = None,
    ) -> None:
        """Feedback after a batch ran: correct the model's latency factor, inform the policy.

        `measured_ms`: the batch's whole turn, from its start until its results were taken up;
        `device_ms`: the device's part of it, if measured apart (the runner's own time). The factor
        corrects the device's time against the profile; the rest is the host's (waiting for the
        event loop, which serves requests meanwhile), a per-batch overhead that merging does not
        shorten: scaling the profile by it would make every batch look slower in proportion and
        send the policy to merge for a host-bound server. `idle_ms`: how long the device was idle before
        this batch although its work waited for it (`host_idle_ms`, `host_gap_ms`); None: not known, or the
        device was free for want of work or by the caller's choice."""
        self._inflight = max(self._inflight - 1, 0)
        a = self.config.latency_ewma
        profiled = plan.meta.get("profiled_ms", 0.0)
        if a > 0 and profiled > 0:
            m = plan.model
            device = measured_ms if device_ms is None else min(device_ms, measured_ms)
            took = max(device - plan.switch_ms, 0.0)
            if self.config.latency_model == "affine":
                self._fit[m].observe(profiled, took, a)
                # (a stall: the offset at most the slowest batch's time)
                f, self._offset[m] = self._fit[m].solve(_FACTOR_RANGE, self._slowest[m])
            else:
                f = (1 - a) * self._factor[m] + a * took / profiled
            self._factor[m] = min(max(f, _FACTOR_RANGE[0]), _FACTOR_RANGE[1])
            if device_ms is not None:
                self._overhead = (1 - a) * self._overhead + a * max(measured_ms - device, 0.0)
            if idle_ms is not None:
                self._gap = (1 - a) * self._gap + a * max(idle_ms, 0.0)
            self._aged_ms = max(now_ms, self._aged_ms or -math.inf)
            self._refresh_fast()
        self.policy.on_complete(plan, now_ms, measured_ms, self)

    def abandon(self, plan: BatchPlan) -> None:
        """A batch handed out that will not `complete` (it failed, or the caller gave up on it)."""
        self._inflight = max(self._inflight - 1, 0)

    def expired(self, now_ms: float) -> list[tuple[Request, str]]:
        """Queries dropped since the last call, with reasons (they are also drained in next_batch)."""
        self._drain(now_ms)
        out, self._expired = self._expired, []
        return out

    def queued(self, app: str | None = None) -> int:
        """Queued queries, of `app` only if given."""
        return len(self.queues) if app is None else self.queues.count(app)

    def cancel(self, request_ids: Iterable[int], app: str | None = None) -> list[Request]:
        """Take queued requests out (their callers went away): the ones found, never to be planned.
        Requests already handed out by `next_batch`, or expired, are not found. `app`: they are all
        this application's (only its queue is searched). O(queue). The policy is told (`on_cancel`: the
        floor's shadows give them up too); their arrival stays counted as demand."""
        ids = list(request_ids)
        gone = self.queues.remove(ids, app) if ids else []
        if gone:
            self.policy.on_cancel(gone)
        return gone

    def set_apps(self, apps: Sequence[App]) -> None:
        """Serve these applications from the next decision on (added, changed or removed at run time).

        Profile rows, SLO classes and the policy are rebuilt; queued requests keep their place (a
        changed SLO applies to requests arriving from now on). An application leaving must have
        nothing queued (the engine drains it first). Raises ValueError, changing nothing, for a
        task the profile lacks or a duplicate name. The policy's arrival-rate estimate restarts."""
        new = {a.name: a for a in apps}
        if len(new) != len(apps):
            raise ValueError(f"application names must be unique, got {[a.name for a in apps]}")
        busy = sorted(a for a in self.apps if a not in new and self.queues.count(a))
        if busy:
            raise ValueError(f"applications {busy} still have queued requests; drain them before removing")
        tab = {m: _Table(p, apps, self.config) for m, p in self.profiles.items()}  # raises for an unknown task
        queued = [r for dq_app in self.apps if dq_app in new for r in self.queues.iter_app(dq_app)]
        groups = slo_classes(apps, self.config.slo_class_tolerance) if self.policy.selective else [list(new)]
        queues = Queues(groups, self.policy.order)
        for r in queued:  # per application, in the order it was queued
            queues.push(r)
        self.apps, self._tab, self.queues = new, tab, queues
        self.policy.bind(self)
        self._refresh_fast()

    def fastest_ms(self, n: int) -> float:
        """Predicted time to run `n` requests back to back at the fastest setting, in batches of at
        most the batch cap: whether a request of several images can finish by its deadline at all."""
        if n < 1:
            return 0.0
        cap = min(self.policy.batch_cap(self), self._mem_cap)
        full, rest = divmod(n, cap)
        return float(full * self._fast[cap] + (self._fast[rest] if rest else 0.0))

    def _drain(self, now_ms: float) -> None:
        if not self.config.reject_infeasible:
            return
        cutoff = now_ms + self._fast[1]
        for r in self.queues.expire_front(lambda r: r.deadline_ms < cutoff):
            self._expired.append((r, Reason.DEADLINE_UNREACHABLE.value))
