"""Ablations of the default policy on cells of the workload suite: `Otas` without its floor, without
reordering, without the head cap or the blocked-arrival cost, with the floor judged on completions
rather than settled queries, beside itself and fixed γ, on the same workload draw, profiles, B_max
and simulator.

    python bench/workload_ablation.py --cells 28:1,47:3,51:3,7:3 --profile-set h200 [--fixed -48,-32]
    python bench/workload_ablation.py --suite bench/results/workloads/workloads.json --variants otas,no-floor

With --cells: prints, per cell and variant, utility, SLO attainment per application, mean batch and γ,
and the queries lost (the suite reports ratios; this shows which part of the policy a ratio comes
from). With --suite: runs the variants on every cell of a stored suite run (its seeds, loads and
sets) and reports their ratios to that run's best other policy and to its oracle bound, per set,
load band and split, as the suite does; the baselines are not run again, so a variant is compared
with baselines of the code that wrote the file (its commit is printed).
"""

from __future__ import annotations

import argparse
import json
import lzma
from multiprocessing import Pool

import numpy as np

from otas.bench import workloads as suite
from otas.bench import workloads_report as rep
from otas.sched.policies import Otas, make_policy
from otas.sim.simulator import run
from otas.sim.traces import Trace

VARIANTS = {
    "otas": lambda: make_policy("otas"),
    "no-floor": lambda: Otas(name="otas", floor=False),
    "no-reorder": lambda: Otas(name="otas", reorder=False),
    "class-floor": lambda: Otas(name="otas", floor_classes=True),
    "unpriced": lambda: Otas(name="otas", priced=False),
    "no-mix": lambda: Otas(name="otas", mix=False),
    "cap-only": lambda: Otas(name="otas", floor_follow=False),
    "served-price": lambda: Otas(name="otas", served_price=True),
    "completion-floor": lambda: Otas(name="otas", floor_settled=False),
    "no-head-cap": lambda: Otas(name="otas", head_cap=False),
    "no-blocked": lambda: Otas(name="otas", blocked_cost=False),
    "no-protect": lambda: Otas(name="otas", head_cap=False, blocked_cost=False),
    "price-judge": lambda: Otas(name="otas", price_judge=True),
    "step-price": lambda: Otas(name="otas", smooth_price=False),
    "own-blocked": lambda: Otas(name="otas", blocked="own"),
    "batched-blocked": lambda: Otas(name="otas", blocked="batched"),
    "apps-price": lambda: Otas(name="otas", price_batching="apps"),
    "shared-price": lambda: Otas(name="otas", price_batching="shared"),
}


STORED = ("otas",)
"""Policies of the stored run reported beside the variants (as it ran them)."""


def _suite_cell(job: tuple[dict, list[str], tuple[int, int], list[suite.ProfileSet]]) -> list[tuple[str, float]]:
    rec, names, n_requests, sets = job
    w, cell = suite.seeded_cell(rec["seed"], rec["set"], n_requests=n_requests, sets=sets)
    trace, profiles = cell.trace(rec["load"]), suite.online_profiles("otas", cell.profiles)
    return [(n, run(trace, cell.apps, profiles, VARIANTS[n](), cell.config, seed=w.seed).total_utility) for n in names]


