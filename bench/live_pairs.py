"""Live runs made on one machine, policies in turn: each policy's live utility per load and round, and `otas`
over the best fixed γ at each load (the fixed γ of highest mean live utility there), from the `live.json` files
`otas.bench.live_summary` wrote in each folder of the run.

    python bench/live_pairs.py bench/results/live_h100/15_h100_run28/run29-31 \\
        --out bench/results/live_h100/15_h100_run28

Writes pairs.json (with machine, commit, command) and pairs.png under --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otas.provenance import run_meta  # noqa: E402


def pairs(folders: list[Path]) -> dict:
    """Per load: every policy's live utilities (one per replay found) and `otas` over the best fixed γ."""
    live: dict[float, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    sim: dict[float, dict[str, float]] = defaultdict(dict)
    for f in sorted(p for d in folders for p in d.rglob("live.json")):
        for row in json.loads(f.read_text())["rows"]:
            live[row["load"]][row["policy"]].append(row["utility_live"])
            sim[row["load"]][row["policy"]] = row["utility_sim"]
    out = []
    for load in sorted(live):
        runs = live[load]
        fixed = {p: statistics.mean(v) for p, v in runs.items() if p.startswith("fixed:")}
        row = {"load": load, "live": dict(runs), "sim": sim[load]}
        if fixed and "otas" in runs:
            best = max(fixed, key=fixed.get)
            row["best_fixed"] = best
            row["otas_over_best_fixed"] = {
                "mean": statistics.mean(runs["otas"]) / fixed[best],
                "min": min(runs["otas"]) / fixed[best],
                "max": max(runs["otas"]) / fixed[best],
            }
        out.append(row)
    return {"loads": out}


def plot(result: dict, path: Path) -> None:
    from otas.plotting import pyplot, save

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    policies = sorted({p for row in result["loads"] for p in row["live"]})
    for k, p in enumerate(policies):
        xs, ys = [], []
        for row in result["loads"]:
            for u in row["live"].get(p, []):
                xs.append(row["load"] + (k - (len(policies) - 1) / 2) * 0.04)
                ys.append(u)
        ax.scatter(xs, ys, label=p, alpha=0.75)
    ax.set_xlabel("load (× the γ = 0 capacity)")
    ax.set_ylabel("live utility (expected, on time)")
    ax.set_title("Live replays on one H100, policies in turn")
    ax.legend()
    save(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="folders holding live.json files (searched recursively)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    result = {"meta": run_meta(), **pairs(args.folders)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pairs.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "pairs.png")
    for row in result["loads"]:
        r = row.get("otas_over_best_fixed")
        if r:
            spread = f"(min {r['min']:.3f}, max {r['max']:.3f})"
            print(f"load {row['load']:g}: otas / {row['best_fixed']} {r['mean']:.3f} {spread}")


if __name__ == "__main__":
    main()
