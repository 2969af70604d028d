"""Operations: a client that disconnects mid-body is an INFO `client_disconnect`, not an ERROR with a
traceback; every line `otas serve` logs is JSON, library warnings (python-multipart) included; and
unknown routes and wrong methods answer the JSON error body."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from otas.bench.local_server import free_port, wait_ready
from tests.server.helpers import PacedRunner, paced_profile, png, serving

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def srv(runner):
    prof = paced_profile(5, 1)
    with serving(PacedRunner(runner, prof), prof) as (s, _):
        yield s


def _mid_body(url: str, path: str, ctype: str, length: int, sent: int) -> None:
    s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    s.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {ctype}\r\ncontent-length: {length}\r\n\r\n".encode()
              + b"x" * sent)  # fmt: skip
    time.sleep(0.05)
    s.close()


CUTS = [
    (path, ctype, length, sent)
    for path, ctype in [
        ("/v2/models/tiny_test/infer", "application/json"),
        ("/v1/apps/novel/classify", "image/png"),
        ("/v1/apps/novel/classify", "multipart/form-data; boundary=b"),
    ]  # fmt: skip
    for length, sent in [(20_000, 0), (20_000, 1), (20_000, 9_999), (60_000, 59_999)]
]


@pytest.mark.parametrize("path,ctype,length,sent", CUTS)
def test_disconnect_mid_body_is_info(srv, caplog, path, ctype, length, sent):
    caplog.set_level(logging.INFO, logger="otas")
    _mid_body(srv.url, path, ctype, length, sent)
    deadline = time.monotonic() + 10
    while not any(getattr(r, "event", "") == "client_disconnect" for r in caplog.records):
        assert time.monotonic() < deadline, "no client_disconnect logged"
        time.sleep(0.02)
    rec = next(r for r in caplog.records if getattr(r, "event", "") == "client_disconnect")
    assert rec.levelno == logging.INFO and rec.exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert httpx.get(srv.url + "/v2/health/live").status_code == 200


@pytest.mark.parametrize(
    "method,path,status,reason",
    [("GET", "/nope", 404, "not_found"), ("POST", "/v2/health/ready", 405, "method_not_allowed"),
     ("DELETE", "/v2/models/tiny_test/infer", 405, "method_not_allowed"),
     ("PUT", "/metrics", 405, "method_not_allowed"),
     ("GET", "/v2/models/tiny_test/infer", 405, "method_not_allowed"), ("PATCH", "/v1/apps", 405, "method_not_allowed"),
     ("GET", "/" + "a/" * 500, 404, "not_found"), ("GET", "/v2/%00%ff", 404, "not_found")],
)  # fmt: skip
def test_unknown_routes_and_methods_answer_json(srv, method, path, status, reason):
    r = httpx.request(method, srv.url + path)
    assert r.status_code == status and r.json()["reason"] == reason and len(r.json()["error"]) > 10


def test_every_log_line_of_otas_serve_is_json(tmp_path):
    port = free_port()
    err = tmp_path / "stderr"
    cmd = [sys.executable, "-m", "otas.cli", "serve", "--noop", "--port", str(port), "--grpc-port", "0"]
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    with open(err, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stderr=f, stdout=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(url, proc, timeout_s=60, every_s=0.1)
        except RuntimeError as e:
            raise AssertionError(err.read_text()) from e
        bad_multipart = b"--b\rX" + png(0)  # python-multipart warns, through the logging module
        r = httpx.post(url + "/v1/apps/novel/classify", content=bad_multipart,
                       headers={"content-type": "multipart/form-data; boundary=b"})  # fmt: skip
        assert r.status_code == 400 and r.json()["reason"] == "bad_multipart"
        _mid_body(url, "/v1/apps/novel/classify", "image/png", 5000, 10)
        host, p = url.removeprefix("http://").split(":")
        for raw in (
            b"GET / HTTP/1.1\r\nhost x\r\n\r\n",  # bad framing
            b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        ):
            with socket.create_connection((host, int(p)), timeout=10) as s:
                s.sendall(raw)
                s.recv(65536)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lines = [ln for ln in err.read_text().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every line is one JSON object
    events = {r.get("event") for r in records}
    assert {"serve", "client_disconnect"} <= events and "internal_error" not in events, events
    assert any(r["logger"].startswith("python_multipart") for r in records), [r["logger"] for r in records]
    # what clients sent is INFO `client_fault`, never a WARNING an operator would chase
    faults = [r for r in records if r.get("event") == "client_fault"]
    assert len(faults) >= 3 and all(r["level"] == "INFO" for r in faults), faults
    assert not [r for r in records if r["level"] == "WARNING" and r["logger"] != "py.warnings"], records


def test_serve_on_port_0_logs_the_port_it_bound(tmp_path):
    """`--port 0` picks a free port; the "serving" line names that port, not 0, and it answers there."""
    err = tmp_path / "stderr"
    cmd = [sys.executable, "-m", "otas.cli", "serve", "--noop", "--port", "0", "--grpc-port", "0"]
    with open(err, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stderr=f, stdout=subprocess.DEVNULL)
    try:
        deadline, url = time.monotonic() + 60, None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            for ln in err.read_text().splitlines():
                rec = json.loads(ln) if ln.startswith("{") else {}
                url = rec.get("url") if rec.get("event") == "serve" else url
        assert url is not None, err.read_text()
        assert not url.endswith(":0") and httpx.get(url + "/v2/health/live", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
