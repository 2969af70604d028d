"""The abuse benchmark's attack classes, briefly, against a paced server on loopback: each runs,
stays bounded, and gets the refusals it is built to provoke (the run itself: bench/abuse.py)."""

import asyncio
import sys
import time
from pathlib import Path

import pytest

from tests.server.helpers import PacedRunner, paced_profile, serving

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import abuse_attacks  # noqa: E402


def attack(name: str, url: str, seconds: float = 1.0) -> dict:
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])

    async def start() -> float:
        return time.monotonic() + seconds

    return asyncio.run(abuse_attacks.ATTACKS[name](host, port, "tiny_test", start))


# 429 is the bounded parser or decode queue refusing work while the machine is busy: a clear answer too
@pytest.mark.parametrize("name,refused", [("malformed", {"400", "429"}), ("decode_bombs", {"400", "429", "200"}),
                                          ("multi_image", {"503", "429", "400"})])  # fmt: skip
def test_paced_attacks_are_refused(runner, name, refused):
    prof = paced_profile(5, 1)
    with serving(PacedRunner(runner, prof), prof, max_body=8 << 20) as (srv, _):
        out = attack(name, srv.url)
    assert out["sent"] >= 1 and set(out["statuses"]) <= refused, out


def test_abandoned_requests_are_never_served(runner):
    from tests.server.helpers import requests_total

    prof = paced_profile(5, 1)
    paced = PacedRunner(runner, prof)
    with serving(paced, prof, max_body=8 << 20) as (srv, _):
        out = attack("abandoned", srv.url, 0.5)
        time.sleep(0.5)
        # each left before its answer: never served; the few already queued or on the device are counted
        # cancelled, the rest never reached the engine
        assert out["sent"] >= 5 and requests_total(srv.url, "served") == 0
        assert requests_total(srv.url) == requests_total(srv.url, "cancelled", "client_gone") >= sum(paced.sizes)


@pytest.mark.parametrize("seed", range(3))
def test_p99_ratio_interval_brackets_the_truth(seed):
    import numpy as np
    from abuse_report import p99_ratio_interval

    rng = np.random.default_rng(seed)
    alone = rng.lognormal(4.0, 0.2, 600)
    same = p99_ratio_interval(rng.lognormal(4.0, 0.2, 600), alone)
    slower = p99_ratio_interval(2.0 * rng.lognormal(4.0, 0.2, 600), alone)
    assert same[0] < 1.0 < same[1] and same[1] - same[0] < 0.5  # same distribution: 1 inside, and not vacuous
    assert 1.5 < slower[0] < 2.0 < slower[1] < 2.5  # twice as slow: 2 inside, 1.5 outside
    assert p99_ratio_interval([50.0], alone) is None  # nothing to resample


def test_copy_load_copies_for_its_share_and_sends_nothing():
    """The CPU control: memory copies for about its duty share of the time, no connection to anyone
    (the port is closed: a request would fail)."""
    import resource

    abuse_attacks.COPY_DUTY[0] = 0.5
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    out = attack("copy_load", "http://127.0.0.1:9", seconds=0.6)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    assert out["duty"] == 0.5 and out["copied_gib"] > 0
    assert 0.15 < cpu / (time.monotonic() - t0) < 0.95  # busy for part of each slice, idle for the rest
