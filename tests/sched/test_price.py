"""The price of device time: zero while the device keeps up, rising with demand, and the price at
which the fluid relaxation's demand just fits the device."""

import numpy as np
import pytest

from otas.profile.table import Profile
from otas.sched.price import DevicePrice, _demand_table
from otas.types import App
from tests.factories import make_apps, make_profile


def two_setting_profile() -> Profile:
    """γ=-8: 1 ms per query, accuracy 0.8; γ=8: 2 ms per query, accuracy 0.9 (batch 1 = batch 2 per query)."""
    return Profile(
        model="m",
        device="d",
        dtype="f",
        gammas=[-8, 8],
        batch_sizes=[1, 2],
        accuracy={"t": {-8: 0.8, 8: 0.9}},
        latency_ms={-8: {1: 1.0, 2: 2.0}, 8: {1: 2.0, 2: 4.0}},
    )


def test_price_is_the_multiplier_where_demand_fits():
    app = App("a", 100.0, 1.0, "t")
    p = DevicePrice([app], two_setting_profile(), max_batch=2, tau_ms=1000.0)
    p._t0 = -np.inf  # observing for ever: the decayed counts are the rates
    p._rate[:] = 0.4  # 0.4 q/ms: γ=8 needs 0.8 ms/ms, fits -> free
    assert p.price(0.0) == 0.0
    p._rate[:] = 0.7  # γ=8 needs 1.4 > 1, γ=-8 needs 0.7: the break between them, (0.9-0.8)/(2-1)
    assert p.price(0.0) == pytest.approx(0.1)
    p._rate[:] = 1.5  # even γ=-8 needs 1.5: the price where serving stops paying, 0.8 / 1
    assert p.price(0.0) == pytest.approx(0.8)
    p._rate[:] = 0.4
    assert p.price(0.0, backlog=[300]) == pytest.approx(0.1)  # a backlog is demand too (300 / 1000 ms)
    assert p.price(0.0, scale=1.75) == pytest.approx(0.1)  # measured 1.75x slower: γ=8 needs 1.4


def test_price_rises_monotonically_with_load():
    apps = make_apps()
    p = DevicePrice(apps, make_profile(), max_batch=64, tau_ms=2000.0)
    p._t0 = -np.inf
    prices = []
    for rate in (0.001, 0.01, 0.03, 0.06, 0.12):
        p._rate[:] = rate / len(apps)
        prices.append(p.price(0.0))
    assert prices[0] == 0.0 and all(b >= a for a, b in zip(prices, prices[1:], strict=False)) and prices[-1] > 0


@pytest.mark.parametrize("rate", [0.05, 1.0, 20.0])
def test_rates_are_unbiased_from_the_first_arrival_and_decay_after_the_last(rate):
    """A steady stream at `rate` queries/ms reads as `rate` early in a run (a bare decayed count reads
    a fraction of it for the first few τ) and decays with time constant τ once it stops."""
    apps = make_apps()
    tau = 50.0
    p = DevicePrice(apps, make_profile(), max_batch=64, tau_ms=tau, min_window_ms=1e-9)
    assert p.rates(0.0).sum() == 0.0
    t, gap, n = 0.0, 1.0 / rate, 0
    for check in (0.1 * tau, 0.5 * tau, 3 * tau):
        while t <= check:
            p.observe(apps[n % 2].name, t)
            t, n = t + gap, n + 1
        est = p.rates(check).sum()
        assert est == pytest.approx(rate, rel=max(0.05, 2 * gap / check)), f"at {check} ms"
    stop = 3 * tau  # no arrival after the last check: from here the decayed count only decays
    at_stop, late = p.rates(stop).sum(), p.rates(stop + 10 * tau).sum()
    weight = -np.expm1(-stop / tau) / -np.expm1(-(stop + 10 * tau) / tau)  # the clock's weight grows too
    assert late == pytest.approx(at_stop * np.exp(-10) * weight, rel=1e-9)


