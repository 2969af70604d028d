"""Table and plot of a `bench/abuse.py` result."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TARGET = {"success": 0.99, "p99_ratio": 1.5, "rss_ratio": 1.10}
"""Per class: normal traffic answered >= 99 %, its p99 within 1.5× of normal alone, and the server's
memory within 10 % of its baseline `--settle` seconds after the attack."""


def p99_ratio_interval(attacked_ms, alone_ms, level: float = 0.9, draws: int = 2000, seed: int = 0):
    """(low, high): a percentile-bootstrap interval of p99(attacked) / p99(alone), each sample resampled
    with replacement. With a few hundred requests a phase, a p99 rests on its few slowest. The interval
    treats requests as independent, so it does not cover the machine's drift between rounds (the
    result's `p99_ratio_rounds` show that: ±0.3 here)."""
    a, b = np.asarray(attacked_ms, float), np.asarray(alone_ms, float)
    if len(a) < 2 or len(b) < 2:
        return None
    rng = np.random.default_rng(seed)
    ra = np.percentile(a[rng.integers(0, len(a), (draws, len(a)))], 99, axis=1)
    rb = np.percentile(b[rng.integers(0, len(b), (draws, len(b)))], 99, axis=1)
    lo, hi = np.quantile(ra / rb, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def table(r: dict) -> str:
    b = r["baseline"]
    lines = ["| phase | success | on time | p50 ms | p99 ms | p99 / base (90 % interval) | server's p99 / base "
             "| RSS MiB before / peak / after | CPU s server / attacker | meets |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| normal alone | {b['success']:.1%} | {b['deadline_met']:.1%} | {b['p50_ms']:.0f} | {b['p99_ms']:.0f} | "
             f"1.00 | 1.00 | {b['rss_mb']:.0f} | {b['server_cpu_s']:.1f} / - | |"]  # fmt: skip
    for c in r["classes"]:
        p50 = f"{c['p50_ms']:.0f}" if c["p50_ms"] else "-"
        p99 = f"{c['p99_ms']:.0f}" if c["p99_ms"] else "-"
        ratio = f"{c['p99_ratio']:.2f}" if c["p99_ratio"] else "-"
        if ci := c.get("p99_ratio_ci90"):
            ratio += f" ({ci[0]:.2f}-{ci[1]:.2f})"
        rss = f"{c['rss_before_mb']:.0f} / {c['rss_peak_mb']:.0f} / {c['rss_after_mb']:.0f}"
        cpu = f"{c['server_cpu_s']:.1f} / {c['attacker_cpu_s']:.1f}"
        server = f"{c['server_p99_ratio']:.2f}" if c.get("server_p99_ratio") else "-"
        meets = "(control)" if c.get("control") else "yes" if c["meets"] else "no"
        lines.append(f"| {c['class']} | {c['success']:.1%} | {c['deadline_met']:.1%} | {p50} | {p99} | {ratio} | "
                     f"{server} | {rss} | {cpu} | {meets} |")  # fmt: skip
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{"class": "alone", **r["baseline"]}, *r["classes"]]
    names = [x["class"] for x in rows]
    fig, ax = plt.subplots(1, 3, figsize=(17, 4.5))
    ax[0].bar(names, [100 * x["success"] for x in rows], color="tab:blue")
    ax[0].axhline(100 * TARGET["success"], color="k", ls="--", lw=1)
    ax[0].set(ylabel="normal traffic answered 200 (%)", ylim=(min(90, *(100 * x["success"] for x in rows)) - 1, 100.5))
    x = np.arange(len(rows))
    ax[1].bar(x - 0.27, [x_["p50_ms"] or 0 for x_ in rows], 0.27, label="p50")
    ax[1].bar(x, [x_["p99_ms"] or 0 for x_ in rows], 0.27, label="p99")
    ax[1].bar(x + 0.27, [x_.get("server_p99_ms") or 0 for x_ in rows], 0.27, label="p99, server's own time")
    ax[1].axhline(TARGET["p99_ratio"] * r["baseline"]["p99_ms"], color="k", ls="--", lw=1, label="1.5× baseline p99")
    ax[1].set(xticks=x, xticklabels=names, ylabel="normal traffic latency (ms)")
    ax[1].legend()
    t, m = zip(*r["rss_timeline"], strict=True)
    ax[2].plot(t, m, color="tab:purple")
    for c in r["classes"]:
        for w in c["windows_s"]:
            ax[2].axvspan(*w, alpha=0.15, color="tab:red")
            ax[2].text(w[0], max(m), c["class"], rotation=90, va="top", fontsize=7)
    ax[2].axhline(TARGET["rss_ratio"] * r["baseline"]["rss_mb"], color="k", ls="--", lw=1)
    ax[2].set(xlabel="time (s)", ylabel="server RSS, with children (MiB)")
    for a in ax[:2]:
        a.tick_params(axis="x", rotation=60)
    fig.suptitle(f"otas serve {r['server']['label']} ({r['mode']}) under abuse, normal traffic {r['rate']:g}/s; "
                 f"bench {r['meta']['commit']}")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
