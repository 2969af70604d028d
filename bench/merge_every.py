"""Merge schedules on the H100, side by side: the profiles of one session, one per `merge_every` k (latency
per γ and batch, accuracy per task and γ), the simulated utility of every policy on the Azure trace, and the
workload suite on each profile (otas and the best other policy, per load, each k over the base k). Reads a
run's directory (default bench/results/gpu_merge_every/, run 21: k = 1 and 4; see its README for the runs that
made each file); writes summary.json and summary.png there.

    python bench/merge_every.py                                            # run 21: k = 1, 4
    python bench/merge_every.py --dir bench/results/gpu_merge_every/run25 --every 4,12,8 --base 4
"""

from __future__ import annotations

import argparse
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


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def profiles(d: Path, every: list[int]) -> dict[str, dict]:
    """Per schedule: latency (γ -> batch -> ms) and mean accuracy over the tasks (γ -> %)."""
    out = {}
    for k in every:
        p = Profile.load(d / f"vit_tiny_p2_c5__h100-graphs-every{k}.json")
        mean = {g: 100 * sum(p.accuracy[t][g] for t in p.accuracy) / len(p.accuracy) for g in p.servable("source")}
        out[f"every{k}"] = {"latency_ms": p.latency_ms, "mean_accuracy": mean, "merge_every": p.merge_every}
    return out


def azure(d: Path, every: list[int]) -> dict[str, dict]:
    """Per schedule and load: otas's utility and the best other policy's (not the oracle bound)."""
    out: dict[str, dict] = {}
    for k in every:
        runs = json.loads((d / f"azure_every{k}.json").read_text())["runs"]
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


def _best_other(p: dict) -> float:
    return max(v["utility"] for n, v in p.items() if not n.startswith(("otas", "oracle")))


def suite(d: Path, every: list[int], base: int) -> dict[str, dict]:
    """Per k other than `base` and per load: k's utility over base's, geomean and min over the workloads, of
    otas and of the best other policy; and each schedule's own otas / best-other summary."""
    runs = {k: json.loads(lzma.open(d / f"workloads_every{k}/workloads.json.xz").read()) for k in every}
    cells = {k: {(c["seed"], c["load"]): c["policies"] for c in r["cells"]} for k, r in runs.items()}
    over: dict[str, dict] = {}
    for k in every:
        if k == base:
            continue
        ratio: dict[float, dict[str, list[float]]] = defaultdict(lambda: {"otas": [], "best_other": []})
        for key, a in cells[base].items():
            b = cells[k][key]
            if a["otas"]["utility"] > 0 and _best_other(a) > 0:
                ratio[key[1]]["otas"].append(b["otas"]["utility"] / a["otas"]["utility"])
                ratio[key[1]]["best_other"].append(_best_other(b) / _best_other(a))
        over[f"every{k}_over_every{base}"] = {
            str(load): {
                who: {"geomean": round(_geomean(xs), 4), "min": round(min(xs), 4), "n": len(xs)}
                for who, xs in r.items()
            }
            for load, r in sorted(ratio.items())
        }
    own = {f"every{k}": {load: {"min": s["otas"]["min"], "geomean": s["otas"]["geomean"]}
                         for load, s in r["summary"]["h100"]["all"].items()} for k, r in runs.items()}  # fmt: skip
    return {"over_base": over, "otas_over_best_other": own}


def plot(prof: dict, suite_: dict, path: Path) -> None:
    from otas.plotting import pyplot, save

    plt = pyplot()

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    colors = dict(zip(prof, ("tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:brown"), strict=False))
    ax = axes[0]
    for name, p in prof.items():
        for b, ls in ((8, ":"), (256, "-")):
            gs = sorted(p["latency_ms"])
            ax.plot(gs, [p["latency_ms"][g][b] / p["latency_ms"][0][b] for g in gs], marker="o", ms=3,
                    color=colors[name], ls=ls, label=f"{name}, batch {b}")  # fmt: skip
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set(xlabel="γ", ylabel="latency / γ = 0's", title="H100, served path (CUDA graphs, bf16)")
    ax.legend(fontsize=7)
    ax = axes[1]
    for name, p in prof.items():
        gs = sorted(p["mean_accuracy"])
        ax.plot(gs, [p["mean_accuracy"][g] for g in gs], marker="o", ms=3, color=colors[name], label=name)
    ax.set(xlabel="γ", ylabel="accuracy, mean of the tasks (%)", title="accuracy (CIFAR-10 test, 5,000 per task)")
    ax.legend(fontsize=7)
    ax = axes[2]  # the trade-off each schedule offers the scheduler: a point per γ ≤ 0
    for name, p in prof.items():
        gs = sorted(g for g in p["mean_accuracy"] if g <= 0)
        ax.plot([p["latency_ms"][g][256] for g in gs], [p["mean_accuracy"][g] for g in gs], marker="o", ms=3,
                color=colors[name], label=name)  # fmt: skip
    ax.set(
        xlabel="latency at batch 256 (ms)",
        ylabel="accuracy, mean of the tasks (%)",
        title="γ ≤ 0: latency against accuracy",
    )
    ax.legend(fontsize=7)
    ax = axes[3]
    for pair, per_load in suite_["over_base"].items():
        loads = sorted(per_load, key=float)
        for who, ls in (("otas", "-"), ("best_other", ":")):
            ys = [per_load[lo][who]["geomean"] for lo in loads]
            ax.plot([float(x) for x in loads], ys, marker="o", ms=3, ls=ls, color=colors[pair.split("_")[0]],
                    label=f"{pair}: {who}")  # fmt: skip
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set(xlabel="load (× γ = 0 capacity)", ylabel="utility over the base k (geomean)", title="workload suite")
    ax.legend(fontsize=7)
    save(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=DIR, help="the run's directory (profiles, azure_*, workloads_*)")
    ap.add_argument("--every", default="1,4", help="the schedules compared, k = merge_every")
    ap.add_argument("--base", type=int, default=1, help="the k the others are divided by")
    args = ap.parse_args(argv)
    every = [int(k) for k in args.every.split(",")]
    if args.base not in every:
        ap.error(f"--base {args.base} is not in --every {args.every}")
    d = args.dir
    prof, az, su = profiles(d, every), azure(d, every), suite(d, every, args.base)
    out = {"meta": run_meta(__file__, argv), "profiles": prof, "azure": az, "suite": su}
    (d / "summary.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(prof, su, d / "summary.png")
    for pair, per_load in su["over_base"].items():
        for load, r in per_load.items():
            cells = (f"{w} {v['geomean']:.3f} (min {v['min']:.3f})" for w, v in r.items())
            print(f"{pair} load {load}: " + ", ".join(cells))
    print(f"wrote {d / 'summary.json'} and {d / 'summary.png'}")


if __name__ == "__main__":
    main()
