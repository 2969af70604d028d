"""Arrival traces and their mapping to applications.

A `Trace` is sorted arrival times (ms, starting at 0) and one application name per arrival.
Sources:
- the Azure LLM inference trace (any CSV with columns TIMESTAMP,ContextTokens,GeneratedTokens),
  by path or by the name `azure` (../shared/data/traces/AzureLLMInferenceTrace_conv.csv);
- synthetic: `poisson` (constant rate), `step` (rate ×0.5, ×1.5, ×1.0 over thirds), `diurnal`
  (rate × (1 + 0.6 sin), two periods), `mmpp` (bursty: a two-state Markov-modulated Poisson
  process, rates ×0.4 and ×2.2, high state a third of the time, mean high dwell n/40 time units).
Every synthetic shape has mean rate 1; `scale_to_rate` then sets the load by scaling time (the
arrival pattern is kept, only the clock is stretched or compressed). All randomness is seeded.

Request → application mapping (explicit):
- `tokens` (default for CSV traces): requests are ranked by ContextTokens and split into
  len(apps) bins, equal-count (or sized by `mix` weights); bin i (shortest prompts first) goes to
  apps[i] in YAML order — short interactive prompts map to the first (tightest) application.
  Deterministic.
- `random`: each request draws an application, uniformly (or by `mix` weights), from a seeded RNG
  (default for synthetic traces, which have no request features).
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from otas.profile.table import Profile
from otas.types import App, Request

AZURE_DEFAULT = Path(__file__).resolve().parents[2] / ".." / "shared/data/traces/AzureLLMInferenceTrace_conv.csv"
SYNTHETIC = ("poisson", "step", "diurnal", "mmpp")
MAX_LOAD = 1000.0
"""Loads accepted, at most: × the γ = 0 capacity, far past any overload worth replaying or
simulating (and a finite time scale)."""
MIN_LOAD = 1e-6
"""Loads accepted, at least: a millionth of the capacity stretches a trace a million-fold already (and a
tinier one overflows the time scale)."""


@dataclass
class Trace:
    name: str
    arrival_ms: np.ndarray
    """Sorted arrival times in ms, first at 0."""
    apps: list[str]

    def __len__(self) -> int:
        return len(self.apps)

    @property
    def duration_ms(self) -> float:
        return float(self.arrival_ms[-1]) if len(self) else 0.0

    def requests(self, apps: Sequence[App]) -> list[Request]:
        """Requests with deadline = arrival + the application's SLO, ids in arrival order."""
        slo = {a.name: a.slo_ms for a in apps}
        return [
            Request(i, a, float(t), float(t) + slo[a])
            for i, (t, a) in enumerate(zip(self.arrival_ms, self.apps, strict=False))
        ]


