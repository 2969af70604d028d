"""Every decision of the scheduler on seeded random cases, recorded as one digest per case.

A case draws applications (2-5, random SLOs, utilities and tasks), a synthetic trace, a load, a
profile (CPU or H100), a policy of the OTAS family and the scheduler's knobs from its seed alone.
Its digest covers each batch (start, model, γ, request ids, planned value, price, which candidate
ran, head, mixed) and how every query ended, so a change of the decision path that is meant to
decide exactly as before (an optimisation) can be checked against `decisions.json`, recorded
before it. Planned values are kept to 10 significant digits (an ulp of another BLAS is no change).

    python -m tests.sched.decisions            # check every case against decisions.json
    python -m tests.sched.decisions --write    # re-record (only after a deliberate policy change)
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from otas.config import SchedulerConfig
from otas.profile.table import Profile
from otas.sched import make_policy
from otas.sim.simulator import run
from otas.sim.traces import Trace, at_load, capacity_per_s, synthetic
from otas.types import App

REPO = Path(__file__).resolve().parents[2]
RECORD = Path(__file__).with_name("decisions.json")
# the H100 profile as it was when decisions.json was recorded (profiles/ holds a re-measured one since)
PROFILES = [
    "profiles/vit_tiny_p2_c5__cpu-eager.json",
    "bench/results/workloads/h100_profile/vit_tiny_p2_c5__h100-graphs_da7acf6.json",
]
POLICIES = ["otas", "otas", "otas", "otas-paper", "otas-fifo", "otas-greedy"]
KINDS = ["poisson", "mmpp", "diurnal", "step"]
N_CASES = 64


def case(seed: int) -> tuple[list[App], Profile, str, SchedulerConfig, dict]:
    """(apps, profile, policy, config, trace arguments) of one seed."""
    rng = np.random.default_rng([seed, 0xDEC1])
    profile = Profile.load(REPO / PROFILES[seed % 2])
    if rng.random() < 0.5:  # a |Γ| = 8 profile, as in bench/sched_bench.py, half of the time
        keep = sorted(rng.choice(profile.gammas, size=min(8, len(profile.gammas)), replace=False).tolist())
        if 0 not in keep:
            keep[len(keep) // 2] = 0
        profile = profile.restrict(sorted(set(keep)))
    k = int(rng.integers(2, 6))
    ref = profile.lat(0, 1)
    slo = np.sort(ref * np.exp(rng.uniform(np.log(2), np.log(40), k)))
    if rng.random() < 0.3:  # two applications of one SLO share a class
        slo[-1] = slo[0]
    tasks = sorted(profile.accuracy)
    apps = [
        App(f"a{i}", float(s), float(np.exp(rng.uniform(np.log(0.5), np.log(5)))), tasks[int(rng.integers(len(tasks)))])
        for i, s in enumerate(slo)
    ]
    big = "h100" in profile.model or "h100" in PROFILES[seed % 2]
    cfg = SchedulerConfig(
        lookahead=int(rng.choice([1, 3, 8, 8])),
        max_batch=int(rng.choice([256, 64] if big else [64, 16])),
        slo_class_tolerance=float(rng.choice([0.0, 0.0, 0.5])),
        max_queue_delay_ms=float(rng.choice([0.0, 0.0, 0.0, ref])),
        reject_infeasible=bool(rng.random() < 0.85),
        max_grid=int(rng.choice([512, 512, 64])),
    )
    mix = rng.dirichlet(np.ones(k))
    trace = {"kind": KINDS[int(rng.integers(len(KINDS)))], "n": int(rng.integers(300, 900)), "mix": mix.tolist()}
    trace["load"] = float(rng.choice([0.5, 1.0, 2.0, 3.0, 3.0]))
    trace["noise"] = bool(rng.random() < 0.3)
    return apps, profile, POLICIES[seed % len(POLICIES)], cfg, trace


def case_trace(seed: int, apps: list[App], profile: Profile, cfg: SchedulerConfig, tr: dict) -> Trace:
    """The trace of one seed's case (`case`'s description of it, at its load)."""
    base = synthetic(tr["kind"], apps, n=tr["n"], seed=seed, mix=tr["mix"])
    return at_load(base, tr["load"], capacity_per_s(profile, apps, cfg.max_batch))


def decisions(seed: int) -> tuple[int, str]:
    """(batches run, digest of every decision and outcome) of one seed's case."""
    apps, profile, name, cfg, tr = case(seed)
    trace = case_trace(seed, apps, profile, cfg, tr)
    policy = make_policy(name)
    seen: list[str] = []
    on_complete = policy.on_complete

    def record(plan, now_ms, measured_ms, view):
        m = plan.meta
        seen.append(
            f"{plan.start_ms!r} {plan.model} {plan.gamma} {[r.id for r in plan.requests]} "
            f"{m.get('planned_value', 0.0):.10g} {m.get('price', 0.0):.10g} "
            f"{m.get('batch', 0)} {m.get('head', 0)} {m.get('mixed', 0)}"
        )
        on_complete(plan, now_ms, measured_ms, view)

    policy.on_complete = record  # type: ignore[method-assign]
    res = run(trace, apps, profile, policy, cfg, seed=seed, noise=tr["noise"])
    seen.append(" ".join(f"{o}:{r}" for o, r in zip(res.outcome, res.reason, strict=True)))
    return len(seen) - 1, hashlib.sha256("\n".join(seen).encode()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="re-record decisions.json from the current code")
    args = ap.parse_args()
    got = {str(s): dict(zip(("batches", "digest"), decisions(s), strict=True)) for s in range(N_CASES)}
    if args.write:
        RECORD.write_text(json.dumps(got, indent=1) + "\n")
        print(f"wrote {RECORD} ({sum(v['batches'] for v in got.values())} decisions)")
        return
    want = json.loads(RECORD.read_text())
    bad = [s for s in got if got[s] != want.get(s)]
    print("same decisions" if not bad else f"different decisions in cases {bad}")


if __name__ == "__main__":
    main()
