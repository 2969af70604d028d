"""The open loop of `otas bench replay`: requests sent at their scheduled times whatever happened to
earlier ones (many in flight), one record per trace arrival, from one process or several.

One Python process cannot send thousands of large requests a second on time (its own send lag
reached a p99 of 93 ms at such rates, which then reads as the server's latency); `send_open_loop`
splits the schedule round-robin over forked sender processes that all start from one clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess


@dataclass
class Groups:
    """The requests of a coalesced replay: request k is sent at `send_ms[k]` and carries the trace's
    arrivals `members[k]` (one application's, in order)."""

    send_ms: list[float]
    members: list[list[int]]


async def open_loop(
    endpoint: str,
    bodies: list[bytes],
    arrival_ms: Sequence[float],
    timeout_s: float,
    parse: Callable[..., Any],
    groups: Groups | None = None,
    headers: Callable[[bytes], dict[str, str]] | None = None,
    limit: int = 4000,
    waited: str | None = None,
) -> list[dict[str, Any]]:
    """POST `bodies[i]` to `endpoint` at `arrival_ms[i]` after the start, open loop (a late answer
    delays no later send). One record per request: `lag_ms` (how late it was sent), `latency_ms`
    (from its scheduled time), `status` (-1: no answer, -2: an answer `parse` cannot read) and
    `parse(status, body)`'s fields. `limit`: connections open at once.

    With `groups`, `bodies[k]` is sent at `groups.send_ms[k]` and carries the arrivals
    `groups.members[k]`; there is still one record per arrival, its lag and latency from its own
    arrival, and `parse(status, body, n)` gives a list of the n images' fields. `headers(body)`: the
    HTTP headers of a body (default: JSON), worked out for every body before the first is sent.
    `waited`: a header that states, as each request is sent, how long its first arrival has waited
    (ms; `otas.server.waited`), so the server times it from that arrival. `send_open_loop` runs the
    same schedule from several processes."""
    plan = _plan(endpoint, bodies, arrival_ms, timeout_s, parse, groups, headers, waited)
    recs: list[dict[str, Any]] = [{} for _ in range(len(arrival_ms))]
    share = await _send_share(plan, range(len(plan.send_ms)), time.perf_counter() + 0.05, limit)
    for i, r in share.items():
        recs[i] = r
    return recs


@dataclass
class _Plan:
    """An open loop's requests, as every sender reads them: `bodies[k]` with the HTTP headers
    `heads[k]` goes at `send_ms[k]` and carries the arrivals `members[k]`; `parse(status, raw, n)`
    gives the fields of its n images."""

    endpoint: str
    bodies: list[bytes]
    heads: list[dict[str, str]]
    arrival_ms: Sequence[float]
    send_ms: Sequence[float]
    members: Sequence[Sequence[int]]
    parse: Callable[[int, bytes, int], list[dict[str, Any]]]
    timeout_s: float
    waited: str | None = None
    """The header stating each request's wait when sent (None: not stated)."""


def _plan(endpoint, bodies, arrival_ms, timeout_s, parse, groups, headers, waited=None) -> _Plan:  # open_loop's
    arrival_ms = [float(t) for t in arrival_ms]  # OPTIMIZATION: a list indexes faster than an array, per send
    json_headers = {"content-type": "application/json"}
    heads = [headers(b) for b in bodies] if headers else [json_headers] * len(bodies)
    if groups is not None:
        return _Plan(endpoint, bodies, heads, arrival_ms, groups.send_ms, groups.members, parse, timeout_s, waited)
    one = parse
    many = lambda status, raw, n: [one(status, raw)]  # noqa: E731
    members = [[i] for i in range(len(arrival_ms))]
    return _Plan(endpoint, bodies, heads, arrival_ms, arrival_ms, members, many, timeout_s, waited)


async def _send_share(plan: _Plan, share: Sequence[int], t0: float, limit: int) -> dict[int, dict[str, Any]]:
    """Send the requests `share` (in schedule order) of `plan`, request k at `t0` (a `perf_counter`
    time) + `send_ms[k]`, over at most `limit` connections: the records of their arrivals."""
    import aiohttp

    arrival_ms, members, parse, waited = plan.arrival_ms, plan.members, plan.parse, plan.waited
    recs: dict[int, dict[str, Any]] = {i: {} for k in share for i in members[k]}
    # aiohttp rather than httpx: httpx's connection pool slows down badly with hundreds in flight
    conn = aiohttp.TCPConnector(limit=limit)
    timeout = aiohttp.ClientTimeout(total=plan.timeout_s)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as client:

        async def send(k: int) -> None:
            mine = members[k]
            now = time.perf_counter()
            for i in mine:
                recs[i]["lag_ms"] = (now - t0 - arrival_ms[i] / 1e3) * 1e3
            head = plan.heads[k]
            if waited is not None:  # the first arrival's wait (members are in arrival order)
                head = {**head, waited: f"{max(recs[mine[0]]['lag_ms'], 0.0):.3f}"}
            try:
                async with client.post(plan.endpoint, data=plan.bodies[k], headers=head) as r:
                    raw = await r.read()
                done = time.perf_counter()
                fields = parse(r.status, raw, len(mine))
                if len(fields) != len(mine):
                    raise ValueError(f"{len(fields)} answers for {len(mine)} images")
                for i, f in zip(mine, fields, strict=True):
                    recs[i].update(latency_ms=(done - t0 - arrival_ms[i] / 1e3) * 1e3, status=r.status, **f)
            except (aiohttp.ClientError, TimeoutError) as e:  # no answer: lost
                for i in mine:
                    recs[i].update(status=-1, reason=f"{type(e).__name__}: {e}")
            except (ValueError, KeyError, IndexError, TypeError) as e:  # an answer we cannot read: an error
                for i in mine:
                    recs[i].update(status=-2, reason=f"unreadable answer ({type(e).__name__}: {e})")

        pending = []
        for k in share:
            delay = t0 + plan.send_ms[k] / 1000.0 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(send(k)))
        await asyncio.gather(*pending)
    return recs


