"""Seeded random workloads, so a policy is judged on many workloads instead of one.

A `Workload` is drawn from its seed alone (`draw`), independent of any device: its applications
carry SLOs as multiples of a reference latency, resolved per profile by `Workload.apps_for`.

What one seed draws (ranges are the module constants below):
- 2-6 applications; utility log-uniform in [0.5, 5]; task uniform over the served tasks (the
  profile's `accuracy` keys, `source` included, so some applications cannot use prompts);
- SLOs: the tightest is m × the reference latency, m log-uniform in [2, 8]; the loosest is S × the
  tightest, S log-uniform in [2, 20]; the others log-uniform between. Applications are named
  a0, a1, ... tightest first. The reference latency is the profile's batch-1 latency at γ = 0
  (`reference_ms`): the plain model every baseline runs, so even at m = 2 the tightest application
  can be served by every policy (anchoring on the fastest γ instead would make m = 2 infeasible for
  γ = 0 on the CPU profile, 29.3 < 29.6 ms, a test of "can it merge at all"). CPU: 59-237 ms; H100:
  1.0-4.2 ms, where γ = 0 is also the fastest γ at batch 1;
- mix weights (the share of requests per application): 0.8 × Dirichlet(1) + 0.2 / k;
- a trace kind, stratified by seed pairs so the tuning split (even seeds) and the held-out split
  (odd seeds) hold every kind equally often: azure, poisson, mmpp, diurnal, step, azure, ...;
  3,000-6,000 requests. Azure: a random window of that many consecutive requests of the conv trace,
  requests mapped to applications at random by the mix weights, or (a third of the time) by prompt
  length in mix-sized bins, shortest prompts to the tightest application. Synthetic kinds: the
  shapes of `otas.sim.traces.synthetic`, requests mapped at random by the mix weights.
Loads are set afterwards by time-scaling (`otas.sim.traces.at_load`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from otas.profile.table import Profile
from otas.sim.traces import AZURE_DEFAULT, Trace, csv_length, csv_window, synthetic
from otas.types import App

TRACE_KINDS = ("azure", "poisson", "mmpp", "diurnal", "step")
N_APPS = (2, 6)
SLO_MULT = (2.0, 8.0)
"""Tightest SLO / the profile's reference latency (`reference_ms`)."""
SLO_SPREAD = (2.0, 20.0)
"""Loosest SLO / tightest SLO."""
UTILITY = (0.5, 5.0)
N_REQUESTS = (3000, 6000)
TOKENS_MAPPING_P = 1 / 3
"""Share of Azure workloads mapped to applications by prompt length (the rest: at random)."""


@dataclass(frozen=True)
class AppSpec:
    """An application with its SLO as a multiple of the reference latency."""

    name: str
    slo_mult: float
    utility: float
    task: str


@dataclass(frozen=True)
class Workload:
    seed: int
    apps: tuple[AppSpec, ...]
    """Tightest SLO first."""
    mix: tuple[float, ...]
    """Share of requests per application (sums to 1)."""
    trace: str
    """One of TRACE_KINDS."""
    mapping: str
    """random or tokens (azure only)."""
    n: int
    """Requests in the trace (about n for synthetic kinds)."""
    window: float
    """Azure: start of the window as a fraction of the requests that can start one."""

    @property
    def split(self) -> str:
        return split_of(self.seed)

    @property
    def spread(self) -> float:
        return self.apps[-1].slo_mult / self.apps[0].slo_mult

    def apps_for(self, profile: Profile) -> list[App]:
        """Concrete applications: SLOs in ms against this profile's reference latency."""
        missing = sorted({a.task for a in self.apps} - set(profile.accuracy))
        if missing:
            raise ValueError(f"workload {self.seed}: profile {profile.model!r} serves no task {missing}")
        ref = reference_ms(profile)
        return [App(a.name, a.slo_mult * ref, a.utility, a.task) for a in self.apps]

    def base_trace(self, apps: Sequence[App], azure: str | Path = AZURE_DEFAULT) -> Trace:
        """The arrivals at their own rate, mapped to `apps` (scale with `otas.sim.traces.at_load`)."""
        seed = self.seed + 10_000  # the trace's randomness, apart from the draw's
        if self.trace == "azure":
            total = csv_length(azure)
            n = min(self.n, total)
            start = int(self.window * (total - n))
            tr = csv_window(azure, apps, start, n, self.mapping, seed=seed, mix=self.mix)
            return Trace(f"azure[{start}:{start + n}]", tr.arrival_ms, tr.apps)
        return synthetic(self.trace, apps, n=self.n, seed=seed, mix=self.mix)

    def features(self) -> dict[str, object]:
        """What the report groups results by."""
        u = np.array([a.utility for a in self.apps])
        m = [a.slo_mult for a in self.apps]
        return {
            "trace": self.trace,
            "mapping": self.mapping,
            "n_apps": len(self.apps),
            "spread": self.spread,
            "min_gap": min(b / a for a, b in zip(m, m[1:], strict=False)),
            "tight_mult": self.apps[0].slo_mult,
            "tight_share": self.mix[0],
            "tight_utility_rel": float(self.apps[0].utility / u.mean()),
            "source_apps": sum(a.task == "source" for a in self.apps),
            "requests": self.n,
        }

    def to_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "split": self.split,
            "trace": self.trace,
            "mapping": self.mapping,
            "n": self.n,
            "window": self.window,
            "mix": list(self.mix),
            "apps": [a.__dict__ for a in self.apps],
        }


