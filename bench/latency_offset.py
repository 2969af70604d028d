"""The online latency correction on a device that takes longer per batch than its profile: the factor alone
against the factor and an offset (`SchedulerConfig.latency_model`, `otas.sched.latency_fit`), side by side.

A live device thread copies each batch in, launches it and waits for it: a cost per batch that a profile of the
forward alone leaves out (measured on one H100: 0.15-0.2 ms at b = 1-8, bench/results/model_overhead/h100_run34).
The simulator's device here takes the profile's time × `scale` + `offset` (`run(device_scale=, device_add_ms=)`),
with the profile's own noise, for the replay windows of the Azure conv trace that `otas bench replay` sends; the
offset is given as a share of the profile's batch of one at γ = 0. Each (set, load, offset, seed) runs `otas` with
each correction; the figure is their utility ratio.

    python bench/latency_offset.py [--seeds 3] [--out bench/results/latency_offset]
"""

from __future__ import annotations

import argparse
import json
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

SETS = {  # profile, applications, B_max, seconds of trace, the gateway's window (ms)
    "cpu": ("profiles/vit_tiny_p2_c5__cpu.json", "otas/configs/apps.yaml", 64, 60.0, 1.0),
    "h100": ("profiles/vit_tiny_p2_c5__h100-graphs.json", "otas/configs/apps-h100.yaml", 256, 2.5, 5.0),
}
LOADS = (0.5, 1.0, 1.5, 2.0)
DEVICES = ((0.0, 1.0), (0.15, 1.0), (0.3, 1.0), (0.6, 1.0), (0.0, 1.2), (0.3, 1.2))
"""(offset as a share of the batch of one at γ = 0, scale)."""
MODELS = ("factor", "affine")


def cell(job: tuple[str, float, float, float, int]) -> dict:
    name, load, share, scale, seed = job
    path, apps_path, b_max, seconds, coalesce_ms = SETS[name]
    prof, apps = Profile.load(ROOT / path), load_apps(ROOT / apps_path)
    offset = share * prof.lat(0, 1)
    trace, gw = sim_window("azure", apps, prof, load, seconds, 1, coalesce_ms, b_max)
    out = {"set": name, "load": load, "offset_share": share, "offset_ms": offset, "scale": scale, "seed": seed}
    for model in MODELS:
        cfg = SchedulerConfig(max_batch=b_max, latency_model=model)
        res = run(trace, apps, prof, "otas", cfg, seed=seed, noise=True, plan_ahead=True, gateway=gw,
                  device_scale=scale, device_add_ms=offset)  # fmt: skip
        out[model] = {"utility": res.total_utility, "batches": len(res.batches)}
    out["ratio"] = out["affine"]["utility"] / out["factor"]["utility"]
    return out


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(SETS), figsize=(5.5 * len(SETS), 4), sharey=True)
    for ax, name in zip(axes, SETS, strict=True):
        for share, scale in DEVICES:
            pts = [
                (r["load"], r["ratio"])
                for r in rows
                if r["set"] == name and (r["offset_share"], r["scale"]) == (share, scale)
            ]
            loads = sorted({x for x, _ in pts})
            means = [sum(y for x, y in pts if x == ld) / sum(1 for x, _ in pts if x == ld) for ld in loads]
            ax.plot(loads, means, marker="o", label=f"offset {share:g} × b1, scale {scale:g}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"{name}: otas, factor + offset over factor alone")
        ax.set_xlabel("load (× γ = 0 capacity)")
    axes[0].set_ylabel("utility ratio (mean over seeds)")
    axes[0].legend(fontsize=7)
    save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/latency_offset")
    args = ap.parse_args()
    jobs = [(n, ld, sh, sc, s) for n in SETS for ld in LOADS for sh, sc in DEVICES for s in range(args.seeds)]
    with Pool(args.jobs) as pool:
        rows = list(pool.imap(cell, jobs))
    summary = {}
    for n in SETS:
        for sh, sc in DEVICES:
            rs = [r["ratio"] for r in rows if r["set"] == n and (r["offset_share"], r["scale"]) == (sh, sc)]
            summary[f"{n} offset {sh:g} scale {sc:g}"] = {"min": min(rs), "mean": sum(rs) / len(rs), "max": max(rs)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency_offset.json").write_text(
        json.dumps({"meta": run_meta(), "summary": summary, "rows": rows}, indent=1) + "\n"
    )
    plot(rows, args.out / "latency_offset.png")
    for k, v in summary.items():
        print(f"{k:32s} affine / factor: min {v['min']:.3f}  mean {v['mean']:.3f}  max {v['max']:.3f}")
    print(f"wrote {args.out}/latency_offset.json and .png")


if __name__ == "__main__":
    main()
