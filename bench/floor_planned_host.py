"""The floor judging the policy's batches as planned (`Otas(floor_planned=True)`) against the default (when the
results came back), in the simulator with a host that takes time per batch: every `otas` case of the recorded
decision cases (`tests/sched/decisions.py`), noise-free, with `host_ms` = 0.3 × a batch of one at γ = 0, with
and without planning ahead. Without host time the two rules decide alike (a batch then ends as planned).

    python bench/floor_planned_host.py --out bench/results/floor_planned_host

Writes floor_planned_host.json (each run's utility under both rules, with machine, commit and command).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otas.provenance import run_meta  # noqa: E402
from otas.sched.policies import Otas  # noqa: E402
from otas.sim.simulator import run  # noqa: E402
from tests.sched.decisions import N_CASES, case, case_trace  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host-share", type=float, default=0.3, help="host_ms as a share of a batch of one at γ = 0")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/floor_planned_host")
    args = ap.parse_args(argv)
    rows = []
    for seed in range(N_CASES):
        apps, profile, name, cfg, tr = case(seed)
        if name != "otas":
            continue
        cfg = replace(cfg, host_gap=False)  # as its results were measured, before the gap (bench/host_gap.py)
        trace = case_trace(seed, apps, profile, cfg, tr)
        host = args.host_share * profile.lat(0, 1)
        for ahead in (False, True):
            u = {
                rule: run(trace, apps, profile, Otas(floor_planned=rule == "planned"), cfg, seed=seed,
                          plan_ahead=ahead, host_ms=host).total_utility
                for rule in ("measured", "planned")
            }  # fmt: skip
            ratio = u["planned"] / u["measured"]
            rows.append({"seed": seed, "plan_ahead": ahead, "host_ms": host, **u, "ratio": ratio})
    summary = {}
    for ahead in (False, True):
        r = [x["ratio"] for x in rows if x["plan_ahead"] == ahead]
        moved = [x for x in r if abs(x - 1) > 1e-9]
        summary[f"plan_ahead={ahead}"] = {
            "runs": len(r), "differ": len(moved), "planned_less": sum(x < 1 for x in moved),
            "geomean_ratio": math.exp(sum(map(math.log, r)) / len(r)), "min": min(r), "max": max(r),
        }  # fmt: skip
        print(f"plan ahead {ahead}: {summary[f'plan_ahead={ahead}']}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"meta": run_meta(), "summary": summary, "rows": rows}
    (args.out / "floor_planned_host.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
