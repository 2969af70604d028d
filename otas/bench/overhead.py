"""`otas bench overhead`: the request rate the server sustains on its own work — protocol parsing,
decoding, scheduling, collation — (run it against `otas serve --noop`), next to a model's throughput.

For each protocol (KServe v2 JSON with base64 BYTES, HTTP with binary tensors, gRPC with raw
contents) and each batch (images per request): a closed loop per client process of requests each
carrying `batch` distinct 32×32 PNGs, for `duration_s` after a 1 s warm-up. `concurrency` requests
are in flight at batch 1 and max(2, concurrency / batch) above, so that about as many images wait
at every batch (64 requests of 64 images would queue past every application's SLO). Request
bodies are built once and responses are read but not parsed, so the client does as little as it
can; several client processes keep it from being the bottleneck (the figures are lower bounds on
the server's capacity either way).
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
from urllib.parse import urlsplit

import numpy as np

from otas.bench.formats import input_size
from otas.provenance import run_meta

PROTOCOLS = ("json", "binary", "grpc", "uint8")
"""uint8: HTTP binary tensors of raw pixels (`image_uint8`, no decoding): the server's cost without images to decode."""
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


def pngs(n: int, size: int = 32) -> list[bytes]:
    from PIL import Image

    rng, out = np.random.default_rng(0), []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def request(protocol: str, model: str, app: str, images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """(body, HTTP headers) of one infer request carrying `images` as the BYTES input `image`."""
    from otas.server.tensors import join_bytes

    n = len(images)
    if protocol == "json":
        data = [base64.b64encode(b).decode() for b in images]
        head = {
            "parameters": {"app": app},
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [n], "data": data}],
        }
        return json.dumps(head).encode(), {"content-type": "application/json"}
    if protocol == "uint8":  # the same images, decoded here: raw (n, size, size, 3) pixels
        from PIL import Image

        raw = b"".join(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), np.uint8).tobytes() for b in images)
        size = int(round((len(raw) / n / 3) ** 0.5))
        return _binary(app, {"name": "image_uint8", "datatype": "UINT8", "shape": [n, size, size, 3]}, raw)
    raw = join_bytes(images)
    if protocol == "binary":
        return _binary(app, {"name": "image", "datatype": "BYTES", "shape": [n]}, raw)
    if protocol == "grpc":
        from otas.server.grpc_api import grpc_predict_v2_pb2 as pb

        req = pb.ModelInferRequest(model_name=model, raw_input_contents=[raw])
        req.parameters["app"].string_param = app
        req.inputs.add(name="image", datatype="BYTES", shape=[n])
        return req.SerializeToString(), {}
    raise ValueError(f"protocol {protocol!r}: use one of {PROTOCOLS}")