@pytest.mark.parametrize("rate", [0.5, 20.0])
def test_traffic_after_a_lull_reads_as_its_rate_from_its_start(rate):
    """A stream, then nothing for 20 τ, then the same stream again: early in the second one (a tenth of
    τ in) the rate reads as the stream's, as it did early in the first, not the fraction a count decayed
    through the lull has gathered by then; a pause of half τ keeps the count."""
    apps = make_apps()
    tau = 200.0
    p = DevicePrice(apps, make_profile(), max_batch=64, tau_ms=tau, min_window_ms=10.0)
    gap = 1.0 / rate

    def stream(t0: float, t1: float) -> None:
        t = t0
        while t <= t1:
            p.observe(apps[0].name, t)
            t += gap

    stream(0.0, 3 * tau)
    restart = 23 * tau
    stream(restart, restart + 0.1 * tau)
    assert p.rates(restart + 0.1 * tau).sum() == pytest.approx(rate, rel=max(0.1, 2 * gap / (0.1 * tau)))
    before = p.rates(restart + 0.1 * tau).sum()
    stream(restart + 0.6 * tau, restart + 0.7 * tau)  # a pause of half τ: the same clock, counts kept
    assert p._t0 == pytest.approx(restart)
    assert p.rates(restart + 0.7 * tau).sum() < before


def test_a_sparse_steady_stream_is_not_read_as_bursts():
    """Requests of 16 queries every 1.25 τ: no lull, so the clock runs on and each arrival reads near the
    stream's rate (a decayed count peaks at an arrival), not as a burst over the minimum window (16 / 25 ms,
    ten times the rate, had each gap restarted the clock)."""
    apps = make_apps()
    tau, gap, n = 200.0, 250.0, 16
    p = DevicePrice(apps, make_profile(), max_batch=64, tau_ms=tau, min_window_ms=25.0)
    reads = []
    for k in range(40):
        p.observe(apps[0].name, k * gap, n)
        reads.append(p.rates(k * gap).sum())
    assert max(reads[10:]) < 2 * n / gap


def test_demand_table_intervals_are_monotone():
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = rng.uniform(0, 3, (3, 5))
        s = np.sort(rng.uniform(0.1, 5, 5))
        v[rng.random((3, 5)) < 0.2] = -np.inf  # unservable pairs
        breaks, S = _demand_table(v, s)
        assert np.all(np.diff(breaks) > 0) and S.shape == (len(breaks) + 1, 3)
        assert np.all(np.diff(S.sum(1)) <= 1e-12)  # demand never rises with the price
        assert np.all(S[-1] == 0)  # past the last break nothing is worth serving


def test_served_marks_the_applications_worth_their_device_time():
    """Two applications with the same task and SLO, utilities 3 and 0.4. Light load serves both; when
    even the fastest setting for both exceeds the device, the price rises to the value per ms of
    the lesser one (0.4 × 0.8 / 1 ms at γ=-8), where serving it stops paying: only `cheap` is served."""
    apps = [App("cheap", 100.0, 3.0, "t"), App("dear", 100.0, 0.4, "t")]
    p = DevicePrice(apps, two_setting_profile(), max_batch=2, tau_ms=1000.0)
    p._rate[:] = [0.2, 0.2]  # 0.8 ms/ms at γ=8 for both: fits
    assert p.price(0.0) == 0.0 and p.served.tolist() == [True, True]
    p._rate[:] = [0.5, 0.6]  # both at γ=-8 need 1.1 > 1; cheap alone at γ=8 needs 1.0
    mu = p.price(0.0)
    assert mu == pytest.approx(0.4 * 0.8) and p.served.tolist() == [True, False]


def test_a_burst_at_the_start_reads_over_the_minimum_window():
    apps = make_apps()
    p = DevicePrice(apps, make_profile(), max_batch=64, tau_ms=1000.0, min_window_ms=100.0)
    for i in range(50):  # 50 queries at once, the first thing the scheduler sees
        p.observe(apps[i % 2].name, 5.0)
    assert p.rates(5.0).sum() == pytest.approx(50 / 1000.0 / -np.expm1(-100.0 / 1000.0))  # ~0.5 q/ms, not 50/0
    assert p.rates(305.0).sum() == pytest.approx(50 * np.exp(-0.3) / 1000.0 / -np.expm1(-300.0 / 1000.0))


def test_arrivals_in_the_past_decay_like_any_other():
    """A replay may start before time 0: the same stream, shifted, reads the same rate."""
    apps = make_apps()
    reads = []
    for shift in (0.0, -5000.0):
        p = DevicePrice(apps, make_profile(), max_batch=64, tau_ms=50.0, min_window_ms=10.0)
        for i in range(100):
            p.observe(apps[0].name, shift + 2.0 * i)
        reads.append([p.rates(shift + at).sum() for at in (198.0, 400.0)])
        # asked for an earlier time than the latest seen: the rate as of the latest
        assert p.rates(shift + 100.0).sum() == pytest.approx(reads[-1][1])
    np.testing.assert_allclose(reads[0], reads[1], rtol=1e-9)
    assert reads[0][0] == pytest.approx(0.5, rel=0.05)


