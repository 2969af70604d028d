"""Run a paced tiny-model server in its own process (own GIL), as `otas serve` would:
python -m tests.server.paced_server CKPT PORT [base_ms per_image_ms [HTTP_JSON]], where HTTP_JSON
sets `HttpConfig` fields (limits, timeouts, drain). SIGTERM shuts it down gracefully."""

import json
import sys

from otas.config import HttpConfig, SchedulerConfig
from otas.engine.runner import Runner
from otas.server import memory
from otas.server.connections import make_server
from otas.server.main import build, default_max_queue
from tests.server.helpers import APPS, PacedRunner, paced_profile

if __name__ == "__main__":
    ckpt, port = sys.argv[1], int(sys.argv[2])
    base, per = (float(sys.argv[3]), float(sys.argv[4])) if len(sys.argv) > 4 else (50.0, 10.0)
    http = HttpConfig(**json.loads(sys.argv[5])) if len(sys.argv) > 5 else HttpConfig(drain_s=0.5)
    memory.tune()
    prof = paced_profile(base, per)
    inner = Runner.load(ckpt, "cpu", max_batch=16)
    inner.warmup()  # as `otas serve` does: every γ traced before the first request
    runner = PacedRunner(inner, prof)
    cfg = SchedulerConfig(max_batch=16)
    cfg.max_queue = default_max_queue(prof, APPS, 16)
    body = http.max_body_bytes if len(sys.argv) > 5 else 64 * 1024
    app, _ = build(runner, prof, APPS, "otas", cfg, max_body_bytes=body, http=http)
    memory.freeze_heap()  # as `otas serve` does: a full collection of the started heap stopped the loop ~300 ms
    make_server(app, "127.0.0.1", port, log_level="warning", timeout_graceful_shutdown=10).run()