def _binary(app: str, inp: dict, raw: bytes) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 binary-tensor request: a JSON header naming `inp`, then `raw`."""
    inp = {**inp, "parameters": {"binary_data_size": len(raw)}}
    head = json.dumps({"parameters": {"app": app, "binary_data_output": True}, "inputs": [inp]}).encode()
    headers = {"content-type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    return head + raw, headers


async def _closed_loop(send, concurrency: int, duration_s: float, warmup_s: float) -> tuple[int, int, list[float]]:
    """`concurrency` workers calling `send()` (True = answered) back to back; counts the calls that end
    inside the measured window (after the warm-up), whenever they began: a call begun in the warm-up
    and held up past it (a first request's lazy set-up) still counts, as a throughput measure must."""
    ok = bad = 0
    lat: list[float] = []
    start = time.perf_counter()
    t_measure, t_end = start + warmup_s, start + warmup_s + duration_s

    async def worker() -> None:
        nonlocal ok, bad
        while (now := time.perf_counter()) < t_end:
            good = await send()
            done = time.perf_counter()
            if t_measure <= done <= t_end:
                if good:
                    ok += 1
                    lat.append((done - now) * 1e3)
                else:
                    bad += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, bad, lat


async def _http(endpoint: str, body: bytes, headers: dict, concurrency: int, duration_s: float, warmup_s: float):
    import aiohttp

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as client:

        async def send() -> bool:
            async with client.post(endpoint, data=body, headers=headers) as r:
                await r.read()
                return r.status == 200

        return await _closed_loop(send, concurrency, duration_s, warmup_s)


async def _grpc(target: str, body: bytes, concurrency: int, duration_s: float, warmup_s: float):
    import grpc

    opts = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(target, options=opts) as channel:
        call = channel.unary_unary(GRPC_INFER)  # bytes in, bytes out: no protobuf work in the client

        async def send() -> bool:
            try:
                await call(body, timeout=30)
                return True
            except grpc.aio.AioRpcError:
                return False

        return await _closed_loop(send, concurrency, duration_s, warmup_s)


def _proc(args: tuple) -> tuple[int, int, list[float]]:
    protocol, where, body, headers, *loop = args
    if protocol == "grpc":
        return asyncio.run(_grpc(where, body, *loop))
    return asyncio.run(_http(where, body, headers, *loop))


def measure(protocol: str, where: str, body: bytes, headers: dict, concurrency: int, duration_s: float, clients: int,
            warmup_s: float = 1.0):  # fmt: skip
    """(requests answered, requests failed, latencies in ms) over `clients` processes."""
    args = (protocol, where, body, headers, concurrency, duration_s, warmup_s)
    if clients == 1:
        parts = [_proc(args)]
    else:
        with mp.get_context("spawn").Pool(clients) as pool:
            parts = pool.map(_proc, [args] * clients)
    return sum(p[0] for p in parts), sum(p[1] for p in parts), [x for p in parts for x in p[2]]


def main(
    url: str,
    concurrency: int,
    duration_s: float,
    clients: int,
    profile: Path | None,
    out: Path,
    console,
    protocols: tuple[str, ...] = PROTOCOLS,
    batches: tuple[int, ...] = (1, 64),
    grpc_target: str = "",
    warmup_s: float = 1.0,
) -> dict:
    from otas.bench.replay import server_info

    url = url.rstrip("/")
    info = server_info(url)
    model, app = info["model"], info["apps"][0]["name"]
    if not grpc_target and info.get("grpc_port"):
        grpc_target = f"{urlsplit(url).hostname}:{info['grpc_port']}"
    runs: list[dict[str, Any]] = []
    size = input_size(url, model)
    for protocol in protocols:
        if protocol == "grpc" and not grpc_target:
            console.print("grpc: skipped (the server serves no gRPC; start it with --grpc-port, or pass --grpc-target)")
            continue
        where = grpc_target if protocol == "grpc" else f"{url}/v2/models/{model}/infer"
        for batch in batches:
            body, headers = request(protocol, model, app, pngs(batch, size if protocol == "uint8" else 32))
            in_flight = concurrency if batch == 1 else max(2, concurrency // batch)
            ok, bad, lat = measure(protocol, where, body, headers, in_flight, duration_s, clients, warmup_s)
            pct = {q: float(np.percentile(lat, int(q[1:]))) if lat else None for q in ("p50", "p90", "p99")}
            run = {"protocol": protocol, "batch": batch, "in_flight": in_flight * clients, "request_bytes": len(body),
                   "requests_per_s": ok / duration_s,
                   "images_per_s": ok * batch / duration_s, "failed": bad, "latency_ms": pct}  # fmt: skip
            runs.append(run)
            console.print(
                f"{protocol:>6} batch {batch:>3}: {run['requests_per_s']:8.0f} requests/s "
                f"({run['images_per_s']:.0f} images/s), p50 {pct['p50'] or 0:.1f} ms, p99 {pct['p99'] or 0:.1f} ms, "
                f"{bad} failed"
            )
    res: dict[str, Any] = {
        "meta": {"url": url, "grpc_target": grpc_target, "model": model, "concurrency": concurrency,
                 "clients": clients, "duration_s": duration_s, "warmup_s": warmup_s, **run_meta()},
        "runs": runs,
    }  # fmt: skip
    if profile is not None:
        res["model"] = _model_side(profile, info["scheduler"]["max_batch"], runs, console)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"overhead_{model}_c{concurrency}x{clients}.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    console.print(f"wrote {path}")
    return res


def _model_side(profile: Path, max_batch: int, runs: list[dict], console) -> dict[str, Any]:
    """A model's own throughput from its profile, and the server's best images/s over it."""
    from otas.profile.table import Profile

    prof = Profile.load(profile)
    fastest = max(prof.throughput(g, max_batch) for g in prof.gammas)
    best = max((r["images_per_s"] for r in runs), default=0.0)
    console.print(
        f"model {prof.model} on {prof.device}: {prof.throughput(0, max_batch):.0f} images/s at γ=0, "
        f"{fastest:.0f} at the fastest γ; server/model = {best / fastest:.1f}×"
    )
    return {"profile": str(profile), "images_per_s_gamma0": prof.throughput(0, max_batch),
            "images_per_s_fastest": fastest, "server_over_model": best / fastest}  # fmt: skip


def model_shares(
    batch: int, answered: int, duration_s: float, device_s: float, device_batches: float, model_ms: float
) -> dict[str, Any]:
    """A server running a model, one request of `batch` images per batch (`--max-batch batch`): `answered`
    requests in the client's window of `duration_s`; the server's device time `device_s` over `device_batches`
    batches (its `otas_batch_device_seconds` sum and count, deltas over the run); `model_ms` the profile's
    latency of a batch of `batch`. The model's share of wall time is batches per second × `model_ms`, the
    overhead the rest: the share of wall time that is not model time (`bench/model_overhead.py`)."""
    if duration_s <= 0 or model_ms <= 0:
        raise ValueError(f"duration_s={duration_s}, model_ms={model_ms}: need both > 0")
    per_s = answered / duration_s  # batches per second (one request per batch)
    device_ms = device_s / device_batches * 1e3 if device_batches > 0 else None  # None: the server ran no batch
    model = per_s * model_ms / 1e3
    return {
        "batch": batch, "batches_per_s": per_s, "images_per_s": per_s * batch, "model_ms": model_ms,
        "device_ms": device_ms, "model_share": model, "overhead": 1.0 - model,
        "device_share": per_s * device_ms / 1e3 if device_ms is not None else None,
        "wall_ms_per_batch": 1e3 / per_s if per_s else None,
    }  # fmt: skip
