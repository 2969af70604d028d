"""Normal traffic beside each class of abuse, against a local `otas serve` (loopback only).

    python bench/abuse.py [--noop] [--seconds 20] [--rate 10] [--classes decode_bombs,...] [--out DIR]

Starts `otas serve` (the shipped model on this CPU; `--noop`: no model), sends normal traffic (KServe
v2 JSON infer, one 32×32 PNG, the three applications in turn, open loop at `--rate` per second)
alone for `--seconds`, then beside each attack class of `abuse_attacks.py` (run in its own process)
for `--seconds` each, with `--settle` seconds after each attack before the next. Reports per phase
the normal traffic's success rate (HTTP 200) and latency p50/p99 against the baseline, and the
server's resident memory (with its children): before, peak during, and `--settle` seconds after the
attack. Targets: >= 99 % success, p99 <= 1.5× the baseline's, memory back within 10 %.
Writes `abuse_<mode>.json` (with `otas.provenance.run_meta`) and `abuse_<mode>.png` to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import abuse_attacks
import aiohttp
import httpx
import numpy as np

from otas.provenance import run_meta

REPO = Path(__file__).resolve().parents[1]
SAMPLES = {"novel": "novel/dog/00000.png", "lowlight": "lowlight/cat/03000.png", "blur": "blur/dog/00000.png"}
TARGET = {"success": 0.99, "p99_ratio": 1.5, "rss_ratio": 1.10}


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the JSON parser), in MiB."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024
        except (OSError, StopIteration):
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


class Sampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.every_s, self.samples, self.t0 = pid, every_s, [], time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every_s):
            self.samples.append((time.monotonic() - self.t0, rss_mb(self.pid)))

    def between(self, a: float, b: float) -> list[float]:
        return [m for t, m in self.samples if a <= t <= b]


async def normal(url: str, model: str, rate: float, seconds: float) -> dict:
    bodies = {
        app: {"parameters": {"app": app}, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
              "data": [base64.b64encode((REPO / "otas/assets/sample" / p).read_bytes()).decode()]}]}
        for app, p in SAMPLES.items()
    }  # fmt: skip
    apps, out = list(bodies), []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=200)) as c:

        async def one(app: str) -> None:
            t0 = time.perf_counter()
            try:
                async with c.post(f"{url}/v2/models/{model}/infer", json=bodies[app]) as r:
                    body = await r.json(content_type=None)
                    ms = (time.perf_counter() - t0) * 1e3
                    if r.status == 200:
                        out.append((200, ms, body["outputs"][3]["data"][0]))
                    else:
                        out.append((f"{r.status} {body.get('reason')}", ms, False))
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                out.append((type(e).__name__, (time.perf_counter() - t0) * 1e3, False))

        n, start, tasks = int(rate * seconds), time.perf_counter(), []
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(apps[i % len(apps)])))
        await asyncio.gather(*tasks)
    ok = [ms for s, ms, _ in out if s == 200]
    fails: dict[str, int] = {}
    for s, _, _ in out:
        if s != 200:
            fails[str(s)] = fails.get(str(s), 0) + 1
    return {
        "sent": n, "ok": len(ok), "success": len(ok) / n, "failures": fails,
        "deadline_met": sum(met for s, _, met in out if s == 200) / n,
        "p50_ms": float(np.percentile(ok, 50)) if ok else None, "p99_ms": float(np.percentile(ok, 99)) if ok else None,
    }  # fmt: skip


def start_server(args, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "otas.cli", "serve", "--port", str(port), "--grpc-port", "0", "--log-level", "info"]
    cmd += ["--policy", args.policy] + (["--noop"] if args.noop else [])
    proc = subprocess.Popen(cmd, cwd=args.server_root, stderr=log.open("wb"))  # -m: its otas comes first
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"otas serve did not start; see {log}")
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--noop", action="store_true", help="serve the no-op model (default: the shipped model on CPU)")
    ap.add_argument("--policy", default="fixed:0", help="otas serve --policy (fixed:0: latency is queueing + compute)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--classes", default=",".join(abuse_attacks.ATTACKS))
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/abuse")
    ap.add_argument("--server-root", type=Path, default=REPO, help="run `otas serve` from this checkout")
    ap.add_argument("--server-label", default="", help="name of that checkout in results (e.g. its commit)")
    args = ap.parse_args()
    classes = [c for c in args.classes.split(",") if c]
    if bad := [c for c in classes if c not in abuse_attacks.ATTACKS]:
        ap.error(f"unknown classes {bad}; choose from {list(abuse_attacks.ATTACKS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = run_meta()  # the code that runs, before anything can change the tree
    mode = f"{'noop' if args.noop else 'cpu'}_{args.policy.replace(':', '')}" + (
        f"_{args.server_label}" if args.server_label else ""
    )
    proc, url = start_server(args, args.out / f"server_{mode}.log")
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    model = httpx.get(url + "/v1/config").json()["model"]
    sampler = Sampler(proc.pid)
    sampler.start()
    try:
        asyncio.run(normal(url, model, args.rate, 5.0))  # warm-up
        t, cpu0 = time.monotonic() - sampler.t0, cpu_s(proc.pid)
        base = asyncio.run(normal(url, model, args.rate, args.seconds))
        base["rss_mb"] = float(np.median(sampler.between(t, t + args.seconds)))
        base["server_cpu_s"] = round(cpu_s(proc.pid) - cpu0, 2)
        print(f"baseline: {base}", flush=True)
        rows = [phase(c, args, url, host, port, model, sampler, base) for c in classes]
        metrics = httpx.get(url + "/metrics").text
    finally:
        sampler._stop_event.set()
        proc.terminate()
        proc.wait(60)
    counted = [ln for ln in metrics.splitlines() if ln.startswith("otas_requests_total{")]
    result = {
        "meta": meta, "server": {"root": str(args.server_root), "label": args.server_label or meta["commit"]},
        "mode": mode, "policy": args.policy, "rate": args.rate, "seconds": args.seconds,
        "settle_s": args.settle, "target": TARGET, "baseline": base, "classes": rows, "server_requests_total": counted,
        "rss_timeline": [(round(t, 2), round(m, 1)) for t, m in sampler.samples],
    }  # fmt: skip
    (args.out / f"abuse_{mode}.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / f"abuse_{mode}.png")
    print(table(result))


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live children (the JSON parser)."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def phase(name, args, url, host, port, model, sampler, base) -> dict:
    ctx = multiprocessing.get_context("spawn")
    q, ready, go = ctx.Queue(), ctx.Event(), ctx.Event()
    attacker = ctx.Process(target=abuse_attacks.run, args=(name, host, port, args.seconds, model, ready, go, q))
    attacker.start()  # builds its payloads first: its start-up is not part of the window
    if not ready.wait(300):
        raise RuntimeError(f"attack {name} did not get ready")
    time.sleep(1.0)
    before, cpu0 = rss_mb(sampler.pid), cpu_s(sampler.pid)
    t0 = time.monotonic() - sampler.t0
    go.set()
    res = asyncio.run(normal(url, model, args.rate, args.seconds))
    server_cpu = cpu_s(sampler.pid) - cpu0
    attack = q.get(timeout=args.seconds + 120)
    attacker.join(30)
    t1 = time.monotonic() - sampler.t0
    time.sleep(args.settle)
    after = rss_mb(sampler.pid)
    peak = max(sampler.between(t0, t1) or [before])
    row = {"class": name, "window_s": (round(t0, 2), round(t1, 2)), **res, "attack": attack, "rss_before_mb": before,
           "rss_peak_mb": peak, "rss_after_mb": after, "server_cpu_s": round(server_cpu, 2)}  # fmt: skip
    row["p99_ratio"] = res["p99_ms"] / base["p99_ms"] if res["p99_ms"] else None
    row["rss_ratio"] = after / base["rss_mb"]
    fast = row["p99_ratio"] is not None and row["p99_ratio"] <= TARGET["p99_ratio"]
    row["meets"] = bool(res["success"] >= TARGET["success"] and fast and row["rss_ratio"] <= TARGET["rss_ratio"])
    print(f"{name}: {row}", flush=True)
    return row


def table(r: dict) -> str:
    b = r["baseline"]
    lines = ["| phase | success | on time | p50 ms | p99 ms | p99 / base | RSS MiB before / peak / after "
             "| CPU s server / attacker | meets |", "|---|---|---|---|---|---|---|---|---|",
             f"| normal alone | {b['success']:.1%} | {b['deadline_met']:.1%} | {b['p50_ms']:.0f} | {b['p99_ms']:.0f} | "
             f"1.00 | {b['rss_mb']:.0f} | {b['server_cpu_s']:.1f} / - | |"]  # fmt: skip
    for c in r["classes"]:
        p50 = f"{c['p50_ms']:.0f}" if c["p50_ms"] else "-"
        p99 = f"{c['p99_ms']:.0f}" if c["p99_ms"] else "-"
        ratio = f"{c['p99_ratio']:.2f}" if c["p99_ratio"] else "-"
        rss = f"{c['rss_before_mb']:.0f} / {c['rss_peak_mb']:.0f} / {c['rss_after_mb']:.0f}"
        cpu = f"{c['server_cpu_s']:.1f} / {c['attack']['attacker_cpu_s']:.1f}"
        lines.append(f"| {c['class']} | {c['success']:.1%} | {c['deadline_met']:.1%} | {p50} | {p99} | {ratio} | "
                     f"{rss} | {cpu} | {'yes' if c['meets'] else 'no'} |")  # fmt: skip
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{"class": "alone", **r["baseline"]}, *r["classes"]]
    names = [x["class"] for x in rows]
    fig, ax = plt.subplots(1, 3, figsize=(17, 4.5))
    ax[0].bar(names, [100 * x["success"] for x in rows], color="tab:blue")
    ax[0].axhline(100 * TARGET["success"], color="k", ls="--", lw=1)
    ax[0].set(ylabel="normal traffic answered 200 (%)", ylim=(min(90, *(100 * x["success"] for x in rows)) - 1, 100.5))
    x = np.arange(len(rows))
    ax[1].bar(x - 0.2, [x_["p50_ms"] or 0 for x_ in rows], 0.4, label="p50")
    ax[1].bar(x + 0.2, [x_["p99_ms"] or 0 for x_ in rows], 0.4, label="p99")
    ax[1].axhline(TARGET["p99_ratio"] * r["baseline"]["p99_ms"], color="k", ls="--", lw=1, label="1.5× baseline p99")
    ax[1].set(xticks=x, xticklabels=names, ylabel="normal traffic latency (ms)")
    ax[1].legend()
    t, m = zip(*r["rss_timeline"], strict=True)
    ax[2].plot(t, m, color="tab:purple")
    for c in r["classes"]:
        ax[2].axvspan(*c["window_s"], alpha=0.15, color="tab:red")
        ax[2].text(c["window_s"][0], max(m), c["class"], rotation=90, va="top", fontsize=7)
    ax[2].axhline(TARGET["rss_ratio"] * r["baseline"]["rss_mb"], color="k", ls="--", lw=1)
    ax[2].set(xlabel="time (s)", ylabel="server RSS, with children (MiB)")
    for a in ax[:2]:
        a.tick_params(axis="x", rotation=60)
    fig.suptitle(f"otas serve {r['server']['label']} ({r['mode']}) under abuse, normal traffic {r['rate']:g}/s; "
                 f"bench {r['meta']['commit']}")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
