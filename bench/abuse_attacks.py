"""The attack classes of `bench/abuse.py`, each an asyncio function `attack(host, port, model, start)`
that builds its payloads, awaits `start()` (which says when to stop: `until`, monotonic) and hits a
server on loopback until then; it returns what it sent and got back. Every class is bounded in
rate, concurrency and time; nothing here leaves 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import struct
import time
import zlib
from collections import Counter
from pathlib import Path

from PIL import Image

INFER = "/v2/models/{model}/infer"
SAMPLE = Path(__file__).resolve().parents[1] / "otas" / "assets" / "sample" / "novel" / "dog" / "00000.png"


def png_header(w: int, h: int, depth: int = 8, color: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def png_pieces(n: int) -> bytes:
    """A 32×32 PNG with n empty chunks before its data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"".join(b"\0" + b"\x80" * 96 for _ in range(32)))
    ihdr = struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"abCd", b"") * n + chunk(b"IDAT", raw)
            + chunk(b"IEND", b""))  # fmt: skip


def jpeg_pieces(n: int) -> bytes:
    j = encoded("RGB", (32, 32), "JPEG")
    return j[:2] + b"\xff\xfe\x00\x02" * n + j[2:]


def encoded(mode: str, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, fmt)
    return buf.getvalue()


def request(method: str, path: str, body: bytes = b"", ctype: str = "application/json", extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n").encode() + body  # fmt: skip


async def exchange(host: str, port: int, data: bytes, timeout: float = 30.0) -> int:
    """Send one request on a new connection; the answer's status (0: no answer)."""
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        w.write(data)
        await w.drain()
        head = await asyncio.wait_for(r.readline(), timeout)
        w.close()
        return int(head.split()[1]) if head else 0
    except (OSError, TimeoutError, ValueError, IndexError):
        return 0


async def paced(until: float, rate: float, make, host: str, port: int) -> dict:
    """Open loop: `make(i)` -> bytes of request i, sent at `rate` per second until `until`."""
    statuses: Counter = Counter()
    tasks, i, t0 = [], 0, time.monotonic()

    async def one(data: bytes) -> None:
        statuses[await exchange(host, port, data)] += 1

    while time.monotonic() < until:
        tasks.append(asyncio.create_task(one(make(i))))
        i += 1
        await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
    await asyncio.gather(*tasks)
    return {"sent": i, "statuses": {str(k): v for k, v in sorted(statuses.items())}}


# -- the classes ------------------------------------------------------------------------------------
async def decode_bombs(host: str, port: int, model: str, start) -> dict:
    """4/s: tiny payloads declaring huge images (1 x 16.7 M, 4096², 100,000², at the pixel cap in RGBA),
    formats outside the list (BMP, TIFF, GIF), and small images made of 600,000 pieces (PNG chunks,
    JPEG markers)."""
    payloads = [encoded("1", (1, 16_777_216)), encoded("1", (4096, 4096)), png_header(100_000, 100_000),
                encoded("RGBA", (2048, 2048)), encoded("RGB", (512, 512), "BMP"), encoded("RGB", (512, 512), "TIFF"),
                encoded("P", (4096, 4096), "GIF"), encoded("L", (2048, 2048)), png_pieces(600_000),
                jpeg_pieces(600_000)]  # fmt: skip
    reqs = [request("POST", "/v1/apps/blur/classify", p, "image/png") for p in payloads]
    until = await start()
    return await paced(until, 4.0, lambda i: reqs[i % len(reqs)], host, port)


async def _stall(host: str, port: int, model: str, until: float) -> dict:
    """150 connections that each declare 8 MiB, send all but 1 KiB, and stall; one closed by the
    other end is reopened a second later."""
    size, got, held = 8 << 20, Counter(), []
    head = (f"POST {INFER.format(model=model)} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {size}\r\n\r\n").encode()  # fmt: skip
    block = b" " * (size - 1024)

    async def one() -> None:
        while time.monotonic() < until:
            t0 = time.monotonic()
            try:
                r, w = await asyncio.open_connection(host, port)
                w.write(head + block)
                await asyncio.wait_for(w.drain(), max(until - t0, 0.1))
                line = await asyncio.wait_for(r.readline(), max(until - time.monotonic(), 0.1))
                got[int(line.split()[1]) if line else "closed"] += 1
                w.close()
            except TimeoutError:
                got["held_to_the_end"] += 1
                w.close()
            except (OSError, ValueError, IndexError):
                got["reset"] += 1  # refused (503) and closed while the body was still coming
            held.append(time.monotonic() - t0)
            await asyncio.sleep(1.0)

    await asyncio.gather(*(one() for _ in range(150)))
    return {"connections": 150, "opened": len(held), "ends": {str(k): v for k, v in got.items()},
            "median_held_s": float(sorted(held)[len(held) // 2]) if held else None}  # fmt: skip


async def stalled_bodies(host: str, port: int, model: str, start) -> dict:
    """150 connections that each declare 8 MiB, send all but 1 KiB, and stall; one closed by the
    server is reopened a second later."""
    return await _stall(host, port, model, await start())


async def tcp_load(host: str, port: int, model: str, start) -> dict:
    """A control, not an attack: stalled_bodies' very client, against a sink in the attacker's own
    process that does what the server does to it (reads the head, answers 503, closes with the body
    unread). The host's loopback TCP work is the same; the server takes no part in it, so this shows
    what that work beside the server does to the normal traffic by itself."""

    async def sink(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await r.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        w.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    async with server:
        return await _stall("127.0.0.1", server.sockets[0].getsockname()[1], model, await start())


async def idle_connections(host: str, port: int, model: str, start) -> dict:
    """1,000 connections: half send nothing, half a partial request head; reopened a second after
    the server closes them."""
    closed = Counter()
    partial = f"POST {INFER.format(model=model)} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-le".encode()
    until = await start()

    async def one(k: int) -> None:
        while time.monotonic() < until:
            try:
                r, w = await asyncio.open_connection(host, port)
                if k % 2:
                    w.write(partial)
                t0 = time.monotonic()
                await asyncio.wait_for(r.read(), max(until - time.monotonic(), 0.1))
                closed["closed_by_server"] += 1
                closed["held_s_total"] += time.monotonic() - t0
                w.close()
            except TimeoutError:
                closed["still_open_at_end"] += 1
                w.close()
            except OSError:
                closed["refused_or_reset"] += 1
            await asyncio.sleep(1.0)

    await asyncio.gather(*(one(k) for k in range(1000)))
    n = closed["closed_by_server"]
    return {"connections": 1000, **dict(closed), "mean_held_s": closed["held_s_total"] / n if n else None}


def _uint8_json(values: int, model: str) -> bytes:
    head = json.dumps({"parameters": {"app": "blur"}, "inputs": [{"name": "image", "datatype": "UINT8",
                       "shape": [1, 32, 32, 3]}]})[:-3]  # fmt: skip
    return request(
        "POST", INFER.format(model=model), (head + ', "data": [' + ",".join(["7"] * values) + "]}]}").encode()
    )


async def big_json(host: str, port: int, model: str, start) -> dict:
    """4/s: 8 MB JSON bodies of numbers whose count does not match their shape, alternating with
    2.3 MB ones just under the most values a request can carry (parsed, then refused)."""
    big, under = _uint8_json(4_000_000, model), _uint8_json(256 * 32 * 32 * 3, model)
    until = await start()
    return await paced(until, 4.0, lambda i: big if i % 2 == 0 else under, host, port)


def _malformed(model: str) -> list[bytes]:
    png = base64.b64encode(SAMPLE.read_bytes()).decode()
    infer = INFER.format(model=model)
    uint8 = {"parameters": {"app": "blur"}, "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 32, 32, 3]}]}
    bodies = [
        ("/v1/apps/blur/classify", f'{{"image": "{png}", "top_k": 1e999}}'),
        ("/v1/apps/blur/classify", f'{{"image": "{png}", "top_k": {"9" * 5000}}}'),
        (infer, "[" * 100_000),
        (infer, '{"a":' * 50_000 + "1" + "}" * 50_000),
        (infer, json.dumps({**uint8, "inputs": [{**uint8["inputs"][0], "data": ["7"] * 3072}]})),
        (infer, json.dumps({**uint8, "inputs": [{**uint8["inputs"][0], "data": [7.5] * 3072}]})),
        (
            infer,
            json.dumps(
                {
                    "parameters": {"app": "blur"},
                    "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1], "data": [png]}],
                }
            ),
        ),  # fmt: skip
    ]
    out = [request("POST", p, b.encode()) for p, b in bodies]
    out.append(request("POST", "/v1/apps/blur/classify", png_header(100_000, 100_000), "image/png"))
    return out


async def malformed(host: str, port: int, model: str, start) -> dict:
    """20/s: the client faults that were 500s or silently accepted (huge numbers, deep nesting,
    bomb headers, strings and floats as UINT8, BYTES of shape [1, 1])."""
    bodies = _malformed(model)
    until = await start()
    return await paced(until, 20.0, lambda i: bodies[i % len(bodies)], host, port)


async def multi_image(host: str, port: int, model: str, start) -> dict:
    """1/s: 256-image requests for applications whose deadline they cannot meet."""
    png = base64.b64encode(SAMPLE.read_bytes()).decode()
    bodies = [request("POST", INFER.format(model=model), json.dumps({"parameters": {"app": app}, "inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [256], "data": [png] * 256}]}).encode())
        for app in ("novel", "lowlight")]  # fmt: skip
    until = await start()
    return await paced(until, 1.0, lambda i: bodies[i % 2], host, port)


async def abandoned(host: str, port: int, model: str, start) -> dict:
    """20/s: requests of 8 images whose clients leave as soon as they are sent (before they run)."""
    png = base64.b64encode(SAMPLE.read_bytes()).decode()
    body = request("POST", INFER.format(model=model), json.dumps({"parameters": {"app": "blur"}, "inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [8], "data": [png] * 8}]}).encode())  # fmt: skip
    until = await start()
    sent, t0 = 0, time.monotonic()
    while time.monotonic() < until:
        try:
            _, w = await asyncio.open_connection(host, port)
            w.write(body)
            await w.drain()
            w.close()
        except OSError:
            pass
        sent += 1
        await asyncio.sleep(max(0.0, t0 + sent / 20.0 - time.monotonic()))
    return {"sent": sent, "images": 8 * sent}


async def valid_load(host: str, port: int, model: str, start) -> dict:
    """A control, not an attack: 0.8/s plain 32×32 PNG classify requests for `blur`, the rate of the
    valid images among decode_bombs' payloads (2 in 10 of its 4/s). Each is served by the model like
    any request, so this shows what that much extra legitimate load alone does to the normal traffic."""
    req = request("POST", "/v1/apps/blur/classify", encoded("RGB", (32, 32)), "image/png")
    until = await start()
    return await paced(until, 0.8, lambda i: req, host, port)


COPY_DUTY = [0.25]
"""copy_load's share of its core (set by `run`: abuse.py passes stalled_bodies' measured attacker CPU share)."""


async def copy_load(host: str, port: int, model: str, start) -> dict:
    """A control, not an attack: no request to the server at all. The attacker's core copies 8 MiB
    buffers for `COPY_DUTY` of every 10 ms, the CPU share stalled_bodies' attacker used (mostly the
    kernel copying its uploads). The two share a host with the server (on a real network the attacker
    is another machine), so this shows what that much memory traffic beside the server does to the
    normal traffic by itself, without any connection."""
    import numpy as np

    src, dst = np.ones(8 << 20, np.uint8), np.empty(8 << 20, np.uint8)
    duty, copies = COPY_DUTY[0], 0
    until = await start()
    while (now := time.monotonic()) < until:
        while time.monotonic() < now + 0.01 * duty:
            np.copyto(dst, src)
            copies += 1
        await asyncio.sleep(max(0.0, now + 0.01 - time.monotonic()))
    return {"duty": duty, "copied_gib": round(copies * 8 / 1024, 1)}


ATTACKS = {f.__name__: f for f in (decode_bombs, stalled_bodies, idle_connections, big_json, malformed, multi_image,
                                   abandoned, valid_load, copy_load, tcp_load)}  # fmt: skip
CONTROLS = ("valid_load", "copy_load", "tcp_load")
"""Phases that are load, not abuse: reported beside the attacks, held to no target."""


def run(name: str, host: str, port: int, seconds: float, model: str, ready, go, out, isolate=None, duty=None) -> None:
    """Entry point of the attack process: build the payloads, say `ready`, wait for `go`, attack for
    `seconds`; the summary, with this process's CPU time during the attack, into the queue `out`.
    `isolate`: (cpus, niceness) this process runs on and at, away from the server's cores."""
    import resource

    if isolate is not None:
        cpus, nice = isolate
        os.sched_setaffinity(0, cpus)
        os.nice(nice)

    if duty is not None:
        COPY_DUTY[0] = duty
    cpu = [0.0]

    async def start() -> float:
        ready.set()
        await asyncio.to_thread(go.wait)
        r = resource.getrusage(resource.RUSAGE_SELF)
        cpu[0] = r.ru_utime + r.ru_stime
        return time.monotonic() + seconds

    summary = asyncio.run(ATTACKS[name](host, port, model, start))
    r = resource.getrusage(resource.RUSAGE_SELF)
    out.put({**summary, "attacker_cpu_s": round(r.ru_utime + r.ru_stime - cpu[0], 2)})
