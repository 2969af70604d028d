"""The workload suite's report: ratios to the best other policy, their statistics per profile set,
split and load, where a policy loses (by workload feature), tables and the CDF plot. Pure (numpy;
no plotting).

ratio(policy) = utility(policy) / max utility over the baselines on the same workload and load
(every fixed:<γ>, edf, clipper, model-switch that ran: a hindsight choice per cell). A cell where
the best baseline earns nothing has ratio 1 if the policy earns nothing too, else inf (counted
apart, left out of the statistics). Geometric mean over the finite ratios (0 if one is 0).
Tables and the plot: `otas.bench.workloads_plot`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from otas import jsonio
from otas.sim import workloads as wl

SPLITS = ("all", "tuning", "held-out")
BINS = {
    "spread": (2, 4, 8, 20),
    "min_gap": (1, 1.1, 1.3, 2, 20),
    "tight_mult": (2, 3, 5, 8),
    "tight_share": (0, 0.2, 0.4, 1),
    "tight_utility_rel": (0, 0.5, 1, 2, 6),
}
"""Edges of the numeric features the loss analysis groups by (the last bin is closed)."""
FEATURES = ("load", "trace", "mapping", "n_apps", "spread", "min_gap", "tight_mult", "tight_share")
FEATURES += ("tight_utility_rel", "source_apps")


def rnd(x: object) -> float | None:
    """6 significant digits; nan → None (JSON null)."""
    v = float(x)  # type: ignore[arg-type]
    return None if math.isnan(v) else float(f"{v:.6g}")


def is_baseline(name: str) -> bool:
    return name.startswith("fixed:") or name in ("edf", "clipper", "model-switch", "model-switch:resident")


def generator_constants() -> dict[str, object]:
    keys = ("TRACE_KINDS", "N_APPS", "SLO_MULT", "SLO_SPREAD", "UTILITY", "N_REQUESTS", "TOKENS_MAPPING_P")
    return {k.lower(): getattr(wl, k) for k in keys}


def ratio(u: float, best: float) -> float:
    if best > 0:
        return u / best
    return 1.0 if u <= 0 else math.inf


def geomean(xs: Sequence[float]) -> float:
    a = np.asarray(xs, float)
    if not len(a):
        return math.nan
    if (a <= 0).any():
        return 0.0
    return float(np.exp(np.mean(np.log(a))))


def stats(xs: Iterable[float]) -> dict[str, float | int | None]:
    """n, min, p10, median, geomean and share ≥ 1 of the finite values; n_inf of the infinite ones."""
    a = np.asarray(list(xs), float)
    fin = a[np.isfinite(a)]
    if not len(fin):
        return {"n": 0, "n_inf": int(np.isinf(a).sum())}
    return {
        "n": len(fin),
        "min": rnd(fin.min()),
        "p10": rnd(np.percentile(fin, 10)),
        "median": rnd(np.median(fin)),
        "geomean": rnd(geomean(fin)),
        "wins": rnd(np.mean(fin >= 1.0)),
        "n_inf": int(np.isinf(a).sum()),
    }


def cell_view(rec: dict, compared: Sequence[str]) -> dict[str, object]:
    """One cell's ratios: each compared policy (and the oracle bound) over the best baseline,
    and over the oracle bound; SLO attainment of the tightest application."""
    pol = rec["policies"]
    base = {p: v["utility"] for p, v in pol.items() if is_baseline(p)}
    best = max(base, key=lambda p: base[p])
    bu, bound, tight = base[best], rec["oracle"] or 0.0, rec["tightest_app"]
    present = [c for c in compared if c in pol]
    return {
        **{k: rec[k] for k in ("seed", "split", "set", "load")},
        "best_other": best,
        "ratio": {**{c: ratio(pol[c]["utility"], bu) for c in present}, "oracle": ratio(bound, bu)},
        "vs_oracle": {p: ratio(pol[p]["utility"], bound) for p in [*present, best]},
        "tight_slo": {p: pol[p]["slo_per_app"].get(tight) for p in [*present, best]},
    }


def load_groups(loads: Sequence[float]) -> dict[str, list[float]]:
    groups = {f"{x:g}": [x] for x in loads}
    high = [x for x in loads if x >= 1.0]
    if len(high) > 1:
        groups["≥1"] = high
    return groups


def _median(xs: Iterable[object]) -> float | None:
    a = [float(x) for x in xs if x is not None]  # type: ignore[arg-type]
    return rnd(np.median(a)) if a else None


def summarise(views: Sequence[dict], compared: Sequence[str], loads: Sequence[float]) -> dict:
    """summary[set][split][load group][policy] = ratio stats + medians of vs-oracle and tight-app SLO."""
    out: dict = {}
    for s in dict.fromkeys(v["set"] for v in views):
        out[s] = {}
        for split in SPLITS:
            out[s][split] = {}
            for g, xs in load_groups(loads).items():
                vs = [v for v in views if v["set"] == s and v["load"] in xs and split in ("all", v["split"])]
                row = {}
                for c in [*compared, "oracle"]:
                    have = [v for v in vs if c in v["ratio"]]
                    if not have:
                        continue
                    row[c] = stats(v["ratio"][c] for v in have)
                    if c != "oracle":
                        row[c]["vs_oracle_median"] = _median(v["vs_oracle"][c] for v in have)
                        row[c]["tight_slo_median"] = _median(v["tight_slo"][c] for v in have)
                        best = (v["tight_slo"][v["best_other"]] for v in have)
                        row[c]["best_other_tight_slo_median"] = _median(best)
                out[s][split][g] = row
    return out


def _bin(feature: str, x: object) -> str:
    if feature not in BINS:
        return f"{x:g}" if isinstance(x, float) else str(x)
    e = BINS[feature]
    i = min(int(np.searchsorted(e, float(x), side="right")) - 1, len(e) - 2)  # type: ignore[arg-type]
    i = max(i, 0)
    return f"[{e[i]:g},{e[i + 1]:g}{']' if i == len(e) - 2 else ')'}"


BANDS = {"all": lambda x: True, "<1": lambda x: x < 1.0, "≥1": lambda x: x >= 1.0}
"""Load bands of the loss analysis (under and over the γ = 0 capacity lose for different reasons)."""


def by_feature(views: Sequence[dict], policy: str, features: dict[int, dict]) -> dict:
    """by_feature[set][load band][feature][bin] = stats of `policy`'s ratio over the cells in that bin."""
    out: dict = {}
    for s in dict.fromkeys(v["set"] for v in views):
        out[s] = {}
        for band, keep in BANDS.items():
            vs = [v for v in views if v["set"] == s and keep(v["load"]) and policy in v["ratio"]]
            out[s][band] = {}
            for f in FEATURES:
                groups: dict[str, list[float]] = {}
                for v in vs:
                    x = v["load"] if f == "load" else features[v["seed"]][f]
                    groups.setdefault(_bin(f, x), []).append(v["ratio"][policy])
                out[s][band][f] = {k: stats(groups[k]) for k in sorted(groups, key=_sort_key)}
    return out


