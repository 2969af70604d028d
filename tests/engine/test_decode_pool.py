"""Decoding in worker processes: the same pixels as in threads, errors per payload, a dead worker
replaced, and the server answering through it."""

import asyncio
import os
import signal
import time

import httpx
import numpy as np
import pytest

from otas.config import EngineConfig
from otas.engine.images import DecodeBusy, DecodeExpired, Decoder, DecodeRestarted, ImageError, decode_image
from tests.server.helpers import SIZE, PacedRunner, jpeg, paced_profile, png, serving


def test_processes_decode_exactly_what_threads_decode():
    payloads = [png(i) for i in range(20)] + [jpeg(i, size=4 * SIZE) for i in range(20)]

    async def main():
        dec = Decoder(SIZE, workers=2, processes=True)
        try:
            out = await dec.many(payloads)
            parts = await asyncio.gather(*(dec.many(payloads[i : i + 3]) for i in range(0, 40, 3)))
        finally:
            dec.shutdown()
        return out, [x for p in parts for x in p]

    whole, pieces = asyncio.run(main())
    want = [decode_image(p, SIZE) for p in payloads]
    for got in (whole, pieces):
        assert len(got) == len(want)
        assert all(g.dtype == np.uint8 and np.array_equal(g, w) for g, w in zip(got, want, strict=True))


def test_a_bad_payload_fails_only_its_own_request():
    async def main():
        dec = Decoder(SIZE, workers=1, processes=True)
        try:
            await dec.many([png(0)])  # the process is up
            bad = dec.many([png(1), b"junk", png(2)])
            good = [dec.many([png(i)]) for i in range(3, 9)]  # likely in the same chunk as the junk
            res = await asyncio.gather(bad, *good, return_exceptions=True)
            for _ in range(200):
                if dec.pending == 0:
                    break
                await asyncio.sleep(0.01)
            return res, dec.pending
        finally:
            dec.shutdown()

    res, pending = asyncio.run(main())
    assert isinstance(res[0], ImageError) and "not a PNG/JPEG image" in str(res[0])
    assert all(isinstance(r, list) and len(r) == 1 for r in res[1:]) and pending == 0


def test_queue_bound_and_deadline_hold_with_processes():
    async def main():
        dec = Decoder(SIZE, workers=1, max_queue=3, processes=True)
        try:
            with pytest.raises(DecodeBusy, match="decode queue holds 3"):
                await dec.many([png(0)] * 4)
            with pytest.raises(DecodeExpired):
                await dec.many([png(0)], deadline=time.monotonic() - 1)
            assert len(await dec.many([png(0)] * 3)) == 3 and dec.pending == 0
        finally:
            dec.shutdown()

    asyncio.run(main())


def test_a_dead_decode_process_is_replaced():
    async def main():
        dec = Decoder(SIZE, workers=1, processes=True)
        try:
            await dec.many([png(0)])
            for pid in list(dec._lanes[0]._pool._processes):
                os.kill(pid, signal.SIGKILL)
            outcomes = []
            for i in range(50):  # the first calls may meet the dead pool; then it is replaced
                try:
                    outcomes.append(len(await dec.many([png(i)])))
                except DecodeRestarted as e:
                    outcomes.append(str(e))
                if outcomes[-1] == 1:
                    break
                await asyncio.sleep(0.1)
            return outcomes
        finally:
            dec.shutdown()

    outcomes = asyncio.run(main())
    assert outcomes[-1] == 1 and all(o == 1 or "decoder process died" in o for o in outcomes)


def test_served_with_decode_processes(runner):
    prof = paced_profile(5, 1)
    cfg = EngineConfig(decode_processes=True, decode_workers=2)
    with serving(PacedRunner(runner, prof), prof, engine_cfg=cfg) as (srv, _):
        ok = httpx.post(srv.url + "/v1/apps/novel/classify", content=png(0), headers={"content-type": "image/png"})
        bad = httpx.post(srv.url + "/v1/apps/novel/classify", content=b"junk", headers={"content-type": "image/png"})
    assert ok.status_code == 200 and ok.json()["label"] in ok.json()["top_k"][0]["label"]
    assert bad.status_code == 400 and bad.json()["reason"] == "not_an_image"


def test_a_chunk_stops_at_its_payload_and_byte_limits():
    import queue

    from otas.engine.decode_pool import ProcessDecodePool

    pool = object.__new__(ProcessDecodePool)  # the chunking alone, without processes
    pool._queue, pool.chunk, pool.chunk_bytes = queue.SimpleQueue(), 4, 1000
    for n in [10] * 6:
        pool._queue.put((None, b"x" * n, None))
    assert [len(pool._take()), len(pool._take())] == [4, 2]  # at most `chunk` payloads
    pool.chunk = 64
    for n in [10, 600, 600, 10, 2000, 10]:
        pool._queue.put((None, b"x" * n, None))
    sizes = [[len(d) for _, d, _ in pool._take()] for _ in range(3)]
    assert sizes == [[10, 600, 600], [10, 2000], [10]]  # stops once over `chunk_bytes`
    pool._queue.put(None)
    assert pool._take() is None  # stop


def test_a_stuck_decode_process_is_killed_and_replaced():
    from otas.data.preprocess import Preprocess
    from otas.engine.decode_pool import ProcessDecodePool
    from tests.engine.hang_job import hangs_on_request

    pool = ProcessDecodePool(Preprocess(SIZE), None, 1, lambda d: False, DecodeExpired, job=hangs_on_request,
                             job_timeout_s=2.0)  # fmt: skip
    try:
        stuck = pool.submit(b"hang", None)
        pids = list(pool._pool._processes)
        assert isinstance(stuck.exception(timeout=60), DecodeRestarted)
        assert "took over 2 s" in str(stuck.exception())
        assert pool.submit(b"fine", None).result(timeout=60).shape == (8, 8, 3)
        time.sleep(0.5)
        for pid in pids:  # the stuck process is gone
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        pool.shutdown()
