"""`otas bench replay`: open-loop trace replay against a running server, over HTTP only.

Each trace arrival becomes one KServe v2 infer request (a base64 PNG of a labelled CIFAR-10 test
image of the application's task, corrupted exactly as evaluation does), sent at its timestamp
whatever happened to earlier ones (open loop, many in flight). Every request is counted once:
sent = answered (200) + rejected (429/503, with the server's reason) + errors.

Beside the live figures: the simulator's prediction for the same workload — the same trace
window, applications, profile, policy and scheduler config, all read from the server's /v1/config.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from otas.config import SchedulerConfig, load_apps
from otas.profile.table import Profile
from otas.provenance import run_meta
from otas.sim.traces import Trace, capacity_per_s, make_trace
from otas.types import App


@dataclass
class Pool:
    """Encoded test images of one task and their true labels."""

    bodies: list[bytes]
    labels: list[str]


def server_info(url: str) -> dict[str, Any]:
    """The server's /v1/config: model, policy, scheduler config, applications, profile."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v1/config", timeout=10) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError) as e:
        raise ValueError(f"cannot reach the server at {url} ({e}); start it with `otas serve`") from None


def image_pools(apps: Sequence[App], needed: dict[str, int], data: Path | None) -> dict[str, Pool]:
    """Per task, `needed[task]` PNG images (cycling) of the CIFAR-10 test split, as evaluation sees them."""
    from PIL import Image

    from otas.data.cifar import load_cifar10
    from otas.data.tasks import get_task
    from otas.train.common import corrupt_set

    test_all = load_cifar10("test", data, progress=False)
    pools = {}
    for task in sorted({a.task for a in apps}):
        spec = get_task(task)
        ds = corrupt_set(test_all.subset(list(spec.classes)), spec.corruption, seed=1)  # as in evaluation
        n = min(len(ds), max(needed.get(task, 0), 1))
        idx = np.linspace(0, len(ds) - 1, n).astype(int)  # a spread over every class
        bodies = []
        for i in idx:
            buf = io.BytesIO()
            Image.fromarray(ds.images[i]).save(buf, format="PNG")
            bodies.append(base64.b64encode(buf.getvalue()))
        pools[task] = Pool([bytes(b) for b in bodies], [spec.classes[int(ds.labels[i])] for i in idx])
    return pools


def infer_request(b64png: bytes, app: str) -> bytes:
    """A KServe v2 infer request body for one base64 image, for application `app`."""
    head = (
        b'{"parameters":{"app":"%s"},"inputs":[{"name":"image","datatype":"BYTES","shape":[1],"data":["' % app.encode()
    )
    return head + b64png + b'"]}]}'


async def _replay(url: str, model: str, trace: Trace, bodies: list[bytes], timeout_s: float) -> list[dict[str, Any]]:
    import aiohttp

    recs: list[dict[str, Any]] = [{} for _ in range(len(trace))]
    endpoint = f"{url}/v2/models/{model}/infer"
    headers = {"content-type": "application/json"}

    # aiohttp rather than httpx: httpx's connection pool slows down badly with hundreds in flight
    conn = aiohttp.TCPConnector(limit=4000)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout_s)) as client:

        async def send(i: int, t_sched: float) -> None:
            rec = recs[i]
            rec["lag_ms"] = (time.perf_counter() - t_sched) * 1e3
            try:
                async with client.post(endpoint, data=bodies[i], headers=headers) as r:
                    raw = await r.read()
                rec["latency_ms"] = (time.perf_counter() - t_sched) * 1e3
                rec["status"] = r.status
                body = json.loads(raw)
                if r.status == 200:
                    out = {o["name"]: o["data"] for o in body["outputs"]}
                    rec.update(label=out["label"][0], gamma=out["gamma"][0], server_met=out["deadline_met"][0])
                    rec["server_ms"] = out["latency_ms"][2]
                else:
                    rec["reason"] = body.get("reason", "")
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as e:
                rec.update(status=-1, reason=f"{type(e).__name__}: {e}")

        t0 = time.perf_counter() + 0.05
        pending = []
        for i, t in enumerate(trace.arrival_ms):
            at = t0 + t / 1000.0
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(send(i, at)))
        await asyncio.gather(*pending)
    return recs


def _pct(x: list[float], q: float) -> float:
    return float(np.percentile(x, q)) if x else math.nan


