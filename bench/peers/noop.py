"""Each server's own overhead: the no-op model behind it (decode, batching, HTTP; no forward), and
the highest open-loop Poisson rate it answers in full with p99 latency within a bound. Against otas,
`otas bench overhead` (closed loop, KServe v2 JSON, batch 1) runs too, for its published figure."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from procs import FORMAT, ROOT, server, server_cmd

RATES = (25, 50, 100, 200, 400, 800, 1600, 3200)


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue())


def _step(sweep, url: str, fmt, rate: float) -> dict:
    """One open-loop Poisson step at `rate` requests/s for --overhead-s seconds."""
    from otas.bench.replay import Workload, run_live
    from otas.sim.traces import Trace

    n = max(int(rate * sweep.a.overhead_s), 10)
    gaps = np.random.default_rng(int(rate)).exponential(1000.0 / rate, n)
    app = sweep.apps[0].name
    trace = Trace(f"poisson@{rate:g}", np.concatenate([[0.0], np.cumsum(gaps[1:])]), [app] * n)
    body = fmt.body(_png(), app)
    live, _, _ = run_live(url, fmt, Workload(trace, [body] * n, ["?"] * n, 0, 0), sweep.apps,
                          sweep.profile)  # fmt: skip
    a = live["all"]
    return {"rate": rate, "sent": a["sent"], "answered": a["answered"], "rejected": a["rejected"],
            "errors": a["errors"], "lost": a["lost"],
            "reasons": {**a["reject_reasons"], **{e: 1 for e in a["error_examples"]}}, "p50_ms": a["latency_ms"]["p50"],
            "p99_ms": a["latency_ms"]["p99"], "send_lag_p99_ms": a["send_lag_ms"]["p99"]}  # fmt: skip


def noop_rate(sweep, name: str, batch: int, delay_ms: float) -> dict:
    """Rates doubled until a step (tried twice) is not answered in full within the p99 bound, then one
    bisection step."""
    port, bound = sweep.a.port, sweep.a.overhead_p99_ms
    args = server_cmd(name, port, 0, batch, delay_ms, noop=True, max_queue=sweep.a.max_queue, apps=sweep.a.apps)
    fmt = sweep.formats[name]
    probe = ("/v2/health/ready", None) if name == "otas" else (fmt.path, fmt.body(_png(), sweep.apps[0].name))
    steps, good = [], None
    print(f"{name} no-op (batch {batch}, delay {delay_ms:g} ms)", flush=True)
    with server(name, args, port, probe, sweep.out / "logs" / f"{name}_noop.log", sweep.a.start_timeout_s) as url:
        if name == "otas":  # the no-op model has its own name
            from otas.bench.formats import make_format
            from otas.bench.replay import server_info

            fmt = make_format("otas", sweep.apps, server_info(url)["model"])
        _step(sweep, url, fmt, 20)  # warm-up
        bad = None
        for rate in RATES:
            for _ in range(2):  # a failed step is tried once more: one stall of a shared machine is not the server
                s = _step(sweep, url, fmt, rate)
                steps.append(s)
                ok = s["answered"] == s["sent"] and s["p99_ms"] <= bound
                if ok:
                    break
            print(f"  {rate:>5} req/s: p99 {s['p99_ms']:.1f} ms, {s['answered']}/{s['sent']} answered {s['reasons']}")
            if not ok:
                bad = rate
                break
            good = rate
        if bad is not None and good is not None:
            mid = (good + bad) / 2
            s = _step(sweep, url, fmt, mid)
            steps.append(s)
            print(f"  {mid:>5g} req/s: p99 {s['p99_ms']:.1f} ms, {s['answered']}/{s['sent']} answered", flush=True)
            if s["answered"] == s["sent"] and s["p99_ms"] <= bound:
                good = mid
        res = {"format": FORMAT[name], "setting": f"batch {batch}, delay {delay_ms:g} ms" if name != "otas" else
               "otas serve --noop", "requests_per_s_at_p99_bound": good, "steps": steps,
               "server_command": " ".join(args)}  # fmt: skip
        if name == "otas":
            res["otas_bench_overhead"] = _otas_bench_overhead(url)
    return res


def _otas_bench_overhead(url: str) -> dict:
    """`otas bench overhead` (closed loop, 64 in flight, KServe v2 JSON, batch 1) against this server."""
    with tempfile.TemporaryDirectory() as d:
        cmd = [str(Path(ROOT / ".venv/bin/otas")), "bench", "overhead", "--url", url, "--protocols", "json",
               "--batches", "1", "--duration-s", "5", "--out", d]  # fmt: skip
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        files = list(Path(d).glob("*.json"))
        if done.returncode or not files:
            return {"failed": (done.stderr or done.stdout)[-500:], "command": " ".join(cmd)}
        run = json.loads(files[0].read_text())["runs"][0]
    shown = ["otas", *cmd[1:-2]]  # without the temporary --out
    return {"command": " ".join(shown), "requests_per_s": run["requests_per_s"], "latency_ms": run["latency_ms"],
            "failed": run["failed"]}  # fmt: skip
