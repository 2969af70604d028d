"""On-time goodput against offered load when the *host* is the bottleneck, before and after.

The server runs the no-op model (`otas serve --noop`), so HTTP parsing, JSON, image decoding and the
per-image Python work are all the work there is: its capacity is the host's. Each server under test
(this tree, and `--old-root`: a tree of the code before, e.g. from `git archive`) is started pinned to
`--server-cpus`; this script, the client, pins itself to `--client-cpus`. The host's capacity is
measured closed-loop against the old server (`--concurrency` requests in flight; the 1× of every
load), then each load is sent open-loop (Poisson arrivals, each request a KServe v2 JSON infer of
one PNG for an application drawn at random), the servers taking turns at each load so that both see
the same machine. Per run: sent = answered + refused (429/503) + errors + lost, on-time goodput
(answers within the application's SLO, measured by the client, per second of the run), latency
percentiles, refusal reasons, and the server's /metrics delta (what it says it served) against what
the client received. JSON and a plot go to `--out`.

    python bench/host_overload.py --old-root /tmp/wt-old --out bench/results/host_overload
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otas.bench.openloop import open_loop  # noqa: E402
from otas.provenance import run_meta  # noqa: E402

MODEL = "noop"


def images(n: int, seed: int) -> list[bytes]:
    """`n` PNGs of varied size and content (32..96 px a side, noise or smooth gradients), so that no
    one payload's cost decides the result."""
    from PIL import Image

    rng, out = np.random.default_rng(seed), []
    for i in range(n):
        side = int(rng.integers(32, 97))
        if i % 2:
            x = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        else:
            g = np.linspace(0, 255, side, dtype=np.float32)
            x = np.stack(np.broadcast_arrays(g[:, None], g[None, :], rng.uniform(0, 255)), -1).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def bodies(apps: list[dict], pngs: list[bytes], n: int, seed: int) -> tuple[list[bytes], list[str]]:
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(apps), n)
    out = []
    for i, a in enumerate(which):
        data = base64.b64encode(pngs[i % len(pngs)]).decode()
        head = {"parameters": {"app": apps[a]["name"]},
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [data]}]}  # fmt: skip
        out.append(json.dumps(head).encode())
    return out, [apps[a]["name"] for a in which]


class Server:
    """`otas serve --noop` from a source tree, pinned to some CPUs."""

    def __init__(self, name: str, root: Path, port: int, apps: Path, cpus: str, log: Path):
        self.name, self.root, self.port, self.url = name, root, port, f"http://127.0.0.1:{port}"
        args = ["serve", "--noop", "--apps", str(apps), "--port", str(port), "--grpc-port", "0", "--log-level",
                "warning", "--policy", "fixed:0"]  # fmt: skip
        cmd = ["taskset", "-c", cpus] if cpus else []
        cmd += [sys.executable, "-m", "otas.cli", *args]
        self.command = shlex.join(cmd)
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server {name} did not start; see {log}")

    def metrics(self) -> dict[str, float]:
        """otas_requests_total by (outcome, reason), summed over applications."""
        text = urllib.request.urlopen(f"{self.url}/metrics", timeout=10).read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("otas_requests_total{"):
                labels, value = line[len("otas_requests_total{") :].rsplit("} ", 1)
                kv = dict(p.split("=", 1) for p in labels.split(","))
                key = kv["outcome"].strip('"') + "/" + kv["reason"].strip('"')
                out[key] = out.get(key, 0.0) + float(value)
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def closed_loop(url: str, body: bytes, concurrency: int, duration_s: float) -> float:
    """Answers/s with `concurrency` requests in flight (the host's capacity)."""
    import aiohttp

    done, stop = [0], time.perf_counter() + duration_s
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:

        async def worker():
            while time.perf_counter() < stop:
                async with s.post(f"{url}/v2/models/{MODEL}/infer", data=body,
                                  headers={"content-type": "application/json"}) as r:  # fmt: skip
                    await r.read()
                    done[0] += r.status == 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done[0] / (time.perf_counter() - t0)


def _reason(status: int, raw: bytes) -> dict:
    return {} if status == 200 else {"reason": json.loads(raw).get("reason", "?")}