def _map_apps(
    apps: Sequence[App],
    mapping: str,
    n: int,
    rng: np.random.Generator,
    tokens: np.ndarray | None = None,
    mix: Sequence[float] | None = None,
) -> list[str]:
    names = [a.name for a in apps]
    if mapping == "tokens":
        if tokens is None:
            raise ValueError("mapping 'tokens' needs a trace with ContextTokens; use mapping='random'")
        rank = np.empty(n, dtype=np.int64)
        rank[np.argsort(tokens, kind="stable")] = np.arange(n)
        if mix is None:
            return [names[int(r * len(names) // n)] for r in rank]
        edges = np.cumsum(np.asarray(mix, float) / np.sum(mix))[:-1] * n  # weighted quantile bins
        return [names[i] for i in np.searchsorted(edges, rank, side="right")]
    if mapping == "random":
        p = None if mix is None else np.asarray(mix, float) / np.sum(mix)
        return [names[i] for i in rng.choice(len(names), size=n, p=p)]
    raise ValueError(f"unknown mapping {mapping!r}; use 'tokens' or 'random'")


@functools.lru_cache(maxsize=4)
def _read_csv(p: Path) -> tuple[np.ndarray, np.ndarray]:
    """(arrival ms from 0, ContextTokens) of an Azure-format CSV, sorted by time; read once per process."""
    if not p.is_file():
        what = "is not a file" if p.exists() else "does not exist"
        raise ValueError(f"trace file {p} {what}; give a CSV path or one of azure, {', '.join(SYNTHETIC)}")
    times, tokens = [], []
    try:
        with p.open(encoding="utf-8-sig") as f:  # (a byte-order mark, as some editors write, is not a column name)
            for row in csv.DictReader(f):
                try:
                    if None in (row.get("TIMESTAMP", ""), row.get("ContextTokens", "")):  # short: DictReader's None
                        raise ValueError("fields missing")
                    ts = row["TIMESTAMP"].strip()
                    head, dot, rest = ts.partition(".")
                    frac = rest[: len(rest) - len(rest.lstrip("0123456789"))]  # then a time zone may follow
                    zone = rest[len(frac) :]
                    if dot and (not frac or zone[:1] not in ("", "Z", "+", "-")):  # float() would take "5e3", "inf"
                        raise ValueError(f"fraction of a second {rest!r} is not digits (then a time zone, if any)")
                    when = datetime.fromisoformat(head + zone)  # (a bad zone: its ValueError)
                    if when.tzinfo is None:  # a naive time is UTC: the same trace on every host's time zone
                        when = when.replace(tzinfo=UTC)
                    t = when.timestamp() + (float("0." + frac) if frac else 0.0)
                    times.append(t * 1000.0)
                    tokens.append(int(row["ContextTokens"]))
                except (KeyError, ValueError) as e:
                    raise ValueError(f"{p}: bad row {row!r} ({e}); expected TIMESTAMP,ContextTokens,...") from None
    except (UnicodeDecodeError, csv.Error) as e:  # raised while reading rows, not in parsing one
        raise ValueError(f"{p}: not a UTF-8 CSV trace ({e})") from None
    if not times:
        raise ValueError(f"{p}: no requests; expected a header TIMESTAMP,ContextTokens,... and one row per request")
    order = np.argsort(times, kind="stable")
    t = np.asarray(times)[order]
    t.flags.writeable = False  # shared by every caller through the cache
    tok = np.asarray(tokens)[order]
    tok.flags.writeable = False
    return t - t[0], tok


def csv_length(path: str | Path) -> int:
    """How many requests a CSV trace holds."""
    return len(_read_csv(Path(path).resolve())[0])


def load_csv(path: str | Path, apps: Sequence[App], mapping: str = "tokens", seed: int = 0) -> Trace:
    """An Azure-format CSV trace (TIMESTAMP,ContextTokens,GeneratedTokens), arrivals from 0."""
    p = Path(path)
    t, tok = _read_csv(p.resolve())
    rng = np.random.default_rng(seed)
    return Trace(p.stem, t.copy(), _map_apps(apps, mapping, len(t), rng, tokens=tok))


def csv_window(
    path: str | Path,
    apps: Sequence[App],
    start: int,
    n: int,
    mapping: str = "random",
    seed: int = 0,
    mix: Sequence[float] | None = None,
) -> Trace:
    """Requests start..start+n-1 (in time order) of a CSV trace, arrivals from 0, mapped to
    applications by `mapping` (`random` with `mix` weights, or `tokens` with `mix`-sized bins)."""
    p = Path(path)
    t, tok = _read_csv(p.resolve())
    if not (0 <= start and n >= 2 and start + n <= len(t)):
        raise ValueError(f"window start={start}, n={n} does not fit the {len(t)} requests of {p}")
    t, tok = t[start : start + n], tok[start : start + n]
    rng = np.random.default_rng(seed)
    return Trace(p.stem, t - t[0], _map_apps(apps, mapping, n, rng, tokens=tok, mix=mix))


def _rate_shape(kind: str, u: np.ndarray) -> np.ndarray:
    """Relative rate at fraction u ∈ [0, 1) of the trace (mean 1)."""
    if kind == "poisson":
        return np.ones_like(u)
    if kind == "step":
        return np.select([u < 1 / 3, u < 2 / 3], [0.5, 1.5], 1.0)
    if kind == "diurnal":
        return 1.0 + 0.6 * np.sin(4 * np.pi * u)
    raise ValueError(kind)


def synthetic(
    kind: str, apps: Sequence[App], n: int = 20_000, seed: int = 0, mix: Sequence[float] | None = None
) -> Trace:
    """A synthetic trace of about n arrivals at mean rate 1 per ms (scale it afterwards)."""
    if kind not in SYNTHETIC:
        raise ValueError(f"unknown synthetic trace {kind!r}; use one of {', '.join(SYNTHETIC)}")
    rng = np.random.default_rng(seed)
    if kind == "mmpp":
        t = _mmpp(rng, n)
    else:  # non-homogeneous Poisson by thinning against the peak rate
        peak = 1.6
        cand = np.cumsum(rng.exponential(1.0 / peak, size=int(n * peak * 1.1) + 100))
        cand = cand[cand < n]
        keep = rng.random(len(cand)) < _rate_shape(kind, cand / n) / peak
        t = cand[keep]
    t = t - t[0]
    return Trace(kind, t, _map_apps(apps, "random", len(t), rng, mix=mix))


def _mmpp(rng: np.random.Generator, n: int) -> np.ndarray:
    rates, dwell = (0.4, 2.2), (2 * n / 40, n / 40)  # high a third of the time: mean rate 1
    out, t, state = [], 0.0, 0
    while t < n:
        end = min(t + rng.exponential(dwell[state]), float(n))
        k = rng.poisson(rates[state] * (end - t))
        out.append(np.sort(rng.uniform(t, end, size=k)))
        t, state = end, 1 - state
    return np.concatenate(out)


def scale_to_rate(trace: Trace, rate_per_s: float) -> Trace:
    """Stretch or compress time so the mean arrival rate is `rate_per_s`."""
    if rate_per_s <= 0:
        raise ValueError(f"rate {rate_per_s!r}: use a positive arrival rate")
    if len(trace) < 2:
        return trace
    if not trace.duration_ms > 0:
        raise ValueError(
            f"trace {trace.name!r}: all {len(trace)} arrivals are at one instant, so it has no rate to scale; "
            "give arrivals at two or more distinct times"
        )
    current = (len(trace) - 1) / trace.duration_ms * 1000.0
    return Trace(trace.name, trace.arrival_ms * (current / rate_per_s), list(trace.apps))


def capacity_per_s(profile: Profile, apps: Sequence[App], max_batch: int, gamma: int = 0) -> float:
    """Load 1.0: the throughput of `gamma` with batches whose latency is within half the mean SLO
    (a batch that waits for the previous one still meets the deadline)."""
    mean_slo = float(np.mean([a.slo_ms for a in apps]))
    return profile.throughput(gamma, max_batch, mean_slo / 2)


def make_trace(
    spec: str,
    apps: Sequence[App],
    load: float,
    capacity: float,
    seed: int = 0,
    n: int = 20_000,
    mapping: str | None = None,
) -> Trace:
    """A trace by path or name, time-scaled so its mean rate is load × capacity (per second)."""
    return at_load(base_trace(spec, apps, seed, n, mapping), load, capacity)


def base_trace(spec: str, apps: Sequence[App], seed: int = 0, n: int = 20_000, mapping: str | None = None) -> Trace:
    """A trace by path or name, at its own rate (load it once, then scale it with `at_load`)."""
    if spec in SYNTHETIC:
        return synthetic(spec, apps, n=n, seed=seed)
    path = AZURE_DEFAULT.resolve() if spec == "azure" else Path(spec)
    return load_csv(path, apps, mapping=mapping or "tokens", seed=seed)


def at_load(base: Trace, load: float, capacity: float) -> Trace:
    """`base` time-scaled so its mean rate is load × capacity (per second)."""
    if load <= 0:
        raise ValueError(f"load={load!r}: use a positive multiple of the gamma=0 capacity, e.g. 1.0")
    return scale_to_rate(base, load * capacity)
