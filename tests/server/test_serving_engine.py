"""The HTTP app names one interface, `ServingEngine`; the local engine and the Ray router's engine
both provide it, and the app serves the router's as it serves the local one. No model, no Ray."""

import inspect

import numpy as np
import pytest
from starlette.testclient import TestClient

from otas.config import SchedulerConfig
from otas.engine.engine import Engine, RunResult
from otas.engine.serving import NotServed, Observer, Served, ServingEngine
from otas.scale.frontend import RoutedEngine
from otas.scale.frontend_config import fastest_latency
from otas.scale.replica import Reply
from otas.sched.scheduler import Scheduler
from otas.server.app import ServeConfig, create_app
from otas.server.handlers import error_response
from otas.server.metrics import Metrics
from tests.server.helpers import APPS, GAMMAS, SIZE, b64png, paced_profile

CLASSES = {a.task: [f"{a.task}{i}" for i in range(5)] for a in APPS}


class StubRunner:
    image_size, max_batch, gammas, classes = SIZE, 16, list(GAMMAS), CLASSES

    def run(self, images, tasks, gamma):
        return RunResult(np.full((len(images), 5), 0.2, np.float32), 1.0)


class StubReplica:
    """A ReplicaClient that serves everything at once."""

    name = "otas-replica-0"

    async def submit(self, app, image, arrival_epoch_ms):
        task = next(a.task for a in APPS if a.name == app)
        probs = np.array([0.1, 0.6, 0.1, 0.1, 0.1], np.float32)
        return Reply(Served(0, app, 0, probs, CLASSES[task], 1.0, 2.0, 3.0, True, 1, 1.0))

    async def stats(self, delivered=()):
        return {"queued": 0, "batches": [], "pid": 1, "healthy": True}


def local_engine() -> Engine:
    return Engine(Scheduler(APPS, paced_profile(), "otas", SchedulerConfig(max_batch=16)), StubRunner())


def routed_engine() -> RoutedEngine:
    describe = {"image_size": SIZE, "max_batch": 16, "classes": CLASSES}
    return RoutedEngine([StubReplica()], APPS, describe, fastest_latency(paced_profile(), 16))


def _protocol_members():
    proto = ServingEngine
    data = set(inspect.get_annotations(proto))
    props = {n for n, v in vars(proto).items() if isinstance(v, property)}
    methods = {n for n, v in vars(proto).items() if inspect.isfunction(v) and not n.startswith("_")}
    return data, props, methods


@pytest.mark.parametrize("make", [local_engine, routed_engine], ids=["Engine", "RoutedEngine"])
def test_both_engines_provide_the_serving_engine_protocol(make):
    engine = make()
    assert isinstance(engine, ServingEngine)
    data, props, methods = _protocol_members()
    assert data == {"apps", "observer", "batches"} and props == {"image_size", "classes", "ready"}
    assert methods == {"now_ms", "decode", "submit", "submit_many", "delivered", "start", "stop"}
    assert isinstance(engine.apps, dict) and isinstance(engine.observer, Observer) and engine.batches == 0
    assert engine.image_size == SIZE and engine.classes == CLASSES and engine.ready is False
    for name in methods:
        want, got = getattr(ServingEngine, name), getattr(type(engine), name)
        assert inspect.iscoroutinefunction(got) == inspect.iscoroutinefunction(want), name
        params = inspect.signature(got).parameters
        for p in list(inspect.signature(want).parameters.values())[1:]:
            assert p.name in params, (name, p.name)
            assert (params[p.name].default is inspect.Parameter.empty) == (p.default is inspect.Parameter.empty)
        extra = set(params) - set(inspect.signature(want).parameters)
        assert all(params[n].default is not inspect.Parameter.empty for n in extra), (name, extra)
    assert not hasattr(engine, "runner") or isinstance(engine, Engine)  # no stand-in runner


def test_the_app_serves_a_routed_engine():
    engine = routed_engine()
    app = create_app(engine, ServeConfig("tiny_test"), Metrics(list(GAMMAS)))
    with TestClient(app) as c:
        assert c.get("/v2/health/ready").json() == {"ready": True}
        meta = c.get("/v2/models/tiny_test").json()
        assert [SIZE, SIZE, 3] == meta["inputs"][1]["shape"][1:] and meta["outputs"][0]["shape"] == [-1, 5]
        assert c.get("/v1/apps").json()[2]["classes"] == CLASSES["blur"]
        r = c.post("/v1/apps/blur/classify", json={"image": b64png(0), "top_k": 2})
        assert r.status_code == 200, r.text
        assert r.json()["label"] == "blur1" and len(r.json()["top_k"]) == 2
        assert 'otas_requests_total{app="blur",outcome="served",reason=""} 1.0' in c.get("/metrics").text
    assert not engine.ready  # the lifespan stopped it


def test_shutting_down_is_a_503_to_retry():
    r = error_response(NotServed("error", "shutting_down", "the server shut down; retry"))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert error_response(NotServed("error", "batch_failed", "device on fire")).status_code == 500
