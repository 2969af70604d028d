"""The price of device time: what one millisecond of the device is worth to the work still to come.

The DP (method §5) plans only the batches it can see; on its own it spends any slack on accuracy
now, while arrivals keep coming. A price μ (utility per ms) charged for each batch's latency makes
it weigh accuracy now against the queries that the same time would serve later.

μ comes from the fluid relaxation of the serving problem over the near future: applications
arrive at rates R_a (queries per ms, measured online) on top of a backlog Q_a, each query of `a`
served at setting γ earns v_a(γ) = u_a · acc(task_a, γ) and costs s_a(γ) ms of device time (the
profile's best per-query time at γ with batches within half of a's SLO). The LP

    maximise Σ_a R_a · v_a(γ_a)    subject to   Σ_a R_a · s_a(γ_a) ≤ 1   (γ_a may be 'not served')

is solved by its Lagrangian: every application takes argmax_γ v_a(γ) − μ · s_a(γ), and μ is the
smallest price at which the demand Σ_a R_a · s_a(γ_a(μ)) fits the device. An idle device gives
μ = 0 (the paper's objective); a saturated one gives the marginal utility per ms of the setting
that just keeps up. An application whose best choice just above μ is 'not served' is not worth its
device time (`served`): the policy then stops protecting its arrivals (head cap, blocked-arrival
cost). The application at the margin counts as not served; so when even the fastest settings
exceed the device, none is, and batches are capped for no one (counting the marginal ones as served
measured worse on the workload suite's H200 set: geomean at load 3 1.301 against 1.333).
Demand is piecewise constant in μ, with breaks where an application's best
setting changes, so the breaks are computed once and each query of μ is one small mat-vec.
`smooth` (the policy `otas`): that μ, the break at which the marginal application switches, moved
down across the price range before it by the share of that application the device can still afford
there, so the price moves with the demand instead of jumping (`DevicePrice._smoothed`).
`shared_price`: the same relaxation with every application at one γ, the price for batches shared
across applications. The per-application optimum can split the applications (on the Azure trace at
1.6 × the H100's γ = 0 capacity: lowlight, utility 2, at γ = 16, novel and blur at -48, the device full),
which shared batches cannot realise: they ran at -36 to -40 at that price where `fixed:-20` kept up at
every SLO (the policy `otas` weighs the two by how much it shares batches, `Otas(price_batching)`).
Pure numpy; no clock of its own (times are passed in).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from otas.profile.table import Profile
from otas.types import App


def service_ms(profile: Profile, max_batch: int, budget_ms: float) -> np.ndarray:
    """(|Γ|,) device ms per query at each γ: the best batch within `budget_ms` (Profile.throughput)."""
    return np.array([1000.0 / profile.throughput(g, max_batch, budget_ms) for g in profile.gammas])


LULL_TAUS = 5.0
"""A gap with no arrival longer than this many τ is a lull: the rate estimate's clock starts again after it."""


