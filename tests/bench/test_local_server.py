"""Stopping a loopback server process: asked first, killed only if it does not exit in time."""

import signal
import subprocess
import sys

from otas.bench.local_server import stop


def test_stop_asks_first_and_kills_a_server_that_does_not_exit():
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop(polite, timeout_s=10)
    assert polite.returncode == -signal.SIGTERM  # it exited on the request
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    deaf = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert deaf.stdout.readline().strip() == "up"  # its handler is set before it is asked
    stop(deaf, timeout_s=0.5)
    assert deaf.returncode == -signal.SIGKILL
    deaf.stdout.close()
