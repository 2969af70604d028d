"""The router's engine over in-process replicas (no Ray): routing by application, relayed
metrics, and what happens when a replica dies or hangs. Every wait is bounded."""

import asyncio
import time

import numpy as np
import pytest

from otas.config import SchedulerConfig
from otas.engine.engine import NotServed, Observer
from otas.profile.table import Profile
from otas.scale.frontend import RoutedEngine
from otas.scale.frontend_config import FrontendConfig, fastest_latency
from otas.scale.replica import ReplicaCore, ReplicaSpec
from otas.scale.router import RouterConfig
from tests.server.helpers import APPS, paced_profile

IMG = np.zeros((32, 32, 3), np.uint8)


class ActorDied(Exception):
    pass


class LocalReplica:
    """A ReplicaClient calling a ReplicaCore in-process; `kill` fails its calls as a dead actor's
    would, `hang` makes them never answer."""

    def __init__(self, core: ReplicaCore, name: str):
        self.core, self.name = core, name
        self.dead = self.hung = False
        self.pending: set[asyncio.Future] = set()

    async def submit(self, app, image, arrival_epoch_ms):
        return await self._call(self.core.submit(app, image, arrival_epoch_ms))

    async def stats(self, delivered=()):
        return await self._call(asyncio.sleep(0, self.core.stats(delivered)))

    async def _call(self, coro):
        if self.dead:
            coro.close()
            raise ActorDied(f"{self.name} is dead")
        fut = asyncio.get_running_loop().create_future()
        if not self.hung:
            inner = asyncio.ensure_future(coro)
            inner.add_done_callback(lambda t: fut.done() or fut.set_result(t.result()))
        else:
            coro.close()
        self.pending.add(fut)
        try:
            return await fut
        finally:
            self.pending.discard(fut)

    def kill(self):
        self.dead = True
        for f in self.pending:
            f.done() or f.set_exception(ActorDied(f"{self.name} was killed"))


class Counts(Observer):
    def __init__(self):
        self.ended_by: dict[tuple, int] = {}
        self.batches = 0
        self.decisions = 0

    def decided(self, ms, planned):
        self.decisions += 1

    def ended(self, app, outcome, reason="", served=None):
        self.ended_by[(outcome, reason)] = self.ended_by.get((outcome, reason), 0) + 1

    def batch(self, plan, measured_ms, runner_ms, queued):
        self.batches += 1


def spec(base_ms=50.0, per_image_ms=10.0) -> ReplicaSpec:
    prof = paced_profile(base_ms, per_image_ms)
    return ReplicaSpec(APPS, prof.to_dict(), "otas", SchedulerConfig(max_batch=16), noop=True, paced=True)


async def routed(n=2, frontend=None, base_ms=50.0, per_image_ms=10.0, decode=None):
    sp = spec(base_ms, per_image_ms)
    cores = [ReplicaCore(sp, i) for i in range(n)]
    for c in cores:
        await c.start()
    clients = [LocalReplica(c, f"otas-replica-{i}") for i, c in enumerate(cores)]
    fe = frontend or FrontendConfig(probe_s=0.05, probe_timeout_s=0.5)
    lat = fastest_latency(paced_profile(base_ms, per_image_ms), 16)
    eng = RoutedEngine(clients, APPS, cores[0].describe(), lat, RouterConfig(), fe, decode=decode)
    eng.observer = Counts()
    await eng.start()
    return eng, cores, clients


async def close(eng, cores):
    await eng.stop()
    for c in cores:
        await c.stop(5)


def results(res):
    return [type(r).__name__ if not isinstance(r, NotServed) else r.reason for r in res]


def test_routes_each_application_home_and_relays_batches():
    async def main():
        eng, cores, _ = await routed()
        futs = [eng.submit(a.name, IMG) for _ in range(6) for a in APPS]
        res = await asyncio.wait_for(asyncio.gather(*futs), 10)
        snap = eng.snapshot()
        await close(eng, cores)
        return eng, res, snap

    eng, res, snap = asyncio.run(main())
    assert all(r.deadline_met for r in res)
    routed_ = [r["routed"] for r in snap["replicas"]]
    assert routed_[0].get("home:novel") == 6 and "home:novel" not in routed_[1]
    assert routed_[1].get("home:blur") == 6 and "home:blur" not in routed_[0]
    assert eng.observer.ended_by == {("served", ""): 18}
    assert eng.observer.batches == eng.batches > 0  # batch observations relayed from the replicas


