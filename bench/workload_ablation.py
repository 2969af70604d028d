"""Ablations of the default policy on cells of the workload suite: `Otas` without its floor and without
reordering, beside itself and fixed γ, on the same workload draw, profiles, B_max and simulator.

    python bench/workload_ablation.py --cells 28:1,47:3,51:3,7:3 --profile-set h200 [--fixed -48,-32]

Prints, per cell and variant, utility, SLO attainment per application, mean batch and γ, and the
queries lost (the suite reports ratios; this shows which part of the policy a ratio comes from).
"""

from __future__ import annotations

import argparse

from otas.bench import workloads as suite
from otas.sched.policies import Otas, make_policy
from otas.sim.simulator import run

VARIANTS = {
    "otas": lambda: make_policy("otas"),
    "no-floor": lambda: Otas(name="otas", floor=False),
    "no-reorder": lambda: Otas(name="otas", reorder=False),
    "class-floor": lambda: Otas(name="otas", floor_classes=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", required=True, help="SEED:LOAD pairs, comma-separated, e.g. 28:1,47:3")
    names = ", ".join(s.name for s in suite.DEFAULT_SETS)
    ap.add_argument("--profile-set", default="h200", help=f"one of the suite's default profile sets: {names}")
    ap.add_argument("--fixed", default="-48,-32", help="fixed γ to show beside them")
    args = ap.parse_args()
    variants = {**VARIANTS, **{f"fixed:{g}": (lambda g=g: make_policy(f"fixed:{g}")) for g in args.fixed.split(",")}}
    for cell_arg in args.cells.split(","):
        seed, load = cell_arg.split(":")
        try:
            w, cell = suite.seeded_cell(int(seed), args.profile_set)
        except ValueError as e:
            ap.error(str(e))
        trace = cell.trace(float(load))
        print(f"== workload {seed} ({w.split}), {trace.name}, load {load}, set {args.profile_set}")
        for name, make in variants.items():
            profiles = suite.online_profiles("otas", cell.profiles)
            s = run(trace, cell.apps, profiles, make(), cell.config, seed=w.seed).summary(cell.apps)
            print(suite.summary_line(name, s))


if __name__ == "__main__":
    main()
