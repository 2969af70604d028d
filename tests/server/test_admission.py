"""The front door (`otas.server.admission`): a host that is the bottleneck keeps serving about its
capacity on time under overload, refusing the excess on arrival; nothing is lost or miscounted.

The queue tests are discrete-event simulations on a fake clock (no timing), over generated
service times, budgets, loads and seeds. The server tests drive a real no-op server (its own
process) past its measured capacity and assert ratios with margin."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from otas.server.admission import FrontDoor, Ticket

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def simulate(service_s: float, budget_ms: float, load: float, seed: int, n: int = 6000, door: bool = True):
    """A FIFO single server (the host) with Poisson arrivals at `load` × its rate, admitted by a
    FrontDoor (or not): (on-time answers per second, waits of the admitted, the door)."""
    rng = np.random.default_rng(seed)
    clock = Clock()
    d = FrontDoor(lambda: budget_ms, clock=clock)
    arrivals = np.cumsum(rng.exponential(service_s / load, n))
    service = rng.uniform(0.5, 1.5, n) * service_s  # payloads of varied cost
    queue: list[tuple[float, float]] = []  # (arrival, service) admitted, FIFO
    free_at, on_time, waits = 0.0, 0, []
    slo_s = budget_ms / 1e3 / 0.5  # the door's budget is half the SLO (the server's default share)

    def finish_until(t: float) -> None:
        nonlocal free_at, on_time
        while queue and max(free_at, queue[0][0]) + queue[0][1] <= t:
            a, s = queue.pop(0)
            free_at = max(free_at, a) + s
            clock.t = free_at
            d.done() if door else None
            waits.append(free_at - a)
            on_time += free_at - a <= slo_s

    for a, s in zip(arrivals, service, strict=True):
        finish_until(a)
        clock.t = a
        if not door or d.admit():
            d.start() if door else None
            queue.append((a, s))
    finish_until(np.inf)
    return on_time / arrivals[-1], np.array(waits), d


@pytest.mark.parametrize("service_ms", [0.3, 1.0, 4.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_goodput_holds_past_capacity(service_ms, seed):
    """On-time goodput at 2× and 4× the host's rate stays >= 80 % of that at 1× (without the door it
    collapses: every request waits behind all the others)."""
    s = service_ms / 1e3
    budget = 10 * service_ms * (1 + seed)  # a budget of 10-20 services
    at1 = simulate(s, budget, 1.0, seed)[0]
    for load in (2.0, 4.0):
        good, waits, door = simulate(s, budget, load, seed)
        assert good >= 0.8 * at1, (load, good, at1)
        assert good >= 0.7 / s  # about the capacity, on time
        # within the budget, once measured (the first window runs before the rate is known)
        assert np.percentile(waits[200:], 99) <= 1.5 * budget / 1e3 + 2 * s
        assert door.refused > 0 and door.in_flight == 0
    collapsed = simulate(s, budget, 2.0, seed, door=False)[0]
    assert collapsed < 0.2 * at1


def test_light_load_sets_no_limit_and_saturation_measures_the_rate():
    """At light load a window measures one request's latency, not the host's throughput: it sets no
    limit (so a burst is never refused) and never lowers a measured rate. Windows in which the front
    end held at least `floor` requests measure the throughput, and the limit follows it."""
    clock = Clock()
    d = FrontDoor(lambda: 20.0, clock=clock, floor=4)
    for _ in range(64):  # alone: 1 ms each, gaps between
        assert d.admit()
        d.start()
        clock.t += 1e-3
        d.done()
        clock.t += 10e-3
    assert d.rate is None and d.limit is None
    assert all(d.admit() for _ in range(500))  # a burst far past any floor is admitted
    d.admitted = 0
    for _ in range(20):  # saturated: 8 held at a time, each batch of 8 done in 2 ms (4,000/s)
        for _ in range(4):
            assert sum(d.admit() for _ in range(8)) == 8
            for _ in range(8):
                d.start()
            clock.t += 2e-3
            for _ in range(8):
                d.done()
    assert d.rate == pytest.approx(4000, rel=0.01) and d.limit in (79, 80)  # 4,000/s × 20 ms
    for _ in range(64):  # light again: 1,000/s alone is a lower bound, the saturated rate stands
        assert d.admit()
        d.start()
        clock.t += 1e-3
        d.done()
        clock.t += 10e-3
    assert d.rate == pytest.approx(4000, rel=0.01)


def simulate_parallel(service_s: float, budget_ms: float, load: float, seed: int, servers: int, burst: int):
    """A host that works on `servers` requests at once (decode threads, processes); requests arrive
    alone, and one arrival in ten is a burst of `burst` at once (a bursty trace); `load` × its
    capacity. Returns the door."""
    import heapq

    rng = np.random.default_rng(seed)
    clock = Clock()
    d = FrontDoor(lambda: budget_ms, clock=clock)
    sizes = np.where(rng.random(2000) < 0.1, burst, 1)
    gaps = rng.exponential(sizes.mean() * service_s / (servers * load), len(sizes))
    free = [0.0] * servers  # when each server is next free
    ends: list[float] = []  # finish times of admitted requests, a heap
    for t, size in zip(np.cumsum(gaps), sizes, strict=True):
        for _ in range(size):
            while ends and ends[0] <= t:
                clock.t = heapq.heappop(ends)
                d.done()
            clock.t = t
            if d.admit():
                d.start()
                start = max(t, heapq.heappop(free))
                heapq.heappush(free, start + service_s)
                heapq.heappush(ends, start + service_s)
    return d


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("service_ms", [0.3, 4.0])
def test_nothing_refused_below_capacity(service_ms, seed):
    """A host of 4 parallel workers at a quarter of its capacity, with bursts larger than the floor:
    (almost) every request is admitted. A window of lone requests measures one request's latency, a
    quarter of this host's throughput; taken as the rate, it shut the door on parts of bursts."""
    door = simulate_parallel(service_ms / 1e3, 10 * service_ms, 1 / 4, seed, servers=4, burst=12)
    # the few refused wait behind more than the budget's worth (with 2ec5d7f's door: 0.3-1.5 %)
    assert door.refused <= 0.002 * door.admitted and door.admitted > 3000


