"""Normal traffic beside each class of abuse, against a local `otas serve` (loopback only).

    python bench/abuse.py [--noop] [--policy fixed:0] [--seconds 20] [--rate 10] [--repeats 1] [--isolate]
                          [--serve-args=--decode-processes]
                          [--classes decode_bombs,...] [--out DIR] [--server-root CHECKOUT --server-label NAME]

Starts `otas serve` (the shipped model on this CPU; `--noop`: no model), sends normal traffic (KServe
v2 JSON infer, one 32×32 PNG, the three applications in turn, open loop at `--rate` per second)
alone for `--seconds`, then beside each attack class of `abuse_attacks.py` (run in its own process)
for `--seconds` each, with `--settle` seconds after each attack before the next (`--repeats` rounds
of all that, interleaved, the samples of each phase pooled). Reports per phase
the normal traffic's success rate (HTTP 200) and latency p50/p99 against the baseline, and the
server's resident memory (with its children): before, peak during, and `--settle` seconds after the
attack. Targets: >= 99 % success, p99 <= 1.5× the baseline's, memory back within 10 %.
`--isolate` pins the server to core 0 and both clients to core 1 (the attacker niced), so that the
attacker's own CPU, which on a real network is another machine's, does not count against the server;
`--cpus S:C` picks the cores (on a host with SMT, of different physical cores; S may list several).
Writes `abuse_<mode>.json` (with `otas.provenance.run_meta`) and `abuse_<mode>.png` to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import abuse_attacks
import aiohttp
import httpx
import numpy as np
from abuse_report import TARGET, p99_ratio_interval, plot, table

from otas.bench.local_server import free_port, wait_ready
from otas.provenance import run_meta

REPO = Path(__file__).resolve().parents[1]
ATTACKER_NICE = 10  # --isolate: the attacker yields core 1 to the normal client
SAMPLES = {"novel": "novel/dog/00000.png", "lowlight": "lowlight/cat/03000.png", "blur": "blur/dog/00000.png"}


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


async def normal(url: str, model: str, rate: float, seconds: float) -> list[tuple]:
    """(status or error, latency ms, deadline met, server ms) of each request, sent open loop at `rate`;
    server ms: the server's own (queue, execution, total) (`latency_ms`; total from its first byte to
    its answer), which leaves out the client's side of the host (its CPU, loopback TCP on its core),
    None if not answered."""
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
                        lat = next(o["data"] for o in body["outputs"] if o["name"] == "latency_ms")
                        out.append((200, ms, body["outputs"][3]["data"][0], lat))
                    else:
                        out.append((f"{r.status} {body.get('reason')}", ms, False, None))
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                out.append((type(e).__name__, (time.perf_counter() - t0) * 1e3, False, None))

        n, start, tasks = int(rate * seconds), time.perf_counter(), []
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(apps[i % len(apps)])))
        await asyncio.gather(*tasks)
    return out


def summarize(out: list[tuple]) -> dict:
    n = len(out)
    ok = [ms for s, ms, *_ in out if s == 200]
    server = [sms for s, _, _, sms in out if s == 200]
    fails: dict[str, int] = {}
    for s, *_ in out:
        if s != 200:
            fails[str(s)] = fails.get(str(s), 0) + 1
    return {
        "sent": n, "ok": len(ok), "success": len(ok) / n, "failures": fails,
        "deadline_met": sum(met for s, _, met, _ in out if s == 200) / n,
        "p50_ms": float(np.percentile(ok, 50)) if ok else None, "p99_ms": float(np.percentile(ok, 99)) if ok else None,
        "server_p99_ms": float(np.percentile([t for *_, t in server], 99)) if server else None,
        # where the server's time went, at its p99: before its batch started (reading, parsing, decoding,
        # queueing: `queue_ms` runs from the first byte) and the batch itself (`exec_ms`)
        "server_parts_p99_ms": {
            "queue": float(np.percentile([q for q, _, _ in server], 99)),
            "execution": float(np.percentile([e for _, e, _ in server], 99)),
        } if server else None,  # fmt: skip
    }  # fmt: skip


def start_server(args, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "otas.cli", "serve", "--port", str(port), "--grpc-port", "0", "--log-level", "info"]
    cmd += ["--policy", args.policy] + (["--noop"] if args.noop else []) + shlex.split(args.serve_args)
    pin = (lambda: os.sched_setaffinity(0, args.server_cpus)) if args.isolate else None  # its children inherit it
    proc = subprocess.Popen(cmd, cwd=args.server_root, stderr=log.open("wb"), preexec_fn=pin)  # -m: its otas first
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout_s=180)
    except RuntimeError as e:
        raise RuntimeError(f"otas serve did not start ({e}); see {log}") from None
    return proc, url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--noop", action="store_true", help="serve the no-op model (default: the shipped model on CPU)")
    ap.add_argument("--policy", default="fixed:0", help="otas serve --policy (fixed:0: latency is queueing + compute)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of baseline + every class; percentiles pooled")
    ap.add_argument("--classes", default=",".join(abuse_attacks.ATTACKS))
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/abuse")
    ap.add_argument("--server-root", type=Path, default=REPO, help="run `otas serve` from this checkout")
    ap.add_argument("--server-label", default="", help="name of that checkout in results (e.g. its commit)")
    ap.add_argument(
        "--serve-args", default="", help="more `otas serve` options, with '=': --serve-args=--decode-processes"
    )
    ap.add_argument("--isolate", action="store_true",
                    help="server on core 0, normal client and attacker (niced) on core 1, as if the attacker were "
                         "another machine: measures the server, not the host shared with the attacker")  # fmt: skip
    ap.add_argument("--cpus", default="0:1", help="--isolate's cores, SERVER:CLIENT (0:1; SERVER may list several)")
    args = ap.parse_args()
    if args.isolate and len(os.sched_getaffinity(0)) < 2:
        ap.error("--isolate needs 2 cores (the server on one, the clients on the other)")
    try:
        left, right = args.cpus.split(":")
        server, client = {int(c) for c in left.split(",")}, int(right)
    except ValueError:
        ap.error(f"--cpus {args.cpus!r}: give core numbers, SERVER:CLIENT, e.g. 0:1 or 0,2:1")
    if client in server or not server | {client} <= os.sched_getaffinity(0):
        cores = sorted(os.sched_getaffinity(0))
        ap.error(f"--cpus {args.cpus!r}: the client's core apart from the server's, all of {cores}")
    args.server_cpus, args.client_cpus = server, {client}
    classes = [c for c in args.classes.split(",") if c]
    if bad := [c for c in classes if c not in abuse_attacks.ATTACKS]:
        ap.error(f"unknown classes {bad}; choose from {list(abuse_attacks.ATTACKS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = run_meta()  # the code that runs, before anything can change the tree
    mode = (
        f"{'noop' if args.noop else 'cpu'}_{args.policy.replace(':', '')}"
        + (f"_{args.server_label}" if args.server_label else "")
        + (f"_{re.sub(r'[^A-Za-z0-9]+', '', args.serve_args)}" if args.serve_args else "")
        + ("_isolated" if args.isolate else "")
    )
    proc, url = start_server(args, args.out / f"server_{mode}.log")
    if args.isolate:
        os.sched_setaffinity(0, args.client_cpus)
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    model = httpx.get(url + "/v1/config").json()["model"]
    sampler = Sampler(proc.pid)
    sampler.start()
    try:
        asyncio.run(normal(url, model, args.rate, 5.0))  # warm-up
        samples, rss, cpu, windows, rounds = [], [], [], {c: [] for c in classes}, []
        for _ in range(args.repeats):  # interleaved: a drift of the machine hits baseline and attacks alike
            t, cpu0 = time.monotonic() - sampler.t0, cpu_s(proc.pid)
            rounds.append(asyncio.run(normal(url, model, args.rate, args.seconds)))
            samples += rounds[-1]
            rss += sampler.between(t, t + args.seconds)
            cpu.append(cpu_s(proc.pid) - cpu0)
            for c in classes:
                windows[c].append(phase(c, args, url, host, port, model, sampler, _copy_duty(windows, args.seconds)))
        base = {**summarize(samples), "rss_mb": float(np.median(rss)), "server_cpu_s": round(float(np.mean(cpu)), 2),
                "p99_ms_rounds": [summarize(r)["p99_ms"] for r in rounds]}  # fmt: skip
        print(f"baseline: {base}", flush=True)
        alone_ms = [ms for s, ms, *_ in samples if s == 200]
        rows = [combine(c, windows[c], base, alone_ms) for c in classes]
        metrics = httpx.get(url + "/metrics").text
    finally:
        sampler._stop_event.set()
        proc.terminate()
        proc.wait(60)
    counted = [ln for ln in metrics.splitlines() if ln.startswith("otas_requests_total{")]
    result = {
        "meta": meta, "server": {"root": str(args.server_root), "label": args.server_label or meta["commit"]},
        "mode": mode, "isolated": args.isolate, "cpus": args.cpus if args.isolate else None,
        "serve_args": args.serve_args, "policy": args.policy,
        "rate": args.rate, "seconds": args.seconds,
        "repeats": args.repeats,
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


def _copy_duty(windows: dict, seconds: float) -> float | None:
    """copy_load's CPU share: the mean of stalled_bodies' attacker CPU share so far (None: its default)."""
    cpu = [w["attack"]["attacker_cpu_s"] for w in windows.get("stalled_bodies", [])]
    return min(1.0, float(np.mean(cpu)) / seconds) if cpu else None


def phase(name, args, url, host, port, model, sampler, duty=None) -> dict:
    """One window of normal traffic beside one attack, then `--settle` seconds; the raw samples.
    `duty`: copy_load's CPU share (`abuse_attacks.copy_load`)."""
    ctx = multiprocessing.get_context("spawn")
    q, ready, go = ctx.Queue(), ctx.Event(), ctx.Event()
    isolate = (args.client_cpus, ATTACKER_NICE) if args.isolate else None
    attacker = ctx.Process(
        target=abuse_attacks.run, args=(name, host, port, args.seconds, model, ready, go, q, isolate, duty)
    )
    attacker.start()  # builds its payloads first: its start-up is not part of the window
    if not ready.wait(300):
        raise RuntimeError(f"attack {name} did not get ready")
    time.sleep(1.0)
    before, cpu0 = rss_mb(sampler.pid), cpu_s(sampler.pid)
    t0 = time.monotonic() - sampler.t0
    go.set()
    samples = asyncio.run(normal(url, model, args.rate, args.seconds))
    server_cpu = cpu_s(sampler.pid) - cpu0
    attack = q.get(timeout=args.seconds + 120)
    attacker.join(30)
    t1 = time.monotonic() - sampler.t0
    time.sleep(args.settle)
    w = {"window_s": (round(t0, 2), round(t1, 2)), "samples": samples, "attack": attack, "rss_before_mb": before,
         "rss_peak_mb": max(sampler.between(t0, t1) or [before]), "rss_after_mb": rss_mb(sampler.pid),
         "server_cpu_s": round(server_cpu, 2)}  # fmt: skip
    print(f"{name}: {summarize(samples)} {attack}", flush=True)
    return w