def summarize(
    recs: list[dict[str, Any]], trace: Trace, apps: Sequence[App], labels: list[str], profile: Profile
) -> dict[str, Any]:
    """Per application and in total: counts by outcome, SLO attainment, accuracy, utility, latency."""
    by = {a.name: a for a in apps}
    rows: dict[str, dict[str, Any]] = {}
    for name in [a.name for a in apps] + ["all"]:
        idx = [i for i, a in enumerate(trace.apps) if name in ("all", a)]
        ok = [i for i in idx if recs[i].get("status") == 200]
        rej = [i for i in idx if recs[i].get("status") in (429, 503)]
        on_time = [i for i in ok if recs[i]["latency_ms"] <= by[trace.apps[i]].slo_ms]
        correct = [i for i in ok if recs[i]["label"] == labels[i]]
        reasons: dict[str, int] = {}
        for i in rej:
            reasons[recs[i]["reason"]] = reasons.get(recs[i]["reason"], 0) + 1
        lat = [recs[i]["latency_ms"] for i in ok]
        u_exp = sum(by[trace.apps[i]].utility * profile.acc(by[trace.apps[i]].task, recs[i]["gamma"]) for i in on_time)
        u_real = sum(by[trace.apps[i]].utility for i in on_time if recs[i]["label"] == labels[i])
        rows[name] = {
            "sent": len(idx),
            "answered": len(ok),
            "rejected": len(rej),
            "errors": len(idx) - len(ok) - len(rej),
            "reject_reasons": reasons,
            "on_time": len(on_time),
            "slo_attainment": len(on_time) / len(idx) if idx else math.nan,
            "server_deadline_met": sum(bool(recs[i]["server_met"]) for i in ok),
            "accuracy_answered": len(correct) / len(ok) if ok else math.nan,
            "utility_expected": u_exp,
            "utility_realized": u_real,
            "mean_gamma": float(np.mean([recs[i]["gamma"] for i in ok])) if ok else math.nan,
            "latency_ms": {
                "p50": _pct(lat, 50),
                "p90": _pct(lat, 90),
                "p99": _pct(lat, 99),
                "max": max(lat, default=math.nan),
            },
        }
    lags = [r["lag_ms"] for r in recs if "lag_ms" in r]
    rows["all"]["send_lag_ms"] = {"p50": _pct(lags, 50), "p99": _pct(lags, 99), "max": max(lags, default=math.nan)}
    return rows


def simulate(trace: Trace, apps: Sequence[App], profile: Profile, policy: str, cfg: SchedulerConfig, seed: int) -> dict:
    from otas.sim.simulator import run

    out = {}
    for noise in (False, True):
        res = run(trace, apps, profile, policy, cfg, seed=seed, noise=noise)
        s = res.summary(apps)
        names = np.array(res.app_of)
        s["utility_per_app"] = {a.name: float(res.utility[names == a.name].sum()) for a in apps}
        out["noisy" if noise else "noise_free"] = s
    return out


def main(
    url: str,
    trace_spec: str,
    apps_path: Path | None,
    load: float,
    limit: int,
    seed: int,
    out: Path,
    tag: str,
    data: Path | None,
    console,
) -> dict[str, Any]:
    url = url.rstrip("/")
    info = server_info(url)
    apps = load_apps(apps_path) if apps_path else [App(**a) for a in info["apps"]]
    profile = Profile.from_dict(info["profile"])
    cfg = SchedulerConfig(**info["scheduler"])
    policy = info["policy"]
    cap = capacity_per_s(profile, apps, cfg.max_batch)
    full = make_trace(trace_spec, apps, load, cap, seed=seed)
    n = len(full) if limit <= 0 else min(limit, len(full))
    trace = Trace(full.name, full.arrival_ms[:n] - full.arrival_ms[0], list(full.apps[:n]))
    task_of = {a.name: a.task for a in apps}
    needed: dict[str, int] = {}
    for a in trace.apps:
        needed[task_of[a]] = needed.get(task_of[a], 0) + 1
    console.print(
        f"{trace.name}: {n} requests over {trace.duration_ms / 1e3:.1f} s ({load:g} × {cap:.1f}/s); loading images"
    )
    pools = image_pools(apps, needed, data)
    cursor = {t: 0 for t in pools}
    bodies, labels = [], []
    for a in trace.apps:
        pool, k = pools[task_of[a]], cursor[task_of[a]]
        cursor[task_of[a]] += 1
        bodies.append(infer_request(pool.bodies[k % len(pool.bodies)], a))
        labels.append(pool.labels[k % len(pool.labels)])
    console.print(f"replaying against {url} (policy {policy})")
    t0 = time.perf_counter()
    recs = asyncio.run(
        _replay(url, info["model"], trace, bodies, timeout_s=30 + 10 * max(a.slo_ms for a in apps) / 1e3)
    )
    wall = time.perf_counter() - t0
    live = summarize(recs, trace, apps, labels, profile)
    sim = simulate(trace, apps, profile, policy, cfg, seed)
    result = {
        "meta": {"url": url, "trace": trace.name, "load": load, "capacity_per_s": cap, "requests": n, "seed": seed,
                 "policy": policy, "model": info["model"], "device": info.get("device"), "wall_s": wall,
                 "duration_s": trace.duration_ms / 1e3, "scheduler": info["scheduler"], **run_meta()},
        "apps": [a.__dict__ for a in apps],
        "live": live,
        "sim": sim,
    }  # fmt: skip
    from otas.bench.report import plot_replay, print_replay

    print_replay(result, console)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"replay_{Path(trace.name).stem}_{(tag or policy).replace(':', '')}_x{load:g}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    plot_replay(result, recs, trace, apps, out / f"{stem}.png")
    console.print(f"wrote {out / stem}.json and .png")
    return result
