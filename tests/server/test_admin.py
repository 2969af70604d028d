"""Applications at run time: POST/PUT/DELETE /v1/apps behind a bearer token, persisted atomically,
picked up by the scheduler without a restart; DELETE drains the application's queue first."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx
import pytest
import yaml

from otas.config import HttpConfig, SchedulerConfig
from tests.server.helpers import APPS, PacedRunner, paced_profile, png

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def admin_server(runner, tmp_path, apps=APPS[:1], token=TOKEN, base_ms=5.0):
    from otas.server.app import ServerThread
    from otas.server.main import build, default_max_queue

    prof = paced_profile(base_ms, 1)
    cfg = SchedulerConfig(max_batch=runner.max_batch)
    cfg.max_queue = default_max_queue(prof, apps, cfg.max_batch)
    app, engine = build(
        PacedRunner(runner, prof), prof, apps, "otas", cfg, http=HttpConfig(drain_s=0.0), admin_token=token,
        apps_file=tmp_path / "apps.yaml",
    )  # fmt: skip
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c, engine


def saved(tmp_path) -> list[str]:
    return [a["name"] for a in yaml.safe_load((tmp_path / "apps.yaml").read_text())["apps"]]


def classify(c: httpx.Client, app: str, seed: int = 0) -> httpx.Response:
    return c.post(f"/v1/apps/{app}/classify", files={"image": ("x.png", png(seed), "image/png")})


def test_off_without_a_token_and_401_with_a_wrong_one(runner, tmp_path):
    new = {"name": "cam", "slo_ms": 500, "utility": 1, "task": "blur"}
    with admin_server(runner, tmp_path, token="") as (c, _):
        r = c.post("/v1/apps", json=new, headers=AUTH)
        assert r.status_code == 403 and r.json()["reason"] == "admin_disabled"
    with admin_server(runner, tmp_path) as (c, engine):
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
            for call in (lambda h: c.post("/v1/apps", json=new, headers=h),
                         lambda h: c.put("/v1/apps/novel", json={"slo_ms": 9}, headers=h),
                         lambda h: c.delete("/v1/apps/novel", headers=h)):  # fmt: skip
                r = call(headers)
                assert r.status_code == 401 and r.json()["reason"] == "unauthorized", r.text
        assert sorted(engine.apps) == ["novel"] and not (tmp_path / "apps.yaml").exists()


def test_register_update_and_bad_apps(runner, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="otas.server")  # the admin log lines are built too
    with admin_server(runner, tmp_path) as (c, engine):
        r = c.post("/v1/apps", json={"name": "cam", "slo_ms": 500, "utility": 2, "task": "blur"}, headers=AUTH)
        assert r.status_code == 201 and r.json()["classes"][0] == "dog", r.text
        assert "warnings" not in r.json()
        assert [a["name"] for a in c.get("/v1/apps").json()] == ["novel", "cam"] and saved(tmp_path) == ["novel", "cam"]
        r = classify(c, "cam")
        assert r.status_code == 200 and r.json()["slo_ms"] == 500 and r.json()["label"] in engine.classes["blur"]
        bad = [
            ({"name": "x", "slo_ms": 100, "utility": 1, "task": "nosuch"}, 400, "unknown_task"),
            ({"name": "x", "slo_ms": 0, "utility": 1, "task": "blur"}, 400, "invalid_app"),
            ({"name": "x", "slo_ms": -5, "utility": 1, "task": "blur"}, 400, "invalid_app"),
            ({"name": "x", "slo_ms": 100, "task": "blur"}, 400, "invalid_app"),
            ({"name": "a/b", "slo_ms": 100, "utility": 1, "task": "blur"}, 400, "invalid_app"),
            ({"name": "cam", "slo_ms": 100, "utility": 1, "task": "blur"}, 409, "app_exists"),
            ([1, 2], 400, "invalid_app"),
            *[  # every field of the wrong type, or a number too large to be one
                ({"name": "x", "slo_ms": 100, "utility": 1, "task": "blur", key: value}, 400, "invalid_app")
                for key, value in [
                    ("name", None),
                    ("name", 5),
                    ("name", ""),
                    ("name", ["x"]),
                    ("task", None),
                    ("task", 3),
                    ("slo_ms", True),
                    ("utility", False),
                    ("slo_ms", "100"),
                    ("utility", None),
                    ("slo_ms", 10**400),
                    ("utility", {"a": 1}),
                ]
            ],  # fmt: skip
        ]
        for body, status, reason in bad:
            r = c.post("/v1/apps", json=body, headers=AUTH)
            assert (r.status_code, r.json()["reason"]) == (status, reason), (body, r.text)
        for raw in [b"{not json", b"[" * 100_000, b'{"a":' * 50_000]:
            r = c.post("/v1/apps", content=raw, headers=AUTH)
            assert r.status_code == 400 and r.json()["reason"] == "bad_json"
        r = c.put("/v1/apps/cam", json={"slo_ms": 900, "task": "novel"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["slo_ms"] == 900 and r.json()["task"] == "novel"
        assert engine.scheduler.apps["cam"].slo_ms == 900  # the scheduler plans with it from now on
        assert classify(c, "cam").json()["slo_ms"] == 900
        for path, body, status in [("/v1/apps/nope", {"slo_ms": 1}, 404), ("/v1/apps/cam", {"slo_ms": 0}, 400),
                                   ("/v1/apps/cam", {"name": "other"}, 400), ("/v1/apps/cam", {"slo_ms": 10**400}, 400),
                                   ("/v1/apps/cam", {"utility": True}, 400)]:  # fmt: skip
            assert c.put(path, json=body, headers=AUTH).status_code == status
        assert (
            saved(tmp_path) == ["novel", "cam"]
            and yaml.safe_load((tmp_path / "apps.yaml").read_text())["apps"][1]["slo_ms"] == 900
        )


def test_delete_drains_the_queue_then_removes(runner, tmp_path):
    """Every request accepted before DELETE is answered; afterwards the app is gone (404)."""
    with admin_server(runner, tmp_path, apps=APPS[:2], base_ms=40.0) as (c, engine):

        async def burst():
            async with httpx.AsyncClient(base_url=str(c.base_url), timeout=30) as ac:
                sent = [
                    asyncio.create_task(ac.post("/v1/apps/novel/classify", files={"image": ("x.png", png(i))}))
                    for i in range(12)
                ]
                deadline = time.monotonic() + 10
                while not engine.open_requests("novel") and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)  # until some are accepted and queued (not a fixed sleep)
                gone = await ac.delete("/v1/apps/novel", headers=AUTH)
                return gone, await asyncio.gather(*sent)

        gone, answers = asyncio.run(burst())
        assert gone.status_code == 200 and gone.json()["removed"] == "novel" and gone.json()["drained"] >= 1
        codes = [r.status_code for r in answers]
        assert all(code in (200, 404, 503) for code in codes), codes
        assert sum(code in (200, 503) for code in codes) >= gone.json()["drained"]  # each one drained was answered
        assert all(r.json()["reason"] == "unknown_app" for r in answers if r.status_code == 404)
        assert classify(c, "novel").status_code == 404 and saved(tmp_path) == ["lowlight"]
        assert classify(c, "lowlight").status_code == 200  # the others are served as before
        assert c.delete("/v1/apps/novel", headers=AUTH).status_code == 404
        series = [ln for ln in c.get("/metrics").text.splitlines() if not ln.startswith("#")]
        assert not [ln for ln in series if 'app="novel"' in ln]  # its series left with it
        assert [ln for ln in series if 'app="lowlight"' in ln]


def test_start_with_no_apps_and_register_the_first(runner, tmp_path):
    with admin_server(runner, tmp_path, apps=[]) as (c, _):
        assert c.get("/v1/apps").json() == []
        assert classify(c, "cam").status_code == 404
        r = c.post("/v1/apps", json={"name": "cam", "slo_ms": 800, "utility": 1, "task": "novel"}, headers=AUTH)
        assert r.status_code == 201
        assert classify(c, "cam").status_code == 200 and saved(tmp_path) == ["cam"]


def test_zero_apps_need_the_admin_api():
    from otas.config import EngineConfig, ServingConfig

    with pytest.raises(ValueError, match="no applications to serve"):
        ServingConfig(apps=[], engine=EngineConfig(noop=True))
    assert ServingConfig(apps=[], engine=EngineConfig(noop=True), admin_token="t").apps == []


def test_the_noop_model_starts_with_no_apps_and_registers_the_first(tmp_path):
    """`otas serve --noop --admin-token T` with no applications: the model's metadata answers, and
    an application of any of the shipped model's tasks can be registered and served."""
    from otas.engine.noop import NoopRunner, noop_profile
    from otas.server.app import ServerThread
    from otas.server.main import build

    runner, prof = NoopRunner([], max_batch=8), noop_profile([], 8)
    cfg = SchedulerConfig(max_batch=8, max_queue=64)
    app, _ = build(runner, prof, [], "otas", cfg, http=HttpConfig(drain_s=0.0), admin_token=TOKEN,
                   apps_file=tmp_path / "apps.yaml")  # fmt: skip
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        meta = c.get("/v2/models/noop")
        assert meta.status_code == 200, meta.text
        r = c.post("/v1/apps", json={"name": "cam", "slo_ms": 800, "utility": 1, "task": "lowlight"}, headers=AUTH)
        assert r.status_code == 201, r.text
        assert classify(c, "cam").status_code == 200
        assert [a["name"] for a in c.get("/v1/config").json()["apps"]] == ["cam"]  # as served now