def test_decisions_are_relayed_and_the_routers_delivery_times_reach_every_replica():
    async def main():
        eng, cores, _ = await routed()
        for _ in range(40):
            eng.delivered(12.0)
        await asyncio.wait_for(asyncio.gather(*(eng.submit(a.name, IMG) for a in APPS)), 10)
        for _ in range(100):  # a probe or two
            if all(len(c.engine.delivery) == 40 for c in cores):
                break
            await asyncio.sleep(0.02)
        out = [len(c.engine.delivery) for c in cores], [c.engine.delivery.ms for c in cores], eng.delivery.ms
        await close(eng, cores)
        return eng, out

    eng, (counts, ms, own) = asyncio.run(main())
    assert counts == [40, 40] and ms == [12.0, 12.0] and own == 12.0  # sent once to each, not again
    assert eng.observer.decisions >= 3  # at least a decision per batch, relayed


def test_killed_replica_requests_retry_elsewhere_and_router_stops_sending():
    async def main():
        eng, cores, clients = await routed()
        futs = [eng.submit("blur", IMG) for _ in range(8)]  # blur's home is replica 1
        await asyncio.sleep(0.02)  # queued / running on replica 1
        t0 = time.perf_counter()
        clients[1].kill()
        res = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 10)
        took = time.perf_counter() - t0
        after = await asyncio.wait_for(asyncio.gather(*(eng.submit("blur", IMG) for _ in range(4))), 10)
        snap = eng.snapshot()
        # Ray restarts it: a fresh replica answers the probe, and it is back in rotation
        cores[1] = ReplicaCore(cores[1].spec, 1)
        await cores[1].start()
        clients[1].core, clients[1].dead = cores[1], False
        for _ in range(100):
            if eng.router.replicas[1].up:
                break
            await asyncio.sleep(0.02)
        back = await asyncio.wait_for(eng.submit("blur", IMG), 5)
        await close(eng, cores)
        return res, took, after, snap, back, eng

    res, took, after, snap, back, eng = asyncio.run(main())
    assert all(not isinstance(r, Exception) for r in res), results(res)  # retried on replica 0 in time
    assert took < 2.0
    assert not snap["replicas"][1]["up"] and snap["replicas"][0]["routed"].get("retry:blur") == 8
    assert snap["replicas"][0]["routed"].get("home:blur") == 4  # the shares were re-cut at once
    assert back.deadline_met and eng.snapshot()["replicas"][1]["up"]


def test_killed_replica_fails_fast_with_a_clear_error_when_no_retry_fits():
    async def main():
        fe = FrontendConfig(max_retries=0, probe_s=0.05)
        eng, cores, clients = await routed(frontend=fe)
        futs = [eng.submit("novel", IMG) for _ in range(4)]
        await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        clients[0].kill()
        res = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 5)
        took = time.perf_counter() - t0
        await close(eng, cores)
        return res, took, eng

    res, took, eng = asyncio.run(main())
    assert took < 0.5
    assert all(isinstance(r, NotServed) and r.reason == "replica_failed" for r in res), res
    assert "otas-replica-0" in res[0].detail and "restarts it" in res[0].detail
    assert eng.observer.ended_by[("error", "replica_failed")] == 4


def test_hung_replica_times_out_after_deadline_plus_grace():
    async def main():
        fe = FrontendConfig(grace_s=0.2, max_retries=1, probe_s=0.05, probe_timeout_s=0.1)
        eng, cores, clients = await routed(frontend=fe)
        clients[0].hung = True
        t0 = time.perf_counter()
        with pytest.raises(NotServed) as e:
            await asyncio.wait_for(eng.submit("novel", IMG), 5)
        took = time.perf_counter() - t0
        await close(eng, cores)
        return e.value, took

    err, took = asyncio.run(main())
    assert err.reason == "replica_failed" and "TimeoutError" in err.detail
    assert 0.55 < took < 1.5  # 400 ms SLO + 200 ms grace, no retry left in the deadline


def test_no_healthy_replica_is_rejected_at_once():
    async def main():
        eng, cores, clients = await routed()
        for c in clients:
            c.kill()
        await asyncio.sleep(0.2)  # the probe takes both out
        ready = eng.ready
        with pytest.raises(NotServed) as e:
            await asyncio.wait_for(eng.submit("novel", IMG), 2)
        await close(eng, cores)
        return ready, e.value

    ready, err = asyncio.run(main())
    assert not ready and err.outcome == "rejected" and err.reason == "no_replica"


