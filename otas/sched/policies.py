"""Policies by name. Each decides, for the batch at the head of the schedule, which (model, gamma)
to run, and how queues are organised; the `Scheduler` does everything else, so every policy runs
through the same interface in the simulator and the live server.

    otas            otas-paper, with device time priced by the work still to come (otas.sched.price):
                    each batch's latency costs μ utility per ms, μ from the arrival rates
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
    oracle          offline upper bound (otas.sched.oracle); not an online policy
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

import numpy as np

from otas.config import SchedulerConfig
from otas.profile.table import Profile
from otas.sched import optimizer
from otas.sched.batching import Candidate
from otas.sched.price import DevicePrice
from otas.types import App, BatchPlan, Request

POLICY_NAMES = [
    "otas",
    "otas-paper",
    "otas-greedy",
    "otas-fifo",
    "fixed:<gamma>",
    "edf",
    "clipper",
    "model-switch",
    "oracle",
]


class View(Protocol):
    """What a policy may read from the scheduler."""

    apps: dict[str, App]
    profiles: dict[str, Profile]
    config: SchedulerConfig
    model: str

    def lat_vector(self, model: str, batch: int) -> np.ndarray: ...
    def weights(self, model: str, app: str) -> np.ndarray: ...
    def servable(self, model: str, apps: list[str]) -> np.ndarray: ...
    def backlog(self) -> list[int]: ...
    def latency_factor(self, model: str) -> float: ...


def batch_apps(c: Candidate) -> list[str]:
    """The distinct applications of a candidate batch (usually one, under selective batching)."""
    reqs = c.requests
    if reqs[0].app == reqs[-1].app and all(r.app == reqs[0].app for r in reqs):
        return [reqs[0].app]
    return list(dict.fromkeys(r.app for r in reqs))


Choice = tuple[str, int, dict[str, float]]
"""(model, gamma, diagnostics): the setting for the batch that runs now, which is the first
candidate unless diagnostics["batch"] names another one's index."""


class Policy:
    """Base: one FIFO queue, gamma 0 on the loaded model."""

    name = "base"
    selective = False
    """Queues per SLO class (True) or one global queue (False)."""
    order = "arrival"
    """Queue order: 'deadline' or 'arrival'."""
    deadline_aware = False
    """Cut batches so the earliest member can still make its deadline at the fastest setting."""
    lookahead = 1
    offline = False

    def bind(self, view: View) -> None:
        """Check the policy fits the scheduler's profiles; called once by the Scheduler."""

    def options(self, view: View) -> list[tuple[str, int]]:
        """The (model, gamma) settings this policy may run: the fastest bounds early rejection."""
        return [(view.model, 0)]

    def batch_cap(self, view: View) -> int:
        return view.config.max_batch

    def choose(self, cands: list[Candidate], now_ms: float, view: View) -> Choice:
        return view.model, 0, {}  # γ = 0 serves every task

    def on_submit(self, req: Request, now_ms: float) -> None:
        pass

    def on_complete(self, plan: BatchPlan, now_ms: float, measured_ms: float, view: View) -> None:
        pass


