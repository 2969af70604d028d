"""Triton's dynamic batcher (through PyTriton) serving the shipped model at a fixed γ.

Configured as Triton's model-configuration guide recommends for a latency-bound model: a dynamic
batcher with `max_batch_size` and `max_queue_delay_microseconds`, a bounded queue
(`max_queue_size`; a full queue answers 503), and one priority level per application, tightest SLO
first, each with a queue timeout of that application's SLO less one batch's profiled latency
(`timeout_action: REJECT`), so a request that can no longer meet its SLO is refused instead of
served late. Clients speak KServe v2 JSON: inputs `image` (base64 PNG, BYTES) and `app` (BYTES),
request parameter `priority`; outputs `label` (BYTES) and `gamma` (INT32).

Run: python bench/peers/pytriton_peer.py --port 8100 --gamma 0 --max-batch 16 --delay-ms 10
(HTTP on --port, gRPC on --port+1, metrics on --port+2). Needs the `peers` extra.
"""

from __future__ import annotations

import base64
import os
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from peer_model import PeerModel, peer_args, queue_budget_ms  # noqa: E402

from otas.bench.formats import priority_levels  # noqa: E402

MODEL = "vit_tiny_p2_c5"


def use_own_libpython() -> None:
    """Triton's Python backend stub links libpython3.11 from the system library path; a stub built
    against another 3.11 patch release than this interpreter fails at model load with
    `'_thread.RLock' object has no attribute '_recursion_count'`. The server and its stubs inherit
    this process's environment, so put this interpreter's own libpython first."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and os.path.exists(os.path.join(libdir, sysconfig.get_config_var("LDLIBRARY") or "")):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))


def main() -> None:
    args = peer_args(__doc__.splitlines()[0]).parse_args()
    use_own_libpython()
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor, TimeoutAction
    from pytriton.triton import Triton, TritonConfig

    model = PeerModel(args.gamma, args.max_batch, args.noop, args.apps)

    @batch
    def infer(image: np.ndarray, app: np.ndarray) -> dict[str, np.ndarray]:  # (B, 1) object arrays of bytes
        labels = model.classify([base64.b64decode(x[0]) for x in image], [a[0].decode() for a in app])
        return {
            "label": np.array([[lab.encode()] for lab in labels], dtype=object),
            "gamma": np.full((len(labels), 1), model.gamma, np.int32),
        }

    levels = priority_levels(model.apps)  # app -> 1 (tightest SLO) .. n
    budget = queue_budget_ms(model.apps, args.gamma, args.max_batch, args.noop)
    policy = {
        levels[a.name]: QueuePolicy(TimeoutAction.REJECT, int(budget[a.name] * 1e3), False, args.max_queue)
        for a in model.apps
    }
    batcher = DynamicBatcher(
        max_queue_delay_microseconds=int(args.delay_ms * 1e3),
        priority_levels=len(levels),
        default_priority_level=len(levels),
        default_queue_policy=policy[len(levels)],
        priority_queue_policy=policy,
    )
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.port,
        grpc_address="127.0.0.1",
        grpc_port=args.port + 1,
        metrics_port=args.port + 2,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=infer,
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,)), Tensor(name="app", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="label", dtype=bytes, shape=(1,)), Tensor(name="gamma", dtype=np.int32, shape=(1,))],
            config=ModelConfig(max_batch_size=args.max_batch, batcher=batcher),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