def split_of(seed: int) -> str:
    """Even seeds tune, odd seeds are held out."""
    return "tuning" if seed % 2 == 0 else "held-out"


def reference_ms(profile: Profile) -> float:
    """Batch-1 latency of γ = 0 (of the fastest γ if the profile has no γ = 0)."""
    if 0 in profile.gammas:
        return profile.lat(0, 1)
    return min(profile.lat(g, 1) for g in profile.gammas)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, size: int | None = None) -> np.ndarray | float:
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size))


def draw(seed: int, tasks: Sequence[str], n_requests: tuple[int, int] = N_REQUESTS) -> Workload:
    """The workload of one seed (deterministic); `tasks`: those every profile it runs on serves."""
    if not tasks:
        raise ValueError("draw needs at least one task (the profile's accuracy keys)")
    rng = np.random.default_rng([seed, 0x5EED])
    k = int(rng.integers(N_APPS[0], N_APPS[1] + 1))
    tight = float(_log_uniform(rng, *SLO_MULT))
    spread = float(_log_uniform(rng, *SLO_SPREAD))
    middle = np.sort(rng.uniform(0.0, 1.0, k - 2))
    mults = [tight, *(tight * spread**middle), tight * spread]
    utils = _log_uniform(rng, *UTILITY, size=k)
    pool = sorted(tasks)
    chosen = [pool[int(i)] for i in rng.integers(0, len(pool), k)]
    apps = tuple(
        AppSpec(f"a{i}", round(float(m), 6), round(float(u), 6), t)
        for i, (m, u, t) in enumerate(zip(mults, utils, chosen, strict=True))
    )
    w = 0.8 * rng.dirichlet(np.ones(k)) + 0.2 / k
    mix = tuple(round(float(x), 6) for x in w / w.sum())
    kind = TRACE_KINDS[(seed // 2) % len(TRACE_KINDS)]
    mapping = "tokens" if kind == "azure" and rng.random() < TOKENS_MAPPING_P else "random"
    n = int(rng.integers(n_requests[0], n_requests[1] + 1))
    return Workload(seed, apps, mix, kind, mapping, n, round(float(rng.random()), 6))


def served_tasks(profiles: Sequence[Profile]) -> list[str]:
    """Tasks every profile serves (a workload must run on each)."""
    common = set(profiles[0].accuracy)
    for p in profiles[1:]:
        common &= set(p.accuracy)
    return sorted(common)


def suite(
    n: int, tasks: Sequence[str], first_seed: int = 0, n_requests: tuple[int, int] = N_REQUESTS
) -> list[Workload]:
    """Workloads of seeds first_seed .. first_seed + n - 1."""
    if n < 1:
        raise ValueError(f"n={n}: draw at least one workload")
    return [draw(s, tasks, n_requests) for s in range(first_seed, first_seed + n)]
