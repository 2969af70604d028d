"""Tables and plots for replay results: live beside the simulator's prediction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from otas.sim.traces import Trace
from otas.types import App

NO_SIM: dict[str, Any] = {"slo_attainment": float("nan"), "utility": float("nan"), "slo_attainment_per_app": {},
                          "utility_per_app": {}}  # fmt: skip
"""Stands in for the simulator's prediction where there is none (a server other than otas)."""


def print_replay(result: dict[str, Any], console) -> None:
    live, sim = result["live"], (result["sim"] or {}).get("noise_free", NO_SIM)
    m = result["meta"]
    t = Table(title=f"live replay: {m['trace']} × {m['load']:g}, {m['requests']} requests, policy {m['policy']}")
    cols = "app sent answered rejected errors lost SLO_att sim_SLO accuracy utility sim_util p50_ms p99_ms mean_γ"
    for c in cols.split():
        t.add_column(c.replace("_", " "), justify="right")
    for name, r in live.items():
        sim_slo = sim["slo_attainment"] if name == "all" else sim["slo_attainment_per_app"].get(name, float("nan"))
        sim_u = sim["utility"] if name == "all" else sim["utility_per_app"].get(name, float("nan"))
        t.add_row(
            name, str(r["sent"]), str(r["answered"]), str(r["rejected"]), str(r["errors"]), str(r["lost"]),
            f"{100 * r['slo_attainment']:.1f}%", f"{100 * sim_slo:.1f}%", f"{100 * r['accuracy_answered']:.1f}%",
            f"{r['utility_expected']:.1f}", f"{sim_u:.1f}", f"{r['latency_ms']['p50']:.0f}",
            f"{r['latency_ms']['p99']:.0f}", f"{r['mean_gamma']:.1f}",
        )  # fmt: skip
    console.print(t)


def plot_replay(result: dict[str, Any], recs: list[dict], trace: Trace, apps: Sequence[App], path: Path) -> None:
    from otas.plotting import pyplot, save

    plt = pyplot()

    live, sim = result["live"], (result["sim"] or {}).get("noise_free")
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4))
    names = [a.name for a in apps]
    x = np.arange(len(names))
    a1.bar(x - 0.2, [live[n]["slo_attainment"] for n in names], 0.4, label="live")
    if sim is not None:
        a1.bar(x + 0.2, [sim["slo_attainment_per_app"][n] for n in names], 0.4, label="simulator")
    a1.set_xticks(x, names)
    a1.set_ylabel("SLO attainment")
    a1.set_ylim(0, 1.05)
    a1.legend()
    a1.set_title(f"policy {result['meta']['policy']}")
    for a in apps:
        lat = np.sort(
            [recs[i]["latency_ms"] for i, n in enumerate(trace.apps) if n == a.name and recs[i].get("status") == 200]
        )
        if len(lat):
            line = a2.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=a.name)[0]
            a2.axvline(a.slo_ms, color=line.get_color(), ls="--", lw=0.8)
    a2.set_xlabel("client latency (ms); dashed: SLO")
    a2.set_ylabel("CDF of answered")
    a2.legend()
    tl = live["all"].get("timeline")
    for n in names:
        draw_timeline(a3, tl, n, label=n)
    a3.legend()
    save(fig, path)


def draw_timeline(ax, timeline: dict | None, app: str, **style) -> None:
    """One application's share of requests answered within its SLO by when they arrived (a replay's
    `live.all.timeline`, `otas.bench.scoring.timeline`) as a step line on `ax`; nothing for a replay
    without one."""
    if timeline and timeline["start_ms"]:
        t = np.asarray(timeline["start_ms"]) / 1e3
        sent, met = np.asarray(timeline["sent"][app], float), np.asarray(timeline["on_time"][app], float)
        share = np.divide(met, sent, out=np.full_like(sent, np.nan), where=sent > 0)
        ax.step(t, share, where="post", **style)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("arrival time in the replay (s)")
    ax.set_ylabel("share answered within the SLO")


def summary(files: Sequence[Path]) -> str:
    """A markdown table over several replay JSONs (one row per run: live and simulator side by side)."""
    lines = [
        "| policy | trace × load | sent | answered | rejected | errors | utility live | utility sim | live/sim "
        "| SLO live | SLO sim | accuracy | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in files:
        r = json.loads(Path(f).read_text())
        m, live, sim = r["meta"], r["live"]["all"], (r["sim"] or {}).get("noise_free", NO_SIM)
        ratio = live["utility_expected"] / sim["utility"] if sim["utility"] else float("nan")
        lines.append(
            f"| {m['policy']} | {m['trace']} × {m['load']:g} | {live['sent']} | {live['answered']} "
            f"| {live['rejected']} "
            f"| {live['errors']} | {live['utility_expected']:.1f} | {sim['utility']:.1f} | {ratio:.2f} "
            f"| {100 * live['slo_attainment']:.1f}% | {100 * sim['slo_attainment']:.1f}% "
            f"| {100 * live['accuracy_answered']:.1f}% | {live['latency_ms']['p99']:.0f} |"
        )
    return "\n".join(lines) + "\n"
