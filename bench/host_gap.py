"""Planning with the host's gap between batches (`SchedulerConfig.host_gap`), in the simulator: the live replay's
window (as `otas bench replay` predicts it: the Azure conv trace scaled to each load, played 6 times, each
application's arrivals coalesced over 5 ms, batches planned ahead) with every batch holding the server `host_ms`
longer than its device time, in series (`otas.sim.simulator.run(host_ms=)`: the device idles that long before
each batch whose work was waiting, as on a host-bound server), each policy with the gap measured only and with
it planned with.

    python bench/host_gap.py [--host-ms 0,0.5,1,1.5,2] [--loads 1,1.5,2] [--policies otas,fixed:-20]
Writes host_gap.json (with machine, commit, command) and host_gap.png under --out.

    python bench/host_gap.py --suite bench/results/workloads/buckets/workloads_h100.json.xz --seeds 15
The same on workloads of a stored suite run (its held-out seeds, first --seeds of them, on its profile set,
planned ahead): `otas` and fixed γ, each with the gap measured only and planned with; prints, per host time
and load, the ratio of `otas` to the best fixed γ and of each setting to the other. Writes host_gap_suite.json.
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from otas.bench import workloads as suite  # noqa: E402
from otas.bench import workloads_report as rep  # noqa: E402
from otas.bench.replay import sim_window  # noqa: E402
from otas.config import SchedulerConfig, load_apps  # noqa: E402
from otas.plotting import pyplot, save  # noqa: E402
from otas.profile.table import Profile  # noqa: E402
from otas.provenance import run_meta  # noqa: E402
from otas.sim.simulator import run  # noqa: E402

PROFILE = REPO / "bench/results/gpu_merge_every/run25/vit_tiny_p2_c5__h100-graphs-every4.json"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=str(PROFILE))
    ap.add_argument("--apps", default=str(REPO / "otas/configs/apps-h100.yaml"))
    ap.add_argument("--trace", default=str(REPO.parent / "shared/data/traces/AzureLLMInferenceTrace_conv.csv"))
    ap.add_argument("--loads", default="1,1.5,2")
    ap.add_argument("--policies", default="otas,fixed:-20")
    ap.add_argument("--host-ms", default="0,0.5,1,1.5,2")
    ap.add_argument("--repeat", type=int, default=6, help="copies of the scaled trace, as the replay's --repeat")
    ap.add_argument("--seconds", type=float, default=10.0, help="load × capacity × this many requests")
    ap.add_argument("--out", default=str(REPO / "bench/results/host_gap"))
    ap.add_argument("--suite", help="a stored suite run (.json or .json.xz): its held-out workloads instead")
    ap.add_argument("--seeds", type=int, default=15, help="with --suite: this many of its held-out seeds")
    ap.add_argument("--fixed", default="0,-20,-32,-48", help="with --suite: the fixed γ beside otas")
    ap.add_argument("--jobs", type=int, default=2, help="with --suite: worker processes")
    args = ap.parse_args(argv)
    if args.suite:
        return run_suite(args, argv)
    apps, profile = load_apps(args.apps), Profile.load(args.profile)
    rows = []
    for load in (float(x) for x in args.loads.split(",")):
        tr, via = sim_window(args.trace, apps, profile, load, args.seconds, args.repeat, 5.0)
        for host in (float(x) for x in args.host_ms.split(",")):
            for policy in args.policies.split(","):
                for gap in (False, True):
                    cfg = SchedulerConfig(max_batch=256, host_gap=gap)
                    res = run(tr, apps, profile, policy, cfg, plan_ahead=True, gateway=via, host_ms=host)
                    s = res.summary(apps)
                    rows.append({"load": load, "host_ms": host, "policy": policy, "host_gap": gap,
                                 "utility": s["utility"], "mean_gamma": s["mean_gamma"],
                                 "lost": s["expired"] + s["rejected"] + s["late"]})  # fmt: skip
                    print(f"load {load:g} host {host:g} ms {policy:9s} gap {'on ' if gap else 'off'} "
                          f"utility {s['utility']:9.1f} mean γ {s['mean_gamma']:6.1f} lost {rows[-1]['lost']}",
                          flush=True)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "host_gap.json").write_text(json.dumps({"meta": run_meta(__file__, argv), "rows": rows}, indent=1))
    plot(rows, out / "host_gap.png")
    print(f"wrote {out / 'host_gap.json'} and .png")


def _suite_job(job: tuple) -> list[dict]:
    seed, set_name, n_requests, sets, load, host, policies = job
    w, cell = suite.seeded_cell(seed, set_name, n_requests=n_requests, sets=sets)
    trace, profiles, rows = cell.trace(load), suite.online_profiles("otas", cell.profiles), []
    for policy in policies:
        for gap in (False, True):
            cfg = replace(cell.config, host_gap=gap)
            u = run(trace, cell.apps, profiles, policy, cfg, seed=w.seed, plan_ahead=True, host_ms=host).total_utility
            rows.append({"seed": seed, "load": load, "host_ms": host, "policy": policy, "host_gap": gap, "utility": u})
    return rows


def run_suite(args: argparse.Namespace, argv: list[str] | None) -> None:
    """`otas` and fixed γ, gap measured only and planned with, on held-out workloads of a stored suite run."""
    data = json.load(lzma.open(args.suite) if args.suite.endswith(".xz") else open(args.suite))
    sets = [suite.ProfileSet(k, tuple(v["profiles"]), v["max_batch"]) for k, v in data["meta"]["sets"].items()]
    n_requests = tuple(data["meta"]["generator"]["n_requests"])
    set_name = sets[0].name
    seeds = sorted({c["seed"] for c in data["cells"] if c["split"] == "held-out" and c["set"] == set_name})
    seeds = seeds[: args.seeds]
    policies = ["otas", *(f"fixed:{g}" for g in args.fixed.split(","))]
    loads, hosts = [float(x) for x in args.loads.split(",")], [float(x) for x in args.host_ms.split(",")]
    jobs = [(s, set_name, n_requests, sets, lo, h, policies) for s in seeds for lo in loads for h in hosts]
    with Pool(args.jobs) as pool:
        rows = [r for got in pool.map(_suite_job, jobs, chunksize=1) for r in got]
    u = {(r["seed"], r["load"], r["host_ms"], r["policy"], r["host_gap"]): r["utility"] for r in rows}
    summary = []
    for h in hosts:
        for lo in loads:
            cells = [(s, lo, h) for s in seeds]
            best = {g: [max(u[(*c, p, g)] for p in policies[1:]) for c in cells] for g in (False, True)}
            line = {"host_ms": h, "load": lo, "cells": len(cells)}
            for g in (False, True):
                r = [rep.ratio(u[(*c, "otas", g)], b) for c, b in zip(cells, best[g], strict=True)]
                line[f"otas/best_fixed_{'planned' if g else 'measured'}"] = rep.stats(r)
            planned, measured = ([u[(*c, "otas", g)] for c in cells] for g in (True, False))
            line["otas_planned/measured"] = rep.stats(map(rep.ratio, planned, measured))
            line["best_fixed_planned/measured"] = rep.stats(map(rep.ratio, best[True], best[False]))
            line["otas_planned/best_fixed_measured"] = rep.stats(map(rep.ratio, planned, best[False]))
            summary.append(line)
            print(f"host {h:g} ms load {lo:g}: " + "  ".join(
                f"{k} min {v['min']:.3f} geomean {v['geomean']:.3f}" for k, v in line.items() if isinstance(v, dict)
            ), flush=True)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**run_meta(__file__, argv), "suite": args.suite, "set": set_name, "seeds": seeds}
    (out / "host_gap_suite.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    print(f"wrote {out / 'host_gap_suite.json'}")


def plot(rows: list[dict], path: Path) -> None:
    """Utility against the host's time per batch, one panel per load, a line per policy and setting."""
    plt = pyplot()
    loads = sorted({r["load"] for r in rows})
    fig, axes = plt.subplots(1, len(loads), figsize=(4.5 * len(loads), 3.8), squeeze=False)
    for ax, load in zip(axes[0], loads, strict=True):
        for policy in dict.fromkeys(r["policy"] for r in rows):
            for gap, style in ((False, "--"), (True, "-")):
                pts = sorted((r["host_ms"], r["utility"]) for r in rows
                             if r["load"] == load and r["policy"] == policy and r["host_gap"] == gap)  # fmt: skip
                ax.plot(*zip(*pts, strict=True), style, marker="o", ms=3,
                        label=f"{policy}, host gap {'planned' if gap else 'measured only'}")  # fmt: skip
        ax.set_title(f"load {load:g}")
        ax.set_xlabel("host time per batch, in series (ms)")
        ax.set_ylabel("utility")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("simulated replay window: planning with the host's gap between batches")
    save(fig, path)


if __name__ == "__main__":
    main()