class DevicePrice:
    """Online μ for one model: arrival rates by exponential decay with time constant `tau_ms`."""

    def __init__(
        self,
        apps: Sequence[App],
        profile: Profile,
        max_batch: int,
        tau_ms: float,
        min_window_ms: float | None = None,
        served_only: bool = False,
        smooth: bool = False,
    ):
        """`min_window_ms`: the shortest history a rate is read from (`rates`; default τ). `served_only`:
        the price is that of the applications served (`price`). `smooth`: the price moves across the
        marginal application's switch in proportion to the share of it that must switch (`price`)."""
        self.served_only = served_only
        self.smooth = smooth
        if not tau_ms > 0:
            raise ValueError(f"tau_ms={tau_ms!r}: use a positive time constant in ms")
        self.min_window = float(tau_ms if min_window_ms is None else min_window_ms)
        if not self.min_window > 0:
            raise ValueError(f"min_window_ms={min_window_ms!r}: use a positive time in ms")
        self.apps = [a.name for a in apps]
        self.index = {a: i for i, a in enumerate(self.apps)}
        self.tau = float(tau_ms)
        # each application's queries at best ride batches within half its SLO (waiting + running)
        s = np.array([service_ms(profile, max_batch, a.slo_ms / 2) for a in apps])  # (apps, |Γ|)
        values = []
        for a in apps:
            ok = np.isin(profile.gammas, profile.servable(a.task))
            values.append(np.where(ok, [a.utility * profile.acc(a.task, g) if k else 0.0
                                        for g, k in zip(profile.gammas, ok, strict=True)], -np.inf))  # fmt: skip
        self._breaks, self._S = _demand_table(np.array(values), s)
        self._values, self._service = np.array(values), s  # (apps, |Γ|) each: v_a(γ) (-inf: not servable), s_a(γ)
        self._rate = np.zeros(len(self.apps))  # queries per ms, decayed to `_t`
        self._t = -math.inf  # the counts are decayed to this time (the latest seen)
        self._t0: float | None = None  # the first arrival (after the last lull): the estimate's clock starts there
        self._last = -math.inf  # the latest arrival
        self.served = np.ones(len(self.apps), dtype=bool)
        """(apps,) at the last price asked: whether the fluid solution serves the application at all."""

    def observe(self, app: str, now_ms: float, n: int = 1) -> None:
        """`n` arrivals of `app` at once (one request's queries)."""
        self._decay(now_ms)
        if self._t0 is None or now_ms < self._t0:  # the earliest arrival seen (a replay may start in the past)
            self._t0 = now_ms
        elif now_ms - self._last > LULL_TAUS * self.tau:
            # a lull of several τ: the arrivals before it have decayed to under 1 % and say nothing of the rate
            # after it, and a count decayed through it starts near 0 again (live on the H100, traffic after 13 s
            # idle: μ = 0 for its first 115-223 ms while 2,000 queries queued at the most accurate γ), so the clock
            # starts again here. Not after a gap of about τ: a sparse steady stream would restart at every
            # arrival and read each as a burst over `min_window`.
            self._rate[:] = 0.0
            self._t0 = now_ms
        self._last = max(self._last, now_ms)
        self._rate[self.index[app]] += n / self.tau

    def rates(self, now_ms: float) -> np.ndarray:
        """(apps,) queries per ms: the decayed counts over the weight the decay has given the time observed,
        τ·(1 − e^(−t/τ)), t from the first arrival but at least `min_window_ms`. A bare decayed count
        starts at 0 and reaches the rate only after a few τ: early in a run (a few multiples of the
        loosest SLO) it saw a fraction of the load, sized batches for that, and let them block tight
        classes. The floor on t keeps a burst at the start from reading as a sustained rate (the
        policy `otas` sets it to the tightest SLO). After a lull (no arrival for `LULL_TAUS` × τ), the clock
        starts again at the first arrival after it, the counts from before it dropped: traffic after an idle
        spell is read as a rate as soon as at the start. Times are expected in order after the first arrivals
        (as the scheduler passes them)."""
        self._decay(now_ms)
        if self._t0 is None:
            return self._rate.copy()
        t = max(max(now_ms, self._t) - self._t0, self.min_window)  # the counts are as of the latest time seen
        return self._rate / -math.expm1(-t / self.tau)

    def price(self, now_ms: float, backlog: Sequence[int] | None = None, scale: float = 1.0) -> float:
        """μ in utility per ms. `backlog`: queued per app (in `apps` order), spread over `tau_ms`;
        `scale`: measured over profiled latency (the scheduler's online correction)."""
        r = self.rates(now_ms)
        r = r if backlog is None else r + np.asarray(backlog, float) / self.tau
        demand = scale * (self._S @ r)  # (M + 1,): device ms needed per ms, per price interval
        m = int(np.argmax(demand <= 1.0))  # the last interval serves nothing: demand 0 there
        self.served = self._S[m] > 0  # (apps,): worth their device time at this price
        if self.served_only and m > 0:
            # the marginal application is not served, so no device time goes to it: the time is worth
            # what the served applications' own next upgrade earns, the lowest price at which they fit
            demand = scale * (self._S[:, self.served] @ r[self.served])
            m = int(np.argmax(demand <= 1.0))
        if m == 0:
            return 0.0
        mu = float(self._breaks[m - 1])
        if self.smooth and demand[m - 1] > demand[m]:
            mu = self._smoothed(demand, m)
        return mu

    def shared_price(self, now_ms: float, backlog: Sequence[int] | None = None, scale: float = 1.0) -> float:
        """μ with every application at one γ (batches shared across applications): the smallest price at which
        the setting maximising Σ_a R_a · v_a(γ) − μ · Σ_a R_a · s_a(γ) fits the device, found along the upper
        hull of (device time, value) from the most valuable setting; `smooth` moves it down from the switch that
        fits by the share θ of the costlier setting the device still affords, as `price` does for the marginal
        application. Where even the fastest setting does not fit, the price of the last switch to it: a higher
        price changes no shared setting, and which applications stop paying for their device time is the
        per-application price's to say (`price`, `served`). Arguments as `price`'s."""
        r = self.rates(now_ms)
        r = r if backlog is None else r + np.asarray(backlog, float) / self.tau
        on = r > 0
        ok = np.all(np.isfinite(self._values[on]), axis=0)  # (|Γ|,): a setting every arriving application takes
        if not on.any():
            return 0.0
        if not ok.any():  # no setting serves every arriving application: no shared batch to price
            return self.price(now_ms, backlog, scale)
        value = self._values[on][:, ok].T @ r[on]  # utility per ms at each setting
        cost = self._service[on][:, ok].T @ r[on]  # profiled device ms per ms, as `price`'s
        i, mu = int(np.argmax(value)), 0.0
        while scale * cost[i] > 1.0:
            cheaper = np.flatnonzero(cost < cost[i])
            if not len(cheaper):  # the fastest setting: no switch left
                return mu
            slope = (value[i] - value[cheaper]) / (cost[i] - cost[cheaper])
            tied = np.flatnonzero(slope <= slope.min() * (1 + 1e-12))  # (collinear: to the cheapest of them)
            k = int(tied[np.argmin(cost[cheaper[tied]])])
            j, nxt = int(cheaper[k]), max(float(slope[k]), mu)
            if scale * cost[j] <= 1.0 and self.smooth:  # the device affords the share θ of setting i
                theta = (1.0 - scale * cost[j]) / (scale * (cost[i] - cost[j]))
                return mu + (1.0 - theta) * (nxt - mu)
            i, mu = j, nxt
        return mu

    def _smoothed(self, demand: np.ndarray, m: int) -> float:
        """The price for the first interval `m` whose demand fits, moved down across the price range of the
        demand just before it (the intervals whose demand is interval m − 1's, [μ_lo, μ_m)) by θ = (1 − d_m) /
        (d_{m−1} − d_m): the share of the marginal application the device can still afford at its settings
        before the switch. At μ_m the fluid optimum switches only the rest of it, but the DP, deciding batch by
        batch near one price, switches nearly all of it (on the Azure trace at 1.5 × the H100's γ = 0 capacity
        with the device 5 % slower than profiled, all but 687 of lowlight's 38,730 images left γ = 16 to free 3 %
        of the device; docs/scheduler.md). Continuous in the demand: θ → 1 as d_{m−1} falls to 1, where interval m − 1
        fits and the price is its own."""
        # where interval m - 1's demand begins: demand is nonincreasing in μ, so the intervals before m - 1
        # that differ from it are exactly those before its run
        k = int(np.count_nonzero(demand[: m - 1] != demand[m - 1]))
        lo = float(self._breaks[k - 1]) if k > 0 else 0.0
        hi = float(self._breaks[m - 1])
        d_below, d_m = float(demand[m - 1]), float(demand[m])
        theta = (1.0 - d_m) / (d_below - d_m)
        return hi - theta * (hi - lo)

    def _decay(self, now_ms: float) -> None:
        if now_ms > self._t:
            self._rate *= math.exp(-(now_ms - self._t) / self.tau)
            self._t = now_ms