MAX_SENDERS = 64
"""Sending processes of one replay at most."""

START_S = 0.4
"""Several senders start this long after the last is forked, from one common time."""


def check_senders(senders: int) -> None:
    """ValueError unless `senders` is 1..MAX_SENDERS."""
    if not 1 <= senders <= MAX_SENDERS:
        raise ValueError(f"--senders {senders}: use 1..{MAX_SENDERS} sending processes (1: this one)")


_SHARED: _Plan | None = None
"""The plan the sender processes inherit (set while they run: copied on write at the fork, never pickled)."""


def send_open_loop(
    endpoint: str,
    bodies: list[bytes],
    arrival_ms: Sequence[float],
    timeout_s: float,
    parse: Callable[..., Any],
    groups: Groups | None = None,
    headers: Callable[[bytes], dict[str, str]] | None = None,
    limit: int = 4000,
    senders: int = 1,
    waited: str | None = None,
) -> list[dict[str, Any]]:
    """`open_loop` run to its end, here (`senders` = 1) or from `senders` forked processes: request k
    goes from process k % senders, each over ceil(`limit` / senders) connections, all on one schedule
    from one start time, so lag and latency mean what they mean in one process. One Python process
    cannot send thousands of large requests a second on time; several can. The arrivals of a sender
    that dies come back lost (status -1) with the reason. `waited`: as `open_loop`."""
    check_senders(senders)
    if senders == 1:
        return asyncio.run(open_loop(endpoint, bodies, arrival_ms, timeout_s, parse, groups, headers, limit, waited))
    import multiprocessing

    import aiohttp  # noqa: F401  (imported once here, inherited by every sender)

    global _SHARED
    plan = _plan(endpoint, bodies, arrival_ms, timeout_s, parse, groups, headers, waited)
    ctx = multiprocessing.get_context("fork")  # the big plan is inherited, not pickled
    procs: list[tuple[BaseProcess, Connection]] = []
    try:
        _SHARED = plan
        for j in range(senders):
            here, there = ctx.Pipe()
            p = ctx.Process(target=_sender, args=(j, senders, math.ceil(limit / senders), there), daemon=True)
            p.start()
            there.close()  # the child's end: its death then reads as EOF here
            procs.append((p, here))
        t0 = time.perf_counter() + START_S  # perf_counter is CLOCK_MONOTONIC: one clock for every process
        for _, here in procs:
            with contextlib.suppress(OSError):  # a sender already dead: found below
                here.send(t0)
        recs: list[dict[str, Any]] = [{} for _ in range(len(arrival_ms))]
        for j, (p, here) in enumerate(procs):
            try:
                share = here.recv()
            except (EOFError, OSError):  # dead: its end closed (or reset, with the start time unread)
                p.join()
                why = f"sender process {j + 1} of {senders} failed (exit code {p.exitcode}) and returned no records"
                share = {i: {"status": -1, "reason": why} for k in _share(plan, j, senders) for i in plan.members[k]}
            for i, r in share.items():
                recs[i] = r
        return recs
    finally:
        _SHARED = None
        for p, _ in procs:
            p.join(timeout=1.0)
            if p.is_alive():  # only after an error here
                p.kill()


def _share(plan: _Plan, j: int, senders: int) -> range:
    """The requests of sender j of `senders`: round robin, in schedule order."""
    return range(j, len(plan.send_ms), senders)


def _sender(j: int, senders: int, limit: int, conn: Connection) -> None:
    """A forked sender: its share of the inherited plan, from the start time the parent sends."""
    import gc

    gc.freeze()  # OPTIMIZATION: no collection walks the inherited plan (a pause in sending, pages copied)
    plan = _SHARED
    assert plan is not None, "a sender is forked while the plan is set"
    t0 = conn.recv()
    conn.send(asyncio.run(_send_share(plan, _share(plan, j, senders), t0, limit)))
    conn.close()
