"""The open loop from several sender processes: every arrival recorded once, from its own request, on
one schedule; a sender that dies loses its arrivals visibly, not silently."""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from otas.bench import openloop
from otas.bench.openloop import check_senders, send_open_loop
from otas.bench.replay import coalesce
from otas.server.waited import WAITED, waited_ms
from otas.sim.traces import Trace


@contextmanager
def echo_server() -> Iterator[tuple[str, list[tuple[float, list[int], str | None]]]]:
    """A minimal aiohttp server on loopback, in a thread: it answers each POST with the arrival ids
    it carried (503 when the first id is 4 mod 5), and logs (perf_counter time, ids, the stated
    wait's header) per request."""
    from aiohttp import web

    seen: list[tuple[float, list[int], str | None]] = []
    started = threading.Event()
    box: dict = {}

    async def infer(request: web.Request) -> web.Response:
        ids = json.loads(await request.read())["ids"]
        seen.append((time.perf_counter(), ids, request.headers.get(WAITED)))
        if ids[0] % 5 == 4:
            return web.json_response({"error": "busy"}, status=503)
        return web.json_response({"ids": ids})

    def serve() -> None:
        loop = box["loop"] = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/infer", infer)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        box["port"] = runner.addresses[0][1]
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10), "the echo server did not start"
    try:
        yield f"http://127.0.0.1:{box['port']}/infer", seen
    finally:
        box["loop"].call_soon_threadsafe(box["loop"].stop)
        thread.join(10)


def parse_many(status: int, raw: bytes, n: int) -> list[dict]:
    """The ids answered, and the process that read the answer (the sender)."""
    if status != 200:
        return [{"reason": "busy", "pid": os.getpid()}] * n
    return [{"id": i, "pid": os.getpid()} for i in json.loads(raw)["ids"]]


def workload(n: int = 300, coalesce_ms: float = 0.0):
    """n arrivals of two applications over 0.6 s: (bodies, arrival_ms, groups, members)."""
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 600, n))
    groups = (
        coalesce(Trace("t", t, [("a", "b")[k] for k in rng.integers(0, 2, n)]), coalesce_ms) if coalesce_ms else None
    )
    members = groups.members if groups else [[i] for i in range(n)]
    bodies = [json.dumps({"ids": m}).encode() for m in members]
    return bodies, t, groups, members


@pytest.mark.parametrize("senders, coalesce_ms", [(1, 0.0), (2, 0.0), (3, 0.0), (3, 5.0)])
def test_every_arrival_has_one_record_from_its_own_request_on_one_schedule(senders, coalesce_ms):
    bodies, t, groups, members = workload(coalesce_ms=coalesce_ms)
    one = lambda status, raw: parse_many(status, raw, 1)[0]  # noqa: E731
    with echo_server() as (url, seen):
        recs = send_open_loop(url, bodies, t, 10.0, parse_many if groups else one, groups, limit=64, senders=senders)
    assert len(recs) == len(t) and len(seen) == len(bodies)  # every request sent, exactly once
    assert sorted(i for _, ids, _ in seen for i in ids) == list(range(len(t)))
    pids = {}
    for k, m in enumerate(members):
        for i in m:
            r = recs[i]
            assert r["status"] == (503 if m[0] % 5 == 4 else 200)
            assert r["status"] == 503 or r["id"] == i  # the answer to its own request
            assert math.isfinite(r["lag_ms"]) and math.isfinite(r["latency_ms"])
            assert -1 <= r["lag_ms"] <= r["latency_ms"] + 1e-6
            assert r["lag_ms"] >= t[m[-1]] - t[i] - 1  # a coalesced arrival waits for its request's last
            pids.setdefault(k % senders, set()).add(r["pid"])
    # request k went from sender k % senders: one process each, all distinct, none of them this one
    assert all(len(p) == 1 for p in pids.values()) and len(set.union(*pids.values())) == senders
    assert (pids[0] == {os.getpid()}) == (senders == 1)
    # one start time for every sender: the server sees each request at start + its send time
    send_ms = groups.send_ms if groups else t
    k_of = {m[0]: k for k, m in enumerate(members)}
    starts = [at - send_ms[k_of[ids[0]]] / 1e3 for at, ids, _ in seen]
    assert max(starts) - min(starts) < 0.25


@pytest.mark.parametrize("senders", [1, 2])
def test_each_request_states_its_first_arrivals_wait(senders):
    bodies, t, groups, _ = workload(coalesce_ms=20.0)
    with echo_server() as (url, seen):
        recs = send_open_loop(url, bodies, t, 10.0, parse_many, groups, limit=64, senders=senders, waited=WAITED)
        told, seen[:] = list(seen), []
        send_open_loop(url, bodies, t, 10.0, parse_many, groups, limit=64, senders=senders)
    assert len(told) == len(seen) == len(bodies)
    for _, ids, w in told:
        ms = waited_ms([w])  # what the server reads
        assert abs(ms - max(recs[ids[0]]["lag_ms"], 0.0)) < 1e-2  # the first arrival's lag when sent ...
        assert ms >= t[ids[-1]] - t[ids[0]] - 1  # ... which covers the coalescing window it waited
    assert all(w is None for *_, w in seen)  # a replay told not to states nothing


@pytest.mark.parametrize("how", ["exit", "raise"])
def test_a_dead_sender_loses_its_arrivals_visibly_and_the_others_are_kept(monkeypatch, how):
    bodies, t, _, _ = workload(n=90)
    real = openloop._sender

    def dies_second(j, senders, limit, conn):
        if j == 1:
            if how == "exit":
                os._exit(3)
            raise RuntimeError("a sender that fails")
        real(j, senders, limit, conn)

    monkeypatch.setattr(openloop, "_sender", dies_second)
    one = lambda status, raw: parse_many(status, raw, 1)[0]  # noqa: E731
    with echo_server() as (url, seen):
        recs = send_open_loop(url, bodies, t, 10.0, one, senders=3)
    code = 3 if how == "exit" else 1
    for i, r in enumerate(recs):
        if i % 3 == 1:
            assert r == {
                "status": -1,
                "reason": f"sender process 2 of 3 failed (exit code {code}) and returned no records",
            }
        else:
            assert r["status"] == (503 if i % 5 == 4 else 200) and math.isfinite(r["latency_ms"])
    assert sorted(i for _, ids, _ in seen for i in ids) == [i for i in range(len(t)) if i % 3 != 1]


def test_senders_are_checked():
    for bad in (0, -1, 65):
        with pytest.raises(ValueError, match=f"--senders {bad}: use 1..64"):
            check_senders(bad)
    check_senders(64)
