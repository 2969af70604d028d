"""Merging in every block against every 4th block on the H100, side by side: the two profiles of one session
(latency per γ and batch, accuracy per task and γ), the simulated utility of every policy on the Azure trace,
and the workload suite on each profile (otas and the best other policy, per load). Reads
bench/results/gpu_merge_every/ (see its README for the runs that made each file); writes summary.json and
summary.png there.

    python bench/merge_every.py
"""

from __future__ import annotations

import json
import lzma
import math
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otas.profile.table import Profile  # noqa: E402
from otas.provenance import run_meta  # noqa: E402

DIR = ROOT / "bench/results/gpu_merge_every"
EVERY = (1, 4)


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def profiles() -> dict[str, dict]:
    """Per schedule: latency (γ -> batch -> ms) and mean accuracy over the tasks (γ -> %)."""
    out = {}
    for k in EVERY:
        p = Profile.load(DIR / f"vit_tiny_p2_c5__h100-graphs-every{k}.json")
        mean = {g: 100 * sum(p.accuracy[t][g] for t in p.accuracy) / len(p.accuracy) for g in p.servable("source")}
        out[f"every{k}"] = {"latency_ms": p.latency_ms, "mean_accuracy": mean, "merge_every": p.merge_every}
    return out


def azure() -> dict[str, dict]:
    """Per schedule and load: otas's utility and the best other policy's (not the oracle bound)."""
    out: dict[str, dict] = {}
    for k in EVERY:
        runs = json.loads((DIR / f"azure_every{k}.json").read_text())["runs"]
        by: dict[float, dict[str, float]] = defaultdict(dict)
        for r in runs:
            by[r["load"]][r["policy"]] = r["utility"]
        rows = {}
        for load, u in sorted(by.items()):
            others = {p: v for p, v in u.items() if not p.startswith(("otas", "oracle"))}
            best = max(others, key=others.get)
            rows[str(load)] = {"otas": u["otas"], "best_other": best, "best_other_utility": others[best]}
        out[f"every{k}"] = rows
    return out


def suite() -> dict[str, dict]:
    """Per load: every4 over every1, geomean and min over the 60 workloads, of otas's utility and of
    the best other policy's; and each schedule's own otas / best-other summary."""
    runs = {k: json.loads(lzma.open(DIR / f"workloads_every{k}/workloads.json.xz").read()) for k in EVERY}
    cells = {k: {(c["seed"], c["load"]): c["policies"] for c in d["cells"]} for k, d in runs.items()}
    ratio: dict[float, dict[str, list[float]]] = defaultdict(lambda: {"otas": [], "best_other": []})
    for key, a in cells[1].items():
        b = cells[4][key]

        def best(p: dict) -> float:
            return max(v["utility"] for n, v in p.items() if not n.startswith(("otas", "oracle")))

        if a["otas"]["utility"] > 0 and best(a) > 0:
            ratio[key[1]]["otas"].append(b["otas"]["utility"] / a["otas"]["utility"])
            ratio[key[1]]["best_other"].append(best(b) / best(a))
    per_load = {
        str(load): {
            f"{who}_every4_over_every1": {"geomean": round(_geomean(xs), 4), "min": round(min(xs), 4), "n": len(xs)}
            for who, xs in r.items()
        }
        for load, r in sorted(ratio.items())
    }
    own = {f"every{k}": {load: {"min": s["otas"]["min"], "geomean": s["otas"]["geomean"]}
                         for load, s in d["summary"]["h100"]["all"].items()} for k, d in runs.items()}  # fmt: skip
    return {"every4_over_every1": per_load, "otas_over_best_other": own}


def plot(prof: dict, suite_: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = {"every1": ("tab:blue", "-"), "every4": ("tab:orange", ":")}
    ax = axes[0]
    for name, p in prof.items():
        for b, marker in ((8, "s"), (256, "o")):
            gs = sorted(p["latency_ms"])
            ax.plot(gs, [p["latency_ms"][g][b] / p["latency_ms"][0][b] for g in gs], marker=marker,
                    color=styles[name][0], ls=styles[name][1], label=f"{name}, batch {b}")  # fmt: skip
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set(xlabel="γ", ylabel="latency / γ = 0's", title="H100, served path (CUDA graphs, bf16)")
    ax.legend(fontsize=7)
    ax = axes[1]
    for name, p in prof.items():
        gs = sorted(p["mean_accuracy"])
        ax.plot(gs, [p["mean_accuracy"][g] for g in gs], marker="o", color=styles[name][0], ls=styles[name][1],
                label=name)  # fmt: skip
    ax.set(xlabel="γ", ylabel="accuracy, mean of the tasks (%)", title="accuracy (CIFAR-10 test, 5,000 per task)")
    ax.legend(fontsize=7)
    ax = axes[2]
    loads = sorted(suite_["every4_over_every1"], key=float)
    for who, color in (("otas", "tab:green"), ("best_other", "tab:gray")):
        ys = [suite_["every4_over_every1"][lo][f"{who}_every4_over_every1"]["geomean"] for lo in loads]
        ax.plot([float(x) for x in loads], ys, marker="o", color=color, label=f"{who} (geomean, 60 workloads)")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set(xlabel="load (× γ = 0 capacity)", ylabel="utility, every4 / every1", title="workload suite, H100 profiles")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    prof, az, su = profiles(), azure(), suite()
    out = {"meta": {**run_meta(), "command": "python bench/merge_every.py"}, "profiles": prof, "azure": az,
           "suite": su}  # fmt: skip
    (DIR / "summary.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(prof, su, DIR / "summary.png")
    for load, r in su["every4_over_every1"].items():
        print(f"load {load}: " + ", ".join(f"{k} {v['geomean']:.3f} (min {v['min']:.3f})" for k, v in r.items()))
    print(f"wrote {DIR / 'summary.json'} and {DIR / 'summary.png'}")


if __name__ == "__main__":
    main()