def test_spec_checks():
    with pytest.raises(ValueError, match="noop=True"):
        ReplicaSpec(APPS, paced_profile().to_dict(), "otas", SchedulerConfig(), paced=True)


def test_stop_drains_in_flight_requests_first():
    async def main():
        eng, cores, _ = await routed()
        futs = [eng.submit(a.name, IMG) for _ in range(4) for a in APPS]
        await asyncio.wait_for(eng.stop(), 10)
        done = all(f.done() for f in futs)
        for c in cores:
            await c.stop(5)
        return futs, done, eng

    futs, done, eng = asyncio.run(main())
    assert done and all(f.result().deadline_met for f in futs)
    assert eng.observer.ended_by == {("served", ""): 12}


def test_stop_answers_what_outlasts_the_drain_with_shutting_down():
    """Replicas that never answer: after `drain_s` every caller gets NotServed (a 503), none a
    CancelledError, a request whose task never ran included."""

    async def main():
        fe = FrontendConfig(grace_s=30, drain_s=0.1, probe_s=0.05, probe_timeout_s=5)
        eng, cores, clients = await routed(frontend=fe)
        for c in clients:
            c.hung = True
        futs = [eng.submit(a.name, IMG) for _ in range(2) for a in APPS]
        await asyncio.sleep(0.02)  # the calls are out, waiting on the replicas
        sent = set(eng._inflight)
        unstarted = eng.submit("novel", IMG)
        (task,) = eng._inflight - sent
        task.cancel()  # before its first step: its coroutine never runs
        t0 = time.perf_counter()
        await asyncio.wait_for(eng.stop(), 5)
        took = time.perf_counter() - t0
        res = await asyncio.gather(*futs, unstarted, return_exceptions=True)
        for c in cores:
            await c.stop(5)
        return res, took, eng

    res, took, eng = asyncio.run(main())
    assert took < 1.0
    assert all(isinstance(r, NotServed) and (r.outcome, r.reason) == ("error", "shutting_down") for r in res), res
    assert "shut down before a replica answered" in res[0].detail
    assert eng.observer.ended_by == {("error", "shutting_down"): 7}
    assert all(r.inflight == 0 for r in eng.router.replicas)  # the cancelled calls were taken off the books


def test_the_router_decodes_with_the_configured_limits_and_formats():
    """`--image-formats`, the image limits and the decode queue apply behind the router as on the
    local engine (the router used to decode with the defaults whatever was configured)."""
    import pytest

    from otas.config import EngineConfig
    from otas.engine.images import ImageError
    from tests.server.helpers import jpeg, png

    async def main():
        eng, cores, _ = await routed(decode=EngineConfig(image_formats=("JPEG",), max_image_side=16))
        try:
            with pytest.raises(ImageError, match="not a JPEG image"):
                await eng.decode("novel", [png(0)])
            with pytest.raises(ImageError, match="pixels"):
                await eng.decode("novel", [jpeg(0, size=32)])  # over 16 px a side
            assert (await eng.decode("novel", [jpeg(0, size=16)]))[0].shape[-1] == 3
        finally:
            await close(eng, cores)

    asyncio.run(main())


def test_a_replica_plans_and_describes_its_profile_at_its_runners_buckets():
    """A replica's scheduler reads the profile as its runner serves it (`Runner.served_profile`: padded to its
    CUDA-graph buckets), and describes that profile to the router, whose wait predictions read it too."""
    from otas.engine.noop import NoopRunner, PacedRunner

    class Padding(PacedRunner):
        def served_profile(self, profile):
            return profile.with_buckets([1, 4, 16])

    sp = spec()
    core = ReplicaCore(sp, 0, runner=Padding(NoopRunner(APPS, max_batch=16), Profile.from_dict(sp.profile)))
    assert core.profile.buckets == [1, 4, 16]
    assert core.engine.scheduler.profiles[core.profile.model].buckets == [1, 4, 16]
    assert core.describe()["info"]["profile"]["buckets"] == [1, 4, 16]


def test_the_routers_wait_predictions_read_a_padded_profile_at_its_buckets_up_to_the_max_batch():
    prof = paced_profile(50.0, 10.0)
    padded = prof.with_buckets([1, 4, 32])
    lat = fastest_latency(padded, 12)  # the runner's buckets at B_max 12: 1, 4, 12
    fastest = [min(prof.lat(g, b) for g in prof.gammas) for b in (1, 4, 12)]
    assert lat[1] == fastest[0] and lat[2] == lat[4] == fastest[1] and lat[5] == lat[12] == fastest[2]
