"""The overhead benchmark against a no-op server: every protocol and batch is measured and answered."""

import gc
import json

from rich.console import Console

from otas.bench.overhead import PROTOCOLS, main
from otas.config import SchedulerConfig
from otas.engine.noop import NoopRunner, noop_profile
from otas.server.app import ServerThread
from otas.server.main import build, default_max_queue
from tests.server.helpers import APPS


def test_overhead_every_protocol_and_batch(tmp_path):
    runner, prof = NoopRunner(APPS, max_batch=16), noop_profile(APPS, 16)
    config = SchedulerConfig(max_batch=16)
    config.max_queue = default_max_queue(prof, APPS, 16)
    app, _ = build(runner, prof, APPS, "otas", config, grpc_port=0)
    # The server runs in this process: after a thousand tests its heap makes a full garbage
    # collection a pause of some 300 ms, which the front door rightly answers with a few 503s.
    gc.collect()
    gc.freeze()  # what exists now is never scanned again during the measurement
    try:
        with ServerThread(app) as srv:
            res = main(srv.url, 4, 0.3, 1, None, tmp_path, Console(width=200), batches=(1, 8), warmup_s=0.1)
    finally:
        gc.unfreeze()
    runs = {(r["protocol"], r["batch"]): r for r in res["runs"]}
    assert set(runs) == {(p, b) for p in PROTOCOLS for b in (1, 8)}
    for r in runs.values():
        assert r["failed"] == 0 and r["requests_per_s"] > 0 and r["images_per_s"] == r["requests_per_s"] * r["batch"]
        assert r["latency_ms"]["p99"] >= r["latency_ms"]["p50"] > 0
    assert runs["grpc", 8]["in_flight"] == 2 and runs["json", 1]["in_flight"] == 4
    assert runs["json", 8]["request_bytes"] > runs["binary", 8]["request_bytes"]  # base64 costs a third more
    saved = json.loads((tmp_path / "overhead_noop_c4x1.json").read_text())
    assert saved["meta"]["grpc_target"] == srv.grpc_target and len(saved["runs"]) == 2 * len(PROTOCOLS)
    assert runs["uint8", 8]["request_bytes"] > 8 * 32 * 32 * 3  # raw pixels, decoded by nobody


def test_closed_loop_counts_the_calls_that_end_in_the_window():
    """A first call held up through the warm-up (lazy set-up in the server) still counts when it ends in the
    measured window; calls ending before the window (warm-up) or after it do not."""
    import asyncio
    import time

    from otas.bench.overhead import _closed_loop

    ends: list[float] = []

    async def send() -> bool:
        await asyncio.sleep(0.25 if not ends else 0.02)
        ends.append(time.perf_counter())
        return True

    t0 = time.perf_counter()
    ok, bad, lat = asyncio.run(_closed_loop(send, 1, duration_s=0.3, warmup_s=0.1))
    inside = [t for t in ends if 0.1 <= t - t0 <= 0.4]
    assert bad == 0 and ok == len(lat) >= 1 and abs(ok - len(inside)) <= 1
    assert max(lat) >= 240  # the held-up first call is among them


def test_model_shares_are_the_device_and_model_time_over_wall_time():
    """100 requests of 64 images in 2 s, each its own batch of 1.5 ms as profiled and 1.6 ms on the device
    thread: the model holds 50 / s × 1.5 ms = 7.5 % of wall time, the overhead is the rest."""
    import pytest

    from otas.bench.overhead import model_shares

    r = model_shares(64, 100, 2.0, device_s=0.16 * 1.1, device_batches=110, model_ms=1.5)
    assert r["batches_per_s"] == 50 and r["images_per_s"] == 3200
    assert r["model_share"] == pytest.approx(0.075) and r["overhead"] == pytest.approx(0.925)
    assert r["device_ms"] == pytest.approx(1.6) and r["device_share"] == pytest.approx(0.08)
    assert r["wall_ms_per_batch"] == pytest.approx(20.0)
    idle = model_shares(8, 0, 1.0, device_s=0.0, device_batches=0, model_ms=0.5)  # nothing answered, no batch
    assert idle["overhead"] == 1.0 and idle["device_ms"] is None and idle["device_share"] is None
    for bad in ({"duration_s": 0.0}, {"model_ms": 0.0}):
        with pytest.raises(ValueError, match="need both > 0"):
            model_shares(**{"batch": 8, "answered": 1, "duration_s": 1.0, "device_s": 0.0, "device_batches": 0,
                            "model_ms": 1.0, **bad})  # fmt: skip
