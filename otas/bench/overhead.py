"""`otas bench overhead`: the request rate the server sustains on HTTP + decoding + scheduling +
collation alone (run it against `otas serve --noop`), next to a model's own throughput.

Closed loop: `concurrency` requests in flight per client process, each a 32×32 PNG sent as KServe
v2 BYTES, for `duration_s` after a 1 s warm-up. Several client processes keep the client from
being the bottleneck (the figure is a lower bound on the server's capacity either way).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np

from otas.bench.replay import infer_request
from otas.provenance import run_meta


def _png() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue())


async def _client(url: str, model: str, app: str, concurrency: int, duration_s: float) -> tuple[int, int, list[float]]:
    import aiohttp

    body = infer_request(_png(), app)
    endpoint = f"{url}/v2/models/{model}/infer"
    ok = bad = 0
    lat: list[float] = []
    start = time.perf_counter()
    t_measure, t_end = start + 1.0, start + 1.0 + duration_s
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as client:

        async def worker() -> None:
            nonlocal ok, bad
            while (now := time.perf_counter()) < t_end:
                async with client.post(endpoint, data=body, headers={"content-type": "application/json"}) as r:
                    await r.read()
                done = time.perf_counter()
                if now >= t_measure:
                    if r.status == 200:
                        ok += 1
                        lat.append((done - now) * 1e3)
                    else:
                        bad += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, bad, lat


def _proc(args: tuple) -> tuple[int, int, list[float]]:
    return asyncio.run(_client(*args))


def main(url: str, concurrency: int, duration_s: float, clients: int, profile: Path | None, out: Path, console) -> dict:
    from otas.bench.replay import server_info
    from otas.profile.table import Profile

    url = url.rstrip("/")
    info = server_info(url)
    app = info["apps"][0]["name"]
    args = (url, info["model"], app, concurrency, duration_s)
    if clients == 1:
        parts = [_proc(args)]
    else:
        with mp.get_context("spawn").Pool(clients) as pool:
            parts = pool.map(_proc, [args] * clients)
    ok = sum(p[0] for p in parts)
    bad = sum(p[1] for p in parts)
    lat = [x for p in parts for x in p[2]]
    res: dict[str, Any] = {
        "meta": {"url": url, "model": info["model"], "concurrency": concurrency, "clients": clients,
                 "duration_s": duration_s, **run_meta()},
        "requests_per_s": ok / duration_s,
        "non_200": bad,
        "latency_ms": {q: float(np.percentile(lat, int(q[1:]))) if lat else None for q in ("p50", "p90", "p99")},
    }  # fmt: skip
    console.print(
        f"server ({info['model']}): {res['requests_per_s']:.0f} requests/s, {bad} non-200, "
        f"latency p50 {res['latency_ms']['p50']:.1f} ms, p99 {res['latency_ms']['p99']:.1f} ms"
    )
    if profile is not None:
        prof = Profile.load(profile)
        mb = info["scheduler"]["max_batch"]
        res["model"] = {
            "profile": str(profile),
            "images_per_s_gamma0": prof.throughput(0, mb),
            "images_per_s_fastest": max(prof.throughput(g, mb) for g in prof.gammas),
        }
        res["server_over_model"] = res["requests_per_s"] / res["model"]["images_per_s_fastest"]
        console.print(
            f"model {prof.model} on {prof.device}: {res['model']['images_per_s_gamma0']:.0f} images/s at γ=0, "
            f"{res['model']['images_per_s_fastest']:.0f} at the fastest γ; "
            f"server/model = {res['server_over_model']:.1f}×"
        )
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"overhead_{info['model']}_c{concurrency}x{clients}.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    console.print(f"wrote {path}")
    return res
