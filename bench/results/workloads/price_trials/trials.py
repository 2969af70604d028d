"""Trials of the price of device time (`otas.sched.price`) on stored cells of the workload suite, none adopted.

Each trial patches the shipped policy in this process, then runs bench/workload_ablation.py's `--suite` mode
(variant `otas`, the stored run's baselines and oracle bound), so it is the shipped `otas` with one change:

  base   nothing changed (the shipped policy, for the side-by-side)
  tight  the shared price (`DevicePrice.shared_price`) charges every application the device time per query of
         the tightest arriving application's batches (a shared batch is cut to its tightest member's SLO)
  full   the shared price charges at least the device time per query of the shared batches that ran, sized as
         they ran (decayed mean over the price's τ of batches that ran several applications and left queries
         queued behind them: a batch that took the whole queue says nothing of the size the SLOs allow)
  fast   rates read as the larger of the estimate over τ and over τ/4 (a surge read fast, a fall slowly)
  bslo   the backlog spread over each application's own SLO instead of the price's window τ (its queued
         queries are due within it): r_a + Q_a / SLO_a
  bmax   r_a' = max(r_a, Q_a / SLO_a): the backlog due within its SLO, not added to the rate

    python bench/results/workloads/price_trials/trials.py TRIAL --suite SUITE.json[.xz] --variants otas \
        --jobs 2 --out OUT.json [--sets cpu]
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import numpy as np

from otas.sched import policies, price
from otas.sched.decayed import Decayed

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "bench"))


def _with_slos(init):
    def __init__(self, apps, *args, **kwargs):
        init(self, apps, *args, **kwargs)
        self._slos = np.array([a.slo_ms for a in apps], float)  # (apps,)

    return __init__


def tight() -> None:
    shared = price.DevicePrice.shared_price

    def shared_price(self, now_ms, backlog=None, scale=1.0):
        r = self.rates(now_ms) + (0.0 if backlog is None else np.asarray(backlog, float) / self.tau)
        if not (r > 0).any():
            return 0.0
        t = min(np.flatnonzero(r > 0), key=lambda i: self._slos[i])  # the tightest arriving application
        saved, self._service = self._service, np.broadcast_to(self._service[t], self._service.shape)
        try:
            return shared(self, now_ms, backlog, scale)
        finally:
            self._service = saved

    price.DevicePrice.__init__ = _with_slos(price.DevicePrice.__init__)
    price.DevicePrice.shared_price = shared_price


def full() -> None:
    shared = price.DevicePrice.shared_price
    bind, complete, choose, mu = policies.Otas.bind, policies.Otas.on_complete, policies.Otas.choose, policies.Otas._mu

    def shared_price(self, now_ms, backlog=None, scale=1.0):
        ran = getattr(self, "_ran", None)  # (|Γ|,) device ms per query of the shared batches that ran
        if ran is None:
            return shared(self, now_ms, backlog, scale)
        saved, self._service = self._service, np.maximum(self._service, ran[None, :])
        try:
            return shared(self, now_ms, backlog, scale)
        finally:
            self._service = saved

    def bind_(self, view):
        bind(self, view)
        tau = self._price.tau if self._price is not None else 1.0
        self._n_shared, self._size_shared = Decayed(tau), Decayed(tau)

    def choose_(self, cands, now_ms, view):
        model, gamma, meta = choose(self, cands, now_ms, view)
        meta["queued"] = len(view.queues)
        return model, gamma, meta

    def complete_(self, plan, now_ms, measured_ms, view):
        complete(self, plan, now_ms, measured_ms, view)
        if plan.meta.get("queued", 0) > len(plan.requests) and len({r.app for r in plan.requests}) > 1:
            self._n_shared.add(1.0, now_ms)
            self._size_shared.add(float(len(plan.requests)), now_ms)

    def mu_(self, now_ms, view):
        if self._price is not None:
            n = self._n_shared.at(now_ms)
            b = max(1, round(self._size_shared.at(now_ms) / n)) if n > 0 else 0
            f = view.latency_factor(view.model)
            self._price._ran = view.lat_vector(view.model, b) / (b * f) if b else None
        return mu(self, now_ms, view)

    price.DevicePrice.shared_price = shared_price
    policies.Otas.bind, policies.Otas.choose, policies.Otas.on_complete, policies.Otas._mu = (
        bind_,
        choose_,
        complete_,
        mu_,
    )


def fast(k: float = 4.0) -> None:
    init, observe, rates = price.DevicePrice.__init__, price.DevicePrice.observe, price.DevicePrice.rates

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._fast = price.DevicePrice.__new__(price.DevicePrice)
        self._fast.__dict__.update({n: (v.copy() if isinstance(v, np.ndarray) else v) for n, v in vars(self).items()
                                    if n != "_fast"})  # fmt: skip
        self._fast.tau = self.tau / k

    def observe_(self, app, now_ms, n=1):
        observe(self, app, now_ms, n)
        if "_fast" in vars(self):
            observe(self._fast, app, now_ms, n)

    def rates_(self, now_ms):
        r = rates(self, now_ms)
        return np.maximum(r, rates(self._fast, now_ms)) if "_fast" in vars(self) else r

    price.DevicePrice.__init__, price.DevicePrice.observe, price.DevicePrice.rates = __init__, observe_, rates_


def _backlog(rule) -> None:
    """Price with the backlog `rule(self, now_ms, q)` gives, in the units `price` spreads over τ."""
    price.DevicePrice.__init__ = _with_slos(price.DevicePrice.__init__)
    for name in ("price", "shared_price"):
        f = getattr(price.DevicePrice, name)

        def g(self, now_ms, backlog=None, scale=1.0, f=f):
            if backlog is not None and not getattr(self, "_ruled", False):  # (shared_price may fall back to price)
                backlog = rule(self, now_ms, np.asarray(backlog, float))
                self._ruled = True
                try:
                    return f(self, now_ms, backlog, scale)
                finally:
                    self._ruled = False
            return f(self, now_ms, backlog, scale)

        setattr(price.DevicePrice, name, g)


TRIALS = {
    "base": lambda: None,
    "tight": tight,
    "full": full,
    "fast": fast,
    "bslo": lambda: _backlog(lambda self, now, q: q * self.tau / self._slos),  # Q/τ -> Q/SLO
    "bmax": lambda: _backlog(lambda self, now, q: self.tau * np.maximum(0.0, q / self._slos - self.rates(now))),
}

if __name__ == "__main__":
    trial = sys.argv.pop(1)
    if trial not in TRIALS:
        raise SystemExit(f"trial {trial!r}: use one of {', '.join(TRIALS)}")
    multiprocessing.set_start_method("fork")  # the workers inherit the patch (spawned ones would run base)
    TRIALS[trial]()
    import workload_ablation  # noqa: E402 (bench/, after the patch)

    workload_ablation.main()