def test_a_task_change_waits_for_the_requests_accepted_under_the_old_one(runner, tmp_path):
    """PUT with a new task while the application has requests in flight is a 409 `app_busy` (they
    would be answered with the new task's classes); an SLO change is applied at once; once they are
    answered the task change goes through."""
    import threading

    with admin_server(runner, tmp_path, base_ms=400.0) as (c, engine):
        codes = []
        t = threading.Thread(target=lambda: codes.append(classify(c, "novel").status_code))
        t.start()
        deadline = time.monotonic() + 10
        while not engine.open_requests("novel") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.open_requests("novel") == 1
        r = c.put("/v1/apps/novel", json={"task": "blur"}, headers=AUTH)
        assert r.status_code == 409 and r.json()["reason"] == "app_busy", r.text
        assert c.put("/v1/apps/novel", json={"slo_ms": 5000}, headers=AUTH).status_code == 200
        t.join(30)
        assert codes == [200] and engine.apps["novel"].task == "novel"
        r = c.put("/v1/apps/novel", json={"task": "blur"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["task"] == "blur"


def test_applications_are_capped(runner, tmp_path, monkeypatch):
    """One server takes at most `MAX_APPS` applications: a POST beyond is a 409 `too_many_apps`."""
    from otas.server import admin

    monkeypatch.setattr(admin, "MAX_APPS", 2)
    with admin_server(runner, tmp_path) as (c, _):
        r = c.post("/v1/apps", json={"name": "b", "slo_ms": 500, "utility": 1, "task": "blur"}, headers=AUTH)
        assert r.status_code == 201
        r = c.post("/v1/apps", json={"name": "c", "slo_ms": 500, "utility": 1, "task": "blur"}, headers=AUTH)
        assert r.status_code == 409 and r.json()["reason"] == "too_many_apps", r.text


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "x", "slo_ms": 5, "slo_ms": 500, "utility": 1, "task": "blur"}',
        b'{"name": "x", "name": "y", "slo_ms": 500, "utility": 1, "task": "blur"}',
        b'{"name": "x", "slo_ms": 500, "utility": 1, "task": "blur", "task": "novel", "utility": 2}',
    ],
)
def test_a_key_given_twice_is_400_not_the_last_one_taken(runner, tmp_path, raw):
    """As the apps YAML loader refuses a duplicate key, so does the admin API: which of two SLOs the
    client meant is not the server's guess."""
    with admin_server(runner, tmp_path) as (c, engine):
        r = c.post("/v1/apps", content=raw, headers={**AUTH, "content-type": "application/json"})
        assert r.status_code == 400 and r.json()["reason"] == "invalid_app" and "more than once" in r.json()["error"]
        r = c.put("/v1/apps/novel", content=b'{"slo_ms": 5, "slo_ms": 900}', headers=AUTH)
        assert r.status_code == 400 and r.json()["reason"] == "invalid_app"
        assert set(engine.scheduler.apps) == {"novel"} and engine.scheduler.apps["novel"].slo_ms != 5


def test_an_slo_no_setting_meets_is_registered_with_a_warning(runner, tmp_path, caplog):
    """An SLO below the profile's fastest batch of one is accepted (the device may run faster than profiled)
    but the answer says that, as profiled, every request of it is refused."""
    with admin_server(runner, tmp_path) as (c, engine):
        r = c.post("/v1/apps", json={"name": "rush", "slo_ms": 1, "utility": 1, "task": "blur"}, headers=AUTH)
        assert r.status_code == 201, r.text
        assert "below the fastest batch of one" in r.json()["warnings"][0]
        r = c.put("/v1/apps/rush", json={"slo_ms": 5000}, headers=AUTH)
        assert r.status_code == 200 and "warnings" not in r.json()
    assert any("below the fastest batch" in rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING")