def score(recs: list[dict], apps_of: list[str], slo: dict[str, float], duration_s: float) -> dict:
    status = np.array([r["status"] for r in recs])
    lat = np.array([r.get("latency_ms", np.inf) for r in recs])
    on_time = (status == 200) & (lat <= np.array([slo[a] for a in apps_of]))
    reasons: dict[str, int] = {}
    for r in recs:
        if r["status"] != 200:
            reasons[r.get("reason", "?")] = reasons.get(r.get("reason", "?"), 0) + 1
    ok, refused = lat[status == 200], lat[np.isin(status, (429, 503))]
    return {
        "sent": len(recs),
        "answered": int((status == 200).sum()),
        "refused": int(np.isin(status, (429, 503)).sum()),
        "errors": int(((status >= 0) & ~np.isin(status, (200, 429, 503))).sum()),
        "lost": int((status < 0).sum()),
        "on_time": int(on_time.sum()),
        "goodput_per_s": float(on_time.sum() / duration_s),
        "offered_per_s": len(recs) / duration_s,
        "reasons": reasons,
        "answered_p50_ms": float(np.percentile(ok, 50)) if len(ok) else None,
        "answered_p99_ms": float(np.percentile(ok, 99)) if len(ok) else None,
        "refused_p50_ms": float(np.percentile(refused, 50)) if len(refused) else None,
        "send_lag_p99_ms": float(np.percentile([r["lag_ms"] for r in recs], 99)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-root", type=Path, required=True, help="source tree of the code before")
    ap.add_argument("--loads", default="0.5,1,2,4", help="offered load, × the measured capacity")
    ap.add_argument("--duration-s", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of every (load, server), interleaved")
    ap.add_argument("--apps", type=Path, default=ROOT / "otas/configs/apps-h100.yaml")
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--client-cpus", default="1")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--capacity", type=float, default=0.0, help="requests/s of 1× (0: measure it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/host_overload")
    a = ap.parse_args()
    if a.client_cpus:
        os.sched_setaffinity(0, {int(c) for c in a.client_cpus.split(",")})
    import yaml

    apps = yaml.safe_load(a.apps.read_text())["apps"]
    slo = {x["name"]: float(x["slo_ms"]) for x in apps}
    a.out.mkdir(parents=True, exist_ok=True)
    pngs = images(64, a.seed)
    servers = {"before": Server("before", a.old_root.resolve(), 8021, a.apps, a.server_cpus, a.out / "before.log"),
               "after": Server("after", ROOT, 8022, a.apps, a.server_cpus, a.out / "after.log")}  # fmt: skip
    try:
        probe = bodies(apps, pngs, 1, a.seed)[0][0]
        capacity = {k: asyncio.run(closed_loop(s.url, probe, a.concurrency, 4.0)) for k, s in servers.items()}
        cap = a.capacity or capacity["before"]
        print(f"capacity (closed loop, {a.concurrency} in flight): {capacity}; 1× = {cap:.0f} requests/s")
        runs = []
        for rnd in range(a.rounds):
            for load in [float(x) for x in a.loads.split(",")]:
                rate = load * cap
                rng = np.random.default_rng(a.seed + rnd)
                times = np.cumsum(rng.exponential(1 / rate, int(rate * a.duration_s * 1.2)))
                times = times[times < a.duration_s]
                reqs, apps_of = bodies(apps, pngs, len(times), a.seed + rnd)
                for name, s in servers.items():
                    before = s.metrics()
                    recs = asyncio.run(
                        open_loop(f"{s.url}/v2/models/{MODEL}/infer", reqs, times * 1e3, 30.0, _reason, limit=8000)
                    )
                    time.sleep(0.5)
                    after = s.metrics()
                    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
                    sc = score(recs, apps_of, slo, a.duration_s)
                    runs.append({"server": name, "round": rnd, "load": load, "rate_per_s": rate, **sc,
                                 "metrics_delta": delta})  # fmt: skip
                    print(f"{name:6s} x{load:<4g} {rate:7.0f}/s goodput {sc['goodput_per_s']:7.1f}/s "
                          f"answered {sc['answered']} on_time {sc['on_time']} refused {sc['refused']} "
                          f"lost {sc['lost']} err {sc['errors']} p99 {sc['answered_p99_ms']} {sc['reasons']} "
                          f"lag99 {sc['send_lag_p99_ms']:.0f} metrics {delta}", flush=True)  # fmt: skip
    finally:
        for s in servers.values():
            s.stop()
    result = {
        "meta": {"command": shlex.join([sys.executable, *sys.argv]), "capacity_per_s": capacity, "one_x_per_s": cap,
                 "servers": {k: s.command for k, s in servers.items()}, "old_root": str(a.old_root),
                 "apps": apps, "duration_s": a.duration_s, "cpus": {"server": a.server_cpus, "client": a.client_cpus},
                 "nproc": os.cpu_count(), **run_meta()},
        "runs": runs,
    }  # fmt: skip
    (a.out / "host_overload.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, a.out / "host_overload.png")
    print(f"wrote {a.out}/host_overload.json and .png")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    cap = result["meta"]["one_x_per_s"]
    for name, style in (("before", "o--"), ("after", "s-")):
        rs = [r for r in result["runs"] if r["server"] == name]
        loads = sorted({r["load"] for r in rs})
        g = [np.mean([r["goodput_per_s"] for r in rs if r["load"] == x]) for x in loads]
        ax.plot([x * cap for x in loads], g, style, label=name)
    ax.plot([0, max(r["rate_per_s"] for r in result["runs"])], [0, max(r["rate_per_s"] for r in result["runs"])],
            ":", color="grey", label="offered")  # fmt: skip
    ax.axvline(cap, color="grey", lw=0.5)
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("on-time goodput (answers within SLO / s)")
    ax.set_title(f"no-op server, host-bound (1× = {cap:.0f} requests/s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