def test_served_only_prices_the_served_applications_upgrade():
    """`served_only`: where the marginal application is not served, device time is worth what the
    served ones' next upgrade earns. At 0.6 q/ms each, a (utility 1) and b (0.5) do not both fit
    even at γ=-8; b is priced out at 0.4 (what its γ=-8 earns per ms). a alone fits at γ=-8 from
    its own break between the settings, (0.9 - 0.8) / (2 - 1) = 0.1: the served-only price."""
    apps = [App("a", 100.0, 1.0, "t"), App("b", 100.0, 0.5, "t")]
    for served_only, want in ((False, 0.4), (True, 0.1)):
        p = DevicePrice(apps, two_setting_profile(), max_batch=2, tau_ms=1000.0, served_only=served_only)
        p._t0, p._t = -np.inf, 0.0  # observing for ever, the counts decayed to now: they are the rates
        p._rate[:] = [0.6, 0.6]
        assert p.price(0.0) == pytest.approx(want)
        assert p.served.tolist() == [True, False]


def test_smoothed_price_moves_with_the_share_of_the_marginal_switch():
    """`smooth`: at 0.7 q/ms the device affords γ=8 for θ = (1 − 0.7) / (1.4 − 0.7) of the queries, so the
    price sits that share of the way down from the switch's 0.1 to the bottom of γ=8's range (0); it is
    continuous where the plain price jumps (a demand just over the device at γ=8, just over it at γ=-8)."""
    app = App("a", 100.0, 1.0, "t")
    plain = DevicePrice([app], two_setting_profile(), max_batch=2, tau_ms=1000.0)
    smooth = DevicePrice([app], two_setting_profile(), max_batch=2, tau_ms=1000.0, smooth=True)
    for p in (plain, smooth):
        p._t0 = -np.inf
    at = {}
    for rate in (0.4, 0.5 + 1e-9, 0.7, 1.0, 1.0 + 1e-9, 1.5):
        plain._rate[:] = smooth._rate[:] = rate
        at[rate] = plain.price(0.0), smooth.price(0.0)
    assert at[0.4] == (0.0, 0.0)
    assert at[0.7][0] == pytest.approx(0.1) and at[0.7][1] == pytest.approx(0.1 * (1 - 0.3 / 0.7))
    assert at[0.5 + 1e-9][0] == pytest.approx(0.1) and at[0.5 + 1e-9][1] == pytest.approx(0.0, abs=1e-6)
    assert at[1.0][1] == pytest.approx(0.1)  # θ = 0: all of it switches, the break itself
    assert at[1.0 + 1e-9][0] == pytest.approx(0.8) and at[1.0 + 1e-9][1] == pytest.approx(0.1, abs=1e-6)
    assert at[1.5][1] == pytest.approx(0.8 - (1 - 0) / (1.5 - 0) * (0.8 - 0.1))  # serving stops paying, in part


def test_smoothed_price_is_continuous_and_monotone_in_the_load():
    apps = make_apps()
    plain = DevicePrice(apps, make_profile(), max_batch=64, tau_ms=2000.0)
    smooth = DevicePrice(apps, make_profile(), max_batch=64, tau_ms=2000.0, smooth=True)
    for p in (plain, smooth):
        p._t0 = -np.inf
    rates = np.linspace(0.0, 0.2, 4001)
    got = []
    for rate in rates:
        plain._rate[:] = smooth._rate[:] = rate / len(apps)
        got.append((plain.price(0.0), smooth.price(0.0)))
    p, s = np.array(got).T
    assert np.all(np.diff(s) >= -1e-12) and s[-1] > 0
    assert np.all(s <= p + 1e-12)  # never above the plain price: it moves down from it
    step = np.max(np.abs(np.diff(s)))
    assert np.max(np.abs(np.diff(p))) > 20 * step  # the plain price jumps where the smoothed one moves


