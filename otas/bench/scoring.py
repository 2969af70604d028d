"""Scoring a replay, the same for every server compared: each request is counted once, sent =
answered (200) + rejected (429/503/504, with the server's reason) + errors (any other status) + lost
(no answer at all); then SLO attainment, goodput, accuracy, utility and latency per application."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from otas.bench.formats import rejected
from otas.profile.table import Profile
from otas.sim.traces import Trace
from otas.types import App


def _pct(x: list[float], q: float) -> float:
    return float(np.percentile(x, q)) if x else math.nan


def summarize(
    recs: list[dict[str, Any]], trace: Trace, apps: Sequence[App], labels: list[str], profile: Profile
) -> dict[str, Any]:
    """Per application and in total: counts by outcome, SLO attainment, goodput (answers within the
    SLO per second of trace), accuracy, utility (expected: the profile's accuracy at the γ served;
    realized: correct answers), latency."""
    by = {a.name: a for a in apps}
    duration_s = max(trace.duration_ms / 1e3, 1e-3)
    errs = [r["reason"] for r in recs if r.get("status") not in (None, 200) and not rejected(r.get("status", -1))]
    met = np.array(  # (N,) answered within its application's SLO
        [r.get("status") == 200 and r["latency_ms"] <= by[a].slo_ms for a, r in zip(trace.apps, recs, strict=True)],
        dtype=bool,
    )
    rows: dict[str, dict[str, Any]] = {}
    for name in [a.name for a in apps] + ["all"]:
        idx = [i for i, a in enumerate(trace.apps) if name in ("all", a)]
        ok = [i for i in idx if recs[i].get("status") == 200]
        rej = [i for i in idx if rejected(recs[i].get("status", -1))]
        lost = [i for i in idx if recs[i].get("status", -1) == -1]
        on_time = [i for i in ok if met[i]]
        correct = [i for i in ok if recs[i]["label"] == labels[i]]
        reasons: dict[str, int] = {}
        for i in rej:
            reasons[recs[i]["reason"]] = reasons.get(recs[i]["reason"], 0) + 1
        lat = [recs[i]["latency_ms"] for i in ok]
        u_exp = sum(by[trace.apps[i]].utility * profile.acc(by[trace.apps[i]].task, recs[i]["gamma"]) for i in on_time)
        u_real = sum(by[trace.apps[i]].utility for i in on_time if recs[i]["label"] == labels[i])
        rows[name] = {
            "sent": len(idx),
            "answered": len(ok),
            "rejected": len(rej),
            "errors": len(idx) - len(ok) - len(rej) - len(lost),
            "lost": len(lost),
            "reject_reasons": reasons,
            "on_time": len(on_time),
            "slo_attainment": len(on_time) / len(idx) if idx else math.nan,
            "goodput_per_s": len(on_time) / duration_s if duration_s > 0 else math.nan,
            "server_deadline_met": sum(bool(recs[i].get("server_met")) for i in ok),
            "accuracy_answered": len(correct) / len(ok) if ok else math.nan,
            "utility_expected": u_exp,
            "utility_realized": u_real,
            "mean_gamma": float(np.mean([recs[i]["gamma"] for i in ok])) if ok else math.nan,
            "latency_ms": {
                "p50": _pct(lat, 50),
                "p90": _pct(lat, 90),
                "p99": _pct(lat, 99),
                "max": max(lat, default=math.nan),
            },
        }
    lags = [r["lag_ms"] for r in recs if "lag_ms" in r]
    rows["all"]["timeline"] = timeline(trace, apps, met)
    rows["all"]["error_examples"] = sorted(set(errs))[:5]
    rows["all"]["send_lag_ms"] = {"p50": _pct(lags, 50), "p99": _pct(lags, 99), "max": max(lags, default=math.nan)}
    return rows


TIMELINE_BINS = 50
"""Equal spans of a replay's arrival times that `timeline` counts outcomes in."""


def timeline(trace: Trace, apps: Sequence[App], met: np.ndarray, bins: int = TIMELINE_BINS) -> dict[str, Any]:
    """When in a replay its requests were lost to their SLO: the arrival times cut into `bins` equal spans, and
    per application and span, the requests sent and those answered within the SLO (`met`, per request; the
    rest were late, rejected, failed or lost). `start_ms`: each span's start, on the trace's clock."""
    t = np.asarray(trace.arrival_ms, dtype=float)
    if not len(t):
        return {"start_ms": [], "sent": {}, "on_time": {}}
    edges = np.linspace(t[0], t[-1], bins + 1) if t[-1] > t[0] else np.array([t[0], t[0] + 1.0])
    where = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)  # (N,) each request's span
    names = np.array(trace.apps)
    sent: dict[str, list[int]] = {}
    on_time: dict[str, list[int]] = {}
    for a in apps:
        mine = names == a.name
        sent[a.name] = np.bincount(where[mine], minlength=len(edges) - 1).tolist()
        on_time[a.name] = np.bincount(where[mine & met], minlength=len(edges) - 1).tolist()
    return {"start_ms": edges[:-1].round(3).tolist(), "sent": sent, "on_time": on_time}