def test_ticket_releases_once_and_checks():
    d = FrontDoor(lambda: 10.0)
    assert d.admit() and d.in_flight == 0  # admitted, its body not yet in
    t = Ticket(d)
    t.start()
    t.start()
    assert d.in_flight == 1
    t.release()
    t.release()
    assert d.in_flight == 0
    unstarted = Ticket(d)  # a request that ended before its body was complete held no place
    unstarted.release()
    assert d.in_flight == 0
    with pytest.raises(ValueError, match="floor"):
        FrontDoor(lambda: 10.0, floor=0)


# -- the real server ------------------------------------------------------------------------------
APPS_YAML = """apps:
  - {name: tight, slo_ms: 60,  utility: 1.0, task: novel}
  - {name: loose, slo_ms: 200, utility: 1.0, task: novel}
"""


def _pngs(n: int, seed: int) -> list[bytes]:
    from PIL import Image

    rng, out = np.random.default_rng(seed), []
    for _ in range(n):
        side = int(rng.integers(48, 97))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _body(app: str, png: bytes) -> bytes:
    data = base64.b64encode(png).decode()
    return json.dumps(
        {"parameters": {"app": app}, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [data]}]}
    ).encode()


@pytest.fixture(scope="module")
def noop_server(tmp_path_factory):
    from otas.bench.local_server import free_port, wait_ready

    apps = tmp_path_factory.mktemp("apps") / "apps.yaml"
    apps.write_text(APPS_YAML)
    port = free_port()
    cmd = [sys.executable, "-m", "otas.cli", "serve", "--noop", "--apps", str(apps), "--port", str(port),
           "--grpc-port", "0", "--log-level", "warning", "--policy", "fixed:0", "--json-workers", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout_s=60, every_s=0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


async def _closed(url: str, bodies: list[bytes], seconds: float) -> float:
    import aiohttp

    done, stop = [0], time.perf_counter() + seconds
    async with aiohttp.ClientSession() as c:

        async def worker(k: int):
            i = k
            while time.perf_counter() < stop:
                async with c.post(f"{url}/v2/models/noop/infer", data=bodies[i % len(bodies)]) as r:
                    await r.read()
                    done[0] += r.status == 200
                i += 16

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(16)))
        return done[0] / (time.perf_counter() - t0)


async def _open(url: str, bodies: list[bytes], apps: list[str], rate: float, seconds: float, seed: int):
    import aiohttp

    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1 / rate, int(rate * seconds * 1.3)))
    times = times[times < seconds]
    out: list[tuple[str, int, str, float]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4000)) as c:

        async def one(i: int, at: float) -> None:
            app = apps[i % len(apps)]
            async with c.post(f"{url}/v2/models/noop/infer", data=bodies[i % len(bodies)]) as r:
                raw = await r.read()
            reason = "" if r.status == 200 else json.loads(raw)["reason"]
            out.append((app, r.status, reason, (time.perf_counter() - at) * 1e3))

        t0, tasks = time.perf_counter() + 0.02, []
        for i, t in enumerate(times):
            await asyncio.sleep(max(0.0, t0 + t - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i, t0 + t)))
        await asyncio.gather(*tasks)
    return out, len(times)