def run_suite(path: str, names: list[str], jobs: int, out: str | None = None, sets: list[str] | None = None) -> None:
    """Every variant on every cell of the stored suite run at `path` (of the profile `sets` named, or
    all; a .json or a .json.xz); prints the ratio statistics and writes the per-cell ratios to `out` (JSON) if
    given."""
    data = json.load(lzma.open(path) if path.endswith(".xz") else open(path))
    cells = [c for c in data["cells"] if sets is None or c["set"] in sets]
    n_requests = tuple(data["meta"]["generator"]["n_requests"])  # the range the stored run drew from
    # the profile sets the stored run drew its workloads for (their served tasks) and ran on
    run_sets = [suite.ProfileSet(k, tuple(v["profiles"]), v["max_batch"]) for k, v in data["meta"]["sets"].items()]
    with Pool(jobs) as pool:
        got = pool.map(_suite_cell, [(c, names, n_requests, run_sets) for c in cells], chunksize=1)
    print(f"baselines of commit {data['meta']['commit']} ({path}); {len(cells)} cells")
    rows = []
    for c, res in zip(cells, got, strict=True):
        best = max(v["utility"] for k, v in c["policies"].items() if rep.is_baseline(k))
        row = {"set": c["set"], "split": c["split"], "load": c["load"], "seed": c["seed"]}
        for n, u in [(f"stored:{k}", v["utility"]) for k, v in c["policies"].items() if k in STORED] + res:
            row[n] = rep.ratio(u, best)
            row[n + "/oracle"] = u / c["oracle"] if c["oracle"] else 1.0
        rows.append(row)
    if out:
        with open(out, "w") as f:
            json.dump({"suite": path, "baselines_commit": data["meta"]["commit"], "cells": rows}, f, indent=1)
    for pset in sorted({r["set"] for r in rows}):
        for band, keep in (("0.5", lambda x: x < 1), ("≥1", lambda x: x >= 1)):
            for split in ("all", "tuning", "held-out"):
                sel = [r for r in rows if r["set"] == pset and keep(r["load"]) and split in ("all", r["split"])]
                for n in [f"stored:{k}" for k in STORED] + names:
                    st = rep.stats(r[n] for r in sel)
                    worst = min(sel, key=lambda r: r[n])
                    orc = sorted(r[n + "/oracle"] for r in sel)[len(sel) // 2]
                    print(
                        f"{pset:5} load {band:3} {split:8} {n:>12}: min {st['min']:.3f}"
                        f" (w{worst['seed']}@{worst['load']:g})  p10 {st['p10']:.3f}  median {st['median']:.3f}"
                        f"  geomean {st['geomean']:.3f}"
                        f"  vs oracle median {orc:.3f}"
                    )
    if out:  # (after the tables: a plotting error loses no printed result)
        plot_cdf(rows, [f"stored:{k}" for k in STORED] + names, out.rsplit(".", 1)[0] + ".png")


def plot_cdf(rows: list[dict], names: list[str], path: str) -> None:
    """Per profile set and load band (0.5, ≥ 1), the CDF of each variant's ratio to the best other policy."""
    from otas.plotting import pyplot, save

    plt = pyplot()
    sets = sorted({r["set"] for r in rows})
    fig, axes = plt.subplots(len(sets), 2, figsize=(10, 3.2 * len(sets)), squeeze=False)
    for ax_row, pset in zip(axes, sets, strict=True):
        for ax, (band, keep) in zip(ax_row, (("0.5", lambda x: x < 1), ("≥ 1", lambda x: x >= 1)), strict=True):
            sel = [r for r in rows if r["set"] == pset and keep(r["load"])]
            for n in names:
                v = np.sort([r[n] for r in sel])
                ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=n)
            ax.axvline(1.0, color="grey", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.set_title(f"{pset}, load {band} ({len(sel)} cells)")
            ax.set_xlabel("utility over the best other policy")
            ax.set_ylabel("share of cells")
            ax.legend(fontsize=8)
    save(fig, path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", help="SEED:LOAD pairs, comma-separated, e.g. 28:1,47:3")
    ap.add_argument("--suite", help="a suite run's workloads.json: run the variants on all its cells")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="with --suite: comma-separated variant names")
    ap.add_argument("--jobs", type=int, default=2, help="with --suite: worker processes")
    ap.add_argument("--out", help="with --suite: write the per-cell ratios here (JSON)")
    ap.add_argument("--sets", help="with --suite: only the cells of these profile sets, comma-separated (default: all)")
    ap.add_argument("--requests", default="3000,6000", help="MIN,MAX requests per trace, as the suite run drew")
    ap.add_argument("--profile-set", default="h200", help=suite.PROFILE_SET_HELP)
    ap.add_argument("--fixed", default="-48,-32", help="fixed γ to show beside them")
    ap.add_argument(
        "--without-tightest",
        action="store_true",
        help="with --cells: also run every variant on the trace without the tightest application's queries (each "
        "of them then earns nothing): what giving that application up entirely would earn",
    )
    ap.add_argument(
        "--replot", nargs="+", help="per-cell JSON files (.json or .json.xz) an --out wrote: each plotted again"
    )
    args = ap.parse_args()
    if args.replot:
        for path in args.replot:
            d = json.load(lzma.open(path) if path.endswith(".xz") else open(path))
            path = path.removesuffix(".xz")
            keys = d["cells"][0]
            names = [k for k in keys if k not in ("set", "split", "load", "seed") and not k.endswith("/oracle")]
            plot_cdf(d["cells"], names, path.rsplit(".", 1)[0] + ".png")
        return
    if args.suite:
        names = args.variants.split(",")
        if unknown := [n for n in names if n not in VARIANTS]:
            ap.error(f"--variants {','.join(unknown)}: use some of {', '.join(VARIANTS)}")
        return run_suite(args.suite, names, args.jobs, args.out, args.sets.split(",") if args.sets else None)
    if not args.cells:
        ap.error("give --cells or --suite")
    variants = {**VARIANTS, **{f"fixed:{g}": (lambda g=g: make_policy(f"fixed:{g}")) for g in args.fixed.split(",")}}
    for cell_arg in args.cells.split(","):
        seed, load = cell_arg.split(":")
        try:
            w, cell = suite.seeded_cell(int(seed), args.profile_set, n_requests=suite.parse_requests(args.requests))
        except ValueError as e:
            ap.error(str(e))
        trace = cell.trace(float(load))
        print(f"== workload {seed} ({w.split}), {trace.name}, load {load}, set {args.profile_set}")
        traces = {"": trace}
        if args.without_tightest:
            tight = min(cell.apps, key=lambda a: (a.slo_ms, a.name)).name
            keep = np.array([a != tight for a in trace.apps], dtype=bool)
            rest = [a for a in trace.apps if a != tight]
            traces[f" without {tight}"] = Trace(trace.name, trace.arrival_ms[keep], rest)
        for label, tr in traces.items():
            for name, make in variants.items():
                profiles = suite.online_profiles("otas", cell.profiles)
                s = run(tr, cell.apps, profiles, make(), cell.config, seed=w.seed).summary(cell.apps)
                print(suite.summary_line(name + label, s))


if __name__ == "__main__":
    main()
