"""The no-op server with HTTP in the engine's process or in front-end processes: images/s, latency,
and the CPU each process spends per image served.

For each setting (`--workers`, `--max-batches`) this starts `otas serve --noop` on a free loopback port,
sends closed-loop KServe binary uint8 requests of `--n` images (`otas bench overhead`'s client) and
reads every server process's CPU time (/proc) and the served count (/metrics) before and after. The
CPU per image of the engine process is what bounds a server with front ends: the front ends add up
over cores, the engine does not. Results: one JSON (with commit, command and machine) and a plot.

    python bench/http_workers.py --workers 0,1,2 --max-batches 256 --out bench/results/http_workers
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otas.bench.local_server import free_port, wait_ready  # noqa: E402
from otas.bench.overhead import measure  # noqa: E402
from otas.provenance import run_meta  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def front_ends(pid: int) -> list[int]:
    """The server's front-end processes: its children that lead their own process group."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                _, ppid, pgrp = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[:3]
            except OSError:
                continue
            if int(ppid) == pid and int(pgrp) == int(d):
                out.append(int(d))
    return out


def served(url: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    return sum(float(m[1]) for m in re.finditer(r'otas_requests_total\{[^}]*outcome="served"[^}]*\} (\S+)', text))


def request(n: int, size: int = 32) -> tuple[bytes, dict[str, str]]:
    import numpy as np

    raw = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8).tobytes()
    inp = {
        "name": "image",
        "datatype": "UINT8",
        "shape": [n, size, size, 3],
        "parameters": {"binary_data_size": len(raw)},
    }
    head = json.dumps({"parameters": {"app": "blur"}, "inputs": [{**inp}]}).encode()
    return head + raw, {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}


def one(workers: int, max_batch: int, policy: str, n: int, inflight: int, clients: int, seconds: float) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "otas.cli", "serve", "--noop", "--policy", policy, "--max-batch", str(max_batch),
           "--http-workers", str(workers), "--port", str(port), "--grpc-port", "0",
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout_s=120)
        end = time.monotonic() + 60
        while len(front_ends(proc.pid)) < workers and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(1.0)
        fronts = front_ends(proc.pid)
        body, headers = request(n)
        endpoint = f"{url}/v2/models/noop/infer"
        measure("uint8", endpoint, body, headers, inflight, 1.0, 1, 0.0)  # warm up
        s0, e0, f0, t0 = served(url), cpu_s(proc.pid), sum(cpu_s(p) for p in fronts), time.monotonic()
        ok, bad, lat = measure("uint8", endpoint, body, headers, inflight, seconds, clients, 0.0)
        wall = time.monotonic() - t0
        s1, e1, f1 = served(url), cpu_s(proc.pid), sum(cpu_s(p) for p in fronts)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    images = s1 - s0
    lat.sort()
    return {
        "workers": workers, "max_batch": max_batch, "policy": policy, "images_per_request": n,
        "inflight": inflight, "clients": clients, "requests_ok": ok, "requests_failed": bad,
        "images_served": images, "images_per_s": images / wall,
        "p50_ms": lat[len(lat) // 2] if lat else None, "p99_ms": lat[int(len(lat) * 0.99)] if lat else None,
        "engine_cpu_us_per_image": (e1 - e0) / images * 1e6 if images else None,
        "front_cpu_us_per_image": (f1 - f0) / images * 1e6 if images and workers else 0.0,
    }  # fmt: skip


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{r['workers']} fe\nmb {r['max_batch']}" for r in rows]
    x = range(len(rows))
    a.bar(x, [r["engine_cpu_us_per_image"] for r in rows], label="engine process")
    a.bar(x, [r["front_cpu_us_per_image"] for r in rows], bottom=[r["engine_cpu_us_per_image"] for r in rows],
          label="front ends")  # fmt: skip
    a.set_xticks(list(x), labels)
    a.set_ylabel("CPU µs per image served")
    a.legend()
    b.bar(x, [r["images_per_s"] for r in rows])
    b.set_xticks(list(x), labels)
    b.set_ylabel("images/s (no-op model)")
    fig.suptitle("otas serve --noop: HTTP in the engine's process (0 fe) or in front ends")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="0,1,2", help="comma-separated --http-workers settings")
    ap.add_argument("--max-batches", default="256", help="comma-separated --max-batch settings")
    ap.add_argument("--policy", default="fixed:0")
    ap.add_argument("--n", type=int, default=256, help="images per request")
    ap.add_argument("--inflight", type=int, default=8, help="requests in flight per client process")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/http_workers")
    a = ap.parse_args()
    rows = []
    for mb in [int(v) for v in a.max_batches.split(",")]:
        for w in [int(v) for v in a.workers.split(",")]:
            r = one(w, mb, a.policy, a.n, a.inflight, a.clients, a.seconds)
            print(json.dumps(r))
            rows.append(r)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "http_workers.json").write_text(json.dumps({"meta": run_meta(), "rows": rows}, indent=1) + "\n")
    plot(rows, a.out / "http_workers.png")
    print(f"wrote {a.out}/http_workers.json and .png")


if __name__ == "__main__":
    main()
