"""HTTP in front-end processes, one engine process (`otas serve --http-workers`): a request through a
front end gets the engine's one answer, refusals and cancellations cross the process boundary, the
other endpoints are the engine process's own, and neither a dying front end nor a shutdown loses
an accepted request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from otas.config import SchedulerConfig
from otas.engine.noop import NoopRunner, PacedRunner
from otas.engine.serving import NotServed
from otas.server.intake import Intake
from otas.server.main import build, default_max_queue
from otas.server.remote import RemoteEngine
from otas.server.ring import Segment, SegmentHandle
from otas.server.workers import Workers, WorkerSpec, bind, worker_routes
from tests.server.helpers import APPS, paced_profile, requests_total

SIZE = 8


def engine_app(base_ms: float = 5.0, max_queue: int = 0, admin_token: str = ""):
    profile = paced_profile(base_ms, 0.1)
    runner = PacedRunner(NoopRunner(APPS, image_size=SIZE, max_batch=16), profile)
    cfg = SchedulerConfig(max_batch=16)
    cfg.max_queue = max_queue or default_max_queue(profile, APPS, 16)
    app, engine = build(runner, profile, APPS, "otas", cfg, admin_token=admin_token)
    return app, engine


def with_front_end(test, segment: int = 0, **kw):
    """Run `await test(remote, engine, intake)` with the engine's app up, its intake on a Unix socket
    and one RemoteEngine connected to it (with a shared segment of `segment` bytes, if > 0)."""

    async def main():
        app, engine = engine_app(**kw)
        with tempfile.TemporaryDirectory() as d:
            path = str(Path(d) / "e.sock")
            async with app.router.lifespan_context(app):
                intake = Intake(engine, app, 1 << 20)
                app.state.metrics.watch(intake.fronts)  # as run_engine_process does
                await intake.start(path)
                handle = None
                if segment:
                    seg = Segment.new(segment)
                    intake.segments["t"], handle = seg, SegmentHandle(os.dup(seg.fd), segment)
                remote = RemoteEngine(path, drain_s=5.0, segment=handle, token="t")
                await remote.start()
                try:
                    return await test(remote, engine, intake)
                finally:
                    await remote.stop()
                    await intake.close()

    return asyncio.run(main())


def pixels(n: int, seed: int = 0) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8))


def test_a_request_through_a_front_end_gets_the_engines_answers():
    async def test(remote, engine, intake):
        assert remote.image_size == SIZE and set(remote.apps) == {a.name for a in APPS}
        assert abs(remote.now_ms() - engine.now_ms()) < 50  # one clock
        out = await remote.submit_many("lowlight", pixels(5), remote.now_ms())
        one = await remote.submit("novel", pixels(1)[0])
        return out, one

    out, one = with_front_end(test)
    assert [s.app for s in out] == ["lowlight"] * 5 and one.app == "novel"
    assert len({s.id for s in out}) == 5
    assert all(s.deadline_met and s.utility > 0 and s.batch_size >= 5 for s in out)
    assert out[0].classes == NoopRunner(APPS).classes["lowlight"]
    np.testing.assert_allclose(np.stack([s.probs for s in out]), 0.2, rtol=1e-6)


def seen_by(engine) -> list[np.ndarray]:
    """The pixels of each request the engine is given, as it gets them."""
    seen, submit = [], engine.submit_many

    def spy(app, images, arrival_ms=None):
        seen.append(np.stack(images).copy())
        return submit(app, images, arrival_ms)

    engine.submit_many = spy
    return seen


@pytest.mark.parametrize("segment", [0, 1 << 16, 700])
def test_pixels_arrive_as_sent_in_the_shared_segment_or_in_the_frame(segment):
    sent = [np.stack(pixels(n, seed=n)) for n in (3, 1, 9, 4)]

    async def test(remote, engine, intake):
        seen = seen_by(engine)
        out = await asyncio.gather(*(remote.submit_many("blur", list(p)) for p in sent))
        ring = remote._proto.ring
        return seen, out, None if ring is None else (ring.used, len(ring.live))

    seen, out, ring = with_front_end(test, segment=segment)
    assert [len(o) for o in out] == [3, 1, 9, 4]
    for got, want in zip(seen, sent, strict=True):
        np.testing.assert_array_equal(got, want)
    # a 700-byte segment holds only the one-image request (192 B); the rest travel in their frames
    assert ring in ((0, 0), None)


def test_a_cancelled_requests_place_in_the_segment_is_freed_once_the_engine_lets_go():
    async def test(remote, engine, intake):
        ring = remote._proto.ring
        busy = remote.submit_many("blur", pixels(16), remote.now_ms())  # on the device for 200 ms
        await asyncio.sleep(0.05)
        fut = remote.submit_many("blur", pixels(3, 1), remote.now_ms())
        mine = list(ring.live)[-1]
        await asyncio.sleep(0.02)
        held = mine in ring.live
        fut.cancel()
        for _ in range(500):
            if mine not in ring.live:
                break
            await asyncio.sleep(0.01)
        freed = mine not in ring.live
        await busy
        return held, freed, len(ring.live)

    assert with_front_end(test, segment=1 << 16, base_ms=200.0) == (True, True, 0)


def test_refusals_cross_the_process_boundary():
    async def test(remote, engine, intake):
        with pytest.raises(NotServed) as unknown:  # seen in the front end: nothing sent
            remote.submit_many("nope", pixels(1))
        with pytest.raises(NotServed) as full:  # seen in the engine: 8 images > max_queue 4
            await remote.submit_many("blur", pixels(8))
        return unknown.value, full.value

    unknown, full = with_front_end(test, max_queue=4)
    assert unknown.reason == "unknown_app"
    assert (full.outcome, full.reason) == ("rejected", "queue_full")


def test_a_cancelled_request_leaves_the_engines_queue():
    async def test(remote, engine, intake):
        busy = remote.submit_many("blur", pixels(16), remote.now_ms())  # a batch on the device for 200 ms
        await asyncio.sleep(0.05)
        fut = remote.submit_many("blur", pixels(3, 1), remote.now_ms())
        await asyncio.sleep(0.05)
        queued = engine.open_requests("blur")
        fut.cancel()
        for _ in range(100):
            if engine.open_requests("blur") <= 16:
                break
            await asyncio.sleep(0.01)
        left = engine.open_requests("blur")
        await busy
        return queued, left

    queued, left = with_front_end(test, base_ms=200.0)
    assert queued == 16 + 3 and left <= 16


def test_other_endpoints_are_the_engine_processs_own_and_app_changes_reach_the_front_end():
    async def test(remote, engine, intake):
        status, headers, body = await remote.call({"method": "GET", "path": "/v1/config", "headers": []}, b"")
        new = json.dumps({"name": "late", "slo_ms": 900, "utility": 3.0, "task": "blur"}).encode()
        auth = [["authorization", "Bearer t"], ["content-type", "application/json"]]
        made = await remote.call({"method": "POST", "path": "/v1/apps", "headers": auth}, new)
        served = await remote.submit_many("late", pixels(2))  # the change came before its answer
        missing = await remote.call({"method": "GET", "path": "/v2/nowhere", "headers": []}, b"")
        return status, dict(headers), json.loads(body), made[0], set(remote.apps), served, missing[0]

    status, headers, config, made, apps, served, missing = with_front_end(test, admin_token="t")
    assert status == 200 and headers["content-type"] == "application/json"
    assert config["policy"] == "otas" and {a["name"] for a in config["apps"]} == {a.name for a in APPS}
    assert made == 201 and "late" in apps and [s.app for s in served] == ["late", "late"]
    assert missing == 404


def test_an_admin_call_whose_client_leaves_still_runs_to_its_end_everywhere():
    async def test(remote, engine, intake):
        new = json.dumps({"name": "late", "slo_ms": 900, "utility": 3.0, "task": "blur"}).encode()
        auth = [["authorization", "Bearer t"], ["content-type", "application/json"]]
        call = remote.call({"method": "POST", "path": "/v1/apps", "headers": auth}, new)
        task = asyncio.ensure_future(call)
        await asyncio.sleep(0)
        task.cancel()  # the client went away at once
        for _ in range(200):
            if "late" in remote.apps:
                break
            await asyncio.sleep(0.01)
        return set(engine.apps), set(remote.apps)

    in_engine, in_front = with_front_end(test, admin_token="t")
    assert "late" in in_engine and "late" in in_front


def test_a_request_too_large_for_a_frame_is_refused_not_the_front_end():
    async def test(remote, engine, intake):
        remote._proto.max_frame = 4096  # as a server with a small body limit
        with pytest.raises(NotServed) as busy:  # fits the segment (700 B), but the segment is taken
            hold = remote.submit_many("blur", pixels(3), remote.now_ms())  # 576 B in the segment
            remote.submit_many("blur", pixels(3, 1))
        with pytest.raises(NotServed) as large:
            remote.submit_many("blur", pixels(30))  # 5,760 B: never fits
        await hold
        return busy.value.reason, large.value.reason, len(intake.conns), len(remote._proto.ring.live)

    assert with_front_end(test, segment=700) == ("pixels_busy", "too_large", 1, 0)


def test_the_front_ends_door_counts_reach_the_engines_metrics_and_outlive_the_front_end():
    from types import SimpleNamespace

    def front_requests(text: str) -> dict[str, float]:
        out = {}
        for line in text.splitlines():
            if line.startswith("otas_front_requests_total{"):
                out[line.split('outcome="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        return out

    async def test(remote, engine, intake):
        remote.door = SimpleNamespace(admitted=7, refused=3, in_flight=2, limit=40, rate=900.0)
        remote.report()
        await asyncio.sleep(0.05)
        _, _, body = await remote.call({"method": "GET", "path": "/metrics", "headers": []}, b"")
        during = front_requests(body.decode())
        engine_door = intake.app.state.guard.door  # the engine process's own (gRPC's), counted too
        for c in list(intake.conns):
            c.transport.close()  # the front end goes; its counts stay
        await asyncio.sleep(0.05)
        after = (intake.fronts.admitted, intake.fronts.refused, intake.fronts.in_flight)
        return during, after, (engine_door.admitted, engine_door.refused)

    during, after, own = with_front_end(test)
    assert during == {"admitted": 7 + own[0], "overloaded": 3 + own[1]}
    assert after == (7, 3, 0)


def test_the_front_ends_delivery_times_reach_the_engine():
    async def test(remote, engine, intake):
        before = len(engine.delivery)
        for ms in (1.0, 2.0, 3.0):
            remote.delivered(ms)
        remote.report()
        remote.report()  # nothing new: nothing sent twice
        for _ in range(100):
            if len(engine.delivery) >= before + 3:
                break
            await asyncio.sleep(0.01)
        return before, len(engine.delivery), engine.delivery.ms

    before, after, ms = with_front_end(test)
    assert after == before + 3 and ms == 3.0


def test_the_front_end_answers_its_own_readiness_and_the_models():
    paths = {r.path: r.endpoint.__name__ for r in worker_routes()}
    assert paths["/v2/models/{model}/ready"] == "model_ready" and paths["/v2/health/ready"] == "ready"
    assert paths["/{path:path}"] == "proxy"


def test_a_port_held_by_another_server_is_refused():
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        with pytest.raises(ValueError, match="cannot listen there"):
            bind("127.0.0.1", held.getsockname()[1], probe=True)
    finally:
        held.close()
    sock = bind("127.0.0.1", 0, probe=True)  # a free one is picked, and shareable by the front ends
    try:
        bind("127.0.0.1", sock.getsockname()[1]).close()
    finally:
        sock.close()


def test_a_front_end_that_keeps_dying_is_restarted_ever_more_slowly():
    class Dead:
        exitcode = 1

        def is_alive(self):
            return False

    workers = Workers(1, WorkerSpec("", None, None), ("127.0.0.1", 0))
    spawned = []

    def spawn(i):
        spawned.append(time.monotonic())
        workers.born[i] = time.monotonic()
        return Dead()

    workers._spawn = spawn
    workers.procs = [spawn(0)]

    async def main():
        task = asyncio.ensure_future(workers.supervise(period_s=0.05))
        await asyncio.sleep(2.2)
        workers.stopping = True
        await task

    asyncio.run(main())
    gaps = np.diff(spawned)
    assert 3 <= len(spawned) <= 5 and all(b > a for a, b in zip(gaps, gaps[1:], strict=False)), gaps


def test_when_the_engine_process_goes_the_front_end_answers_what_it_holds_and_stops():
    async def test(remote, engine, intake):
        lost = asyncio.Event()
        remote.on_lost = lost.set
        busy = remote.submit_many("blur", pixels(16), remote.now_ms())
        await asyncio.sleep(0.05)
        for c in list(intake.conns):
            c.transport.abort()
        await asyncio.wait_for(lost.wait(), 5)
        with pytest.raises(NotServed) as gone:
            await busy
        with pytest.raises(NotServed) as after:
            remote.submit_many("blur", pixels(1))
        return gone.value, after.value, remote.ready

    gone, after, ready = with_front_end(test, base_ms=300.0)
    assert gone.reason == "engine_gone" and not ready
    assert after.reason == "shutting_down"


# -- the whole server, in processes ----------------------------------------------------------------
def uint8_request(n: int, app: str = "blur", seed: int = 0) -> tuple[bytes, dict[str, str]]:
    raw = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8).tobytes()
    inp = {"name": "image", "datatype": "UINT8", "shape": [n, 32, 32, 3], "parameters": {"binary_data_size": len(raw)}}
    head = json.dumps({"parameters": {"app": app}, "inputs": [inp]}).encode()
    return head + raw, {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}


def children(pid: int) -> set[int]:
    """The front-end processes of server `pid`: its children that lead their own process group."""
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            _, ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
            if int(ppid) == pid and int(pgrp) == int(d):
                out.add(int(d))
    return out


def wait_children(pid: int, k: int, timeout_s: float = 60.0, without: int = -1) -> set[int]:
    """The server's front ends once there are `k` of them (and `without` is not one)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        now = children(pid)
        if len(now) == k and without not in now:
            return now
        time.sleep(0.1)
    return children(pid)


