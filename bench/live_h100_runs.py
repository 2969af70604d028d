"""The live H100 runs 15-19 side by side: `otas` over the best fixed γ of the same run, per load; the
side-by-side comparisons each run made on one machine (a request's stated wait, deadlines planned
short by the delivery time, the loop's lag as answers' delay); and each machine's host speed (the
no-op server's images per second), which differed between runs. Reads the `live.json` files that
`otas.bench.live_summary` wrote in each run's folder; writes one JSON file and a plot.

    python bench/live_h100_runs.py --runs bench/results/live_h100/12_h100_stated_wait
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otas.provenance import run_meta  # noqa: E402

# (label, file under --runs, what differs from the run's main tree)
FILES = [
    ("run 15", "run15/live.json", ""),
    ("run 15, no stated wait", "run15/no_state_wait.json", "--no-state-wait"),
    ("run 16", "run16/live.json", ""),
    ("run 16, delivery not planned for", "run16/delivery_q0.json", "--delivery-quantile 0"),
    ("run 17", "run17/live.json", ""),
    ("run 18 A", "run18/wa.json", ""),
    ("run 18 B", "run18/wb.json", "the run-16 tree"),
    ("run 18 A again", "run18/wa2.json", ""),
    ("run 19", "run19/live.json", ""),
    ("run 19 otas again", "run19/again.json", ""),
]
BASELINE = {  # the rows a side-by-side label is compared with: the same machine's
    "run 15, no stated wait": "run 15",
    "run 16, delivery not planned for": "run 16",
    "run 18 B": "run 18 A",
    "run 18 A again": "run 18 A",
    "run 19 otas again": "run 19",
}


def rows_of(path: Path) -> dict[tuple[str, float], float]:
    return {(r["policy"], float(r["load"])): float(r["utility_live"]) for r in json.loads(path.read_text())["rows"]}


def host_speed(path: Path) -> dict[int, float]:
    """The no-op server's images/s per request size, where the run measured it."""
    over = json.loads(path.read_text()).get("overhead") or []
    return {int(r["batch"]): float(r["images_per_s"]) for o in over for r in o.get("runs", [])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=ROOT / "bench/results/live_h100/12_h100_stated_wait")
    a = ap.parse_args()
    data = {label: rows_of(a.runs / f) for label, f, _ in FILES if (a.runs / f).exists()}
    runs = []
    for label, f, change in FILES:
        if label not in data:
            continue
        rows = data[label]
        own = data[BASELINE.get(label, label)]  # fixed γ from the same machine
        loads = sorted({load for p, load in rows if p == "otas"})
        per_load = []
        for load in loads:
            fixed = {p: u for (p, lo), u in own.items() if lo == load and p.startswith("fixed:")}
            best = max(fixed, key=fixed.get) if fixed else None
            per_load.append({
                "load": load, "otas": rows[("otas", load)], "best_fixed": best,
                "best_fixed_utility": fixed.get(best), "otas_over_best_fixed": rows[("otas", load)] / fixed[best]
                if best else None,
            })  # fmt: skip
        runs.append({"label": label, "file": f, "change": change, "loads": per_load,
                     "host_images_per_s": host_speed(a.runs / f)})  # fmt: skip
    pairs = []
    for label, base in BASELINE.items():
        if label in data and base in data:
            for load in sorted({lo for p, lo in data[label] if p == "otas"}):
                if ("otas", load) in data[base]:
                    ratio = data[label][("otas", load)] / data[base][("otas", load)]
                    pairs.append({"label": label, "against": base, "load": load, "otas_ratio": ratio})
    out = {"meta": {**run_meta(), "command": "python bench/live_h100_runs.py --runs " + str(a.runs)},
           "runs": runs, "side_by_side": pairs}  # fmt: skip
    (a.runs / "summary.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(runs, pairs, a.runs / "summary.png")
    for r in runs:
        cells = ", ".join(
            f"load {x['load']:g}: {x['otas_over_best_fixed']:.3f} of {x['best_fixed']}"
            for x in r["loads"]
            if x["best_fixed"]
        )
        print(f"{r['label']}: otas {cells}; no-op host {r['host_images_per_s'].get(64, float('nan')):.0f} img/s at 64")
    for p in pairs:
        print(f"{p['label']} / {p['against']}, load {p['load']:g}: otas {p['otas_ratio']:.3f}")


def plot(runs: list[dict], pairs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8))
    main_runs = [r for r in runs if not r["change"] and any(x["best_fixed"] for x in r["loads"])]
    loads = sorted({x["load"] for r in main_runs for x in r["loads"]})
    width = 0.8 / max(len(main_runs), 1)
    for i, r in enumerate(main_runs):
        xs = [loads.index(x["load"]) + (i - (len(main_runs) - 1) / 2) * width for x in r["loads"] if x["best_fixed"]]
        ys = [x["otas_over_best_fixed"] for x in r["loads"] if x["best_fixed"]]
        ax.bar(xs, ys, width, label=r["label"])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(loads)), [f"load {lo:g}" for lo in loads])
    ax.set_ylabel("otas live utility / best fixed γ of the run")
    ax.set_title("otas against the best fixed γ, one H100 per run")
    ax.legend(fontsize=8)
    labels = [f"{p['label']}\nvs {p['against']}, load {p['load']:g}" for p in pairs]
    bx.barh(range(len(pairs)), [p["otas_ratio"] for p in pairs], color="tab:gray")
    bx.axvline(1.0, color="k", lw=0.8)
    bx.set_yticks(range(len(pairs)), labels, fontsize=7)
    bx.set_xlabel("otas live utility, side by side on one machine (ratio)")
    bx.set_title("side by side")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
