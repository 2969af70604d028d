"""One table and one plot over live replays of several servers (otas and the peers in bench/peers/).

A run is one live replay: which server, which variant of it (otas's policy, or a peer at γ=0 or at
its best fixed γ in hindsight), its setting (batch size, delay), the γ it served, the load, and the
replay's summary (`otas.bench.scoring.summarize`). Each (server, variant, load) is reported at its
best run, by expected utility; otas is compared with the best peer run at every load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GAMMA0, HINDSIGHT = "γ=0", "best fixed γ"
"""The two variants of a peer: the stock model, and the fixed γ that did best at that load."""


def run_record(server: str, variant: str, setting: str, gamma: int | None, load: float, live: dict[str, Any],
               file: str = "") -> dict[str, Any]:  # fmt: skip
    """The fields of one replay that the comparison reads."""
    apps = [k for k in live if k != "all"]
    return {"server": server, "variant": variant, "setting": setting, "gamma": gamma, "load": load, "file": file,
            "all": live["all"], "slo_per_app": {a: live[a]["slo_attainment"] for a in apps}}  # fmt: skip


def best_runs(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str, float], dict[str, Any]]:
    """(server, variant, load) -> its run of highest expected utility."""
    best: dict[tuple[str, str, float], dict[str, Any]] = {}
    for r in runs:
        key = (r["server"], r["variant"], r["load"])
        if key not in best or r["all"]["utility_expected"] > best[key]["all"]["utility_expected"]:
            best[key] = r
    return best


def ratios(runs: Sequence[dict[str, Any]], ours: str = "otas") -> dict[float, dict[str, Any]]:
    """Per load: otas's utility, the best other server's (its name, variant) and the ratio."""
    best = best_runs(runs)
    out: dict[float, dict[str, Any]] = {}
    for load in sorted({k[2] for k in best}):
        mine = [r for (s, _, x), r in best.items() if s == ours and x == load]
        peers = [r for (s, _, x), r in best.items() if s != ours and x == load]
        if not mine or not peers:
            continue
        u = max(r["all"]["utility_expected"] for r in mine)
        top = max(peers, key=lambda r: r["all"]["utility_expected"])
        up = top["all"]["utility_expected"]
        out[load] = {"otas": u, "best_peer": f"{top['server']} {top['variant']}", "best_peer_utility": up,
                     "ratio": u / up if up > 0 else math.inf}  # fmt: skip
    return out


def markdown(runs: Sequence[dict[str, Any]], ours: str = "otas") -> str:
    """Every (server, variant, load) at its best run, then otas over the best peer per load."""
    best = best_runs(runs)
    apps = list(dict.fromkeys(a for r in runs for a in r["slo_per_app"]))  # in the apps YAML's order
    head = ["server", "variant", "setting", "γ", "load", "sent", "answered", "rejected", "errors", "lost",
            "utility", "SLO", *[f"SLO {a}" for a in apps], "goodput/s", "p50 ms", "p99 ms"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(best, key=lambda k: (k[0] != ours, k[0], k[1], k[2]))
    for k in order:
        r, a = best[k], best[k]["all"]
        lat = a["latency_ms"]
        cells = [r["server"], r["variant"], r["setting"], "adaptive" if r["gamma"] is None else str(r["gamma"]),
                 f"{r['load']:g}", a["sent"], a["answered"], a["rejected"], a["errors"], a["lost"],
                 f"{a['utility_expected']:.1f}", f"{100 * a['slo_attainment']:.1f}%",
                 *[f"{100 * r['slo_per_app'][p]:.1f}%" for p in apps], f"{a['goodput_per_s']:.1f}",
                 f"{lat['p50']:.0f}", f"{lat['p99']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "| load | otas utility | best peer | its utility | otas / best peer |", "|---|---|---|---|---|"]
    for load, q in ratios(runs, ours).items():
        lines.append(f"| {load:g} | {q['otas']:.1f} | {q['best_peer']} | {q['best_peer_utility']:.1f} "
                     f"| {q['ratio']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(runs: Sequence[dict[str, Any]], path: Path, title: str = "", ours: str = "otas") -> None:
    """Utility against load, one line per (server, variant) at its best run."""
    from otas.plotting import pyplot, save

    plt = pyplot()

    best = best_runs(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    servers = sorted({k[0] for k in best if k[0] != ours})
    color = {s: f"C{i}" for i, s in enumerate(servers)}  # one color per server; γ=0 dashed
    for s, v in sorted({(k[0], k[1]) for k in best}, key=lambda sv: (sv[0] != ours, sv)):
        pts = sorted((k[2], r["all"]["utility_expected"]) for k, r in best.items() if (k[0], k[1]) == (s, v))
        style = {"lw": 2.5, "color": "black"} if s == ours else {"ls": "--" if v == GAMMA0 else "-", "color": color[s]}
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{s} ({v})", **style)
    ax.set_xlabel("load (× γ=0 capacity)")
    ax.set_ylabel("utility (expected, per replay)")
    ax.set_title(title or "utility against load")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)