@pytest.fixture
def workers_server(tmp_path):
    from otas.bench.local_server import free_port, wait_ready

    prof = tmp_path / "paced.json"
    paced_profile(40.0, 1.0, max_batch=64).save(prof)
    apps = tmp_path / "apps.yaml"
    lines = [f"  - {{name: {a.name}, slo_ms: 3000, utility: 1, task: {a.task}}}\n" for a in APPS]
    apps.write_text("apps:\n" + "".join(lines))
    port = free_port()
    cmd = [sys.executable, "-m", "otas.cli", "serve", "--noop", "--paced", "--profile", str(prof), "--apps", str(apps),
           "--http-workers", "2", "--port", str(port), "--grpc-port", "0", "--log-level", "info",
           "--drain-s", "0.2"]  # fmt: skip
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout_s=120)
        end = time.monotonic() + 120
        while '"event": "serve"' not in (tmp_path / "serve.log").read_text():  # every front end connected
            assert proc.poll() is None and time.monotonic() < end, (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        log.close()


def send_many(url: str, k: int, n: int, first: threading.Event | None = None) -> list[tuple[int, int]]:
    """(status, answers) of `k` concurrent requests of `n` images (status -2: refused connection, -1:
    no answer on an accepted one); `first` is set at the first answer."""

    model = httpx.get(f"{url}/v1/config", timeout=30).json()["model"]

    def one(i: int) -> tuple[int, int]:
        body, headers = uint8_request(n, seed=i)
        try:
            r = httpx.post(f"{url}/v2/models/{model}/infer", content=body, headers=headers, timeout=60)
        except httpx.ConnectError:
            return -2, 0  # never accepted (the server had stopped listening)
        except httpx.HTTPError:
            return -1, 0  # accepted, then lost
        finally:
            if first is not None:
                first.set()
        if r.status_code != 200:
            return r.status_code, 0
        n_head = int(r.headers.get("inference-header-content-length", len(r.content)))
        outs = json.loads(r.content[:n_head])["outputs"]
        return 200, outs[0]["shape"][0]

    with ThreadPoolExecutor(k) as pool:
        return list(pool.map(one, range(k)))


def test_the_server_in_worker_processes_answers_every_request_once(workers_server):
    url, proc = workers_server
    got = send_many(url, 24, 8)
    assert got == [(200, 8)] * 24
    assert requests_total(url, "served") == 24 * 8  # one engine counts them all
    assert len(wait_children(proc.pid, 2)) == 2


def test_a_front_end_parses_large_json_bodies_itself(workers_server):
    """A front end is a daemon process and cannot start a JSON parser process of its own: a body over
    the inline limit (64 KiB) is parsed on its loop, not answered 500."""
    url, _ = workers_server
    model = httpx.get(f"{url}/v1/config", timeout=30).json()["model"]
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (8, 32, 32, 3)).ravel().tolist()  # 8 images as JSON numbers: ~100 KB
    body = {"parameters": {"app": APPS[0].name}, "inputs": [{"name": "image", "datatype": "UINT8",
            "shape": [8, 32, 32, 3], "data": data}]}  # fmt: skip
    raw = json.dumps(body).encode()
    assert len(raw) > 64 << 10
    r = httpx.post(f"{url}/v2/models/{model}/infer", content=raw, headers={"content-type": "application/json"},
                   timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"][0] == 8


def established(port: int, pid: int) -> int:
    """TCP connections of process `pid` on local port `port`, established."""
    mine = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                mine.add(link[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                n += int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01" and cols[9] in mine
    return n


def test_a_burst_of_connections_is_spread_over_the_front_ends(workers_server):
    url, proc = workers_server
    port = int(url.rsplit(":", 1)[1])
    fronts = wait_children(proc.pid, 2)
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]  # at once, as a load test opens
    try:
        for c in conns:
            c.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        for c in conns:
            c.settimeout(30)
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
        per = {p: established(port, p) for p in fronts}
    finally:
        for c in conns:
            c.close()
    assert sum(per.values()) == 32 and min(per.values()) >= 4, per


def test_a_front_end_that_dies_is_replaced(workers_server):
    url, proc = workers_server
    first = wait_children(proc.pid, 2)
    victim = max(first)
    os.kill(victim, signal.SIGKILL)
    after = wait_children(proc.pid, 2, without=victim)
    assert victim not in after and len(after) == 2
    time.sleep(1.0)  # the new one connected (it accepts only once it has)
    assert send_many(url, 8, 4) == [(200, 4)] * 8


def test_sigterm_answers_the_requests_in_flight_then_stops(workers_server):
    url, proc = workers_server
    first = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(send_many, url, 16, 16, first)
        assert first.wait(60)
        proc.send_signal(signal.SIGTERM)  # the others in flight
        got = sending.result(90)
    assert proc.wait(60) == 0
    # every request the server accepted is answered: served, or refused 503 while draining; one sent
    # after the last front end stopped listening is refused its connection (-2), as by any server
    assert all(status == 200 and n == 16 or status in (503, -2) for status, n in got), got
    assert sum(status == 200 for status, _ in got) >= 1


def test_hostile_requests_get_their_answers_from_a_front_end_and_it_keeps_serving(workers_server):
    url, proc = workers_server
    port = int(url.rsplit(":", 1)[1])
    model = httpx.get(f"{url}/v1/config", timeout=30).json()["model"]
    infer = f"{url}/v2/models/{model}/infer"
    with socket.create_connection(("127.0.0.1", port)) as s:  # a body over the limit, announced
        s.sendall(f"POST /v2/models/{model}/infer HTTP/1.1\r\nhost: x\r\ncontent-length: {9 << 20}\r\n\r\n".encode())
        s.settimeout(30)
        big = s.recv(4096)
    bad_json = httpx.post(infer, content=b'{"inputs": [', headers={"content-type": "application/json"}, timeout=30)
    no_model = httpx.post(f"{url}/v2/models/other/infer", json={"inputs": []}, timeout=30)
    no_token = httpx.post(f"{url}/v1/apps", json={"name": "x", "slo_ms": 100, "utility": 1, "task": "blur"}, timeout=30)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        s.settimeout(30)
        garbage = s.recv(4096)
    assert big.startswith(b"HTTP/1.1 413") and b"too_large" in big
    assert bad_json.status_code == 400 and "reason" in bad_json.json()
    assert no_model.status_code == 404
    assert no_token.status_code == 403 and no_token.json()["reason"] == "admin_disabled"
    assert garbage.startswith(b"HTTP/1.1 400")
    assert send_many(url, 4, 8) == [(200, 8)] * 4
