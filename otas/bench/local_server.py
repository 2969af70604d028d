"""A server process on loopback for a benchmark or a test: a free port to give it, a wait until it
answers ready (GET /v2/health/ready is 200) that gives up as soon as the process exits, its metrics, and a
stop."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float, every_s: float = 0.2) -> None:
    """Block until `url`/v2/health/ready answers 200; RuntimeError if `proc` exits first or
    `timeout_s` passes (callers add where its log is)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:  # not listening yet, or not ready (503: urllib's HTTPError)
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready at {url}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not ready at {url} within {timeout_s:.0f} s")
        time.sleep(every_s)


def metrics(url: str, timeout_s: float = 10.0) -> str:
    """The server's Prometheus exposition text (GET /metrics)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout_s) as r:
        return r.read().decode()


def stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Ask the server to stop (SIGTERM: it drains and answers what it holds) and wait; kill it if it has
    not exited within `timeout_s`."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
