"""How much of a live run's parting from the simulator is its device's speed: the live latency correction
read from the server's decision log (`otas serve --decision-log`: each batch's predicted over profiled
latency, the scheduler's online factor), and the simulator's run of the same replay window with its device
that much slower than profiled (`otas.sim.simulator.run(device_scale=)`) beside the plain one.

    python bench/paced_drift.py --replay R.json --decision-log D.jsonl --profile P --apps A \\
        --out bench/results/paced_drift [--others fixed:-20]

R.json is the replay's output (`otas bench replay`), which names the trace window; P and A the server's.
--others: more policies simulated on the same window, as profiled and on the measured device (whether the
simulator ranks the replay's policy against them alike once its device runs as the live one did).
Writes paced_drift.json (with machine, commit and command).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otas.bench.replay import sim_window  # noqa: E402
from otas.config import SchedulerConfig, load_apps  # noqa: E402
from otas.profile.table import Profile  # noqa: E402
from otas.provenance import run_meta  # noqa: E402
from otas.sched.policies import make_policy  # noqa: E402
from otas.sim.simulator import run  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replay", type=Path, required=True)
    ap.add_argument("--decision-log", type=Path, required=True)
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--apps", type=Path, required=True)
    ap.add_argument("--trace", default="azure")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--others", default="", help="comma-separated policies simulated beside it, e.g. fixed:-20")
    args = ap.parse_args(argv)
    names = [p for p in args.others.split(",") if p]
    for p in names:
        make_policy(p)  # an unknown name fails here, before any simulation
    replay = json.loads(args.replay.read_text())
    m = replay["meta"]
    log = [json.loads(line) for line in args.decision_log.read_text().splitlines() if line.strip()]
    ratios = [x["predicted_ms"] / x["meta"]["profiled_ms"] for x in log if x["meta"].get("profiled_ms")]
    factor = statistics.median(ratios)  # the scheduler's online correction, batch by batch
    prof, apps = Profile.load(args.profile), load_apps(args.apps)
    trace, gw = sim_window(args.trace, apps, prof, m["load"], m["duration_s"], m["repeat"], m["coalesce_ms"])
    cfg = SchedulerConfig(**m["scheduler"])

    def simulated(policy: str) -> dict[str, dict]:
        sims = {}
        for name, scale in (("as_profiled", 1.0), ("as_measured", factor)):
            res = run(trace, apps, prof, policy, cfg, plan_ahead=True, gateway=gw, device_scale=scale)
            s = res.summary(apps)
            sims[name] = {"device_scale": scale, "utility": res.total_utility, "mean_gamma": s["mean_gamma"],
                          "batches": len(res.batches)}  # fmt: skip
        return sims

    sims = simulated(m["policy"])
    others = {p: simulated(p) for p in names}
    live = replay["live"]["all"]["utility_expected"]  # the replay's own total, as `otas.bench.live_summary` reads it
    out = {
        "meta": run_meta(), "replay": str(args.replay), "live_factor": factor, "live_utility": live,
        "live_mean_gamma": replay["live"]["all"]["mean_gamma"], "live_batches": len(log), "sim": sims,
        "live_over_sim": {k: live / v["utility"] for k, v in sims.items()}, "others": others,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "paced_drift.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"live factor {factor:.3f}; live {live:.0f} (γ {out['live_mean_gamma']:.1f}, {len(log)} batches)")
    for k, v in sims.items():
        print(f"  sim {k}: {v['utility']:.0f} (γ {v['mean_gamma']:.1f}, {v['batches']} batches), "
              f"live/sim {out['live_over_sim'][k]:.3f}")  # fmt: skip
    for p, o in others.items():
        print(f"  {p}: sim as profiled {o['as_profiled']['utility']:.0f}, on the measured device "
              f"{o['as_measured']['utility']:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
