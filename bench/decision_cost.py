"""The scheduler's host time per call on a live replay's workload: the simulator's run of the H100 replay window
(`otas bench replay`'s: the Azure conv trace scaled to each load, played `--repeat` times, each application's
arrivals coalesced over 5 ms, batches planned ahead), timing every `Scheduler.next_batch`, `submit_many` and
`complete` call: the work the server's event loop does for the scheduler. Utility is printed beside it, so
two trees compared on the same inputs also show whether they decide alike.

    python bench/decision_cost.py [--profile P] [--loads 1,1.5,2] [--policies otas,fixed:-16] [--rounds 3]
        [--against OTHER.json] [--name NAME]
Writes NAME.json (with machine, commit, command) under --out, and NAME.png: the mean time per call, beside
another tree's run of the same cells (--against: the JSON it wrote) where given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from otas.bench.replay import sim_window  # noqa: E402
from otas.config import SchedulerConfig, load_apps  # noqa: E402
from otas.profile.table import Profile  # noqa: E402
from otas.provenance import run_meta  # noqa: E402
from otas.sched import scheduler as sched  # noqa: E402
from otas.sim.simulator import run  # noqa: E402

CALLS = ("next_batch", "submit_many", "complete")


def timed(calls: dict[str, list[float]]):
    """Patch the Scheduler's methods to append each call's seconds to `calls`; returns the undo."""
    saved = {n: getattr(sched.Scheduler, n) for n in CALLS}

    def wrap(name, f):
        def g(*a, **k):
            t0 = time.perf_counter()
            r = f(*a, **k)
            calls[name].append(time.perf_counter() - t0)
            return r

        return g

    for n, f in saved.items():
        setattr(sched.Scheduler, n, wrap(n, f))
    return lambda: [setattr(sched.Scheduler, n, f) for n, f in saved.items()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=str(REPO / "profiles/vit_tiny_p2_c5__h100-graphs.json"))
    ap.add_argument("--apps", default=str(REPO / "otas/configs/apps-h100.yaml"))
    ap.add_argument("--trace", default=str(REPO.parent / "shared/data/traces/AzureLLMInferenceTrace_conv.csv"))
    ap.add_argument("--loads", default="1,1.5,2")
    ap.add_argument("--policies", default="otas,fixed:-16")
    ap.add_argument("--repeat", type=int, default=6, help="copies of the scaled trace, as the replay's --repeat")
    ap.add_argument("--seconds", type=float, default=10.0, help="load × capacity × this many requests")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each cell (the fastest mean is kept)")
    ap.add_argument("--out", default=str(REPO / "bench/results/decision_cost"))
    ap.add_argument("--name", default="decision_cost", help="the files' name under --out")
    ap.add_argument("--against", type=Path, help="another tree's JSON of the same cells, plotted beside this one")
    args = ap.parse_args(argv)
    apps, profile = load_apps(args.apps), Profile.load(args.profile)
    cfg = SchedulerConfig(max_batch=256)
    rows = []
    for load in (float(x) for x in args.loads.split(",")):
        tr, via = sim_window(args.trace, apps, profile, load, args.seconds, args.repeat, 5.0)
        for policy in args.policies.split(","):
            best: dict[str, float] = {}
            for _ in range(args.rounds):
                calls: dict[str, list[float]] = {n: [] for n in CALLS}
                undo = timed(calls)
                try:
                    res = run(tr, apps, profile, policy, cfg, seed=0, noise=False, plan_ahead=True, gateway=via)
                finally:
                    undo()
                for n, xs in calls.items():
                    best[n] = min(best.get(n, np.inf), 1e3 * float(np.mean(xs)))
            s = res.summary(apps)
            row = {"load": load, "policy": policy, "utility": s["utility"], "batches": s["batches"],
                   "calls": {n: len(calls[n]) for n in CALLS},
                   "mean_ms": {n: round(v, 4) for n, v in best.items()}}  # fmt: skip
            rows.append(row)
            print(f"load {load:g} {policy:10s} utility {s['utility']:.1f} " + " ".join(
                f"{n} {v:.3f} ms" for n, v in row["mean_ms"].items()))  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"meta": run_meta(__file__, argv), "rows": rows}
    if args.against is not None:
        other = json.loads(args.against.read_text())
        result["against"] = {
            "file": str(args.against),
            "commit": other["meta"].get("commit"),
            "ratio": _ratios(other["rows"], rows),
        }
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, other["rows"] if args.against is not None else None, out / f"{args.name}.png")
    print(f"wrote {out / args.name}.json and .png")


def _ratios(before: list[dict], after: list[dict]) -> list[dict]:
    """Per cell of both: before's mean ms over after's, per call, and whether the utility is the same."""
    by = {(r["load"], r["policy"]): r for r in before}
    out = []
    for r in after:
        b = by.get((r["load"], r["policy"]))
        if b is not None:
            speed = {n: round(b["mean_ms"][n] / r["mean_ms"][n], 3) for n in CALLS if r["mean_ms"].get(n)}
            out.append(
                {
                    "load": r["load"],
                    "policy": r["policy"],
                    "speedup": speed,
                    "same_utility": b["utility"] == r["utility"],
                }
            )
    return out


def plot(rows: list[dict], before: list[dict] | None, path: Path) -> None:
    from otas.plotting import pyplot, save

    plt = pyplot()

    fig, axes = plt.subplots(1, len(CALLS), figsize=(5 * len(CALLS), 3.8))
    label = [f"{r['policy']} @ {r['load']:g}" for r in rows]
    x = np.arange(len(rows))
    by = {(r["load"], r["policy"]): r for r in before or []}
    for ax, n in zip(axes, CALLS, strict=True):
        if before is not None:
            old = [
                by[(r["load"], r["policy"])]["mean_ms"][n] if (r["load"], r["policy"]) in by else np.nan for r in rows
            ]
            ax.bar(x - 0.2, old, 0.4, color="tab:gray", label="--against")
        ax.bar(
            x + (0.2 if before is not None else 0),
            [r["mean_ms"][n] for r in rows],
            0.4,
            color="tab:blue",
            label="this tree",
        )
        ax.set_xticks(x, label, rotation=30, ha="right", fontsize=7)
        ax.set(ylabel="ms per call (mean)", title=f"Scheduler.{n}")
        ax.legend(fontsize=7)
    save(fig, path, dpi=110)


if __name__ == "__main__":
    main()