def _metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("seed", [3])
def test_host_bound_server_keeps_goodput_past_capacity(noop_server, seed):
    """The no-op server (the host is all there is) at 2× its measured capacity: it answers about
    its capacity on time and refuses the rest as overloaded, and /metrics counts exactly what the
    client received. (Before the front door, on-time goodput fell to ~5 % of capacity here.)"""
    url, slo = noop_server, {"tight": 60.0, "loose": 200.0}
    rng = np.random.default_rng(seed)
    apps = [["tight", "loose"][k] for k in rng.integers(0, 2, 256)]
    bodies = [_body(a, p) for a, p in zip(apps, _pngs(256, seed), strict=True)]
    cap = asyncio.run(_closed(url, bodies, 1.5))
    assert cap > 20
    before = {k: _metric(url, k) for k in ("otas_requests_total", 'otas_front_requests_total{outcome="overloaded"}')}
    res, sent = asyncio.run(_open(url, bodies, apps, 2 * cap, 2.0, seed))
    time.sleep(0.3)
    assert len(res) == sent  # every request answered: nothing lost
    ok = [r for r in res if r[1] == 200]
    on_time = sum(lat <= slo[app] for app, _, _, lat in ok)
    refused = [r for r in res if r[1] != 200]
    assert {r[1] for r in refused} <= {429, 503}
    overloaded = sum(r[2] == "overloaded" for r in refused)
    assert overloaded > 0.1 * sent
    # no collapse (before the front door: ~0.03 × cap). The margin is wide on purpose: client and
    # server share this host's cores, and a loaded CI host charges its own delays to the server;
    # the goodput bounds themselves are checked on the fake clock above
    assert on_time / 2.0 >= 0.1 * cap, (on_time, cap)
    served = _metric(url, 'otas_requests_total{app="tight",outcome="served"') + _metric(
        url, 'otas_requests_total{app="loose",outcome="served"'
    )
    # exact accounting: each client-received answer counted once, by the server's own metrics
    assert (
        _metric(url, 'otas_front_requests_total{outcome="overloaded"}')
        - before['otas_front_requests_total{outcome="overloaded"}']
        == overloaded
    )
    assert _metric(url, "otas_requests_total") - before["otas_requests_total"] == sent - overloaded
    assert served >= len(ok)


@pytest.mark.parametrize("stalled", [40, 150])
def test_stalled_uploads_hold_no_place(noop_server, stalled):
    """Inference uploads whose headers are in but whose bodies stall cost the host nothing, so they
    hold no place in the front door: normal requests sent meanwhile are all served, none refused as
    overloaded (else a few dozen idle sockets would shut the server)."""
    import socket

    url = noop_server
    host, port = url.removeprefix("http://").split(":")
    rng = np.random.default_rng(stalled)
    bodies = [_body("loose", p) for p in _pngs(16, stalled)]
    with httpx.Client(timeout=30) as c:
        for i in range(96):  # the front door measures the host's rate first
            assert c.post(f"{url}/v2/models/noop/infer", content=bodies[i % 16]).status_code == 200
    socks = []
    try:
        for _ in range(stalled):
            s = socket.create_connection((host, int(port)))
            size = int(rng.integers(10_000, 1_000_000))
            head = f"POST /v2/models/noop/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
            s.sendall(head.encode() + b'{"inputs": [')
            socks.append(s)
        time.sleep(0.3)
        with httpx.Client(timeout=30) as c:
            codes = [c.post(f"{url}/v2/models/noop/infer", content=bodies[i % 16]).status_code for i in range(48)]
        assert codes == [200] * 48, codes
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("path", ["/v2/models/noop/inf%65r", "/v2/models/noop/%69nfer", "/v2/models/noop/infer"])
def test_a_percent_encoded_inference_path_passes_the_door_counted(noop_server, path):
    """The router decodes the path, so the door judges the decoded one: `inf%65r` is `/infer`, admitted
    (and, under overload, refused) like any other inference request, never served uncounted."""
    url = noop_server
    name = 'otas_front_requests_total{outcome="admitted"}'
    before = _metric(url, name)
    r = httpx.post(url + path, content=_body("loose", _pngs(1, 0)[0]), timeout=30)
    assert r.status_code == 200, r.text
    assert _metric(url, name) == before + 1


def test_a_trailing_slash_is_not_found_not_redirected(noop_server):
    r = httpx.post(noop_server + "/v2/models/noop/infer/", content=_body("loose", _pngs(1, 0)[0]), timeout=30,
                   headers={"host": "evil.example:666"})  # fmt: skip
    assert r.status_code == 404 and "location" not in r.headers and r.json()["reason"], r.text


def test_the_door_reads_the_path_as_the_router_does():
    from otas.server.connections import _inference

    for url in (b"/v2/models/m/infer", b"/v2/models/m/inf%65r", b"/v2/models/m/infer#x", b"/v2/models/m/infer?a#b",
                b"/v1/apps/a/classif%79", b"/v1/apps/a/classify#frag"):  # fmt: skip
        assert _inference(url), url
    for url in (b"/metrics", b"/v2/models/m/ready#infer", b"/v2/models/m?x=/infer"):
        assert not _inference(url), url
