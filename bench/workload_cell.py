"""One cell of the workload suite (`otas bench workloads`): each policy's utility, SLO attainment per
application, mean batch and γ, and why queries were lost, for one seeded workload at one load.

    python bench/workload_cell.py --seed 22 --load 1 --profile-set h200 --policies otas,otas-paper,fixed:-48,edf

The suite reports ratios; this shows where a ratio comes from (which application starves, under which
policy), with the same workload draw, profiles, B_max and simulator as the suite.
"""

from __future__ import annotations

import argparse

from otas.bench import workloads as suite
from otas.sim.simulator import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, required=True, help="workload seed (even: tuning split, odd: held out)")
    ap.add_argument("--load", type=float, default=1.0, help="× the γ = 0 capacity of the set's first profile")
    ap.add_argument("--requests", default="3000,6000", help="MIN,MAX requests per trace, as the suite run drew")
    ap.add_argument("--profile-set", default="h200", help=suite.PROFILE_SET_HELP)
    ap.add_argument("--policies", default="otas,otas-paper,fixed:0,edf", help="comma-separated policy names")
    args = ap.parse_args()
    try:
        w, cell = suite.seeded_cell(args.seed, args.profile_set, n_requests=suite.parse_requests(args.requests))
    except ValueError as e:
        ap.error(str(e))
    apps, trace = cell.apps, cell.trace(args.load)
    head = f"workload {args.seed} ({w.split}), {trace.name}, {len(trace)} requests over {trace.duration_ms:.1f} ms"
    print(f"{head}, load {args.load}, set {args.profile_set}")
    for a in apps:
        print(f"  {a.name}: SLO {a.slo_ms:.2f} ms, utility {a.utility:.2f}, task {a.task}")
    for name in args.policies.split(","):
        s = run(trace, apps, suite.online_profiles(name, cell.profiles), name, cell.config, seed=w.seed).summary(apps)
        print(suite.summary_line(name, s))


if __name__ == "__main__":
    main()