class Otas(Policy):
    """Selective batching + the token-adaptation DP, receding horizon."""

    def __init__(
        self,
        lookahead: int | None = None,
        selective: bool = True,
        name: str = "otas",
        priced: bool = True,
        reorder: bool = True,
    ):
        self.name = name
        self.selective = selective
        self.priced = priced
        self.reorder = reorder
        self._price: DevicePrice | None = None
        # Arrival order across SLO classes (within one class it is deadline order too): serving the
        # class with the earliest *deadline* first starves loose-SLO applications under overload
        # (measured: 0.83x -> 1.03x the best baseline on the H100 Azure replay at load 1).
        self.order = "arrival"
        self.deadline_aware = True
        self._lookahead = lookahead

    def bind(self, view: View) -> None:
        self.lookahead = self._lookahead or view.config.lookahead
        if self.priced:
            apps = list(view.apps.values())
            tau = view.config.rate_window * max(a.slo_ms for a in apps)
            self._price = DevicePrice(apps, view.profiles[view.model], view.config.max_batch, tau)

    def options(self, view: View) -> list[tuple[str, int]]:
        return [(view.model, g) for g in view.profiles[view.model].gammas]

    def on_submit(self, req: Request, now_ms: float) -> None:
        if self._price is not None:
            self._price.observe(req.app, now_ms)

    def choose(self, cands: list[Candidate], now_ms: float, view: View) -> Choice:
        cands = cands[: self.lookahead]
        specs = [self._spec(c, now_ms, view) for c in cands]
        cfg = view.config
        mu = 0.0
        if self._price is not None:
            mu = self._price.price(now_ms, view.backlog(), view.latency_factor(view.model))
        fronts = [0]
        if self.reorder:
            # which SLO class runs next: each class's first pending batch planned at the front (the
            # others keep their order); the best plan's first batch runs
            # (a batch worth less than the device time it takes at price μ is never pulled forward:
            # under saturation small urgent batches would cost more throughput than they save)
            seen = {cands[0].queue}
            for j, c in enumerate(cands[1:], 1):
                if c.queue not in seen:
                    seen.add(c.queue)
                    if mu == 0 or optimizer.net_value(specs[j], mu) > 0:
                        fronts.append(j)
        plans = optimizer.plan_fronts(specs, fronts, cfg.delta_ms, cfg.max_grid, mu)
        best = max(range(len(plans)), key=lambda m: (plans[m].value, -m))  # ties: the default order
        plan, first = plans[best], fronts[best]
        gamma = view.profiles[view.model].gammas[plan.choice[0]]
        meta = {"planned_value": plan.value, "planned_batches": len(specs), "price": mu, "batch": first}
        return view.model, gamma, meta

    @staticmethod
    def _spec(c: Candidate, now_ms: float, view: View) -> optimizer.BatchSpec:
        reqs = c.requests
        lat = view.lat_vector(view.model, len(reqs))
        one = c.deadlines is not None or all(r.app == reqs[0].app for r in reqs)
        apps = [reqs[0].app] if one else list(dict.fromkeys(r.app for r in reqs))
        ok = view.servable(view.model, apps)
        if not ok.all():  # a γ some member's task is not served at is unavailable
            lat = np.where(ok, lat, np.inf)
        if c.deadlines is not None:  # OPTIMIZATION: one application, deadlines already sorted
            return optimizer.BatchSpec((c.deadlines - now_ms,), view.weights(view.model, apps[0])[:, None], lat)
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


class Fixed(Policy):
    """Triton's dynamic batcher at one gamma: FIFO, up to B_max, optional max queue delay."""

    def __init__(self, gamma: int):
        self.gamma = gamma
        self.name = f"fixed:{gamma}"

    def bind(self, view: View) -> None:
        gammas = view.profiles[view.model].gammas
        if self.gamma not in gammas:
            raise ValueError(f"policy {self.name!r}: gamma {self.gamma} is not in the profile's set {gammas}")

    def options(self, view: View) -> list[tuple[str, int]]:
        return [(view.model, self.gamma)]

    def choose(self, cands: list[Candidate], now_ms: float, view: View) -> Choice:
        ok = view.servable(view.model, batch_apps(cands[0]))
        gammas = view.profiles[view.model].gammas
        if ok[gammas.index(self.gamma)]:
            return view.model, self.gamma, {}
        # a member's task is not served at this γ (no prompts for the source task): the servable
        # γ nearest to it, towards 0
        near = min((g for g, k in zip(gammas, ok, strict=True) if k), key=lambda g: (abs(g - self.gamma), abs(g)))
        return view.model, near, {"fallback_from": float(self.gamma)}


class Edf(Policy):
    name = "edf"
    order = "deadline"


