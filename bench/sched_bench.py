"""Scheduler benchmark: decision time of the optimizer and simulation wall time.

1. Decision time: a Scheduler with 3 applications, lookahead 8, kept at 1,024 queued queries, at
   |Γ| = 8 (the profile restricted to GAMMA8) and at the profile's whole Γ; each timed call is one
   full `next_batch` (expiry, batching, DP). Also the DP alone.
   Warm-up, then median, p99 and max over many decisions, in ms.
2. Simulation wall time of the one-hour Azure trace for every policy (load 1.0 by default).

    python bench/sched_bench.py [--profile PATH] [--out bench/results]
Writes sched_bench.json (with machine, commit, command) and sched_bench.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from otas.config import SchedulerConfig, default_apps_path, load_apps  # noqa: E402
from otas.profile.table import Profile  # noqa: E402
from otas.provenance import run_meta  # noqa: E402
from otas.sched import Scheduler  # noqa: E402
from otas.sched.optimizer import plan  # noqa: E402
from otas.sim.cli import default_policies, online_profiles  # noqa: E402
from otas.sim.simulator import run  # noqa: E402
from otas.sim.traces import capacity_per_s, make_trace  # noqa: E402
from otas.types import Request  # noqa: E402


def default_profiles() -> list[Path]:
    real = sorted((REPO / "profiles").glob("vit_tiny_p2_c5__*cpu*.json")) or sorted(
        (REPO / "profiles").glob("vit_tiny_p2_c5__*.json")
    )
    if real:
        small = sorted((REPO / "profiles").glob(real[0].name.replace("tiny", "small")))
        return [real[0], *small]
    return [REPO / "tests/data/handmade_tiny__cpu.json", REPO / "tests/data/handmade_small__cpu.json"]


GAMMA8 = [-48, -32, -20, -12, 0, 4, 8, 16]
"""The |Γ| = 8 subset timed (where the profile has these γ; else its whole set)."""


def gamma8(profile: Profile) -> Profile:
    return profile.restrict(GAMMA8) if set(GAMMA8) <= set(profile.gammas) else profile


def decision_times(profile: Profile, n_queued: int = 1024, decisions: int = 3000) -> dict[str, float]:
    apps = load_apps(default_apps_path("cpu"))
    cfg = SchedulerConfig(lookahead=8, max_batch=64)
    s = Scheduler(apps, profile, "otas", cfg)
    now, nid = 0.0, 0

    def fill() -> None:
        nonlocal nid
        while s.queued() < n_queued:
            a = apps[nid % len(apps)]
            s.submit(Request(nid, a.name, now, now + a.slo_ms), now)
            nid += 1

    full, dp = [], []
    for k in range(decisions + 200):
        now += 0.5
        fill()
        s.expired(now)
        t0 = time.perf_counter()
        p = s.next_batch(now)
        t1 = time.perf_counter()
        assert p is not None and (p.meta.get("follow") or p.meta["planned_batches"] == 8)  # (following: one batch)
        if k >= 200:
            full.append(t1 - t0)
    # the DP alone, on the specs of the same kind of state
    from otas.sched.batching import candidates

    fill()
    specs = [s.policy._spec(c, now, s) for c in candidates(s.queues, now, 64, 8, s._fast)]
    for _ in range(2000):
        t0 = time.perf_counter()
        plan(specs, cfg.delta_ms, cfg.max_grid)
        dp.append(time.perf_counter() - t0)
    ms = lambda xs, q: float(np.percentile(np.array(xs) * 1e3, q))
    return {
        "decision_p50_ms": ms(full, 50),
        "decision_p99_ms": ms(full, 99),
        "decision_max_ms": ms(full, 100),
        "dp_p50_ms": ms(dp, 50),
        "dp_p99_ms": ms(dp, 99),
        "queued": n_queued,
        "lookahead": 8,
        "gammas": len(profile.gammas),
        "decisions": decisions,
    }


def sim_times(profiles: list[Profile], load: float) -> dict[str, float]:
    apps = load_apps(default_apps_path("cpu"))
    cfg = SchedulerConfig()
    cap = capacity_per_s(profiles[0], apps, cfg.max_batch)
    tr = make_trace("azure", apps, load, cap)
    out = {}
    for name in default_policies(profiles):
        if name == "oracle":
            from otas.sched.oracle import upper_bound

            t0 = time.perf_counter()
            upper_bound(tr.requests(apps), apps, profiles, cfg)
        else:
            t0 = time.perf_counter()
            run(tr, apps, online_profiles(name, profiles), name, cfg)
        out[name] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default=",".join(str(p) for p in default_profiles()))
    ap.add_argument("--load", type=float, default=1.0)
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    args = ap.parse_args()
    profiles = [Profile.load(p) for p in args.profile.split(",")]
    dec = decision_times(gamma8(profiles[0]))
    dec_all = decision_times(profiles[0])
    sims = sim_times(profiles, args.load)
    result = {
        **run_meta(),
        "python": platform.python_version(),
        "profiles": [str(p) for p in args.profile.split(",")],
        "decision": dec,
        "decision_all_gammas": dec_all,
        "sim_azure_one_hour_s": sims,
        "sim_azure_total_s": sum(sims.values()),
        "load": args.load,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sched_bench.json").write_text(json.dumps(result, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(list(sims), list(sims.values()))
    ax.set_xlabel("wall time (s), one-hour Azure trace")
    ax.set_title(
        f"decision p50 {dec['decision_p50_ms']:.3f} ms, p99 {dec['decision_p99_ms']:.3f} ms, "
        f"max {dec['decision_max_ms']:.2f} ms (lookahead 8, |Γ|=8, 1024 queued);\n"
        f"|Γ|={dec_all['gammas']}: p99 {dec_all['decision_p99_ms']:.3f} ms",
        fontsize=9,
    )
    fig.text(0.01, 0.01, f"{result['command']} @ {result['commit']}; {result['machine']}", fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out / "sched_bench.png", dpi=120)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
