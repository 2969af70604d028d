"""Live against simulated as the device gets fast next to the host: the paced no-op server on this machine.

`otas serve --noop --paced` sleeps each batch's profiled latency, so it stands in for a device with no
accelerator. Scaling the profile's latencies, the applications' SLOs and the replay's gateway window by S keeps
the workload the same for the scheduler (every time in the simulator scales by S; its utility does not move)
while the host's own time per batch (HTTP, decisions, collation, answers) stays what it is: at large S the
host is negligible beside the device, at S = 1 it is what the GPU machine's host is to its GPU. Each (S,
policy, round) is one server and one `otas bench replay` of the same scaled Azure conv window (load × the
γ = 0 capacity, played `--repeat` times, coalesced over 5·S ms), policies in turn within a round.

    python bench/paced_scale.py --scales 10,5,3,2 --policies otas,otas+floor_planned,fixed:-16 --rounds 2 \\
        --out bench/results/paced_scale

A policy "otas+KNOB" runs `otas` with an `Otas` ablation (`KNOBS`; the server then runs in this script).

Writes paced_scale.json (every replay's live and simulated utility, mean γ and SLO attainment, with
machine, commit and command) and paced_scale.png (live over simulated utility against S, per policy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from otas.bench.live_summary import metric_sum  # noqa: E402
from otas.bench.local_server import free_port, metrics, stop, wait_ready  # noqa: E402
from otas.config import load_apps  # noqa: E402
from otas.provenance import run_meta  # noqa: E402

PROFILE = REPO / "profiles/vit_tiny_p2_c5__h100-graphs.json"
APPS = REPO / "otas/configs/apps-h100.yaml"


def scaled(profile: Path, apps: Path, s: float, into: Path) -> tuple[Path, Path]:
    """The profile with every latency × s and the applications with every SLO × s, written under `into`."""
    p = json.loads(profile.read_text())
    for key in ("latency_ms", "latency_p90_ms"):
        if key in p:
            p[key] = {g: {b: v * s for b, v in row.items()} for g, row in p[key].items()}
    p["device"] = f"{p['device']}, {s:g}x slower (paced)"
    out_p = into / f"profile_x{s:g}.json"
    out_p.write_text(json.dumps(p))
    lines = ["apps:"]
    for a in load_apps(apps):
        lines.append(f"  - {{name: {a.name}, slo_ms: {a.slo_ms * s:g}, utility: {a.utility:g}, task: {a.task}}}")
    out_a = into / f"apps_x{s:g}.yaml"
    out_a.write_text("\n".join(lines) + "\n")
    return out_p, out_a


KNOBS = {
    "floor_planned": ("floor_planned", True), "step_price": ("smooth_price", False), "no_floor": ("floor", False),
    "no_mix": ("mix", False), "no_reorder": ("reorder", False), "unpriced": ("priced", False), "factor": None,
    "no_lateness": None,
}  # fmt: skip
"""Ablations a policy may name after a "+" (e.g. "otas+floor_planned", the floor judging as planned; "otas+step_price",
the price of device time at the fluid relaxation's break): the `Otas` knob each sets, and to what; "factor": the
scheduler's latency correction as the factor alone (`SchedulerConfig(latency_model="factor")`); "no_lateness": the
engine's deadlines not planned short by the batches' lateness (`Engine.lateness`). The server then runs
in this script (`serve_with`), its `otas` policy built so."""


def serve_with(knob: str, extra_ms: float, argv: list[str]) -> None:
    """`otas serve ARGV` with the `otas` policy built with `KNOBS[knob]` ("": as it is) and the paced device taking
    `extra_ms` more per batch than its profile (bench only: an ablation of a live server; its /v1/config still names
    the policy "otas", and the simulator's noise-free prediction is the same)."""
    import dataclasses
    import time

    import otas.engine.noop as noop
    import otas.sched.scheduler as scheduler
    from otas.cli import app

    if knob == "no_lateness":  # deadlines not planned short by the batches' lateness (the engine's `lateness`)
        import otas.engine.engine as engine

        made = engine.Engine.__init__

        def on_time(self, *a, **kw):
            made(self, *a, **kw)
            self.lateness.quantile = 0.0

        engine.Engine.__init__ = on_time
    elif knob == "factor":
        init = scheduler.Scheduler.__init__

        def factor_alone(self, apps, profile, policy, config=None):
            init(self, apps, profile, policy, dataclasses.replace(config, latency_model="factor") if config else None)

        scheduler.Scheduler.__init__ = factor_alone
    elif knob:
        plain = scheduler.make_policy
        attr, value = KNOBS[knob]
        scheduler.make_policy = lambda name, **kw: plain(name, **({attr: value} if name == "otas" else {}), **kw)
    if extra_ms > 0:
        paced = noop.PacedRunner.run

        def slower(self, images, tasks, gamma):
            t0 = time.perf_counter()
            out = paced(self, images, tasks, gamma)
            time.sleep(extra_ms / 1e3)  # (a sleep, as the device's wait: the CPU and the GIL stay free)
            out.ms = (time.perf_counter() - t0) * 1e3
            return out

        noop.PacedRunner.run = slower
    app(["serve", *argv], standalone_mode=False)


def one(otas: str, s: float, policy: str, profile: Path, apps: Path, args, work: Path, tag: str) -> dict:
    """One server and one replay: the replay's live and simulated figures."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    name, _, knob = policy.partition("+")
    if knob and knob not in KNOBS:
        raise SystemExit(f"policy {policy!r}: a knob after '+' is one of {', '.join(KNOBS)}")
    flags = ["--noop", "--paced", "--profile", str(profile), "--apps", str(apps), "--policy", name,
             "--max-batch", "256", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    extra = args.extra_ms * s
    in_script = [sys.executable, __file__, "--serve-with", knob, f"{extra:g}", "--", *flags]
    serve = in_script if knob or extra > 0 else [otas, "serve", *flags]
    with (work / f"serve_{tag}.log").open("w") as log, (work / f"replay_{tag}.txt").open("w") as out:
        proc = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(url, proc, 90.0)
            replay = [otas, "bench", "replay", "--url", url, "--trace", args.trace, "--load", str(args.load),
                      "--duration-s", f"{args.seconds * s:g}", "--limit", "100000000", "--repeat", str(args.repeat),
                      "--coalesce-ms", f"{args.coalesce_ms * s:g}", "--format", "otas-uint8", "--tag", tag,
                      "--out", str(work)]  # fmt: skip
            subprocess.run(replay, check=True, stdout=out, stderr=subprocess.STDOUT)
            text = metrics(url)
        finally:
            stop(proc)
    (res,) = work.glob(f"replay_*_{tag}_x*.json")
    d = json.loads(res.read_text())
    live = d["live"]["all"]["utility_expected"]  # the replay's own total, as `otas.bench.live_summary` reads it
    sim = d["sim"]["noise_free"]
    floor = {m: metric_sum(text, f'otas_floor_batches_total{{mode="{m}"}}') for m in ("free", "capped", "following")}
    return {
        "scale": s, "policy": policy, "live_utility": live, "sim_utility": sim["utility"],
        "live_over_sim": live / sim["utility"], "live_mean_gamma": d["live"]["all"]["mean_gamma"],
        "sim_mean_gamma": sim["mean_gamma"], "live_slo": d["live"]["all"]["slo_attainment"],
        "sim_slo": sim["slo_attainment"], "requests": d["meta"]["requests"], "floor_batches": floor,
        "live_rejected": d["live"]["all"]["reject_reasons"], "live_p99_ms": d["live"]["all"]["latency_ms"]["p99"],
    }  # fmt: skip


def plot(rows: list[dict], path: Path) -> None:
    from otas.plotting import pyplot, save

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for policy in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == policy]
        ax.scatter([r["scale"] for r in mine], [r["live_over_sim"] for r in mine], label=policy, alpha=0.7)
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("S: device S x slower than the profile's (SLOs x S)")
    ax.set_ylabel("live / simulated utility")
    ax.set_title("Paced no-op server: live against the simulator as the host's share grows")
    ax.legend()
    save(fig, path)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-with"]:
        return serve_with(argv[1], float(argv[2]), argv[4:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="10,5,3,2")
    ap.add_argument("--policies", default="otas,fixed:-16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", type=Path, default=PROFILE)
    ap.add_argument("--apps", type=Path, default=APPS)
    ap.add_argument("--trace", default="azure")
    ap.add_argument("--load", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=2.5, help="replay length at S = 1 (× S at S)")
    ap.add_argument("--repeat", type=int, default=6)
    ap.add_argument("--coalesce-ms", type=float, default=5.0, help="gateway window at S = 1 (× S at S)")
    ap.add_argument(
        "--extra-ms",
        type=float,
        default=0.0,
        help="the paced device takes this much more per batch than its profile, at S = 1 (× S at S)",
    )
    ap.add_argument("--otas", default=str(Path(sys.executable).with_name("otas")))
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/paced_scale")
    args = ap.parse_args(argv)
    scales = [float(x) for x in args.scales.split(",")]
    policies = args.policies.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            for s in scales:
                profile, apps = scaled(args.profile, args.apps, s, work)
                for policy in policies:
                    tag = f"x{s:g}-{policy.replace(':', '').replace('+', '-')}-r{r}"
                    row = {**one(args.otas, s, policy, profile, apps, args, work, tag), "round": r}
                    rows.append(row)
                    gammas = f"γ {row['live_mean_gamma']:.1f} vs {row['sim_mean_gamma']:.1f}"
                    print(f"S={s:g} {policy:12s} round {r}: live/sim {row['live_over_sim']:.3f} "
                          f"(live {row['live_utility']:.0f}, {gammas}, SLO {row['live_slo']:.3f}, "
                          f"floor {row['floor_batches']}, dropped {row['live_rejected']}, "
                          f"p99 {row['live_p99_ms']:.0f} ms)", flush=True)  # fmt: skip
    meta = run_meta()
    meta["cpus"] = os.cpu_count()
    (args.out / "paced_scale.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    plot(rows, args.out / "paced_scale.png")


if __name__ == "__main__":
    main()
