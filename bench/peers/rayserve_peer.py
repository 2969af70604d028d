"""Ray Serve's `@serve.batch` serving the shipped model at a fixed γ.

Configured as Ray Serve's batching and backpressure guides recommend: one replica (given every CPU,
so Ray lets its forward use every core) whose handler
awaits a `@serve.batch(max_batch_size, batch_wait_timeout_s)` method, `max_ongoing_requests` at
least the batch size (here 2× it, so a batch can form while one runs) and `max_queued_requests`
for backpressure (beyond it the proxy answers 503). Serve's lean request path is on
(RAY_SERVE_THROUGHPUT_OPTIMIZED=1, as its performance guide advises) and the replica runs at normal
niceness. Clients POST JSON `{"app": ..., "image": base64 PNG}` to /predict and get
`{"label": ..., "gamma": ...}`.

Run: python bench/peers/rayserve_peer.py --port 8100 --gamma 0 --max-batch 16 --delay-ms 10
Needs the `ray` extra. Stops the Ray instance it started (and Serve with it) on SIGINT/SIGTERM.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_model import PeerModel, peer_args  # noqa: E402

os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
os.environ.setdefault("RAY_worker_niceness", "0")


def build(args):
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(
        num_replicas=1,
        max_ongoing_requests=2 * args.max_batch,
        max_queued_requests=args.max_queue,
        ray_actor_options={"num_cpus": os.cpu_count()},  # the whole machine, as every server here has
    )
    class Classifier:
        def __init__(self) -> None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            self.model = PeerModel(args.gamma, args.max_batch, args.noop, args.apps)

        @serve.batch(max_batch_size=args.max_batch, batch_wait_timeout_s=args.delay_ms / 1e3)
        async def classify(self, items: list[tuple[bytes, str]]) -> list[dict]:
            labels = self.model.classify([i for i, _ in items], [a for _, a in items])
            return [{"label": lab, "gamma": self.model.gamma} for lab in labels]

        async def __call__(self, request: Request) -> dict:
            body = await request.json()
            return await self.classify((base64.b64decode(body["image"]), body["app"]))

    return Classifier.bind()


def main() -> None:
    args = peer_args(__doc__.splitlines()[0]).parse_args()
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build(args), name="peer", route_prefix="/predict")
        print(f"ready on http://127.0.0.1:{args.port}/predict", flush=True)
        stop.wait()
    finally:  # stops the Ray instance started above, and with it Serve's actors
        ray.shutdown()


if __name__ == "__main__":
    main()
