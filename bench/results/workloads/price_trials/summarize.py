"""The trials side by side (from the repository root, after run.sh):

    python bench/results/workloads/price_trials/summarize.py
Writes summary.json (per set and trial, loads ≥ 1 and 0.5, all cells and the held-out split: the ratio to the best
other policy's min / p10 / median / geomean, the median over the oracle bound, and the cells where the trial changed
`otas`'s ratio by more than 5 % either way) and summary.png (each trial's ratio over the shipped one's, per cell).
"""

from __future__ import annotations

import json
import lzma
import statistics
from pathlib import Path

from otas.bench.workloads_report import stats
from otas.plotting import pyplot, save
from otas.provenance import run_meta

HERE = Path(__file__).resolve().parent
TRIALS = ("base", "tight", "full", "fast", "bslo", "bmax")
SETS = ("h100", "h100f", "h200", "h200f", "cpu")


def cells(trial: str, s: str) -> dict[tuple[int, float], dict] | None:
    path = HERE / f"{trial}_{s}.json.xz"
    if not path.exists():
        return None
    with lzma.open(path) as f:
        return {(c["seed"], c["load"]): c for c in json.load(f)["cells"]}


def band(cs: list[dict]) -> dict:
    return {**stats(c["otas"] for c in cs), "oracle_median": round(statistics.median(c["otas/oracle"] for c in cs), 4)}


def main() -> None:
    out, changed = {}, {}
    fig, axes = pyplot().subplots(1, len(SETS), figsize=(4 * len(SETS), 3.6), sharey=True)
    for ax, s in zip(axes, SETS, strict=True):
        base = cells("base", s)
        for k, trial in enumerate(TRIALS):
            cs = cells(trial, s)
            if cs is None:
                continue
            heavy = [c for c in cs.values() if c["load"] >= 1]
            out[f"{s}/{trial}"] = {
                "loads>=1": band(heavy),
                "loads>=1 held-out": band([c for c in heavy if c["split"] == "held-out"]),
                "load 0.5": band([c for c in cs.values() if c["load"] == 0.5]),
            }
            if trial != "base" and base is not None:
                r = sorted(cs[key]["otas"] / base[key]["otas"] for key in cs)
                up, down = sum(x > 1.05 for x in r), sum(x < 1 / 1.05 for x in r)
                changed[f"{s}/{trial}"] = {"up_5pct": up, "down_5pct": down, "lowest": round(r[0], 4),
                                           "highest": round(r[-1], 4)}  # fmt: skip
                ax.plot(r, [i / len(r) for i in range(len(r))], label=trial, color=f"C{k}")
        ax.axvline(1.0, color="k", lw=0.5)
        ax.set_title(s)
        ax.set_xlabel("otas with the trial / shipped otas, per cell")
    axes[0].set_ylabel("share of cells (all loads)")
    axes[0].legend(fontsize=8)
    save(fig, HERE / "summary.png")
    result = {"meta": run_meta(__file__, []), "bands": out, "changed": changed}
    (HERE / "summary.json").write_text(json.dumps(result, indent=1))
    for key, v in out.items():
        b = v["loads>=1"]
        print(f"{key:14} loads>=1 min {b['min']:.3f} median {b['median']:.3f} geomean {b['geomean']:.3f} "
              f"oracle {b['oracle_median']:.3f} | load 0.5 min {v['load 0.5']['min']:.3f}",
              changed.get(key, ""))  # fmt: skip


if __name__ == "__main__":
    main()