def _demand_table(values: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breaks μ_1 < ... < μ_M where some application's best setting changes, and S (M + 1, apps):
    the device ms per query each application takes in each price interval (0 = not served)."""
    s = np.broadcast_to(s, values.shape)  # (apps, |Γ|): one row for every application, or its own
    v = np.concatenate([values, np.zeros((len(values), 1))], axis=1)  # 'not served': v = 0, s = 0
    c = np.concatenate([s, np.zeros((len(values), 1))], axis=1)  # (apps, |Γ| + 1)
    breaks = set()
    for va, ca in zip(v, c, strict=True):
        for i in range(len(ca)):
            for j in range(len(ca)):
                if ca[i] > ca[j] and np.isfinite(va[i]) and np.isfinite(va[j]) and va[i] > va[j]:
                    breaks.add(float((va[i] - va[j]) / (ca[i] - ca[j])))
    mus = np.array(sorted(breaks))
    if len(mus) == 0:
        probe = np.zeros(1)
    else:  # one price inside each interval [0, μ_1), (μ_1, μ_2), ..., (μ_M, ∞)
        probe = np.concatenate([[mus[0] / 2], (mus[:-1] + mus[1:]) / 2, [mus[-1] * 2]])
    best = np.argmax(v[None, :, :] - probe[:, None, None] * c[None, :, :], axis=2)  # (M + 1, apps)
    return mus, np.take_along_axis(c[None, :, :], best[:, :, None], axis=2)[:, :, 0]
