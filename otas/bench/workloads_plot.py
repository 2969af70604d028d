"""Tables (rich) and the CDF plot (matplotlib, Agg) of the workload suite's report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from otas.bench.workloads_report import cell_view


def _f(x: object) -> str:
    return "-" if x is None else f"{float(x):.3f}"  # type: ignore[arg-type]


def print_summary(result: dict, console) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=console.file, width=max(console.width, 160))  # wide tables: don't squeeze them

    head = result["meta"]["headline"] or result["meta"]["compared"][:1]
    keys = ("min", "p10", "median", "geomean")
    for s, by_split in result["summary"].items():
        t = Table(title=f"{s}: utility / best other policy; oracle bound / best other; vs oracle; tightest-app SLO")
        cols = [f"{c} {k}" for c in head for k in keys]
        for col in ["split", "load", *cols, "oracle gm", f"{head[0]} vs oracle", "tight SLO (best other)"]:
            t.add_column(col, justify="right")
        for split, groups in by_split.items():
            for g, row in groups.items():
                nums = [row.get(c, {}).get(k) for c in head for k in keys]
                orc = row.get("oracle", {}).get("geomean")
                lead = row.get(head[0], {})
                slo = f"{lead.get('tight_slo_median') or 0:.2f} ({lead.get('best_other_tight_slo_median') or 0:.2f})"
                vo = lead.get("vs_oracle_median")
                t.add_row(split, g, *[_f(x) for x in nums], _f(orc), _f(vo), slo)
        console.print(t)
    lead = head[0]
    for s, bands in result["by_feature"][lead].items():
        t = Table(title=f"{s}: {lead} / best other by workload feature: geomean (n) per load band; min over all")
        for col in ("feature", "bin", *(f"loads {b}" for b in bands), "min"):
            t.add_column(col, justify="right")
        for f, bins in bands["all"].items():
            for b, r in bins.items():
                per = [bands[band][f].get(b, {}) for band in bands]
                cells = [f"{x['geomean']:.3f} ({x['n']})" if x.get("n") else "-" for x in per]
                t.add_row(f, b, *cells, _f(r.get("min")))
        console.print(t)
    _print_worst(result, lead, console)


def _print_worst(result: dict, lead: str, console) -> None:
    from rich.table import Table

    for s, rows in result["worst"].get(lead, {}).items():
        t = Table(title=f"{s}: the workload-loads where {lead} loses most to the best other policy")
        cols = (
            "seed",
            "load",
            "ratio",
            "best_other",
            "trace",
            "n_apps",
            "spread",
            "min_gap",
            "tight_mult",
            "tight_share",
        )
        for col in (*cols, "tight SLO (best other)"):
            t.add_column(col, justify="right")
        for r in rows[:8]:
            vals = [f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols]
            t.add_row(*vals, f"{r['tight_slo'] or 0:.2f} ({r['best_other_tight_slo'] or 0:.2f})")
        console.print(t)


def plot_cdf(records: Sequence[dict], compared: Sequence[str], sets: Sequence[str], path: Path) -> None:
    """CDF of utility / best other policy: one panel per (profile set, load 0.5 | loads ≥ 1)."""
    from otas.plotting import pyplot, save

    plt = pyplot()
    from matplotlib.ticker import FixedLocator, NullLocator

    views = [cell_view(r, compared) for r in records]
    finite = [x for v in views for c, x in v["ratio"].items() if c != "oracle" and 0 < x < math.inf]
    lo, hi = min(finite, default=0.5) / 1.1, max(max(finite, default=2.0) * 1.1, 1.2)
    ticks = [t for t in (0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 10) if lo <= t <= hi]
    cols = (("load 0.5", lambda x: x < 1.0), ("loads ≥ 1", lambda x: x >= 1.0))
    fig, axes = plt.subplots(len(sets), 2, figsize=(11, 3.6 * len(sets)), squeeze=False)
    for i, s in enumerate(sets):
        for j, (title, keep) in enumerate(cols):
            ax = axes[i][j]
            vs = [v for v in views if v["set"] == s and keep(v["load"])]
            for c in [*compared, "oracle"]:
                xs = np.sort([v["ratio"][c] for v in vs if c in v["ratio"] and math.isfinite(v["ratio"][c])])
                if len(xs):
                    style = {"ls": "--", "color": "0.5"} if c == "oracle" else {}
                    label = "oracle bound (may leave the axes)" if c == "oracle" else c
                    ys = np.arange(0, len(xs) + 1) / len(xs)
                    ax.step(np.r_[xs[0], xs], ys, where="post", label=label, lw=1.3, **style)
            ax.axvline(1.0, color="k", lw=0.6)
            ax.set_xscale("log")
            ax.set_xlim(lo, hi)
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.set_title(f"{s}, {title} ({len(vs)} workload-loads)", fontsize=10)
            ax.set_ylabel("fraction")
            ax.grid(alpha=0.3)
            if i == len(sets) - 1:
                ax.set_xlabel("utility / best other policy (log)")
    axes[0][0].legend(fontsize=8)
    save(fig, path)
