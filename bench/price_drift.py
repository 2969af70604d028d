"""`otas` against every fixed γ when the device runs slower or faster than its profile: the Azure conv trace,
as a live replay sends it (coalesced, `sim_window`), in the simulator with its device `device_scale` × the
profiled latency (the scheduler corrects online, as live), per load and scale, with the smoothed price of device
time (the default, `otas.sched.price.DevicePrice._smoothed`) and with the price at the fluid relaxation's break
(`Otas(smooth_price=False)`).

    python bench/price_drift.py --profile profiles/vit_tiny_p2_c5__h100-graphs.json \\
        --apps otas/configs/apps-h100.yaml --out bench/results/price_drift/h100

Writes price_drift.json (every run's utility, mean γ and SLO attainment; machine, commit and command) and
price_drift.png (each `otas` variant over the best fixed γ, against the device's scale, per load).
"""

from __future__ import annotations

import argparse
import json
import sys
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otas.provenance import run_meta  # noqa: E402

VARIANTS = {"otas": {}, "otas+step_price": {"smooth_price": False}}
"""`otas` as it ships (the smoothed price) and with the price at the fluid relaxation's break (`Otas` knobs)."""


def _one(job: tuple) -> dict:
    from otas.bench.replay import sim_window
    from otas.config import SchedulerConfig, load_apps
    from otas.profile.table import Profile
    from otas.sched.policies import Otas
    from otas.sim.simulator import run

    profile, apps_path, trace, load, scale, policy, args = job
    prof, apps = Profile.load(profile), load_apps(apps_path)
    window, gw = sim_window(trace, apps, prof, load, args["seconds"], args["repeat"], args["coalesce_ms"])
    pol = Otas(name="otas", **VARIANTS[policy]) if policy in VARIANTS else policy
    res = run(window, apps, prof, pol, SchedulerConfig(max_batch=args["max_batch"]), plan_ahead=True, gateway=gw,
              device_scale=scale)  # fmt: skip
    s = res.summary(apps)
    return {"load": load, "scale": scale, "policy": policy, "utility": res.total_utility,
            "mean_gamma": s["mean_gamma"], "slo": s["slo_attainment"]}  # fmt: skip


def plot(rows: list[dict], title: str, path: Path) -> None:
    from otas.plotting import pyplot, save

    plt = pyplot()
    loads = sorted({r["load"] for r in rows})
    fig, axes = plt.subplots(1, len(loads), figsize=(3.0 * len(loads), 3.4), sharey=True, squeeze=False)
    for ax, load in zip(axes[0], loads, strict=True):
        mine = [r for r in rows if r["load"] == load]
        scales = sorted({r["scale"] for r in mine})
        fixed = [r for r in mine if r["policy"].startswith("fixed:")]
        best = {s: max(r["utility"] for r in fixed if r["scale"] == s) for s in scales}
        for v in VARIANTS:
            ys = [next(r["utility"] for r in mine if r["scale"] == s and r["policy"] == v) / best[s] for s in scales]
            ax.plot(scales, ys, marker="o", label=v)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"load {load:g}", fontsize=9)
        ax.set_xlabel("device time / profiled")
    axes[0][0].set_ylabel("utility / best fixed γ")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    save(fig, path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(ROOT / "profiles/vit_tiny_p2_c5__h100-graphs.json"))
    ap.add_argument("--apps", default=str(ROOT / "otas/configs/apps-h100.yaml"))
    ap.add_argument("--trace", default="azure")
    ap.add_argument("--loads", default="0.5,1,1.5,2,3")
    ap.add_argument("--scales", default="0.9,0.95,1,1.05,1.1")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=6)
    ap.add_argument("--coalesce-ms", type=float, default=5.0)
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/price_drift")
    args = ap.parse_args(argv)
    from otas.profile.table import Profile

    fixed = [f"fixed:{g}" for g in Profile.load(args.profile).gammas]
    opts = {"seconds": args.seconds, "repeat": args.repeat, "coalesce_ms": args.coalesce_ms,
            "max_batch": args.max_batch}  # fmt: skip
    grid = [(float(x), float(s)) for x in args.loads.split(",") for s in args.scales.split(",")]
    policies = [*VARIANTS, *fixed]
    jobs = [(args.profile, args.apps, args.trace, load, scale, p, opts) for load, scale in grid for p in policies]
    with Pool(args.jobs) as pool:
        rows = pool.map(_one, jobs, chunksize=1)
    for load in sorted({r["load"] for r in rows}):
        for scale in sorted({r["scale"] for r in rows}):
            mine = [r for r in rows if r["load"] == load and r["scale"] == scale]
            best = max((r for r in mine if r["policy"].startswith("fixed:")), key=lambda r: r["utility"])
            got = "  ".join(f"{r['policy']} {r['utility'] / best['utility']:.3f}" for r in mine
                            if r["policy"] in VARIANTS)  # fmt: skip
            print(f"load {load:g} × {scale:g}: {got}  (best fixed {best['policy']}, {best['utility']:.0f})")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {**run_meta(), "profile": args.profile, "apps": args.apps, "trace": args.trace, **opts}
    res = {"meta": meta, "rows": rows}
    (args.out / "price_drift.json").write_text(json.dumps(res, indent=1) + "\n")
    plot(rows, f"{Path(args.profile).name}, {args.trace} trace: otas over the best fixed γ as the device drifts",
         args.out / "price_drift.png")  # fmt: skip
    return res


if __name__ == "__main__":
    main()
