"""One summary over a live GPU session (`scripts/gpu_serve_replay.sh`): per policy and load, live
utility beside the simulator's, SLO attainment, the send lag of the load generator, and the device's
busy share over the replay, two ways: the device's own batch time (`otas_batch_device_seconds` from
/metrics, before and after; `otas_batch_measured_seconds` from a server without it) over the replay's
wall time (from its first send to its last answer, not the loading of images or the simulation around
it), and nvidia-smi's utilisation samples then.

    python -m otas.bench.live_summary WORKDIR --out bench/results/live_h100

Writes live.json, live.md and live.png under --out.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from otas.provenance import run_meta

_STEM = re.compile(r"replay_.+_(?P<tag>[^_]+)_x(?P<load>[0-9.]+)$")


def metric_sum(text: str, name: str) -> float:
    """The value of an unlabelled Prometheus sample `name` in an exposition text (0 if absent)."""
    m = re.search(rf"^{re.escape(name)} ([0-9.eE+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def gpu_util(csv: Path, t0: float, t1: float) -> float | None:
    """Mean nvidia-smi utilisation (%) of the samples between unix times t0 and t1."""
    from datetime import datetime

    if not csv.exists():
        return None
    vals = []
    for line in csv.read_text().splitlines():
        try:
            ts, util = (p.strip() for p in line.split(","))
            t = datetime.strptime(ts, "%Y/%m/%d %H:%M:%S.%f").timestamp()
        except ValueError:
            continue
        if t0 <= t <= t1:
            vals.append(float(util))
    return float(np.mean(vals)) if vals else None


def row(work: Path, replay: Path) -> dict[str, Any]:
    r = json.loads(replay.read_text())
    m = _STEM.match(replay.stem)
    tag, load = (m["tag"], m["load"]) if m else (r["meta"]["policy"], f"{r['meta']['load']:g}")
    live, sim, noisy = r["live"]["all"], r["sim"]["noise_free"], r["sim"]["noisy"]
    out = {
        "policy": r["meta"]["policy"],
        "run": tag,
        "load": r["meta"]["load"],
        "requests": r["meta"]["requests"],
        "rate_per_s": r["meta"]["requests"] / max(r["meta"]["duration_s"], 1e-9),
        "utility_live": live["utility_expected"],
        "utility_sim": sim["utility"],
        "utility_sim_noisy": noisy["utility"],
        "live_over_sim": live["utility_expected"] / sim["utility"] if sim["utility"] else None,
        "slo_live": live["slo_attainment"],
        "slo_sim": sim["slo_attainment"],
        "answered": live["answered"],
        "rejected": live["rejected"],
        "errors": live["errors"],
        "p50_ms": live["latency_ms"]["p50"],
        "p99_ms": live["latency_ms"]["p99"],
        "send_lag_p99_ms": live["send_lag_ms"]["p99"],
        "mean_gamma": live["mean_gamma"],
        "wall_s": r["meta"]["wall_s"],
    }
    before = work / f"metrics_{tag}_x{load}_before.txt"
    after = work / f"metrics_{tag}_x{load}_after.txt"
    times = work / f"t_{tag}_x{load}.txt"
    if before.exists() and after.exists() and times.exists():
        t0, t1 = (float(x) for x in times.read_text().split()[:2])  # the whole command: images, replay, sim
        if "started_unix" in r["meta"]:  # the replay alone (the server is idle before and after it)
            t0, t1 = r["meta"]["started_unix"], r["meta"]["started_unix"] + r["meta"]["wall_s"]
        # the device's own time; a server from before that metric: the measured turn (which, with
        # batches planned ahead, overlaps the next batch's and can sum past the wall time)
        text = after.read_text()
        name = "otas_batch_device_seconds_sum"
        if name not in text:
            name = "otas_batch_measured_seconds_sum"
        busy = metric_sum(text, name) - metric_sum(before.read_text(), name)
        out["busy_share_server"] = busy / (t1 - t0)
        out["gpu_util_smi"] = gpu_util(work / "gpu_util.csv", t0, t1)
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| policy | load | req/s | utility live | utility sim | live/sim | SLO live | SLO sim | rejected | p99 ms "
        "| send lag p99 ms | busy (server) | GPU util (smi) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        smi = x.get("gpu_util_smi")
        lines.append(
            f"| {_name(x)} | {x['load']:g} | {x['rate_per_s']:.0f} | {x['utility_live']:.1f} "
            f"| {x['utility_sim']:.1f} "
            f"| {x['live_over_sim']:.3f} | {x['slo_live']:.3f} | {x['slo_sim']:.3f} | {x['rejected']} "
            f"| {x['p99_ms']:.1f} | {x['send_lag_p99_ms']:.1f} | {x.get('busy_share_server', float('nan')):.3f} "
            f"| {'-' if smi is None else f'{smi:.0f}%'} |"
        )
    return "\n".join(lines) + "\n"


def _name(x: dict[str, Any]) -> str:
    """A row's policy, and its run's tag where the session ran the policy more than once (ROUNDS)."""
    run = x.get("run", "")
    return x["policy"] if run in ("", x["policy"].replace(":", "")) else f"{x['policy']} ({run})"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    from otas.plotting import pyplot, save

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in dict.fromkeys(map(_name, rows)):
        rs = sorted((x for x in rows if _name(x) == name), key=lambda x: x["load"])
        line = ax.plot([x["load"] for x in rs], [x["utility_live"] for x in rs], "o-", label=f"{name} live")[0]
        ax.plot([x["load"] for x in rs], [x["utility_sim"] for x in rs], "x--", color=line.get_color(), label="sim")
    ax.set_xlabel("load (× capacity of γ = 0)")
    ax.set_ylabel("utility (expected)")
    ax.set_xscale("log")
    ax.legend(fontsize=8)
    ax.set_title("live on the GPU vs the simulator")
    save(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rows = sorted((row(args.work, f) for f in args.work.glob("replay_*.json")), key=lambda x: (_name(x), x["load"]))
    overhead = [json.loads(f.read_text()) for f in sorted(args.work.glob("overhead*.json"))]
    machine = (args.work / "machine.txt").read_text() if (args.work / "machine.txt").exists() else ""
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"meta": {**run_meta(), "machine_gpu": machine}, "rows": rows, "overhead": overhead}
    (args.out / "live.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    (args.out / "live.md").write_text(markdown(rows))
    if rows:
        plot(rows, args.out / "live.png")
    print(markdown(rows))


if __name__ == "__main__":
    main()
