"""The simulator on the very trace windows a peers sweep replayed: otas and every fixed γ, the offline upper
bound on any schedule's utility (`otas.sched.oracle`), and each live run's utility over the simulated utility of
its policy (otas, or the peer's γ).

It bounds what otas can gain over a peer handed the best fixed γ in hindsight: the oracle over that fixed γ's
simulated utility is the most any scheduler can earn over a peer that runs as simulated. And it shows how close
each server comes live to its own simulation. Reads the sweep's `sweep.json` (trace, loads, window length,
B_max) and writes `sim_windows.json` beside it.

    .venv/bin/python bench/peers/sim_windows.py [--sweep bench/results/peers/sweep.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from otas.bench.replay import window
from otas.config import SchedulerConfig, default_apps_path, load_apps
from otas.profile.table import Profile
from otas.provenance import run_meta
from otas.sched.oracle import upper_bound
from otas.sim.demo import default_profile_path
from otas.sim.simulator import run

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", type=Path, default=ROOT / "bench/results/peers/sweep.json")
    ap.add_argument("--max-batch", type=int, default=64, help="B_max of the capacity the loads scale (as the sweep)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    sweep = json.loads(a.sweep.read_text())
    m = sweep["meta"]
    apps, profile = load_apps(default_apps_path("cpu")), Profile.load(default_profile_path())
    gammas = [g for g in profile.gammas if all(g in profile.servable(x.task) for x in apps)]
    cfg = SchedulerConfig(max_batch=a.max_batch)
    loads = {}
    for load in m["loads"]:
        trace, _ = window(m["trace"], apps, profile, a.max_batch, load, 0, m["duration_s"], a.seed)
        u = {
            p: run(trace, apps, profile, p, cfg, seed=a.seed).total_utility
            for p in ["otas"] + [f"fixed:{g}" for g in gammas]
        }
        best = max((p for p in u if p != "otas"), key=u.get)
        bound = upper_bound(trace.requests(apps), apps, profile, cfg).value
        live = {}
        for r in sweep["runs"]:
            if r["load"] == load:
                policy = "otas" if r["server"] == "otas" else f"fixed:{r['gamma']}"
                live[f"{r['server']} {r['variant']}"] = r["all"]["utility_expected"] / u[policy]
        loads[str(load)] = {"requests": len(trace), "sim_utility": u, "best_fixed": best,
                            "otas_over_best_fixed": u["otas"] / u[best], "oracle": bound,
                            "oracle_over_best_fixed": bound / u[best], "live_over_sim": live}  # fmt: skip
        print(
            f"load {load:g}: otas {u['otas']:.1f}, best fixed {best} {u[best]:.1f} (otas / it "
            f"{u['otas'] / u[best]:.3f}), oracle {bound:.1f} ({bound / u[best]:.3f} of it); live / sim "
            + ", ".join(f"{k} {v:.2f}" for k, v in live.items())
        )
    out = a.sweep.with_name("sim_windows.json")
    doc = {"meta": {**run_meta(), "sweep": str(a.sweep), "sweep_commit": m["commit"]}, "loads": loads}
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
