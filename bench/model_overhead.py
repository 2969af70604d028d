"""Server overhead with the model served: the share of wall time that is not model time, per batch size.

For each batch size b: `otas serve` with the model on the device (`--policy fixed:0 --max-batch b`) and a closed
loop of raw-pixel requests of b images each (`otas.bench.overhead.measure`, `in_flight` requests per client
process), so every batch is one request of b images and the next waits while the device runs one. From the
client's count of answers in the measured window and the server's /metrics before and after:

- model share: batches per second × the profile's latency of γ at b (the model alone, as profiled: the
  fast path timed back to back) — the device's time the server turns into answers;
- device share: batches per second × the runner's mean time per batch (`otas_batch_device_seconds`:
  collation, forward and copy back, timed by the device thread);
- overhead = 1 − model share: the share of wall time that is not model time. Where the host keeps up, batches
  run back to back and the overhead is what the server adds between and around them.

    python bench/model_overhead.py --device cuda --profile profiles/vit_tiny_p2_c5__h100-graphs.json \\
        --apps otas/configs/apps-h100.yaml --batches 1,8,64,256 --out bench/results/model_overhead/h100

Writes model_overhead.json (each batch size's rates, shares and latencies, with machine, commit and command)
and model_overhead.png.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from otas.bench.live_summary import metric_sum  # noqa: E402
from otas.bench.local_server import free_port, metrics, stop, wait_ready  # noqa: E402
from otas.provenance import run_meta  # noqa: E402

MODEL = REPO / "otas/assets/vit_tiny_p2_c5.safetensors"


def one(batch: int, args, log: Path, model_time) -> dict:
    """One server at --max-batch `batch`, one closed loop against it; `model_time`: the profile of the model's
    own time."""
    from otas.bench.formats import input_size
    from otas.bench.overhead import measure, model_shares, pngs, request
    from otas.bench.replay import server_info

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = [*shlex.split(args.otas), "serve", "--model", str(args.model), "--profile", str(args.profile),
             "--apps", str(args.apps), "--device", args.device, "--policy", f"fixed:{args.gamma}",
             "--max-batch", str(batch), "--port", str(port), "--grpc-port", "0", "--log-level", "warning",
             *args.serve_args.split()]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(serve, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(url, proc, args.ready_s)
            info = server_info(url)
            model = info["model"]
            app = args.app or max(info["apps"], key=lambda a: a["slo_ms"])["name"]
            body, headers = request("uint8", model, app, pngs(batch, input_size(url, model)))
            before = metrics(url)
            ok, bad, lat = measure("uint8", f"{url}/v2/models/{model}/infer", body, headers, args.in_flight,
                                   args.duration_s, args.clients, args.warmup_s)  # fmt: skip
            after = metrics(url)
        finally:
            stop(proc)

    def delta(name: str) -> float:
        return metric_sum(after, name) - metric_sum(before, name)

    model_ms = model_time.lat(args.gamma, batch)
    row = model_shares(batch, ok, args.duration_s, delta("otas_batch_device_seconds_sum"),
                       delta("otas_batch_device_seconds_count"), model_ms)  # fmt: skip
    lat.sort()
    row.update(failed=bad, in_flight=args.in_flight * args.clients,
               latency_ms={q: lat[min(len(lat) - 1, int(len(lat) * f))] if lat else None
                           for q, f in (("p50", 0.5), ("p99", 0.99))})  # fmt: skip
    return row


def plot(rows: list[dict], title: str, path: Path) -> None:
    from otas.plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["model_share"] for r in rows], 0.4, label="model (profiled time)")
    ax.bar([i + 0.2 for i in x], [r["device_share"] or 0.0 for r in rows], 0.4, label="device thread (measured)")
    ax.axhline(0.95, color="grey", lw=0.8, ls="--", label="95 %: overhead 5 %")
    for i, r in enumerate(rows):
        ax.text(i - 0.2, r["model_share"] + 0.01, f"{r['overhead']:.0%}", ha="center", fontsize=8)
    ax.set_xticks(list(x), [str(r["batch"]) for r in rows])
    ax.set_xlabel("batch size (one request of b images per batch)")
    ax.set_ylabel("share of wall time")
    ax.set_ylim(0, 1.1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    save(fig, path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--profile", type=Path, default=REPO / "profiles/vit_tiny_p2_c5__cpu.json")
    ap.add_argument("--apps", type=Path, default=REPO / "otas/configs/apps.yaml")
    ap.add_argument("--app", default="", help="the application every request names (default: the loosest SLO's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model-time-from", type=Path, default=None,
                    help="the profile whose latency is the model time (default: --profile; best one measured on "
                    "this machine just before, e.g. `otas profile --gammas 0 --batch-sizes 1,8,64,256`)")  # fmt: skip
    ap.add_argument("--gamma", type=int, default=0, help="the fixed γ served (its profiled latency is the model time)")
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--in-flight", type=int, default=4, help="requests in flight per client process")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--duration-s", type=float, default=5.0)
    ap.add_argument("--warmup-s", type=float, default=1.0)
    ap.add_argument("--ready-s", type=float, default=300.0, help="how long a server may take to start")
    ap.add_argument("--serve-args", default="", help="more `otas serve` options, e.g. '--http-workers 6'")
    ap.add_argument("--otas", default=f"{shlex.quote(sys.executable)} -m otas.cli", help="how to run the CLI")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/model_overhead")
    args = ap.parse_args(argv)
    from otas.profile.table import Profile

    model_time = Profile.load(args.model_time_from or args.profile)  # read once, before any server starts
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        row = one(b, args, args.out / f"serve_b{b}.log", model_time)
        rows.append(row)
        print(f"b={b:>3}: {row['images_per_s']:9.0f} images/s, model share {row['model_share']:.3f} "
              f"(overhead {row['overhead']:.1%}), device thread {row['device_share']:.3f}, "
              f"{row['device_ms'] or 0:.3f} ms per batch against {row['model_ms']:.3f} profiled, "
              f"{row['failed']} failed", flush=True)  # fmt: skip
    meta = {**run_meta(), "device": args.device, "profile": str(args.profile),
            "model_time_from": str(args.model_time_from or args.profile), "gamma": args.gamma,
            "clients": args.clients, "in_flight_per_client": args.in_flight, "duration_s": args.duration_s,
            "serve_args": args.serve_args}  # fmt: skip
    res = {"meta": meta, "rows": rows}
    (args.out / "model_overhead.json").write_text(json.dumps(res, indent=1) + "\n")
    plot(rows, f"Server overhead, fixed:{args.gamma} on {args.device} ({args.profile.name})",
         args.out / "model_overhead.png")  # fmt: skip
    return res


if __name__ == "__main__":
    main()
