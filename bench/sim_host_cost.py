"""What a host that takes time per batch costs each policy, in the simulator, beside the live H100 runs: the
simulator's run of the live replay's window (as `otas bench replay` predicts it: the Azure conv trace scaled to
each load, played 6 times, each application's arrivals coalesced over 5 ms, batches planned ahead) with every
batch holding the server `host_ms` longer than its device time (`otas.sim.simulator.run(host_ms=)`), against
the live utilities of a run's `live.json` and the host time per batch its server measured (the turn beyond the
device's time, from its metrics files in `raw.tar.xz`).

    python bench/sim_host_cost.py [--live bench/results/live_h100/14_h100_run26] [--host-ms 0,0.25,0.5,0.75,1,1.5,2]
Writes sim_host_cost.json (with machine, commit, command) and sim_host_cost.png under --out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from otas.bench.replay import sim_window  # noqa: E402
from otas.config import SchedulerConfig, load_apps  # noqa: E402
from otas.profile.table import Profile  # noqa: E402
from otas.provenance import run_meta  # noqa: E402
from otas.sim.simulator import run  # noqa: E402

LIVE = REPO / "bench/results/live_h100/14_h100_run26"


def _metric(text: str, name: str) -> float:
    return sum(float(m[1]) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def live_points(d: Path) -> list[dict]:
    """Per live replay of `d`: policy, load, utility, and the server's host ms per batch (measured turn −
    device time, over the batches of that replay)."""
    rows = json.loads((d / "live.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    host: dict[tuple[str, str], float] = {}
    with tarfile.open(d / "raw.tar.xz") as tar:
        files = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        for name, m in files.items():
            g = re.match(r"metrics_(.+)_x([\d.]+)_after\.txt$", name)
            if g is None or f"metrics_{g[1]}_x{g[2]}_before.txt" not in files:
                continue
            after = tar.extractfile(m).read().decode()
            before = tar.extractfile(files[f"metrics_{g[1]}_x{g[2]}_before.txt"]).read().decode()
            keys = ("otas_batch_measured_seconds_sum", "otas_batch_device_seconds_sum", "otas_batch_size_count")
            turn, device, n = (_metric(after, k) - _metric(before, k) for k in keys)
            if n > 0:
                host[(g[1], g[2])] = 1e3 * (turn - device) / n
    return [{"policy": r["policy"], "run": r["run"], "load": r["load"], "utility": r["utility_live"],
             "host_ms_per_batch": host.get((r["run"], f"{r['load']:g}"))} for r in rows]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--live", type=Path, default=LIVE, help="a live run's folder (live.json, raw.tar.xz)")
    ap.add_argument(
        "--profile", default=str(REPO / "bench/results/gpu_merge_every/run25/vit_tiny_p2_c5__h100-graphs-every4.json")
    )
    ap.add_argument("--apps", default=str(REPO / "otas/configs/apps-h100.yaml"))
    ap.add_argument("--trace", default=str(REPO.parent / "shared/data/traces/AzureLLMInferenceTrace_conv.csv"))
    ap.add_argument("--loads", default="1,1.5,2")
    ap.add_argument("--policies", default="otas,fixed:-16")
    ap.add_argument("--host-ms", default="0,0.25,0.5,0.75,1,1.5,2")
    ap.add_argument("--out", default=str(REPO / "bench/results/sim_host_cost"))
    args = ap.parse_args(argv)
    apps, profile = load_apps(args.apps), Profile.load(args.profile)
    cfg = SchedulerConfig(max_batch=256, host_gap=False)  # as its results were measured (the gap: bench/host_gap.py)
    sims = []
    for load in (float(x) for x in args.loads.split(",")):
        tr, via = sim_window(args.trace, apps, profile, load, 10.0, 6, 5.0)
        for policy in args.policies.split(","):
            for h in (float(x) for x in args.host_ms.split(",")):
                s = run(tr, apps, profile, policy, cfg, plan_ahead=True, gateway=via, host_ms=h).summary(apps)
                sims.append({"policy": policy, "load": load, "host_ms": h, "utility": s["utility"],
                             "mean_gamma": s["mean_gamma"], "slo_attainment": s["slo_attainment"]})  # fmt: skip
                gist = f"utility {s['utility']:.0f}, mean γ {s['mean_gamma']:.1f}"
                print(f"load {load:g} {policy:10s} host {h:g} ms: {gist}")
    live = live_points(args.live)
    for r in live:  # the simulator's utility at the host time that replay's server measured, interpolated
        pts = sorted((x["host_ms"], x["utility"]) for x in sims if (x["policy"], x["load"]) == (r["policy"], r["load"]))
        h = r["host_ms_per_batch"]
        if pts and h is not None and pts[0][0] <= h <= pts[-1][0]:
            r["utility_sim_at_host"] = float(np.interp(h, *zip(*pts, strict=True)))
            r["live_over_sim_at_host"] = r["utility"] / r["utility_sim_at_host"]
            print(f"live {r['run']} load {r['load']:g}: host {h:.2f} ms/batch, live / simulated there "
                  f"{r['live_over_sim_at_host']:.3f}")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**run_meta(__file__, argv), "profile": args.profile, "live": str(args.live)}
    (out / "sim_host_cost.json").write_text(json.dumps({"meta": meta, "sim": sims, "live": live}, indent=1) + "\n")
    plot(sims, live, out / "sim_host_cost.png")
    print(f"wrote {out / 'sim_host_cost.json'} and .png")


def plot(sims: list[dict], live: list[dict], path: Path) -> None:
    from otas.plotting import pyplot, save

    plt = pyplot()

    loads = sorted({r["load"] for r in sims})
    fig, axes = plt.subplots(1, len(loads), figsize=(5 * len(loads), 3.8), squeeze=False)
    colors = dict(
        zip(sorted({r["policy"] for r in sims}), ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=False)
    )
    for ax, load in zip(axes[0], loads, strict=True):
        curves = defaultdict(list)
        for r in sims:
            if r["load"] == load:
                curves[r["policy"]].append((r["host_ms"], r["utility"]))
        for policy, pts in curves.items():
            ax.plot(
                *zip(*sorted(pts), strict=True), marker="o", ms=3, color=colors[policy], label=f"{policy}, simulated"
            )
        for r in live:
            if r["load"] == load and r["host_ms_per_batch"] is not None and r["policy"] in colors:
                ax.scatter(r["host_ms_per_batch"], r["utility"], marker="x", color=colors[r["policy"]], s=40)
        ax.set(
            xlabel="host ms per batch",
            ylabel="utility",
            title=f"load {load:g} (x: live H100, the server's own host time)",
        )
        ax.legend(fontsize=7)
    save(fig, path, dpi=110)


if __name__ == "__main__":
    main()
