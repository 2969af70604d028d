"""Shutdown under keep-alive load: at SIGTERM readiness fails first while requests are still
accepted and answered with `Connection: close`, so a client that stops when readiness fails loses
nothing (no connection resets); a trickling upload gets 503 `shutting_down`, not a 500, and does not
hold the shutdown for the grace period."""

import asyncio
import json
import os
import signal
import socket
import threading
import time

import aiohttp

from tests.server.helpers import in_client_process, infer_body, server_process

INFER = "/v2/models/tiny_test/infer"
HTTP = {"drain_s": 1.0, "body_timeout_s": 60.0}


async def _keep_alive_load_then_sigterm(url: str, pid: int) -> tuple[list, list, str]:
    """8 keep-alive clients; SIGTERM once 24 answers are in (the connections are in use); each
    client stops when readiness fails, as behind a load balancer."""
    stop, started, results, closes = asyncio.Event(), asyncio.Event(), [], []

    async def worker(c):
        while not stop.is_set():
            try:
                async with c.post(url + INFER, json=infer_body("blur")) as r:
                    await r.read()
                    results.append(r.status)
                    if started.is_set() and r.headers.get("Connection", "").lower() == "close":
                        closes.append(r.status)
            except aiohttp.ClientError as e:
                results.append(repr(e))

    async def poller(c):
        while True:
            try:
                async with c.get(url + "/v2/health/ready") as r:
                    if r.status == 503:
                        stop.set()  # as a load balancer would: no new requests
                        return r.headers.get("Connection")
            except aiohttp.ClientError as e:
                stop.set()
                return repr(e)
            await asyncio.sleep(0.02)

    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as c,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as probe,
    ):
        workers = [asyncio.create_task(worker(c)) for _ in range(8)]
        deadline = time.monotonic() + 30
        while len(results) < 24 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        started.set()
        os.kill(pid, signal.SIGTERM)
        ready = await poller(probe)
        await asyncio.gather(*workers)
    return results, closes, ready


def test_keep_alive_clients_lose_nothing(tiny_ckpt):
    with server_process(tiny_ckpt, 20, 2, HTTP) as (url, proc):
        results, closes, ready = in_client_process(_keep_alive_load_then_sigterm, url, proc.pid)
        assert proc.wait(30) in (0, -signal.SIGTERM)
    assert ready == "close"  # readiness failed (503) while the server still answered
    assert len(results) > 24 and all(s == 200 for s in results), [s for s in results if s != 200]
    assert closes  # answers after SIGTERM closed their connections


def test_trickling_upload_gets_503_and_does_not_hold_shutdown(tiny_ckpt):
    with server_process(tiny_ckpt, 20, 2, HTTP) as (url, proc):
        s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        s.settimeout(30)
        s.sendall(f"POST {INFER} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 10000\r\n\r\n"
                  .encode() + b'{"inputs": [')  # fmt: skip
        got, done = [], threading.Event()

        def read():
            try:
                while chunk := s.recv(65536):
                    got.append(chunk)
            except OSError:
                pass
            done.set()

        reader = threading.Thread(target=read)
        reader.start()
        for _ in range(5):  # a byte every 0.1 s
            s.sendall(b" ")
            time.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while not done.is_set():
            try:
                s.sendall(b" ")
            except OSError:
                break
            done.wait(0.1)
        reader.join(10)
        assert proc.wait(30) in (0, -signal.SIGTERM)
        waited = time.monotonic() - t0
    head, _, body = b"".join(got).partition(b"\r\n\r\n")
    assert head.split()[1] == b"503" and json.loads(body)["reason"] == "shutting_down", head
    assert waited < HTTP["drain_s"] + 8  # the drain, not the 10 s grace period (nor the 60 s body timeout)


def test_ctrl_c_to_the_process_group_stops_quietly(tmp_path):
    """Ctrl-C in a terminal sends SIGINT to the whole process group, the server's JSON-parser and decode
    processes included: the server drains and exits, and no child prints a KeyboardInterrupt traceback."""
    import subprocess
    import sys

    from otas.bench.local_server import free_port, wait_ready

    port = free_port()
    err = tmp_path / "stderr.log"
    cmd = [sys.executable, "-m", "otas.cli", "serve", "--noop", "--port", str(port), "--grpc-port", "0",
           "--decode-processes", "--decode-workers", "1", "--drain-s", "0"]  # fmt: skip
    with err.open("wb") as f:
        proc = subprocess.Popen(cmd, stderr=f, start_new_session=True)  # its own group, as a shell job
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout_s=90)
        time.sleep(0.5)  # the parser and decode processes up
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) in (0, 130, -signal.SIGINT)  # (130: the shell convention for an interrupt)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.5)  # a child's last words
    text = err.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
