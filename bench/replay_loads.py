"""The simulator's run of the live replay's window (`otas bench replay`'s: the trace scaled to each load, played
`--repeat` times, each application's arrivals coalesced over 5 ms, batches planned ahead) over a sweep of loads
between the replay's, each policy on a device as profiled and as much slower as `--scales` says (a live run's
latency correction, e.g. from `bench/paced_drift.py`): where on the load axis the simulator itself ranks `otas`
below a fixed γ, which the live replays' few loads can miss. The scheduler's settings are the defaults (with
`--max-batch`), not a replay's own.

    python bench/replay_loads.py \\
        --profile bench/results/gpu_merge_every/run25/vit_tiny_p2_c5__h100-graphs-every4.json \\
        --buckets 1,2,4,8,16,32,64,128,256 --loads 1,1.25,1.5,1.6,1.725,1.85,2 --scales 1,1.15 \\
        --policies otas,fixed:-20,fixed:-32 --out bench/results/live_h100/19_h100_runs37_40/sim_loads

A policy may be `otas` with constructor settings in brackets (`otas[mix=False]`, `otas[priced=False]`, the ablations of
`otas.sched.policies.Otas`), to see which part of the policy a band of loads turns on.

Writes replay_loads.json (machine, commit, command; one row per load, scale and policy) and replay_loads.png (utility
by load, a panel per scale) under --out.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from otas.bench.replay import sim_window  # noqa: E402
from otas.config import SchedulerConfig, load_apps  # noqa: E402
from otas.profile.table import Profile  # noqa: E402
from otas.provenance import run_meta  # noqa: E402
from otas.sched.policies import make_policy  # noqa: E402
from otas.sim.simulator import run  # noqa: E402


def policy_of(spec: str):
    """A policy by name, or `otas[key=value,...]`: `Otas` with those constructor settings (Python literals)."""
    name, _, rest = spec.partition("[")
    if not rest:
        return make_policy(spec)
    if name != "otas":  # (the other policies take no settings: make_policy would drop them silently)
        raise ValueError(f"policy {spec!r}: settings in brackets are for otas only")
    if not rest.endswith("]"):
        raise ValueError(f"policy {spec!r}: write NAME[key=value,...]")
    kwargs = {}
    for item in filter(None, rest[:-1].split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"policy {spec!r}: {item!r} is not key=value")
        kwargs[key.strip()] = ast.literal_eval(value.strip())
    return make_policy(name, **kwargs)


def sweep(args: argparse.Namespace) -> list[dict]:
    apps, profile = load_apps(args.apps), Profile.load(args.profile)
    if args.buckets:  # the batch sizes a CUDA-graph path pads to, as the server plans at them (`Profile.buckets`)
        profile = profile.with_buckets([int(b) for b in args.buckets.split(",")])
    cfg = SchedulerConfig(max_batch=args.max_batch)
    rows = []
    for load in (float(x) for x in args.loads.split(",")):
        trace, gateway = sim_window(args.trace, apps, profile, load, args.seconds, args.repeat, 5.0, args.max_batch)
        for scale in (float(x) for x in args.scales.split(",")):
            for policy in _split(args.policies):
                pol = policy_of(policy)
                res = run(trace, apps, profile, pol, cfg, plan_ahead=True, gateway=gateway, device_scale=scale)
                s = res.summary(apps)
                rows.append({"load": load, "scale": scale, "policy": policy, "utility": res.total_utility,
                             "slo": s["slo_attainment"], "mean_gamma": s["mean_gamma"],
                             "batches": len(res.batches)})  # fmt: skip
                print(f"load {load:<6g} device × {scale:<5g} {policy:>10s}: utility {res.total_utility:9.1f}  "
                      f"SLO {s['slo_attainment']:.3f}  mean γ {s['mean_gamma']:6.1f}")  # fmt: skip
    return rows


def _split(policies: str) -> list[str]:
    """Comma-separated policies, commas inside brackets kept."""
    out, depth, cur = [], 0, ""
    for ch in policies:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [p for p in [*out, cur] if p]


def plot(rows: list[dict], path: Path) -> None:
    from otas.plotting import pyplot, save

    plt = pyplot()
    scales = sorted({r["scale"] for r in rows})
    fig, axes = plt.subplots(1, len(scales), figsize=(5.5 * len(scales), 3.8), squeeze=False)
    for ax, scale in zip(axes[0], scales, strict=True):
        for policy in dict.fromkeys(r["policy"] for r in rows):
            pts = sorted((r["load"], r["utility"]) for r in rows if r["scale"] == scale and r["policy"] == policy)
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=policy)
        ax.set(xlabel="load (× the profile's γ = 0 capacity)", ylabel="utility (simulated)",
               title=f"device × {scale:g} the profile's latency")  # fmt: skip
        ax.legend(fontsize=7)
    save(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=str(REPO / "profiles/vit_tiny_p2_c5__h100-graphs.json"))
    ap.add_argument("--apps", default=str(REPO / "otas/configs/apps-h100.yaml"))
    ap.add_argument("--trace", default="azure", help="as `otas simulate --trace`: azure, a CSV path, poisson, ...")
    ap.add_argument("--loads", default="1,1.25,1.5,1.6,1.725,1.85,2")
    ap.add_argument("--scales", default="1,1.15", help="device latency over the profile's, e.g. a live correction")
    ap.add_argument("--policies", default="otas,fixed:-20,fixed:-32")
    ap.add_argument("--repeat", type=int, default=6, help="copies of the scaled trace, as the replay's --repeat")
    ap.add_argument("--seconds", type=float, default=10.0, help="load × capacity × this many requests")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--buckets", default="", help="plan at these padded batch sizes, e.g. 1,2,4,8,16,32,64,128,256")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/replay_loads")
    args = ap.parse_args(argv)
    rows = sweep(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replay_loads.json").write_text(json.dumps({"meta": run_meta(__file__, argv),
                                                            "rows": rows}, indent=1) + "\n")  # fmt: skip
    plot(rows, args.out / "replay_loads.png")
    print(f"wrote {args.out}/replay_loads.json and .png")


if __name__ == "__main__":
    main()
