"""Start and stop the servers of the comparison: each in its own process group, ready when a real
request answers 200, stopped with SIGTERM then SIGKILL of the whole group (Triton's server and stubs,
Ray's daemons and workers), and not done until its ports are free again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = {"triton": "pytriton_peer.py", "ray": "rayserve_peer.py", "litserve": "litserve_peer.py"}
FORMAT = {"otas": "otas", "triton": "triton", "ray": "json", "litserve": "json"}
MODEL = "vit_tiny_p2_c5"


class ServerFailed(RuntimeError):
    pass


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _post_ok(url: str, body: bytes | None) -> bool:
    """True if a POST of `body` (a GET if None) answers 200."""
    req = urllib.request.Request(url, body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status == 200
    except OSError:
        return False


@contextmanager
def server(
    name: str, args: list[str], port: int, probe: tuple[str, bytes], log: Path, timeout_s: float
) -> Iterator[str]:
    """Start a server in its own process group, wait until `probe` (path, body; GET if None) answers 200, yield its
    URL; at exit SIGTERM, then SIGKILL the whole group, and wait until the port is free."""
    ports = [port] + ([port + 1, port + 2] if name == "triton" else [])
    busy = [p for p in ports if not port_free(p)]
    if busy:
        raise ServerFailed(f"port(s) {busy} already in use; stop what listens there or pass another --port")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(args)}\n".encode())
        f.flush()
        proc = subprocess.Popen(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while not _post_ok(url + probe[0], probe[1]):
            if proc.poll() is not None:
                raise ServerFailed(f"{name} exited with {proc.returncode} before answering; see {log}")
            if time.monotonic() - t0 > timeout_s:
                raise ServerFailed(f"{name} did not answer {probe[0]} within {timeout_s:.0f} s; see {log}")
            time.sleep(0.5)
        print(f"  {name} ready in {time.monotonic() - t0:.1f} s", flush=True)
        yield url
    finally:
        stop(proc, ports)


def stop(proc: subprocess.Popen, ports: list[int], grace_s: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever the server started (Triton, Ray's daemons and workers)
    except ProcessLookupError:
        pass
    proc.wait()
    t0 = time.monotonic()
    while any(not port_free(p) for p in ports):
        if time.monotonic() - t0 > 30:
            raise ServerFailed(f"port(s) {ports} still in use 30 s after the server stopped")
        time.sleep(0.5)


def server_cmd(name: str, port: int, gamma: int = 0, batch: int = 0, delay_ms: float = 0.0, noop: bool = False,
               max_queue: int = 256, apps: Path | None = None) -> list[str]:  # fmt: skip
    py = sys.executable
    if name == "otas":
        cmd = [str(Path(py).parent / "otas"), "serve", "--port", str(port), "--grpc-port", "0",
               "--log-level", "warning", "--policy", "otas"]  # fmt: skip
        return cmd + (["--noop"] if noop else []) + (["--apps", str(apps)] if apps else [])
    cmd = [py, str(ROOT / "bench/peers" / PEERS[name]), "--port", str(port), "--gamma", str(gamma),
           "--max-batch", str(batch), "--delay-ms", f"{delay_ms:g}", "--max-queue", str(max_queue)]  # fmt: skip
    return cmd + (["--noop"] if noop else []) + (["--apps", str(apps)] if apps else [])
