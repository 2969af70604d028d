"""Tables (rich) and plots (matplotlib, Agg) for simulation results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from otas.sim.simulator import SimResult


def table(rows: Sequence[dict[str, object]], title: str, console: Console | None = None) -> None:
    """One row per policy: utility, vs oracle, SLO attainment (overall and per app), accuracy, drops."""
    console = console or Console(width=max(Console().width, 160))  # wide table: don't squeeze it
    apps = next((list(r["slo_attainment_per_app"]) for r in rows if "slo_attainment_per_app" in r), [])  # type: ignore[call-overload]
    if len(apps) > MAX_APP_COLUMNS:  # one column each would squeeze the table past reading: a table of its own
        table([{k: v for k, v in r.items() if k != "slo_attainment_per_app"} for r in rows], title, console)
        _per_app(rows, apps, title, console)
        return
    t = Table(title=title)
    for col in [
        "policy",
        "utility",
        "vs oracle",
        "SLO %",
        *[f"SLO {a} %" for a in apps],
        "acc served",
        "mean γ",
        "batch",
        "rejected",
        "expired",
        "late",
    ]:
        t.add_column(col, justify="left" if col == "policy" else "right", no_wrap=col == "policy")

    def num(r: dict[str, object], key: str, fmt: str) -> str:
        v = r.get(key)
        return "-" if v is None else format(float(v), fmt)  # type: ignore[arg-type]

    for r in rows:
        per: dict[str, float] = r.get("slo_attainment_per_app", {})  # type: ignore[assignment]
        t.add_row(
            str(r["policy"]),
            num(r, "utility", ".1f"),
            num(r, "vs_oracle", ".3f"),
            _pct(r.get("slo_attainment")),
            *[_pct(per.get(a)) for a in apps],
            num(r, "mean_accuracy_served", ".3f"),
            num(r, "mean_gamma", ".1f"),
            num(r, "mean_batch", ".1f"),
            str(r.get("rejected", "-")),
            str(r.get("expired", "-")),
            str(r.get("late", "-")),
        )
    console.print(t)


MAX_APP_COLUMNS = 6
"""Applications shown as columns of the policy table; more get a table of their own (`_per_app`)."""


def _per_app(rows: Sequence[dict[str, object]], apps: list[str], title: str, console: Console) -> None:
    """SLO attainment (%) per application, one row each, a column per policy."""
    t = Table(title=f"{title}: SLO attainment per application (%)")
    t.add_column("application", no_wrap=True)
    for r in rows:
        t.add_column(str(r["policy"]), justify="right")
    for a in apps:
        t.add_row(a, *(_pct(r.get("slo_attainment_per_app", {}).get(a)) for r in rows))  # type: ignore[union-attr]
    console.print(t)


def _pct(x: object) -> str:
    """A share as a percentage with one decimal; "-" where there is none."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.1f}"  # type: ignore[arg-type]


def _bins(res: SimResult, n_bins: int) -> np.ndarray:
    end = max(float(res.arrival_ms.max()), float(np.nanmax(res.finish_ms, initial=0.0)))
    return np.linspace(0.0, end + 1e-9, n_bins + 1)


def plot_over_time(results: Sequence[SimResult], capacity_per_s: float, path: Path, n_bins: int = 60) -> None:
    """Utility earned per time bin for each policy; γ chosen over time by the OTAS runs against
    offered load (arrivals per bin / capacity of γ = 0)."""
    from otas.plotting import pyplot, save

    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    edges = _bins(results[0], n_bins)
    width_s = (edges[1] - edges[0]) / 1000.0
    mids = (edges[:-1] + edges[1:]) / 2000.0
    for res in results:
        done = ~np.isnan(res.finish_ms)
        u, _ = np.histogram(res.finish_ms[done], bins=edges, weights=res.utility[done])
        ax1.plot(mids, u / width_s, label=res.policy, lw=1.2)
    ax1.set_ylabel("utility / s")
    ax1.legend(fontsize=7, ncol=3)
    load, _ = np.histogram(results[0].arrival_ms, bins=edges)
    ax2b = ax2.twinx()
    ax2b.fill_between(mids, load / width_s / capacity_per_s, color="0.85", step="mid", label="offered load")
    ax2b.set_ylabel("offered load (× capacity of γ=0)")
    ax2.set_zorder(ax2b.get_zorder() + 1)
    ax2.patch.set_visible(False)
    for res in results:
        if not res.policy.startswith("otas") or not res.batches:
            continue
        t = np.array([b[0] for b in res.batches])
        g = np.array([b[2] for b in res.batches], dtype=float)
        s = np.array([b[1] for b in res.batches], dtype=float)
        gs, _ = np.histogram(t, bins=edges, weights=g * s)
        ns, _ = np.histogram(t, bins=edges, weights=s)
        with np.errstate(invalid="ignore", divide="ignore"):
            ax2.plot(mids, gs / ns, label=f"{res.policy} γ", lw=1.2)
    ax2.set_ylabel("mean γ (per query)")
    ax2.set_xlabel("time (s)")
    ax2.legend(fontsize=7, loc="upper left")
    save(fig, path)


def plot_sweep(sweep: dict[str, dict[float, float]], path: Path, ylabel: str = "utility / oracle bound") -> None:
    """Utility (relative to the oracle bound) against load, one line per policy."""
    from otas.plotting import pyplot, save

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy, by_load in sweep.items():
        xs = sorted(by_load)
        ax.plot(xs, [by_load[x] for x in xs], marker="o", label=policy, lw=1.2)
    ax.set_xlabel("load (× capacity of γ = 0)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    save(fig, path)