def _sort_key(k: str) -> tuple[float, str]:
    try:
        return (float(k.strip("[(").split(",")[0]), k)
    except ValueError:
        return (math.inf, k)


def worst(views: Sequence[dict], policy: str, features: dict[int, dict], k: int = 12) -> dict:
    """The k cells of each set where `policy`'s ratio is lowest, with the workload's features."""
    out: dict = {}
    for s in dict.fromkeys(v["set"] for v in views):
        vs = sorted((v for v in views if v["set"] == s and policy in v["ratio"]), key=lambda v: v["ratio"][policy])
        out[s] = [
            {
                **{key: v[key] for key in ("seed", "split", "load", "best_other")},
                "ratio": rnd(v["ratio"][policy]),
                "oracle_ratio": rnd(v["ratio"]["oracle"]),
                "tight_slo": v["tight_slo"][policy],
                "best_other_tight_slo": v["tight_slo"][v["best_other"]],
                **features[v["seed"]],
            }
            for v in vs[:k]
        ]
    return out


def analyse(records: Sequence[dict], compared: Sequence[str], loads: Sequence[float], features: dict) -> dict:
    views = [cell_view(r, compared) for r in records]
    lead = compared[0]
    return {
        "per_cell": [{**v, "ratio": {p: rnd(x) for p, x in v["ratio"].items()}} for v in views],  # type: ignore[union-attr]
        "summary": summarise(views, compared, loads),
        "by_feature": {p: by_feature(views, p, features) for p in compared},
        "worst": {lead: worst(views, lead, features)},
    }


def write_json(result: dict, path: Path) -> None:
    path.write_text(jsonio.dumps(result))
