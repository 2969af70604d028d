"""Policies by name. Each decides, for the batch at the head of the schedule, which (model, gamma)
to run, and how queues are organised; the `Scheduler` does everything else, so every policy runs
through the same interface in the simulator and the live server.

    otas            otas-paper, with device time priced by the work still to come (otas.sched.price):
                    each batch's latency costs μ utility per ms, μ from the arrival rates, plus the
                    arrivals it blocks; it also chooses which class runs next (a class more urgent
                    than the head's may go first), whether only the
                    head of a long batch runs, and whether classes share a deadline-ordered batch
                    (per-class and shared batching compared at the utility rate each sustains);
                    and a floor (otas.sched.floor): while a fixed γ would have earned more on the
                    same recent arrivals, no batch runs slower than that γ (the fixed γ batches
                    as `fixed:<γ>` does, one FIFO queue; `Otas(floor_classes=True)`, an ablation,
                    batches them per SLO class as the policy does: bench/workload_ablation.py),
                    and the policy runs as that fixed γ does (one FIFO batch of every class) while
                    that earned more, against the same shadow, than running free under the cap
                    (`Otas(floor_follow=False)`: the cap alone)
    otas-paper      the method as published: selective batching (queues per SLO class, served in
                    arrival order of their heads; batch size that lets the most members meet their
                    deadlines) + the DP over `lookahead` pending batches (method §5)
    otas-greedy     ablation of otas-paper: the DP with lookahead 1 (best gamma for the next batch)
    otas-fifo       ablation of otas-paper: no selective batching (one queue in arrival order)
    fixed:<gamma>   Triton-style dynamic batching at a fixed gamma (fixed:0 is the plain model)
    edf             one queue, earliest deadline first, gamma 0
    clipper         one FIFO queue, gamma 0, AIMD batch size (Clipper: +1 while a batch's
                    latency is within its tightest SLO, -10% when not)
    model-switch    INFaaS-style model adaptation: gamma 0 on the most accurate profiled model whose
                    throughput covers the recent arrival rate, paying its model-load delay
    model-switch:resident
                    the same with every model kept in device memory: a switch costs nothing
    oracle          offline upper bound (otas.sched.oracle); not an online policy
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from otas.sched import optimizer
from otas.sched.baselines import Clipper, Edf, Fixed, ModelSwitch, Oracle, fallback_gamma
from otas.sched.batching import Candidate, app_of, slo_classes
from otas.sched.decayed import Decayed
from otas.sched.floor import FixedShadows
from otas.sched.modes import ModeJudge
from otas.sched.policy_base import Choice, Policy, View, batch_apps
from otas.sched.price import DevicePrice
from otas.types import BatchPlan, Request

__all__ = ["POLICY_NAMES", "Choice", "Otas", "Policy", "View", "batch_apps", "make_policy"]

POLICY_NAMES = [
    "otas",
    "otas-paper",
    "otas-greedy",
    "otas-fifo",
    "fixed:<gamma>",
    "edf",
    "clipper",
    "model-switch",
    "model-switch:resident",
    "oracle",
]


class Otas(Policy):
    """Selective batching + the token-adaptation DP, receding horizon.

    The knobs beyond the policy names' (`make_policy`) are ablations, measured with
    bench/workload_ablation.py (docs/scheduler.md): `floor_classes` (shadows batch per SLO class),
    `floor_follow=False` (the floor's cap alone), `served_price` (μ of the served applications only),
    `floor_settled=False` (the floor compares utility as batches complete instead of settled
    queries), `head_cap=False` / `blocked_cost=False` (no protection of arrivals a long batch blocks),
    `price_judge=True` (whether to plan with the price is judged online: run free of the floor's
    cap, the policy plans priced or unpriced, whichever earned the larger share of the leading fixed
    γ's shadow while in use, `ModeJudge`, priced for the floor's first settling time; measured worse
    on the suite's CPU set, minimum at loads ≥ 1 1.010 → 0.985, bench/results/workloads/price_judge),
    `floor_planned=True` (the floor judges the policy's batches on time as planned, at the predicted
    latency from the planned start, as its shadows' are, rather than when their results came back: the
    same decisions in the noise-free simulator without host time; live on the H100 it measured the same,
    and with a host that takes time per batch in the simulator it earned less in most runs where it
    decided otherwise, bench/results/floor_planned_host; docs/scheduler.md), `smooth_price=False` (the price of
    device time at the fluid relaxation's break itself, which jumps where the smoothed one moves:
    `DevicePrice._smoothed`, bench/price_drift.py), `blocked` (whose arrivals a query blocked by a long batch waits
    for next, in the head cap and the blocked-arrival cost: "all", the default, every served application's, in
    per-class and shared plans alike; "batched": its own application's in a per-class plan and every
    application's in a shared one, which charges the two kinds of plan differently for the same wait; "own": its
    own application's always, the model before; bench/results/workloads/blocked), `price_batching` (the
    price of device time for the batching that runs: "apps", the fluid relaxation with a setting per application,
    the price before; "shared", with one setting for all, as a shared batch runs them; "blend", the default, the
    two weighted by the share of recent batches that ran several applications at one setting (shared, a class of
    several applications, or following a shadow), decayed over the price's τ;
    `DevicePrice.shared_price`, bench/results/workloads/shared_price).
    """

    def __init__(
        self,
        lookahead: int | None = None,
        selective: bool = True,
        name: str = "otas",
        priced: bool = True,
        reorder: bool = True,
        mix: bool = True,
        floor: bool = True,
        floor_classes: bool = False,
        floor_follow: bool = True,
        served_price: bool = False,
        floor_settled: bool = True,
        head_cap: bool = True,
        blocked_cost: bool = True,
        price_judge: bool = False,
        floor_planned: bool = False,
        smooth_price: bool = True,
        blocked: str = "all",
        price_batching: str = "blend",
    ):
        self.name = name
        if price_batching not in ("apps", "shared", "blend"):
            raise ValueError(f"price_batching={price_batching!r}: use 'apps', 'shared' or 'blend'")
        self.price_batching = price_batching
        if blocked not in ("batched", "own", "all"):
            raise ValueError(f"blocked={blocked!r}: use 'batched', 'own' or 'all'")
        self.blocked = blocked
        self.smooth_price = smooth_price
        self.floor_planned = floor_planned
        self.price_judge = price_judge
        self.served_price = served_price
        self.floor_settled = floor_settled
        self.head_cap = head_cap
        self.blocked_cost = blocked_cost
        self.floor_follow = floor_follow
        self.floor_classes = floor_classes
        self.floor = floor
        self.selective = selective
        self.priced = priced
        self.reorder = reorder
        self.mix = mix
        self._price: DevicePrice | None = None
        self._priced: DevicePrice | None = None  # `_price` while this decision plans with it, else None
        self._judge: ModeJudge | None = None  # priced (True) or not, judged online (`price_judge`)
        self._free: bool | None = None  # the last decision ran free (not following): priced or not; else None
        self._mode = True  # planning with the price (`_judge`'s current mode)
        self._floor: FixedShadows | None = None
        self._cap: int | None = None  # index into Γ: no batch runs slower than this γ would (the floor)
        # Arrival order across SLO classes (within one class it is deadline order too); `reorder`
        # decides, by planning, when another class's batch should go first.
        self.order = "arrival"
        self.deadline_aware = True
        self._lookahead = lookahead

    def bind(self, view: View) -> None:
        self.lookahead = self._lookahead or view.config.lookahead
        self._one: dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None]] = {}  # see `_one_app`
        self._stacked: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}  # see `_group_weights`
        self._price = None
        if self.priced and view.apps:  # no applications yet: nothing to price
            apps = list(view.apps.values())
            # rates over τ = rate_window × the loosest SLO, read from at least the tightest SLO of arrivals:
            # arrivals within one tightest SLO are a batch, not yet a rate
            tau, tightest = view.config.rate_window * max(a.slo_ms for a in apps), min(a.slo_ms for a in apps)
            prof, b_max = view.profiles[view.model], view.config.max_batch
            self._price = DevicePrice(apps, prof, b_max, tau, tightest, self.served_price, self.smooth_price)
            self._slo = np.array([a.slo_ms for a in apps])  # (apps,), in DevicePrice's order
            self._value = np.array([view.weights(view.model, a.name).max() for a in apps])  # best u·acc
        self._priced = self._price  # until a decision judges otherwise (`_price_now`)
        # decisions, and those that ran a shared batch, decayed over the price's τ (`price_batching="blend"`)
        tau = self._price.tau if self._price is not None else 1.0
        self._decided, self._shared = Decayed(tau), Decayed(tau)
        self._floor, self._cap, self._judge, self._free, self._mode = None, None, None, None, True
        if self.floor and view.apps:
            apps = list(view.apps.values())
            m, cfg = view.model, view.config
            lat = np.array([view.lat_vector(m, b) for b in range(cfg.max_batch + 1)])  # (B_max + 1, |Γ|)
            weights = {a.name: view.weights(m, a.name) for a in apps}
            servable = {a.name: view.servable(m, [a.name]) for a in apps}
            loosest = max(a.slo_ms for a in apps)
            classes = slo_classes(apps, cfg.slo_class_tolerance) if self.floor_classes and self.selective else None
            self._floor = FixedShadows(
                apps, view.profiles[m].gammas, lat, weights, servable, cfg.max_batch, cfg.floor_window * loosest,
                classes, self.floor_follow, cfg.rate_window * loosest, loosest if self.floor_settled else 0.0,
            )  # fmt: skip
            if self._price is not None and self.price_judge and self.floor_follow:
                self._judge = ModeJudge(cfg.floor_window * loosest)

    def options(self, view: View) -> list[tuple[str, int]]:
        return [(view.model, g) for g in view.profiles[view.model].gammas]

    def on_submit(self, req: Request, now_ms: float) -> None:
        self.on_submit_many((req,), now_ms)

    def on_submit_many(self, reqs: Sequence[Request], now_ms: float) -> None:
        app, deadline, n = reqs[0].app, reqs[0].deadline_ms, len(reqs)
        if self._price is not None:
            self._price.observe(app, now_ms, n)
        if self._floor is not None:
            self._floor.submit(app, now_ms, deadline, n)

    def on_complete(self, plan: BatchPlan, now_ms: float, measured_ms: float, view: View) -> None:
        if self._floor is not None:
            i = view.profiles[plan.model].gammas.index(plan.gamma)
            value = {a: float(view.weights(plan.model, a)[i]) for a in {r.app for r in plan.requests}}
            # on time when its results came back (`floor_planned`: as planned, the shadows' way)
            done = plan.start_ms + plan.predicted_ms if self.floor_planned else now_ms
            self._floor.credit(now_ms, _per_request(plan.requests, value, done))

    def on_cancel(self, reqs: Sequence[Request]) -> None:
        if self._floor is not None:  # the shadows give them up too, or they would earn what the policy cannot
            counts = Counter((r.app, r.arrival_ms, r.deadline_ms) for r in reqs)
            for (app, arrival, deadline), n in counts.items():
                self._floor.withdraw(app, arrival, deadline, n)

    def choose(self, cands: list[Candidate], now_ms: float, view: View) -> Choice:
        cands = cands[: self.lookahead]
        fl, m = self._floor, view.model
        # (the shadows' batches take what the policy's do: the corrected profile, and the host's overhead)
        extra = view.overhead_ms + view.latency_offset_ms(m)
        self._cap = fl.cap(now_ms, view.latency_factor(m), extra) if fl is not None else None
        following = self._cap is not None and self._floor.following
        self._priced = self._price if self._price_now(following, now_ms) else None
        cfg = view.config
        mu = 0.0
        if self._price is not None:  # kept current either way (it also marks the applications served)
            mu = self._mu(now_ms, view)
        if self._priced is None:
            mu = 0.0
        if following:
            return self._follow(mu, now_ms, view)
        specs = [self._spec(c, now_ms, view) for c in cands]
        fronts = [0]
        if self.reorder:
            # which SLO class runs next: each class's first pending batch planned at the front (the
            # others keep their order); the best plan's first batch runs. Only a class more urgent
            # than the head (an earlier deadline) may go first: reordering rescues tight classes;
            # pulling a looser, more valuable class ahead starved tighter ones on the workload suite
            # (H200: worst cell 0.868 against 0.907 the best other policy, docs/scheduler.md).
            # A batch worth less than the device time it takes at price μ is never pulled forward:
            # under saturation small urgent batches would cost more throughput than they save.
            seen = {cands[0].queue}
            for j, c in enumerate(cands[1:], 1):
                if c.queue not in seen:
                    seen.add(c.queue)
                    urgent = c.deadline_ms < cands[0].deadline_ms
                    if urgent and (mu == 0 or optimizer.net_value(specs[j], mu) > 0):
                        fronts.append(j)
        head = 0  # > 0: a batch longer than this blocks arrivals that could still make their SLO
        options: list[tuple[optimizer.Front, int]] = [(j, 0) for j in fronts]  # (front, members run)
        if self._priced is not None:
            head = self._head_cap(now_ms, view, False) if self.head_cap else 0
            # each front batch may also run only its first `head` members, the rest next
            halves = [(j, sp) for j in fronts if head and (sp := self._split(cands[j], head, now_ms, view))]
            # OPTIMIZATION: the costs of the batches and of their halves in one vector pass
            costed = self._with_costs(specs + [x for _, sp in halves for x in sp], mu, now_ms, view, False)
            specs, rest = costed[: len(specs)], costed[len(specs) :]
            options += [((j, rest[2 * k], rest[2 * k + 1]), head) for k, (j, _) in enumerate(halves)]
        fr = [f for f, _ in options]
        plans = optimizer.plan_fronts(specs, fr, cfg.delta_ms, cfg.max_grid, mu)
        best = _first_best([p.value for p in plans])  # ties: the default order
        plan, (f, take), mixed = plans[best], options[best], 0
        first = f if isinstance(f, int) else f[0]
        if self.mix and len({c.queue for c in cands}) > 1:
            largest = max(len(cands[j].requests) for j in fronts)
            shared = self._mixed_plan(largest, head, mu, plan, specs, f, now_ms, view)
            if shared is not None:
                (plan, take), first, mixed = shared, 0, 1
        self._count(now_ms, bool(mixed) or len(batch_apps(cands[first])) > 1)
        gamma = view.profiles[view.model].gammas[plan.choice[0]]
        meta = {"planned_value": plan.value, "planned_batches": len(specs), "price": mu, "batch": first, "mixed": mixed}
        if take:
            meta["head"] = take
        if self._cap is not None:  # held to the leading shadow's speed (the floor)
            meta["cap"] = view.profiles[view.model].gammas[self._cap]
        return view.model, gamma, meta

    def _count(self, now_ms: float, shared: bool) -> None:
        """A decision, and whether its batch runs several applications at one γ (a shared batch, a class of
        several applications, or following a shadow's FIFO batch): the blend's weight (`price_batching`)."""
        self._decided.add(1.0, now_ms)
        self._shared.add(float(shared), now_ms)

    def _mu(self, now_ms: float, view: View) -> float:
        """The price of device time for the batching that runs (`price_batching`); the per-application price is
        asked for either way (it marks the applications worth their device time)."""
        args = (now_ms, view.backlog(), view.latency_factor(view.model))
        mu = self._price.price(*args)
        if self.price_batching == "apps":
            return mu
        if self.price_batching == "shared":
            return self._price.shared_price(*args)
        decided = self._decided.at(now_ms)
        w = self._shared.at(now_ms) / decided if decided > 0 else 0.0  # share of recent batches that were shared
        return mu if w == 0.0 else (1.0 - w) * mu + w * self._price.shared_price(*args)

    def _price_now(self, following: bool, now_ms: float) -> bool:
        """Whether this decision plans with the price: always, without a judge; else the judged mode
        (`ModeJudge`), after crediting the mode the last decision ran in, if it ran free, with what
        the policy and the leading shadow earned since (the floor's `delta`). Following, the price
        mode is kept and nothing is credited: the capping shadow's γ decides then."""
        if self._judge is None:
            return self._price is not None
        fl = self._floor
        if self._free is not None and fl.delta is not None:
            self._judge.credit(self._free, *fl.delta, now_ms)
        if not following:
            self._mode = True if fl.settling(now_ms) else self._judge.choose(self._mode, now_ms)
        self._free = None if following else self._mode
        return self._mode

    def _follow(self, mu: float, now_ms: float, view: View) -> Choice:
        """Run as the capping shadow's `fixed:<γ>` does: the oldest waiting queries of every class, up to
        B_max, at its γ (or the servable γ nearest to it); but where that would finish the batch's
        most urgent member late, at the γ the DP picks for the batch under the cap."""
        cfg, m = view.config, view.model
        gammas = view.profiles[m].gammas
        c = view.fifo_candidate(now_ms)
        self._count(now_ms, len(batch_apps(c)) > 1)
        g = fallback_gamma(gammas, view.servable(m, batch_apps(c)), gammas[self._cap])  # the cap's γ if it serves
        finish = now_ms + view.lat_vector(m, len(c.requests))[gammas.index(g)]  # (corrected already)
        if finish <= c.deadline_ms:
            return m, g, {"price": mu, "mixed": 1, "follow": 1}
        spec = self._spec(c, now_ms, view)
        if self._priced is not None:
            (spec,) = self._with_costs([spec], mu, now_ms, view, True)
        (plan,) = optimizer.plan_fronts([spec], [0], cfg.delta_ms, cfg.max_grid, mu)
        return m, gammas[plan.choice[0]], {"planned_value": plan.value, "price": mu, "mixed": 1, "follow": 2}

    def _mixed_plan(
        self,
        largest: int,
        head: int,
        mu: float,
        plan: optimizer.Plan,
        specs: list[optimizer.BatchSpec],
        front: optimizer.Front,
        now_ms: float,
        view: View,
    ) -> tuple[optimizer.Plan, int] | None:
        """The plan with the classes sharing deadline-ordered batches, with how many members of its first
        batch run (0: all), if it beats `plan` (the best per-class plan: `specs` run from `front`).

        Where latency is nearly flat in the batch (a GPU), per-class batches that wait in turn cost
        time a shared batch saves. Only planned when the first mixed batch is larger than every
        class's first batch (`largest`; else it would save nothing: on a CPU, latency grows with the
        batch), or when both are B_max and the shared one holds more than one application: a class
        that alone fills a batch must not shut the others out of shared batches (the suite's H200 set
        at loads ≥ 1: minimum ratio to the best other policy 0.924 → 0.954; 45 of its 300 cells
        changed, by 0.92× to 1.10×, geomean 1.081 → 1.084; 7 CPU cells, by under 3 %). A shared batch
        of one application at B_max is that class's batch again; planning it too doubled the decision
        time of a saturated queue (bench/results/sched_bench_side_by_side: p50 0.45 → 1.65 ms) and changed
        no cell."""
        cfg = view.config
        # OPTIMIZATION: where no application has more queued than a pending batch holds (so at most
        # the batch cap), the shared queue's first batch is cut from every query queued whether one
        # batch or all are asked for, so all are cut at once (else the first alone first: often it
        # is all that is needed)
        whole = max(view.backlog()) <= max(sum(map(len, s.deadlines)) for s in specs)
        mc = view.mixed_candidates(now_ms) if whole else None
        first = mc[0] if mc is not None else view.mixed_candidates(now_ms, 1)[0]
        m1 = len(first.requests)
        if m1 < largest or m1 == largest and (largest < cfg.max_batch or len(batch_apps(first)) == 1):
            return None  # (at B_max, a shared batch of one application is that class's own batch)
        mc = (mc or view.mixed_candidates(now_ms))[: self.lookahead]
        alt = [self._spec(c, now_ms, view) for c in mc]
        mopts: list[tuple[optimizer.Front, int]] = [(0, 0)]
        if self._priced is not None:
            if head and self._pooled(True) != self._pooled(False):  # ("batched": a shared plan's own cap)
                head = self._head_cap(now_ms, view, True)
            sp = self._split(mc[0], head, now_ms, view) if head else None
            alt = self._with_costs(alt + list(sp or ()), mu, now_ms, view, True)
            if sp:
                alt, (hs, rs) = alt[:-2], alt[-2:]
                mopts.append(((0, hs, rs), head))
        mplans = optimizer.plan_fronts(alt, [f for f, _ in mopts], cfg.delta_ms, cfg.max_grid, mu)
        mb = _first_best([p.value for p in mplans])
        v_mixed, v_split = mplans[mb].value, plan.value
        if self._priced is not None:
            # each way of batching at the utility rate it sustains: a plan of n queries taking t ms
            # keeps up with arrivals at rate R only if n / t ≥ R, else it serves the share n / (R·t)
            # of them (shared batches take less device time per query)
            rate = float(self._priced.rates(now_ms).sum())  # queries per ms
            if rate > 0:
                v_mixed *= _sustained(alt, _plan_ms(mplans[mb], alt, mopts[mb][0]), rate)
                v_split *= _sustained(specs, _plan_ms(plan, specs, front), rate)
        return (mplans[mb], mopts[mb][1]) if _first_best([v_split, v_mixed]) == 1 else None  # ties: per class

    def _pooled(self, shared: bool) -> bool:
        """Whether an arrival a batch blocks waits next for every served application's arrivals (`blocked`):
        always ("all": in a shared batch they run with it, and per class the other classes' batches run before
        or after it in turn, each a batch's time on a device whose latency is nearly flat in the batch), or in a
        shared plan alone (`shared`, "batched"); else for its own application's alone."""
        return self.blocked == "all" or (shared and self.blocked == "batched")

    def _waited_rates(self, rates: np.ndarray, shared: bool) -> np.ndarray:
        """(apps,) per application, the rate of the arrivals a query of it blocked by a batch waits for after
        it (`_pooled`): every served application's, Σ R, or its own, R_a (`shared`: the plan shares batches)."""
        if not self._pooled(shared):
            return rates
        return np.full_like(rates, float(rates[self._priced.served].sum()))

    def _head_cap(self, now_ms: float, view: View, shared: bool) -> int:
        """The largest batch after which the arrivals it blocks still make their SLO: a query of `a`
        arriving while a batch of b runs at the fastest setting waits for it, then for the others that
        arrived meanwhile, at best at the fastest setting: R · lat_fast(b) of them, R the rate
        `_waited_rates` gives (`blocked`: by default every served application's). b ≤ B_max; 0 if none."""
        fast = view.fast_latency()  # (B_max + 1,)
        rates = self._priced.rates(now_ms)
        live = (rates > 0) & self._priced.served  # applications worth their device time at the price
        if not live.any():
            return len(fast) - 1
        r, slo = self._waited_rates(rates, shared)[live], self._slo[live]
        n = np.minimum(np.maximum(np.ceil(r[:, None] * fast[None, :]), 1), len(fast) - 1).astype(np.int64)
        ok = (fast[None, :] + fast[n] <= slo[:, None]).all(axis=0)  # (B_max + 1,)
        ok[0] = True
        return len(fast) - 1 if ok.all() else int(ok.argmin()) - 1

    def _split(
        self, c: Candidate, head: int, now_ms: float, view: View
    ) -> tuple[optimizer.BatchSpec, optimizer.BatchSpec] | None:
        """(its first `head` members, the others) of candidate `c` as specs (without costs), or None
        if it is no larger."""
        if len(c.requests) <= head:
            return None
        d, g = c.deadlines, c.groups
        hg = rg = None
        if g is not None:  # each application's first members run in the head, the others after
            k = Counter(map(app_of, c.requests[:head]))
            hg = {a: g[a][:n] for a, n in k.items()}
            rg = {a: g[a][k.get(a, 0) :] for a in dict.fromkeys(map(app_of, c.requests[head:]))}
        h = Candidate(c.requests[:head], c.queue, c.deadline_ms, None if d is None else d[:head], hg)
        r = Candidate(c.requests[head:], c.queue, c.deadline_ms, None if d is None else d[head:], rg)
        return self._spec(h, now_ms, view), self._spec(r, now_ms, view)

    def _with_costs(
        self, specs: list[optimizer.BatchSpec], mu: float, now_ms: float, view: View, shared: bool
    ) -> list[optimizer.BatchSpec]:
        """`specs` with what each setting costs the work still to come: μ per ms of device time, plus
        the arrivals it blocks. A query of `a` arriving s ms into a batch of latency L waits for it,
        then for the n_a = ⌈R · L⌉ others that arrived meanwhile (R: `_waited_rates`, by default every
        served application's), at best at the fastest setting: it makes its SLO iff L − s + lat_fast(n_a) ≤ D_a,
        so the arrivals of the first min(L, max(0, L + lat_fast(n_a) − D_a)) ms are lost: R_a · u_a·acc_a each
        ms."""
        if not specs:
            return []
        rates = self._priced.rates(now_ms)  # (apps,)
        rate_value = rates * self._value  # (apps,): utility arriving per ms
        # arrivals of applications not worth their device time at price μ are no loss when blocked
        charged = self._priced.served if self.blocked_cost else np.zeros_like(self._priced.served)
        rate_value = np.where(charged, rate_value, 0.0)
        fast = view.fast_latency()
        # OPTIMIZATION: a cost per distinct latency row (batches of one size share theirs)
        row = {s.latency.tobytes(): s.latency for s in specs}
        lat = np.array(list(row.values()))  # (rows, |Γ|)
        lat = np.where(np.isfinite(lat), lat, 0.0)  # settings that do not fit never run
        r = self._waited_rates(rates, shared)
        n = np.minimum(np.maximum(np.ceil(r[None, :, None] * lat[:, None, :]), 1), len(fast) - 1).astype(np.int64)
        late = np.minimum(np.maximum(lat[:, None, :] + fast[n] - self._slo[None, :, None], 0.0), lat[:, None, :])
        cost = mu * lat
        by_row = {key: cost[i] + rate_value @ late[i] for i, key in enumerate(row)}
        Spec = optimizer.BatchSpec
        return [Spec(s.deadlines, s.weights, s.latency, by_row[s.latency.tobytes()]) for s in specs]

    def _one_app(self, view: View, app: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(weights (|Γ|, 1), the servable mask or None if every γ is) of one application on the
        current model, looked up once per binding (OPTIMIZATION: asked for every batch)."""
        key = (view.model, app)
        if key not in self._one:
            ok = view.servable(view.model, [app])
            self._one[key] = view.weights(view.model, app)[:, None], None if ok.all() else ok
        return self._one[key]

    def _group_weights(self, view: View, apps: tuple[str, ...]) -> np.ndarray:
        """(|Γ|, len(apps)) weights of a batch's applications (in its order) on the current model,
        stacked once per binding (OPTIMIZATION: asked for every shared batch)."""
        key = (view.model, apps)
        if key not in self._stacked:
            self._stacked[key] = np.stack([view.weights(view.model, a) for a in apps], axis=1)
        return self._stacked[key]

    def _spec(self, c: Candidate, now_ms: float, view: View) -> optimizer.BatchSpec:
        reqs = c.requests
        lat = view.lat_vector(view.model, len(reqs))
        if self._cap is not None and np.isfinite(lat[self._cap]):
            lat = np.where(lat <= lat[self._cap], lat, np.inf)  # the floor: nothing slower than that fixed γ
        if c.deadlines is not None:  # OPTIMIZATION: one application, deadlines already sorted
            w, ok = self._one_app(view, reqs[0].app)
            return optimizer.BatchSpec((c.deadlines - now_ms,), w, lat if ok is None else np.where(ok, lat, np.inf))
        apps = list(c.groups) if c.groups is not None else batch_apps(c)
        one = len(apps) == 1
        ok = view.servable(view.model, apps)
        if not ok.all():  # a γ some member's task is not served at is unavailable
            lat = np.where(ok, lat, np.inf)
        if c.groups is not None:  # OPTIMIZATION: grouped by the cut, each group's deadlines ascending
            deadlines = tuple(d - now_ms for d in c.groups.values())
            return optimizer.BatchSpec(deadlines, self._group_weights(view, tuple(apps)), lat)
        if one:  # OPTIMIZATION: one application (the usual case under selective batching): no grouping
            d = np.fromiter((r.deadline_ms for r in reqs), float, len(reqs)) - now_ms
            d.sort()
            return optimizer.BatchSpec((d,), view.weights(view.model, apps[0])[:, None], lat)
        groups: dict[str, list[float]] = {}
        for r in reqs:
            groups.setdefault(r.app, []).append(r.deadline_ms - now_ms)
        deadlines = tuple(np.sort(np.asarray(v)) for v in groups.values())
        weights = np.stack([view.weights(view.model, a) for a in groups], axis=1)
        return optimizer.BatchSpec(deadlines, weights, lat)


_TIE = 1e-9
"""Plan values this close (relative; absolute below 1) are equal: rounding, not a better plan."""


def _plan_ms(plan: optimizer.Plan, specs: list[optimizer.BatchSpec], front: optimizer.Front) -> float:
    """Device ms of a plan from `plan_fronts`: its batches in execution order at their settings."""
    if isinstance(front, int):
        order = [specs[front], *specs[:front], *specs[front + 1 :]]
    else:
        j, head, rest = front
        order = [head, rest, *specs[:j], *specs[j + 1 :]]
    return float(sum(sp.latency[c] for sp, c in zip(order, plan.choice, strict=True)))


def _sustained(specs: list[optimizer.BatchSpec], t_ms: float, rate: float) -> float:
    """Share of arrivals at `rate` (per ms) that batching as `specs` does, taking `t_ms`, keeps up with.

    The caller multiplies a plan's value by it, net losses included (values are net of the price of
    device time), so a loss shrinks with the share: under overload that leans towards the plan that
    keeps up less. Sign-correct variants (dividing a loss by the share, or leaving losses unscaled, or
    scaling only while the price is 0) were measured on the workload suite and did worse on the H200
    (geomean at load 3: 1.286 / 1.291 / 1.293 against 1.333), so the rule stays as measured."""
    n = sum(len(d) for s in specs for d in s.deadlines)
    return min(1.0, n / (rate * t_ms)) if t_ms > 0 else 1.0


def _per_request(reqs: Sequence[Request], value: dict[str, float], now_ms: float) -> list[tuple[float, float]]:
    """(arrival, value) per run of consecutive queries that share an application and an arrival (the
    images of one request, queued together) among those on time at `now_ms`: a batch's utility
    credited per request, not per image (the values summed one by one). OPTIMIZATION: one plain
    pass, each query's (arrival, application, deadline) compared with its run's (as `groupby` would
    compare them; an attribute getter per query cost more than the whole pass)."""
    out: list[tuple[float, float]] = []
    last = key = None  # (arrival, app) of the last run credited; (arrival, app, deadline) of this run
    on, arrival, v, acc = False, 0.0, 0.0, 0.0  # this run: on time, its arrival, value per query, sum
    for r in reqs:
        k = (r.arrival_ms, r.app, r.deadline_ms)
        if k == key:  # the run goes on
            if on:
                acc += v
            continue
        if on:
            out.append((arrival, acc))
        key, on = k, not k[2] < now_ms
        if on:
            arrival, app = k[0], k[1]
            v = value[app]
            if last == (arrival, app):  # (runs apart only by deadline: one request's, as before)
                arrival, acc = out.pop()
                acc += v
            else:
                acc = v
            last = (arrival, app)
    if on:
        out.append((arrival, acc))
    return out


def _first_best(values: list[float]) -> int:
    """Index of the first value within 1e-9 of the largest (relative, absolute below 1): plans equal up to rounding are
    ties, broken by order, so a decision does not hang on the last bits of a sum (which differ
    between CPUs: numpy's SIMD reductions add in another order with AVX-512 than without)."""
    top = max(values)
    return next(m for m, v in enumerate(values) if v >= top - _TIE * max(1.0, abs(top)))


def make_policy(name: str, **kwargs: object) -> Policy:
    """A fresh policy object by name (see the module docstring); kwargs go to its constructor."""
    if name == "otas":
        return Otas(name="otas", **kwargs)  # type: ignore[arg-type]
    if name == "otas-paper":
        return Otas(name="otas-paper", priced=False, reorder=False, mix=False, floor=False, **kwargs)  # type: ignore[arg-type]
    if name == "otas-greedy":
        return Otas(lookahead=1, name="otas-greedy", priced=False, reorder=False, mix=False, floor=False)
    if name == "otas-fifo":
        return Otas(selective=False, name="otas-fifo", priced=False, reorder=False, mix=False, floor=False, **kwargs)  # type: ignore[arg-type]
    if name == "model-switch:resident":
        return ModelSwitch(resident=True, **kwargs)  # type: ignore[arg-type]
    if name.startswith("fixed:"):
        try:
            gamma = int(name.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"policy {name!r}: write fixed:<integer gamma>, e.g. fixed:0 or fixed:-16") from None
        return Fixed(gamma)
    simple: dict[str, type[Policy]] = {
        "edf": Edf,
        "clipper": Clipper,
        "model-switch": ModelSwitch,
        "oracle": Oracle,
    }
    if name in simple:
        return simple[name](**kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown policy {name!r}; valid names: {', '.join(POLICY_NAMES)}")