def combine(name: str, ws: list[dict], base: dict, alone_ms: list[float]) -> dict:
    """A class's windows pooled: percentiles over every sample (the p99 ratio with a bootstrap interval
    against the normal-alone latencies `alone_ms`), the worst memory."""
    pooled = [s for w in ws for s in w["samples"]]
    res = summarize(pooled)
    row = {"class": name, "windows_s": [w["window_s"] for w in ws], **res, "attacks": [w["attack"] for w in ws],
           "rss_before_mb": ws[0]["rss_before_mb"], "rss_peak_mb": max(w["rss_peak_mb"] for w in ws),
           "rss_after_mb": max(w["rss_after_mb"] for w in ws),
           "server_cpu_s": round(float(np.mean([w["server_cpu_s"] for w in ws])), 2),
           "attacker_cpu_s": round(float(np.mean([w["attack"]["attacker_cpu_s"] for w in ws])), 2)}  # fmt: skip
    row["p99_ratio"] = res["p99_ms"] / base["p99_ms"] if res["p99_ms"] else None
    row["p99_ratio_ci90"] = p99_ratio_interval([ms for s, ms, *_ in pooled if s == 200], alone_ms)
    sp99 = res["server_p99_ms"]
    row["server_p99_ratio"] = sp99 / base["server_p99_ms"] if sp99 and base.get("server_p99_ms") else None
    row["p99_ratio_rounds"] = [  # each round's window against the same round's normal-alone phase
        round(p / b, 3) if p and b else None
        for p, b in zip([summarize(w["samples"])["p99_ms"] for w in ws], base["p99_ms_rounds"], strict=False)
    ]
    row["rss_ratio"] = row["rss_after_mb"] / base["rss_mb"]
    fast = row["p99_ratio"] is not None and row["p99_ratio"] <= TARGET["p99_ratio"]
    row["meets"] = bool(res["success"] >= TARGET["success"] and fast and row["rss_ratio"] <= TARGET["rss_ratio"])
    row["control"] = name in abuse_attacks.CONTROLS  # load, not abuse: held to no target
    return row


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