class Clipper(Policy):
    """AIMD batch size: +1 after a batch within its tightest member SLO, ×0.9 after one over it."""

    name = "clipper"

    def __init__(self, step: float = 1.0, backoff: float = 0.9):
        self.step, self.backoff = step, backoff
        self.cap = 1.0

    def batch_cap(self, view: View) -> int:
        return max(1, min(int(self.cap), view.config.max_batch))

    def on_complete(self, plan: BatchPlan, now_ms: float, measured_ms: float, view: View) -> None:
        slo = min(view.apps[r.app].slo_ms for r in plan.requests)
        if measured_ms > slo:
            self.cap = max(1.0, self.cap * self.backoff)
        else:
            self.cap = min(float(view.config.max_batch), self.cap + self.step)


class ModelSwitch(Policy):
    """INFaaS-style: gamma 0 on the most accurate model whose throughput covers the arrival rate.

    Rate = arrivals in the last `window` submissions over their time span; a model 'covers' it if
    its best throughput with batches within half the median SLO is ≥ headroom × rate. A switch
    costs the target profile's `model_load_ms` (added to the batch) and the policy then stays at
    least `min_dwell_ms` on the new model, so it does not thrash.
    """

    name = "model-switch"

    def __init__(self, window: int = 200, headroom: float = 1.1, min_dwell_ms: float | None = None):
        self.window, self.headroom, self.min_dwell_ms = window, headroom, min_dwell_ms
        self._arrivals: deque[float] = deque(maxlen=window)
        self._last_switch = -math.inf

    def bind(self, view: View) -> None:
        slos = sorted(a.slo_ms for a in view.apps.values())
        budget = slos[len(slos) // 2] / 2
        total_u = sum(a.utility for a in view.apps.values()) or 1.0

        def quality(p: Profile) -> float:
            return sum(a.utility * p.acc(a.task, 0) for a in view.apps.values()) / total_u

        for p in view.profiles.values():
            if 0 not in p.gammas:
                raise ValueError(f"model-switch runs gamma 0; profile {p.model!r} has gammas {p.gammas}")
        ranked = sorted(view.profiles.values(), key=quality, reverse=True)
        self._ranked = [(p.model, p.throughput(0, view.config.max_batch, budget) / 1000.0) for p in ranked]
        if self.min_dwell_ms is None:
            loads = [p.model_load_ms or 0.0 for p in view.profiles.values()]
            self.min_dwell_ms = max(1000.0, 20.0 * max(loads))

    def options(self, view: View) -> list[tuple[str, int]]:
        return [(m, 0) for m in view.profiles]

    def on_submit(self, req: Request, now_ms: float) -> None:
        self._arrivals.append(now_ms)

    def _rate(self, now_ms: float) -> float:
        """Arrivals per ms over the recent window (0 with too little history)."""
        if len(self._arrivals) < 2:
            return 0.0
        span = max(now_ms - self._arrivals[0], 1e-9)
        return (len(self._arrivals) - 1) / span

    def choose(self, cands: list[Candidate], now_ms: float, view: View) -> Choice:
        rate = self._rate(now_ms) * self.headroom
        target = next((m for m, cap in self._ranked if cap >= rate), self._ranked[-1][0])
        if target != view.model and now_ms - self._last_switch >= (self.min_dwell_ms or 0.0):
            self._last_switch = now_ms
            return target, 0, {"rate_per_s": rate * 1000.0}
        return view.model, 0, {"rate_per_s": rate * 1000.0}


class Oracle(Policy):
    """Marker for the offline bound; `otas.sim` computes it with `otas.sched.oracle.upper_bound`."""

    name = "oracle"
    offline = True


def make_policy(name: str, **kwargs: object) -> Policy:
    """A fresh policy object by name (see the module docstring); kwargs go to its constructor."""
    if name == "otas":
        return Otas(name="otas", **kwargs)  # type: ignore[arg-type]
    if name == "otas-paper":
        return Otas(name="otas-paper", priced=False, reorder=False, **kwargs)  # type: ignore[arg-type]
    if name == "otas-greedy":
        return Otas(lookahead=1, name="otas-greedy", priced=False, reorder=False)
    if name == "otas-fifo":
        return Otas(selective=False, name="otas-fifo", priced=False, reorder=False, **kwargs)  # type: ignore[arg-type]
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
