"""The baselines OTAS is compared with: fixed γ (Triton-style dynamic batching), EDF, Clipper's
AIMD batching, INFaaS-style model switching, and the marker of the offline oracle bound."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from otas.profile.table import Profile
from otas.sched.batching import Candidate
from otas.sched.policy_base import Choice, Policy, View, batch_apps
from otas.types import BatchPlan, Request


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
        # a member's task is not served at this γ (no prompts for the source task)
        return view.model, fallback_gamma(gammas, ok, self.gamma), {"fallback_from": float(self.gamma)}


def fallback_gamma(gammas: Sequence[int], servable: Sequence[bool], gamma: int) -> int:
    """The γ `fixed:<gamma>` runs a batch at when `gamma` does not serve it: the servable γ nearest to
    it, towards 0 on ties."""
    return min((g for g, k in zip(gammas, servable, strict=True) if k), key=lambda g: (abs(g - gamma), abs(g)))


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
    """INFaaS-style: gamma 0 on the most accurate model whose throughput covers the arrival rate
    (the fastest model when none does).

    Rate = arrivals in the last `window` submissions over their time span (until `window` requests
    have arrived, the policy stays on the model it started with); a model 'covers' it if
    its best throughput with batches within half the median SLO is ≥ headroom × rate. A switch
    costs the target profile's `model_load_ms` (added to the batch) and the policy then stays at
    least `min_dwell_ms` on the new model, so it does not thrash.

    `resident`: every model stays loaded (they fit in device memory together), so a switch is free
    ("model-switch:resident") and the dwell is the 1 s floor.
    """

    name = "model-switch"

    def __init__(
        self, window: int = 200, headroom: float = 1.1, min_dwell_ms: float | None = None, resident: bool = False
    ):
        self.window, self.headroom, self.min_dwell_ms = window, headroom, min_dwell_ms
        self.resident_models = resident
        if resident:
            self.name = "model-switch:resident"
        self._arrivals: deque[float] = deque(maxlen=window)
        self._last_switch = -math.inf

    def bind(self, view: View) -> None:
        slos = sorted(a.slo_ms for a in view.apps.values()) or [1000.0]  # no applications yet: any budget
        budget = slos[len(slos) // 2] / 2
        total_u = sum(a.utility for a in view.apps.values()) or 1.0

        def quality(p: Profile) -> float:
            return sum(a.utility * p.acc(a.task, 0) for a in view.apps.values()) / total_u

        if len(view.profiles) < 2:  # with one model there is nothing to switch to: it would be fixed:0
            raise ValueError(
                f"{self.name} switches between models and has {len(view.profiles)}; give profiles of two or more "
                "models (otas simulate --profile A.json,B.json), or use fixed:0"
            )
        for p in view.profiles.values():
            if 0 not in p.gammas:
                raise ValueError(f"model-switch runs gamma 0; profile {p.model!r} has gammas {p.gammas}")
        ranked = sorted(view.profiles.values(), key=quality, reverse=True)
        self._ranked = [(p.model, p.throughput(0, view.config.max_batch, budget) / 1000.0) for p in ranked]
        if self.min_dwell_ms is None:
            loads = [0.0 if self.resident_models else p.model_load_ms or 0.0 for p in view.profiles.values()]
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
        if len(self._arrivals) < self.window:  # too little history to judge the load: stay
            return view.model, 0, {"rate_per_s": math.nan}
        rate = self._rate(now_ms) * self.headroom
        fastest = max(self._ranked, key=lambda mc: mc[1])[0]  # none keeps up: the one that loses least
        target = next((m for m, cap in self._ranked if cap >= rate), fastest)
        if target != view.model and now_ms - self._last_switch >= (self.min_dwell_ms or 0.0):
            self._last_switch = now_ms
            return target, 0, {"rate_per_s": rate * 1000.0}
        return view.model, 0, {"rate_per_s": rate * 1000.0}


class Oracle(Policy):
    """Marker for the offline bound; `otas.sim` computes it with `otas.sched.oracle.upper_bound`."""

    name = "oracle"
    offline = True
