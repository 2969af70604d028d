"""Batches padded to buckets: what a GPU profile that names them (`Profile.buckets`) changes.

The CUDA-graph path (`otas.adapt.fast.FastForward`) runs one graph per (γ, bucket) and pads a batch of b to
the smallest bucket ≥ b (1, 2, 4, …, 256): a batch of 65 takes what a batch of 128 does. A profile timed at the
buckets 1, 8, 64 and 256 and read by linear interpolation in between says a batch of 65 takes about what 64
does. Two parts:

- `sim`: the replay windows of the Azure conv trace that `otas bench replay` sends (as bench/latency_offset.py),
  `otas` and fixed γ in three worlds: `unpadded` (device and scheduler at each batch's own size: what the
  simulator said before profiles named their buckets), `unaware` (the device pads, the scheduler plans at each
  batch's own size: the live server before), `aware` (both pad: the live server now).
- `logs`: the batches live `otas` ran (decision logs of a GPU replay) costed with and without the padding: how
  much of the latency correction a live run learned the padding accounts for.

    python bench/buckets.py sim [--seeds 2] [--out bench/results/buckets]
    python bench/buckets.py logs --profile P --log NAME=dl.jsonl ... [--out bench/results/buckets]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otas.bench.replay import sim_window  # noqa: E402
from otas.config import SchedulerConfig, load_apps  # noqa: E402
from otas.plotting import pyplot, save  # noqa: E402
from otas.profile.table import Profile  # noqa: E402
from otas.provenance import run_meta  # noqa: E402
from otas.sim.simulator import run  # noqa: E402

SETS = {  # profile (with its buckets), applications, B_max, seconds of trace, the gateway's window (ms)
    "h100": ("profiles/vit_tiny_p2_c5__h100-graphs.json", "otas/configs/apps-h100.yaml", 256, 2.5, 5.0),
    "h200": ("profiles/vit_tiny_p2_c5__h200-graphs.json", "otas/configs/apps-h100.yaml", 256, 2.5, 5.0),
}
LOADS = (0.5, 1.0, 1.5, 2.0)
POLICIES = ("otas", "fixed:-48", "fixed:-32", "fixed:-20", "fixed:-16", "fixed:0")
WORLDS = ("unpadded", "unaware", "aware")
"""(the scheduler's profile, the device's): (plain, plain), (plain, padded), (padded, padded)."""


def cell(job: tuple[str, float, str, int]) -> dict:
    name, load, policy, seed = job
    path, apps_path, b_max, seconds, coalesce_ms = SETS[name]
    padded, apps = Profile.load(ROOT / path), load_apps(ROOT / apps_path)
    plain = padded.with_buckets(None)
    trace, gw = sim_window("azure", apps, padded, load, seconds, 1, coalesce_ms, b_max)
    cfg = SchedulerConfig(max_batch=b_max)
    out = {"set": name, "load": load, "policy": policy, "seed": seed}
    for world, (planned, device) in zip(WORLDS, ((plain, plain), (plain, padded), (padded, padded)), strict=True):
        res = run(trace, apps, planned, policy, cfg, seed=seed, noise=True, plan_ahead=True, gateway=gw,
                  device_profiles=device)  # fmt: skip
        sizes = [b for _, b, _, _ in res.batches]
        out[world] = {
            "utility": res.total_utility,
            "slo": res.summary(apps)["slo_attainment"],
            "batches": len(sizes),
            "mean_batch": statistics.fmean(sizes) if sizes else 0.0,
        }
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """Per (set, load, policy): mean utility over seeds per world, and `otas` over the best fixed γ per world."""
    keys = sorted({(r["set"], r["load"], r["policy"]) for r in rows})
    out = []
    for s, load, pol in keys:
        rs = [r for r in rows if (r["set"], r["load"], r["policy"]) == (s, load, pol)]
        out.append({"set": s, "load": load, "policy": pol,
                    **{w: statistics.fmean(r[w]["utility"] for r in rs) for w in WORLDS}})  # fmt: skip
    for s, load in sorted({(r["set"], r["load"]) for r in out}):
        group = [r for r in out if (r["set"], r["load"]) == (s, load)]
        o = next(r for r in group if r["policy"] == "otas")
        for w in WORLDS:
            best = max(r[w] for r in group if r["policy"] != "otas")
            o[f"{w}_over_best_fixed"] = o[w] / best
    return out


def plot_sim(summary: list[dict], path: Path) -> None:
    plt = pyplot()
    sets = sorted({r["set"] for r in summary})
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], sets, strict=True):
        rows = sorted((r for r in summary if r["set"] == s and r["policy"] == "otas"), key=lambda r: r["load"])
        for w, style in zip(WORLDS, ("o:", "s--", "^-"), strict=True):
            ax.plot([r["load"] for r in rows], [r[f"{w}_over_best_fixed"] for r in rows], style, label=w)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"{s}: otas over the best fixed γ")
        ax.set_xlabel("load (× capacity at γ = 0)")
    axes[0][0].set_ylabel("utility ratio (mean over seeds)")
    axes[0][0].legend()
    save(fig, path)


def plot_latency(profile: Profile, path: Path, gammas: tuple[int, ...] = (0, -20)) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    plain = profile.with_buckets(None)
    sizes = list(range(1, max(profile.batch_sizes) + 1))
    for g in gammas:
        ax.plot(sizes, [plain.lat(g, b) for b in sizes], ":", label=f"γ = {g}, interpolated")
        ax.plot(sizes, [profile.lat(g, b) for b in sizes], "-", label=f"γ = {g}, padded to its bucket")
    ax.set_xlabel("batch size")
    ax.set_ylabel("ms per batch")
    ax.set_title(f"{profile.model} on {profile.device}")
    ax.legend()
    save(fig, path)


def sim(args: argparse.Namespace) -> None:
    jobs = [(s, load, p, seed) for s in args.sets.split(",") for load in LOADS for p in POLICIES
            for seed in range(args.seeds)]  # fmt: skip
    with Pool(args.jobs) as pool:
        rows = []
        for k, r in enumerate(pool.imap_unordered(cell, jobs), 1):
            rows.append(r)
            print(f"{k}/{len(jobs)} {r['set']} load {r['load']} {r['policy']} seed {r['seed']}: "
                  + "  ".join(f"{w} {r[w]['utility']:.0f}" for w in WORLDS), flush=True)  # fmt: skip
    summary = summarise(rows)
    for r in summary:
        if r["policy"] == "otas":
            print(f"{r['set']} load {r['load']}: otas over the best fixed γ "
                  + "  ".join(f"{w} {r[f'{w}_over_best_fixed']:.3f}" for w in WORLDS))  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**run_meta(), "sets": {k: SETS[k] for k in args.sets.split(",")}, "loads": LOADS, "seeds": args.seeds}
    (out / "sim.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1) + "\n")
    plot_sim(summary, out / "sim.png")
    plot_latency(Profile.load(ROOT / SETS["h100"][0]), out / "latency_h100.png")
    print(f"wrote {out / 'sim.json'}, sim.png, latency_h100.png")


def logs(args: argparse.Namespace) -> None:
    padded = Profile.load(args.profile).for_max_batch(args.max_batch)
    if not padded.buckets:  # a profile from before they were written: the served path's buckets
        from otas.engine.runner import buckets_for

        padded = padded.with_buckets(buckets_for(args.max_batch))
    plain = padded.with_buckets(None)
    result = {}
    for item in args.log:
        name, _, path = item.partition("=")
        rows = [json.loads(line) for line in open(path)]
        pad = [padded.lat(r["gamma"], r["size"]) for r in rows]
        flat = [plain.lat(r["gamma"], r["size"]) for r in rows]
        learned = [r["predicted_ms"] / r["meta"]["profiled_ms"] for r in rows if r["meta"].get("profiled_ms")]
        result[name] = {
            "batches": len(rows),
            "at_a_bucket": sum(padded.padded(r["size"]) == r["size"] for r in rows),
            "device_ms_padded_over_interpolated": sum(pad) / sum(flat),
            "median_batch_padded_over_interpolated": statistics.median(a / b for a, b in zip(pad, flat, strict=True)),
            "learned_correction_median": statistics.median(learned) if learned else None,
        }
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in result[name].items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**run_meta(), "profile": str(args.profile), "logs": args.log}
    (out / "logs.json").write_text(json.dumps({"meta": meta, "logs": result}, indent=1) + "\n")
    print(f"wrote {out / 'logs.json'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sim", help="otas and fixed γ with and without the padding, in the simulator")
    s.add_argument("--sets", default="h100", help=f"comma-separated, of {', '.join(SETS)}")
    s.add_argument("--seeds", type=int, default=2)
    s.add_argument("--jobs", type=int, default=2)
    s.add_argument("--out", default=str(ROOT / "bench/results/buckets"))
    s.set_defaults(fn=sim)
    lg = sub.add_parser("logs", help="live decision logs costed with and without the padding")
    lg.add_argument("--profile", required=True, help="the profile the live run planned with")
    lg.add_argument("--log", action="append", required=True, help="NAME=decision-log.jsonl, repeatable")
    lg.add_argument("--max-batch", type=int, default=256)
    lg.add_argument("--out", default=str(ROOT / "bench/results/buckets"))
    lg.set_defaults(fn=logs)
    args = ap.parse_args()
    if args.cmd == "sim" and (bad := set(args.sets.split(",")) - set(SETS)):
        ap.error(f"--sets: unknown {sorted(bad)}; use {', '.join(SETS)}")
    args.fn(args)


if __name__ == "__main__":
    main()