def _two_apps_price(smooth: bool) -> DevicePrice:
    """Applications a (utility 1) and b (utility 3) of one task on the two-setting profile, rates set by hand."""
    apps = [App("a", 100.0, 1.0, "t"), App("b", 100.0, 3.0, "t")]
    p = DevicePrice(apps, two_setting_profile(), max_batch=2, tau_ms=1000.0, smooth=smooth)
    p._t0, p._t = -np.inf, 0.0  # observing for ever, the counts decayed to now: they are the rates
    return p


def test_shared_price_is_where_one_setting_for_all_fits():
    """0.3 q/ms each: γ=8 for both needs 1.2 ms/ms, γ=-8 0.6; with one setting for all, the switch is at the
    rate-weighted value over device time, (0.3·0.1 + 0.3·3·0.1) / 0.6 = 0.2, where the per-application price
    switches a alone (0.1: b keeps γ=8, the demand 0.9 fits)."""
    p = _two_apps_price(smooth=False)
    p._rate[:] = [0.3, 0.3]
    assert p.shared_price(0.0) == pytest.approx(0.2)
    assert p.price(0.0) == pytest.approx(0.1)
    p._rate[:] = [0.2, 0.2]  # γ=8 for both fits
    assert p.shared_price(0.0) == 0.0
    p._rate[:] = [0.6, 0.6]  # even γ=-8 needs 1.2: the switch to it, the last a shared setting makes
    assert p.shared_price(0.0) == pytest.approx(0.2)
    p._rate[:] = 0.0
    assert p.shared_price(0.0) == 0.0  # no arrivals: nothing to price
    p._rate[:] = [0.2, 0.2]
    assert p.shared_price(0.0, backlog=[100, 100]) == pytest.approx(0.2)  # a backlog is demand too
    assert p.shared_price(0.0, scale=1.5) == pytest.approx(0.2)  # measured 1.5x slower: γ=8 needs 1.2


def test_smoothed_shared_price_moves_with_the_share_the_device_affords():
    """At 0.3 q/ms each the device affords γ=8 for θ = (1 − 0.6) / (1.2 − 0.6) of the queries: the price sits
    that share of the way down from the switch (0.2) to the bottom of γ=8's range (0)."""
    p = _two_apps_price(smooth=True)
    p._rate[:] = [0.3, 0.3]
    assert p.shared_price(0.0) == pytest.approx(0.2 * (1 - 2 / 3))
    p._rate[:] = [0.25, 0.25]  # γ=8 needs exactly 1: free
    assert p.shared_price(0.0) == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(40))
def test_shared_price_is_the_least_price_whose_best_common_setting_fits(seed):
    """Brute force on random profiles and rates: the unsmoothed shared price is the smallest μ on a fine grid
    at which the setting maximising Σ R·v − μ·Σ R·s fits the device, or, where none fits, at which that setting is
    the fastest."""
    rng = np.random.default_rng(seed)
    n_apps = int(rng.integers(1, 4))
    gammas = sorted(rng.choice(np.arange(-48, 17, 4), size=int(rng.integers(2, 6)), replace=False).tolist())
    per_query = np.sort(rng.uniform(0.2, 3.0, len(gammas)))  # ms per query, rising with γ
    prof = Profile(
        model="m",
        device="d",
        dtype="f",
        gammas=gammas,
        batch_sizes=[1],
        accuracy={
            f"t{k}": dict(zip(gammas, rng.uniform(0.3, 0.95, len(gammas)).tolist(), strict=True)) for k in range(n_apps)
        },
        latency_ms={g: {1: float(t)} for g, t in zip(gammas, per_query, strict=True)},
    )
    apps = [App(f"a{k}", 1e6, float(rng.uniform(0.5, 5)), f"t{k}") for k in range(n_apps)]
    p = DevicePrice(apps, prof, max_batch=1, tau_ms=1000.0)
    p._t0, p._t = -np.inf, 0.0
    p._rate[:] = rng.uniform(0.0, 1.5, n_apps)
    mu = p.shared_price(0.0)
    r = p._rate
    value, demand = p._values.T @ r, p._service.T @ r  # (× the online correction's scale: 1 here)
    enough = max(1.0, demand.min())  # where no setting fits, the fastest is as far as a price can go

    def fits(m: float) -> bool:
        best = np.flatnonzero(value - m * demand >= np.max(value - m * demand) - 1e-12)
        return demand[best].min() <= enough  # (ties: the cheaper of them)

    assert fits(mu + 1e-9)
    grid = np.linspace(0.0, mu, 2001)[:-1]
    assert not any(fits(m) for m in grid[grid < mu - 1e-6])
